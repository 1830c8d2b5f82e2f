"""`lmfast prepare` / `python -m lmfast.prepare`: flags built from `PrepareConfig`'s fields.

The only place that prints usage or errors: bad input is one line on stderr naming the flag or
file, exit code 2, nothing written. The dataset directory is printed on stdout.
"""

from __future__ import annotations

import logging
import sys

from lmfast.flags import FlagError, OneLineParser, add_config_flags
from lmfast.data.prepare import PrepareConfig, PrepareError, prepare

PROG = "lmfast prepare"


def build_parser() -> OneLineParser:
    """One flag per `PrepareConfig` field (lmfast.flags); required where the field has no default."""
    parser = OneLineParser(prog=PROG, description=(PrepareConfig.__doc__ or "").strip().splitlines()[0])
    add_config_flags(parser, PrepareConfig)
    parser.add_argument("--quiet", action="store_true", help="Log warnings only.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, prepare the dataset, print its directory; 2 on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
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
