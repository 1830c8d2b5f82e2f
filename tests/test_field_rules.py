"""Declared field rules (`lmfast.field_rules`): every bounded field of every config refuses the value
just outside its bound with one line naming the field, and accepts the bound itself; `Literal`
fields refuse values outside their choices; the real CLIs exit 2 with that line."""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmfast.bot.config import BotConfig
from lmfast.bot.settings import ChatSettings
from lmfast.data.config import PrepareConfig
from lmfast.evaluation.config import EvalConfig
from lmfast.evaluation.tasks import TasksConfig
from lmfast.export.config import ExportConfig
from lmfast.field_rules import bounds, check_bounds, check_fields, choices_text, interval
from lmfast.flags import UserError
from lmfast.generation.params import GenerationParams, ParamError
from lmfast.serving.config import ServeConfig
from lmfast.train.config import TrainConfig

TOKEN = "123456:abc-DEF"


def _make_eval(**values: Any) -> EvalConfig:
    config = EvalConfig(source="m", text_file="t.txt", **values)
    config.check()  # EvalConfig checks on demand, not when made
    return config


def _make_prepare(**values: Any) -> PrepareConfig:
    base: dict[str, Any] = {
        "documents_train_file": [Path("train.txt")],
        "documents_valid_file": [Path("valid.txt")],
        "end_of_document": "[END]",
        "tokenizer_cls_name": "GPT2Tokenizer",
        "max_sample_length": 64,
        "min_sample_length": 1,  # the bounds of both lengths are reachable without the cross rule
    }
    if values.get("valid_fraction"):  # a held-out fraction replaces the valid file
        base["documents_valid_file"] = []
    return PrepareConfig(**{**base, **values})


@functools.cache
def _calibration_dir() -> Path:
    """A directory that passes ExportConfig's description.json check (the file is not read there)."""
    dataset = Path(tempfile.mkdtemp(prefix="lmfast-calibration-"))
    (dataset / "description.json").write_text("{}")
    return dataset


def _make_export(**values: Any) -> ExportConfig:
    if "bits_per_weight" in values:  # the budget of a calibrated sensitivity allocation only
        values |= {"quantize": "int4", "calibration_dataset": _calibration_dir(), "allocation": "sensitivity"}
    return ExportConfig(source="a", output="b", **values)


def _make_params(**values: Any) -> GenerationParams:
    if "min_tokens" in values:  # min_tokens <= max_new_tokens is a rule between two fields
        values.setdefault("max_new_tokens", 4096)
    return GenerationParams(**values)


MAKERS: dict[type, Callable[..., Any]] = {
    TrainConfig: lambda **v: TrainConfig(dataset_dir="d", **v),
    ServeConfig: ServeConfig,
    BotConfig: lambda **v: BotConfig(token=TOKEN, **v),
    ExportConfig: _make_export,
    EvalConfig: _make_eval,
    TasksConfig: lambda **v: TasksConfig(tasks="t", server="http://127.0.0.1:1", **v),
    PrepareConfig: _make_prepare,
    GenerationParams: _make_params,
    ChatSettings: ChatSettings,
}


def _is_int(cls: type, name: str) -> bool:
    hint = typing.get_type_hints(cls)[name]
    return hint is int or hint == int | None


def _cases(inside: bool) -> list[Any]:
    """(config class, field, value): for every declared bound, the value just outside it (or the
    bound itself, or just inside an open bound, when INSIDE)."""
    cases = []
    for cls in MAKERS:
        for spec in dataclasses.fields(cls):
            limits = spec.metadata.get("bounds", {})
            whole = _is_int(cls, spec.name)
            for key, bound in limits.items():
                down, up = (bound - 1, bound + 1) if whole else (-math.inf, math.inf)
                step = (lambda b, to: to) if whole else math.nextafter
                if key in ("ge", "le"):
                    value = bound if inside else step(bound, down if key == "ge" else up)
                else:  # gt, lt: the bound itself is outside
                    value = step(bound, up if key == "gt" else down) if inside else bound
                if value in spec.metadata.get("allow", ()):
                    continue  # -1 of --max_steps: allowed, and tested as such below
                cases.append(pytest.param(cls, spec.name, value, id=f"{cls.__name__}.{spec.name}-{key}"))
    return cases


@pytest.mark.parametrize(("cls", "name", "value"), _cases(inside=False))
def test_every_bound_refuses_the_value_just_outside_it_naming_the_field(cls, name, value):
    with pytest.raises(UserError) as caught:
        MAKERS[cls](**{name: value})
    error = caught.value
    assert error.field == name and "\n" not in str(error), str(error)
    assert str(error).startswith((f"--{name} must be ", f"--{name}: must be ", f"{name} must be "))
    assert str(error).endswith(f", got {value}")


@pytest.mark.parametrize(("cls", "name", "value"), _cases(inside=True))
def test_every_bound_accepts_the_value_on_it(cls, name, value):
    assert getattr(MAKERS[cls](**{name: value}), name) == value


def test_every_config_declares_bounds():
    """No config is left with its ranges in if-chains (each has bounded fields, counted here)."""
    counts = {cls.__name__: sum("bounds" in f.metadata for f in dataclasses.fields(cls)) for cls in MAKERS}
    assert all(counts.values()), counts
    assert counts["TrainConfig"] == 22 and counts["ServeConfig"] == 16 and counts["BotConfig"] == 11


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        pytest.param(cls, name, id=f"{cls.__name__}.{name}")
        for cls in MAKERS
        for name, hint in typing.get_type_hints(cls).items()
        if "Literal" in str(hint)
    ],
)
def test_every_choice_field_refuses_a_value_outside_its_choices(cls, name):
    with pytest.raises(UserError) as caught:
        MAKERS[cls](**{name: "no-such-choice"})
    assert caught.value.field == name and "must be " in str(caught.value)
    assert str(caught.value).endswith(", got 'no-such-choice'")


def test_allowed_values_outside_the_range_pass():
    assert TrainConfig(dataset_dir="d", max_steps=-1).max_steps == -1
    with pytest.raises(UserError, match=r"^--max_steps must be -1 or >= 1, got -2$"):
        TrainConfig(dataset_dir="d", max_steps=-2)


def test_none_skips_an_optional_field_and_nan_and_infinity_do_not_pass():
    assert TrainConfig(dataset_dir="d", max_epochs=None, dropout=None).max_epochs is None
    with pytest.raises(UserError, match="--weight_decay must be >= 0, got nan"):
        TrainConfig(dataset_dir="d", weight_decay=math.nan)
    with pytest.raises(UserError, match="--checkpoint_every_minutes must be >= 0, got inf"):
        TrainConfig(dataset_dir="d", checkpoint_every_minutes=math.inf)


def test_rule_texts():
    assert interval({"ge": 1, "le": 4096}) == "in [1, 4096]"
    assert interval({"gt": 0.0, "le": 1.0}) == "in (0, 1]"
    assert interval({"ge": 0, "lt": 2**63}) == "in [0, 2**63)"
    assert interval({"gt": 0}) == "> 0" and interval({"lt": 5}) == "< 5"
    assert interval({"ge": 1}, allow=(-1,)) == "-1 or >= 1"
    assert choices_text(("a", "b")) == "a or b" and choices_text(("a", "b", "c")) == "one of a, b, c"
    with pytest.raises(ParamError, match=r"^top_k must be >= 0 \(0 disables\), got -1$"):
        GenerationParams(top_k=-1)
    with pytest.raises(UserError, match=r"^--x must be positive, got 0$"):
        check_bounds("x", 0, {"ge": 1}, said="positive")
    assert bounds({"gt": 0.0, "le": 2.0}, le=1.0) == {"bounds": {"gt": 0.0, "le": 1.0}}


def test_check_fields_takes_the_config_s_error_type():
    @dataclasses.dataclass
    class Small:
        n: int = dataclasses.field(default=1, metadata=bounds(ge=1))

    with pytest.raises(ParamError, match=r"^n must be >= 1, got 0$"):
        check_fields(Small(n=0), ParamError)


@pytest.mark.parametrize(
    ("command", "argv", "line"),
    [
        (
            "train",
            ["--dataset_dir", "d", "--max_steps", "0"],
            "lmfast train: --max_steps must be -1 or >= 1, got 0",
        ),
        ("serve", ["m", "--stall_timeout_s", "0"], "lmfast serve: --stall_timeout_s must be > 0, got 0.0"),
        (
            "bot",
            ["--token", TOKEN, "--api_timeout_s", "0"],
            "lmfast bot: error: --api_timeout_s must be > 0, got 0.0",
        ),
        (
            "eval",
            ["m", "--text_file", "t", "--stride", "0"],
            "lmfast eval: error: --stride: must be >= 1, got 0",
        ),
        (
            "prepare",
            [
                "--documents_train_file",
                "a.txt",
                "--documents_valid_file",
                "b.txt",
                "--end_of_document",
                "[E]",
                "--tokenizer_cls_name",
                "GPT2Tokenizer",
                "--max_sample_length",
                "64",
                "--window_mb",
                "0",
            ],
            "lmfast prepare: error: --window_mb: must be a positive number, got 0.0",
        ),  # fmt: skip
        (
            "eval",
            ["--tasks", "t", "--server", "http://127.0.0.1:1", "--batch_size", "17"],
            "lmfast eval: --batch_size: must be in [1, 16], got 17",
        ),
    ],
)
def test_the_real_cli_exits_2_with_the_one_line(command, argv, line, capsys, monkeypatch):
    from lmfast.__main__ import main

    for name in ("TELEGRAM_BOT_TOKEN", "LMFAST_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert main([command, *argv]) == 2
    assert capsys.readouterr().err == line + "\n"
