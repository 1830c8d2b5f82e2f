"""`lmfast eval SOURCE (--dataset_dir DIR | --text_file FILE) [--output report.json]`, or
`lmfast eval SOURCE --tasks TASKS [--server URL]` (lm-evaluation-harness: `lmfast.evaluation.tasks`).

Flags are built from `EvalConfig` (lmfast.flags). Bad input is one line on stderr naming the flag,
exit 2, and no report written. The table goes to stdout; the progress bar to stderr.
"""

from __future__ import annotations

import sys

from lmfast.evaluation.config import EvalConfig
from lmfast.flags import OneLineParser, add_config_flags, parse_config, run

PROG = "lmfast eval"


def build_parser() -> OneLineParser:
    """One flag per `EvalConfig` field, SOURCE as the positional argument."""
    parser = OneLineParser(
        prog=PROG,
        description=(EvalConfig.__doc__ or "").strip().splitlines()[0],
        epilog="With --tasks TASKS it runs lm-evaluation-harness tasks instead; their flags follow.",
    )
    add_config_flags(parser, EvalConfig, positional=["source"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Evaluate, print the table (and write --output); 2 on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--tasks" or a.startswith("--tasks=") for a in argv):
        from lmfast.evaluation.tasks import main as tasks_main

        return tasks_main(argv)
    if any(a in ("-h", "--help") for a in argv):  # both modes' flags, so --tasks is found in the help
        from lmfast.evaluation.tasks import build_parser as tasks_parser

        print(build_parser().format_help())
        print(f"lm-evaluation-harness tasks: {PROG} SOURCE --tasks TASKS [flags]\n")
        print(tasks_parser().format_help())
        return 0
    return run(PROG, lambda: parse_config(build_parser(), EvalConfig, argv)[0], _evaluate)


def _evaluate(config: EvalConfig) -> int:
    """Score, print the table (an `EvalError` reaches `run`: one line, exit 2)."""
    from lmfast.evaluation.perplexity import evaluate, table

    try:
        config.check()
        with _progress_bar(config.progress) as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done)

            report = evaluate(config, progress=advance)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no report written", file=sys.stderr)
        return 130
    print(table(report))
    if config.output:
        print(f"report: {config.output}")
    return 0


def _progress_bar(enabled: bool):
    from tqdm import tqdm

    # disable=None: shown only when stderr is a terminal, so logs and pipes stay clean
    return tqdm(unit="tok", desc="scoring", disable=None if enabled else True, file=sys.stderr, leave=False)


if __name__ == "__main__":
    sys.exit(main())
