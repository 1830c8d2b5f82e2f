"""`lmfast train`: flags built from `TrainConfig`'s fields; exit 2 with one line on bad input."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import sys
import typing
from typing import Any

from lmfast.train.config import TrainConfig

# the seed's train script called it --model_path
ALIASES = {"model": ["--model_path"]}


def _field_docs() -> dict[str, str]:
    """Docstrings under each field (they become the --help text)."""
    import inspect

    source = inspect.getsource(TrainConfig)
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(after.value.value).split())  # type: ignore[union-attr]
    return docs


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _number(text: str) -> float | int:
    """An int when it looks like one (Lightning reads ints as batch counts, floats as fractions)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _optional(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmfast train",
        description=TrainConfig.__doc__,
        argument_default=argparse.SUPPRESS,  # only flags given on the command line end up in the namespace
    )
    docs = _field_docs()
    hints = typing.get_type_hints(TrainConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, hint in hints.items():
        flags = [f"--{name}", *ALIASES.get(name, [])]
        help_text = f"{docs.get(name, '')} (default: {defaults[name]})"
        if name == "resume":
            parser.add_argument(*flags, nargs="?", const="latest", metavar="EXPERIMENT_DIR", help=help_text)
            continue
        optional = type(None) in typing.get_args(hint)
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if base is bool:
            parser.add_argument(
                *flags, type=_parse_bool, nargs="?", const=True, metavar="BOOL", help=help_text
            )
            continue
        if name in ("val_check_interval", "limit_val_batches"):
            base = _number
        parser.add_argument(*flags, dest=name, type=_optional(base) if optional else base, help=help_text)
    return parser


def config_from_args(argv: list[str] | None) -> TrainConfig:
    """Parse flags into a `TrainConfig` (merged with the saved config when resuming)."""
    given = vars(build_parser().parse_args(argv))
    resume = given.get("resume")
    if resume:
        from lmfast.train.run import resume_config

        defaults = TrainConfig(dataset_dir="unused")
        root = given.get("experiments_root", defaults.experiments_root)
        name = given.get("experiment_name", defaults.experiment_name)
        overrides = {k: v for k, v in given.items() if k != "resume"}
        return resume_config(resume, overrides, root, name)
    return TrainConfig(**given)


def _log_to_stderr() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("lmfast")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lmfast train`; returns the exit code."""
    from lmfast.train.model import TrainInputError

    try:
        config = config_from_args(argv)
    except SystemExit as done:  # argparse: --help (0) or a malformed flag (2, usage already printed)
        return int(done.code or 0)
    except (ValueError, TrainInputError) as error:
        print(f"lmfast train: {error}", file=sys.stderr)
        return 2
    from lmfast.train.module import NonFiniteLossError
    from lmfast.train.run import train

    # no progress bar without a terminal: the plain-text log lines go to stderr instead
    handler = None if sys.stderr.isatty() else _log_to_stderr()
    try:
        experiment_dir = train(config)
    except TrainInputError as error:
        print(f"lmfast train: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"lmfast train: {error}", file=sys.stderr)
        return 1
    finally:
        if handler is not None:
            logging.getLogger("lmfast").removeHandler(handler)
    print(experiment_dir)
    return 0
