"""`lmfast prepare` / `python -m lmfast.prepare`: flags built from `PrepareConfig`'s fields.

The only place that prints usage or errors: bad input is one line on stderr naming the flag or
file, exit code 2, nothing written. The dataset directory is printed on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

from lmfast.data.prepare import PrepareConfig, PrepareError, prepare

PROG = "lmfast prepare"


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is a single line (no usage dump) and raises instead of exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise PrepareError(message)


def build_parser() -> argparse.ArgumentParser:
    """One flag per `PrepareConfig` field; required where the field has no default."""
    parser = _OneLineParser(prog=PROG, description=(PrepareConfig.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(PrepareConfig)
    for spec in dataclasses.fields(PrepareConfig):
        kind = hints[spec.name]
        convert = {Path: Path, int: int, float: float}.get(kind, str)
        required = spec.default is dataclasses.MISSING
        help_text = spec.metadata.get("help", "")
        if not required:
            help_text += f" (default: {spec.default})"
        parser.add_argument(f"--{spec.name}", type=convert, required=required, help=help_text)
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
    except PrepareError as error:
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
