"""No process outlives the one that started it: a stopped job's whole process group ends, and a process
that set `die_with_parent` dies with its parent however that one dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nas_bert.lifetime import end_group

# A command that starts a child of its own (as a job's command starts a timing process) and reports its pid.
TREE = textwrap.dedent("""
    import os, subprocess, sys, time
    env = {{**os.environ, "NAS_BERT_PARENT_PID": str(os.getpid())}}  # as a job's command passes it on
    grandchild = subprocess.Popen([sys.executable, "-c", "import time\\n{inner}\\nprint('ready', flush=True)\\n"
                                   "time.sleep(120)"], env=env)
    print(grandchild.pid, flush=True)
    time.sleep(120)
""")
INNER_DIES = "from nas_bert.lifetime import die_with_parent; die_with_parent()"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (dead, not yet reaped by init) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _start(inner: str = "pass") -> tuple[subprocess.Popen, int]:
    child = subprocess.Popen([sys.executable, "-c", TREE.format(inner=inner)], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    pid = int(child.stdout.readline())  # type: ignore[union-attr]
    assert child.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
    return child, pid


def test_stopping_a_job_ends_its_whole_process_group():
    child, grandchild = _start()
    assert _alive(grandchild)
    end_group(child, grace_s=5)
    assert child.poll() is not None and _gone_within(grandchild, 10)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_process_killed_outright_takes_its_children_along():
    """kill -9 of the middle process (no chance to clean up): its child, having set die_with_parent, dies too."""
    child, grandchild = _start(inner=INNER_DIES)
    assert _alive(grandchild)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert _gone_within(grandchild, 10)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_search_worker_whose_parent_is_gone_ends_at_once(tmp_path, capfd):
    """The search's extra worker processes set die_with_parent first: one whose parent already died (its
    parent pid is not the one it was given) exits at once, before it reads the study file."""
    import multiprocessing as mp

    from nas_bert.search.loop import _spawned_worker

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that is no process's parent here
    p = mp.get_context("spawn").Process(target=_spawned_worker, args=(str(tmp_path / "missing.yaml"), "sqlite://",
                                                                       5.0, 1, 1, 1, gone.pid))
    p.start()
    p.join(60)
    # os._exit(1) in die_with_parent; reading the missing study file would have raised (a traceback, exit 1 too)
    assert p.exitcode == 1 and "Traceback" not in capfd.readouterr().err
