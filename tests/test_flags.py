"""The one flag builder: types, choices, optional, lists, bools, aliases, env values, help text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from lmfast.flags import (
    FlagError,
    OneLineParser,
    UserError,
    add_config_flags,
    env_values,
    field_docs,
    parse_config,
    run,
)


@dataclass
class Example:
    """An example config."""

    source: str = ""
    """Where to read from."""
    steps: int = 10
    """How many steps."""
    rate: float = 0.5
    """A rate."""
    mode: Literal["fast", "slow"] = "fast"
    """Which mode."""
    threads: int | None = None
    """Threads (none: the runtime's default)."""
    interval: int | float = 1.0
    """An int is a count, a float a fraction."""
    verbose: bool = False
    """Say more."""
    stop: list[str] = field(default_factory=list)
    """Repeatable stop strings."""
    root: Path = Path("data")
    """A directory."""


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="example")
    add_config_flags(
        parser, Example, positional=["source"], aliases={"steps": ["--max_steps"]}, env_prefix="X_"
    )
    return parser


def test_flags_parse_into_the_dataclass_with_its_types():
    config, _ = parse_config(
        _parser(),
        Example,
        [
            "src",
            "--max_steps",
            "3",
            "--rate",
            "0.25",
            "--mode",
            "slow",
            "--threads",
            "none",
            "--interval",
            "5",
            "--verbose",
            "--stop",
            "a",
            "b",
            "--stop",
            "c",
            "--root",
            "/tmp/x",
        ],
    )
    assert config == Example("src", 3, 0.25, "slow", None, 5, True, ["a", "b", "c"], Path("/tmp/x"))
    assert isinstance(config.interval, int)


def test_absent_flags_keep_the_dataclass_defaults_and_env_fills_in():
    config, _ = parse_config(
        _parser(),
        Example,
        ["--verbose", "false"],
        env_prefix="X_",
        environ={"X_STEPS": "7", "X_STOP": "p, q", "X_MODE": "slow"},
    )
    assert (config.steps, config.stop, config.mode, config.verbose, config.rate) == (
        7,
        ["p", "q"],
        "slow",
        False,
        0.5,
    )
    config, _ = parse_config(_parser(), Example, ["--steps", "2"], env_prefix="X_", environ={"X_STEPS": "7"})
    assert config.steps == 2  # a flag wins over its variable


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--steps", "x"], ["--steps", "'x'"]),
        (["--mode", "medium"], ["--mode", "medium"]),
        (["--nope"], ["--nope"]),
        (["--verbose", "maybe"], ["--verbose"]),
    ],
)
def test_bad_flags_are_one_line_errors_naming_the_flag(argv, words):
    with pytest.raises(FlagError) as caught:
        _parser().parse_args(argv)
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words)


def test_bad_env_values_name_the_variable():
    with pytest.raises(FlagError, match="X_STEPS"):
        env_values(Example, "X_", {"X_STEPS": "ten"})
    with pytest.raises(FlagError, match="X_MODE"):
        env_values(Example, "X_", {"X_MODE": "medium"})


def test_help_comes_from_attribute_docstrings_with_defaults_and_env(capsys):
    assert field_docs(Example)["threads"] == "Threads (none: the runtime's default)."
    with pytest.raises(SystemExit) as done:
        _parser().parse_args(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "How many steps. (default: 10) [env X_STEPS]" in text
    assert "{fast,slow}" in text and "--max_steps" in text


@dataclass
class Required:
    path: str
    """A field with no default is a required flag."""
    n: int = 1


def test_a_field_without_default_is_a_required_flag():
    parser = OneLineParser(prog="required")
    add_config_flags(parser, Required)
    with pytest.raises(FlagError, match="--path"):
        parser.parse_args([])
    assert parse_config(parser, Required, ["--path", "x"])[0] == Required("x", 1)


def _ids(text: str) -> tuple[int, ...]:
    if not all(part.strip().isdigit() for part in text.split(",")):
        raise ValueError(f"{text!r} is not a list of ids")
    return tuple(int(part) for part in text.split(","))


@dataclass
class OwnEnv:
    token: str = field(default="", metadata={"env": "SOME_TOKEN"})
    """A field with its own environment variable."""
    ids: tuple[int, ...] = field(default=(), metadata={"parse": _ids, "env": "SOME_IDS"})
    """Parsed from one text by the field's own converter."""


def test_field_metadata_names_its_own_variable_and_converter(capsys):
    parser = OneLineParser(prog="own")
    add_config_flags(parser, OwnEnv)
    environ = {"SOME_TOKEN": "t", "SOME_IDS": "1,2", "LMFAST_TOKEN": "ignored"}
    assert parse_config(parser, OwnEnv, [], environ=environ)[0] == OwnEnv("t", (1, 2))
    assert parse_config(parser, OwnEnv, ["--ids", "3"], environ=environ)[0].ids == (3,)
    with pytest.raises(FlagError, match=r"--ids: 'x' is not a list of ids"):
        parser.parse_args(["--ids", "x"])
    with pytest.raises(FlagError, match="SOME_IDS"):
        env_values(OwnEnv, None, {"SOME_IDS": "x"})
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert "[env SOME_TOKEN]" in capsys.readouterr().out


def test_flags_are_exact_no_prefix_abbreviation():
    with pytest.raises(FlagError) as caught:
        _parser().parse_args(["--max_step", "3"])  # a prefix of the alias --max_steps
    assert str(caught.value) == "unknown flag --max_step (did you mean --max_steps?)"


def test_an_unknown_flag_is_one_line_with_the_closest_valid_flag():
    with pytest.raises(FlagError) as caught:
        _parser().parse_args(["--verbos", "--rat=0.1"])
    assert str(caught.value) == "unknown flag --verbos (did you mean --verbose?)"
    with pytest.raises(FlagError) as caught:
        _parser().parse_args(["--zzzzzz"])
    assert str(caught.value) == "unknown flag --zzzzzz (see example --help)"


def test_a_misspelt_required_flag_is_named_as_unknown_not_as_missing():
    parser = OneLineParser(prog="required")
    add_config_flags(parser, Required)
    with pytest.raises(FlagError) as caught:
        parser.parse_args(["--n", "2", "--pth", "x"])
    assert str(caught.value) == "unknown flag --pth (did you mean --path?)"


def test_values_after_a_double_dash_and_subcommand_flags_are_not_checked_by_the_parent():
    parser = OneLineParser(prog="top")
    commands = parser.add_subparsers(dest="command")
    sub = commands.add_parser("run")
    sub.add_argument("--steps", type=int)
    assert parser.parse_args(["run", "--steps", "2"]).steps == 2
    with pytest.raises(FlagError, match=r"unknown flag --step \(did you mean --steps\?\)"):
        parser.parse_args(["run", "--step", "2"])


def test_user_error_carries_field_and_rule_and_prints_one_line():
    error = UserError("--port", "must be between 1 and 65535")
    assert isinstance(error, ValueError)
    assert (error.field, error.rule, str(error)) == (
        "--port",
        "must be between 1 and 65535",
        "--port: must be between 1 and 65535",
    )
    message_only = UserError("data.txt: not UTF-8")
    assert (message_only.field, message_only.rule, str(message_only)) == (
        "",
        "data.txt: not UTF-8",
        "data.txt: not UTF-8",
    )


def test_every_stage_bad_input_error_is_a_user_error_with_its_message_unchanged():
    from lmfast.bot.storage import StorageError
    from lmfast.data.chat_exports import ChatExportError
    from lmfast.data.dialogs import DialogsError
    from lmfast.data.documents import DocumentsError
    from lmfast.data.errors import PrepareError
    from lmfast.data.inputs import InputError
    from lmfast.data.tokenizers import UnknownTokenizerError
    from lmfast.evaluation.config import EvalError
    from lmfast.generation.params import ParamError
    from lmfast.models.chat_template import ChatTemplateError
    from lmfast.models.checkpoint import CheckpointError
    from lmfast.models.dataset import DatasetFormatError
    from lmfast.train.model import TrainInputError

    single = (StorageError, ChatExportError, DialogsError, DocumentsError, InputError, UnknownTokenizerError)
    single += (
        ChatTemplateError,
        CheckpointError,
        DatasetFormatError,
        TrainInputError,
        FlagError,
        PrepareError,
    )
    for cls in single:
        error = cls("x.json: line 3 is not JSON")
        assert isinstance(error, UserError) and str(error) == "x.json: line 3 is not JSON", cls
    structured = [
        (ParamError("temperature", "must be >= 0"), "temperature must be >= 0"),
        (EvalError("stride", "must be > 0"), "--stride: must be > 0"),
        (EvalError("source", "not found"), "SOURCE: not found"),
        (PrepareError("val_ratio", "must be in [0, 1)"), "--val_ratio: must be in [0, 1)"),
        (PrepareError("input", "--input x: not found"), "--input x: not found"),
    ]
    for error, line in structured:
        assert isinstance(error, UserError) and str(error) == line
        assert error.rule in line and error.field.lower() in line.lower()


def test_run_owns_help_and_the_one_line_exit_2_for_bad_input_in_either_step(capsys):
    parser = OneLineParser(prog="lmfast toy")
    add_config_flags(parser, Example)

    def parse(argv: list[str]) -> Callable[[], Example]:
        return lambda: parse_config(parser, Example, argv)[0]

    assert run("lmfast toy", parse(["--help"]), lambda config: 1) == 0
    assert "usage: lmfast toy" in capsys.readouterr().out

    assert run("lmfast toy", parse(["--steps", "x"]), lambda config: 0) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("lmfast toy: error: argument --steps")
    assert captured.err.count("\n") == 1

    def reject(config: Example) -> int:
        raise UserError("--steps", f"{config.steps} is too many")

    assert run("lmfast toy", parse(["--steps", "9"]), reject) == 2
    assert capsys.readouterr().err == "lmfast toy: error: --steps: 9 is too many\n"
    assert run("lmfast toy", parse(["--steps", "9"]), reject, error_word=False) == 2
    assert capsys.readouterr().err == "lmfast toy: --steps: 9 is too many\n"

    assert run("lmfast toy", parse(["--steps", "9"]), lambda config: config.steps) == 9  # the command's code

    def crash(config: Example) -> int:
        raise RuntimeError("not bad input: a bug, shown with its traceback")

    with pytest.raises(RuntimeError):
        run("lmfast toy", parse([]), crash)
