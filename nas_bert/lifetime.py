"""How long the processes nas-bert starts live: no process outlives the one that started it.

- `die_with_parent`: Linux's PR_SET_PDEATHSIG, set in the new process itself (a `preexec_fn` is unsafe
  in a parent with threads); a parent that died before it was set is caught by comparing pids. The
  command a service job runs, the timing processes the latency model, the finalists and the export
  spawn, and the search's extra workers all call it, so a `kill -9` anywhere ends everything below.
- `end_group`: a job's command runs in a process group of its own (`start_new_session`); stopping it
  signals the whole group, the command's own children included, and kills what is left.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PARENT_ENV = "NAS_BERT_PARENT_PID"


def die_with_parent(parent: int | None = None) -> None:
    """This process gets SIGKILL when its parent (`parent`, else $NAS_BERT_PARENT_PID) dies."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    expected = parent if parent is not None else os.environ.get(PARENT_ENV, "")
    if str(expected).isdigit() and os.getppid() != int(expected):  # the parent died before the line above
        os._exit(1)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def end_group(child: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGINT to the child's process group (the command stops as at a Ctrl-C; its stages resume later),
    SIGKILL to the group after `grace_s`, and SIGKILL to whatever of the group outlived the child."""
    pgid = child.pid  # a session leader's group id is its pid (start_new_session=True)
    if child.poll() is None:
        _signal_group(pgid, signal.SIGINT)
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            child.wait()
    _signal_group(pgid, signal.SIGKILL)  # its children: a timing process between two results, say
