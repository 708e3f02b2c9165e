"""`python -m nas_bert.service.processes <nas-bert command...>`: the command, killed when its parent dies.

Linux's PR_SET_PDEATHSIG is set here, in the child itself (a `preexec_fn` is unsafe in a parent with
threads), then the process becomes `python -m nas_bert <command...>` by exec, which keeps the signal;
a parent that died before it was set is caught by comparing the parent's pid.
"""

from __future__ import annotations

import os
import sys

from nas_bert.lifetime import PARENT_ENV, die_with_parent

__all__ = ["PARENT_ENV", "die_with_parent", "main"]


def main() -> None:
    die_with_parent()
    # The command itself, in this same process (the death signal survives exec): the service never
    # imports the command line, which imports the service.
    os.execv(sys.executable, [sys.executable, "-m", "nas_bert", *sys.argv[1:]])


if __name__ == "__main__":
    main()
