"""`lmfast eval`: evaluate a model. `--tasks` runs lm-evaluation-harness tasks (`tasks.main`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--tasks" or a.startswith("--tasks=") for a in argv) or "-h" in argv or "--help" in argv:
        from lmfast.evaluation.tasks import main as tasks_main

        return tasks_main(argv)
    print("lmfast eval: give --tasks TASKS (lm-evaluation-harness tasks from local files)", file=sys.stderr)
    return 2
