"""`python -m nas_bert.service.processes <nas-bert command...>`: the command, killed when its parent dies.

Linux's PR_SET_PDEATHSIG is set here, in the child itself (a `preexec_fn` is unsafe in a parent with
threads), then the process becomes `python -m nas_bert <command...>` by exec, which keeps the signal;
a parent that died before it was set is caught by comparing the parent's pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
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


def main() -> None:
    die_with_parent()
    # The command itself, in this same process (the death signal survives exec): the service never
    # imports the command line, which imports the service.
    os.execv(sys.executable, [sys.executable, "-m", "nas_bert", *sys.argv[1:]])


if __name__ == "__main__":
    main()
