"""`lmfast prepare` / `python -m lmfast.prepare`: flags built from `PrepareConfig`'s fields.

The only place that prints usage or errors: bad input is one line on stderr naming the flag or
file, exit code 2, nothing written. The dataset directory is printed on stdout.
"""

from __future__ import annotations

import logging
import sys

from lmfast.data.prepare import PrepareConfig, PrepareError, prepare
from lmfast.flags import FlagError, OneLineParser, add_config_flags, parse_config

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
    try:
        config, namespace = parse_config(parser, MergeConfig, argv)
    except SystemExit as exit_request:  # --help
        return int(exit_request.code or 0)
    except (FlagError, TypeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING if namespace.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        directory = merge(config)
    except PrepareError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(directory)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse flags, prepare the dataset, print its directory; 2 on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = build_parser()
    try:
        args = vars(parser.parse_args(argv))
    except SystemExit as exit_request:  # --help
        return int(exit_request.code or 0)
    except FlagError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    quiet = args.pop("quiet")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    values = {k: v for k, v in args.items() if v is not None}
    try:
        directory = prepare(PrepareConfig(**values))
    except PrepareError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
