"""`lmfast prepare` / `python -m lmfast.prepare`: flags built from `PrepareConfig`'s fields.

The only place that prints usage or errors: bad input is one line on stderr naming the flag or
file, exit code 2, nothing written. The dataset directory is printed on stdout.
"""

from __future__ import annotations

import logging
import sys
from argparse import Namespace

from lmfast.data.prepare import PrepareConfig, prepare
from lmfast.flags import FlagError, OneLineParser, add_config_flags, parse_config, run

PROG = "lmfast prepare"


def build_parser() -> OneLineParser:
    """One flag per `PrepareConfig` field (lmfast.flags); required where the field has no default."""
    parser = OneLineParser(
        prog=PROG,
        description=(PrepareConfig.__doc__ or "").strip().splitlines()[0]
        + f" (`{PROG} merge SHARD...` joins the shards of --num_shards runs)",
    )
    add_config_flags(parser, PrepareConfig)
    parser.add_argument("--quiet", action="store_true", help="Log warnings only.")
    return parser


def merge_main(argv: list[str]) -> int:
    """`lmfast prepare merge SHARD...`: join the shards, print the merged dataset's directory."""
    from lmfast.data.merge import MergeConfig, merge

    prog = f"{PROG} merge"
    parser = OneLineParser(prog=prog, description=(MergeConfig.__doc__ or "").strip())
    add_config_flags(parser, MergeConfig, positional=("shards",))
    parser.add_argument("--quiet", action="store_true", help="Log warnings only.")

    def parse() -> tuple[MergeConfig, Namespace]:
        try:
            return parse_config(parser, MergeConfig, argv)
        except TypeError as error:  # MergeConfig's own check of its arguments
            raise FlagError(str(error)) from None

    def join(parsed: tuple[MergeConfig, Namespace]) -> int:
        config, namespace = parsed
        logging.basicConfig(
            level=logging.WARNING if namespace.quiet else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
        print(merge(config))
        return 0

    return run(prog, parse, join)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, prepare the dataset, print its directory; 2 on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = build_parser()
    return run(PROG, lambda: vars(parser.parse_args(argv)), _prepare)


def _prepare(args: dict) -> int:
    """Prepare from the parsed flags (a `PrepareError` reaches `run`: one line, exit 2)."""
    quiet = args.pop("quiet")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    values = {k: v for k, v in args.items() if v is not None}
    try:
        directory = prepare(PrepareConfig(**values))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
