"""`lmfast train`: flags built from `TrainConfig`'s fields; exit 2 with one line on bad input."""

from __future__ import annotations

import logging
import sys

from lmfast.flags import OneLineParser, add_config_flags, run
from lmfast.train.config import TrainConfig

# older train scripts called it --model_path
ALIASES = {"model": ["--model_path"]}


def build_parser() -> OneLineParser:
    """One flag per `TrainConfig` field (lmfast.flags); `--resume` alone means the latest run."""
    parser = OneLineParser(prog="lmfast train", description=TrainConfig.__doc__)
    add_config_flags(
        parser,
        TrainConfig,
        aliases=ALIASES,
        overrides={"resume": {"nargs": "?", "const": "latest", "metavar": "EXPERIMENT_DIR"}},
    )
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
    return run("lmfast train", lambda: config_from_args(argv), _train, error_word=False)


def _train(config: TrainConfig) -> int:
    """Train; a `TrainInputError` (bad dataset, model, sizes) reaches `run`: one line, exit 2."""
    from lmfast.train.interrupt import TrainingInterrupted
    from lmfast.train.module import NonFiniteLossError
    from lmfast.train.run import train

    # no progress bar without a terminal: the plain-text log lines go to stderr instead
    handler = None if sys.stderr.isatty() else _log_to_stderr()
    try:
        experiment_dir = train(config)
    except NonFiniteLossError as error:
        print(f"lmfast train: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stopped:
        if stopped.is_global_zero:
            print(f"lmfast train: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:  # before training started (or a second Ctrl-C): no run to resume
        print("lmfast train: interrupted before the first checkpoint", file=sys.stderr)
        return 130
    finally:
        if handler is not None:
            logging.getLogger("lmfast").removeHandler(handler)
    print(experiment_dir)
    return 0
