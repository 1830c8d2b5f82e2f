"""Field rules declared as metadata, checked by one function: the bounds and choices of every config.

A config dataclass states a field's range where it declares the field (`field(metadata=bounds(ge=1))`)
and its choices in its type (`Literal["a", "b"]`); `check_fields(config)` (called first thing in the
config's `__post_init__`) checks every field against them, so no config writes a range as an
if-chain and every rule reads the same: "must be >= 1, got 0", "must be in (0, 1], got 2",
"must be -1 or >= 1, got 0", "must be one of a, b, c, got 'x'". `None` passes (an `X | None` field
unset), NaN never does. The HTTP schemas reuse the same bounds (`lmfast.generation.params.field_bounds`).

Rules that tie two fields together (`min_tokens <= max_new_tokens`) or need a file stay code in
each config's `__post_init__`.

Imports only the standard library (and `lmfast.flags`, which does too): every config may import it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from lmfast.flags import UserError


class FieldError(UserError):
    """A config field breaks its declared rule: "--field must be >= 1, got 0" (the flag, then the rule)."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(field, rule)

    def line(self) -> str:
        return f"--{self.field} {self.rule}"


def bounds(
    limits: Mapping[str, float] | None = None,
    /,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    allow: tuple[float, ...] = (),
    hint: str = "",
    finite: bool = False,
    said: str = "",
) -> dict[str, Any]:
    """Field metadata: the range of a number (`ge`, `gt`, `le`, `lt`, as pydantic's keywords, or
    LIMITS, a dict of them: another field's bounds).

    `allow` names values accepted outside the range (`--max_steps`: -1 or >= 1), `hint` is said in
    parentheses after the rule ("0: full fine-tuning"), `finite` also refuses infinity, `said`
    words the range in place of the interval ("positive": the message callers already match).
    Merge with other metadata by `|` (`_help("...") | bounds(ge=1)`).
    """
    given = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    rule: dict[str, Any] = {"bounds": {**(limits or {}), **{k: v for k, v in given.items() if v is not None}}}
    if allow:
        rule["allow"] = tuple(allow)
    if hint:
        rule["hint"] = hint
    if finite:
        rule["finite"] = True
    if said:
        rule["said"] = said
    return rule


def worded(said: str) -> dict[str, Any]:
    """Field metadata of a `Literal` field: its choices in these words ("int8 or int4 (or omitted)")."""
    return {"said": said}


def within(value: float, limits: dict[str, float]) -> bool:
    """Whether VALUE lies within LIMITS; written so that NaN lies outside every bound."""
    return (
        ("ge" not in limits or value >= limits["ge"])
        and ("gt" not in limits or value > limits["gt"])
        and ("le" not in limits or value <= limits["le"])
        and ("lt" not in limits or value < limits["lt"])
    )


def number(x: float) -> str:
    """A bound as the message states it: 4096, 0.5, 2**63 (a big power of two by its exponent)."""
    if isinstance(x, int) and x >= 2**32 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return f"{x:g}"


def interval(limits: dict[str, float], allow: tuple[float, ...] = ()) -> str:
    """`in [1, 4096]`, `in (0, 1]`, `>= 0`, `-1 or >= 1`: the range as the error message states it."""
    low = (
        f"[{number(limits['ge'])}" if "ge" in limits else f"({number(limits['gt'])}" if "gt" in limits else ""
    )
    high = (
        f"{number(limits['le'])}]" if "le" in limits else f"{number(limits['lt'])})" if "lt" in limits else ""
    )
    if low and high:
        text = f"in {low}, {high}"
    elif low:
        text = (">= " if low[0] == "[" else "> ") + low[1:]
    else:
        text = ("<= " if high[-1] == "]" else "< ") + high[:-1]
    return " or ".join([*(number(a) for a in allow), text])


def choices_text(values: tuple[Any, ...]) -> str:
    """`a or b`, `one of a, b, c`: the choices as the error message states them."""
    shown = [str(v) for v in values]
    return " or ".join(shown) if len(shown) == 2 else f"one of {', '.join(shown)}"


def check_bounds(
    name: str,
    value: float,
    limits: dict[str, float],
    error: Callable[[str, str], UserError] = FieldError,
    *,
    allow: tuple[float, ...] = (),
    hint: str = "",
    finite: bool = False,
    said: str = "",
) -> None:
    """ERROR(name, rule) unless VALUE lies within LIMITS or is one of ALLOW (NaN never passes)."""
    if value in allow and not isinstance(value, bool):
        return
    if within(value, limits) and not (finite and math.isinf(value)):
        return
    note = f" ({hint})" if hint else ""
    raise error(name, f"must be {said or interval(limits, allow)}{note}, got {value}")


@dataclasses.dataclass(frozen=True)
class _Rule:
    name: str
    limits: dict[str, float]
    allow: tuple[float, ...]
    hint: str
    finite: bool
    said: str
    choices: tuple[Any, ...]


def _choices(hint: Any) -> tuple[Any, ...]:
    """The values of a `Literal[...]` annotation (also inside `X | None`); () for any other type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(v for arg in typing.get_args(hint) for v in _choices(arg))
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


_RULES: dict[type, tuple[_Rule, ...]] = {}


def _rules(cls: type) -> tuple[_Rule, ...]:
    """The declared rules of dataclass CLS, read once per class (configs are made per request)."""
    if cls not in _RULES:
        _RULES[cls] = _read_rules(cls)
    return _RULES[cls]


def _read_rules(cls: type) -> tuple[_Rule, ...]:
    hints = typing.get_type_hints(cls)
    rules = []
    for spec in dataclasses.fields(cls):
        meta = spec.metadata
        choices = _choices(hints.get(spec.name))
        if "bounds" in meta or choices:
            rules.append(
                _Rule(
                    spec.name,
                    dict(meta.get("bounds", {})),
                    tuple(meta.get("allow", ())),
                    str(meta.get("hint", "")),
                    bool(meta.get("finite", False)),
                    str(meta.get("said", "")),
                    choices,
                )
            )
    return tuple(rules)


def check_fields(config: Any, error: Callable[[str, str], UserError] = FieldError) -> None:
    """Check every field of dataclass CONFIG against its declared bounds and `Literal` choices.

    Raises:
        UserError: ERROR(field, rule) for the first field, in declaration order, that breaks its rule.
    """
    for rule in _rules(type(config)):
        value = getattr(config, rule.name)
        if value is None:
            continue
        if rule.choices and value not in rule.choices:
            raise error(rule.name, f"must be {rule.said or choices_text(rule.choices)}, got {value!r}")
        if rule.limits:
            check_bounds(
                rule.name,
                value,
                rule.limits,
                error,
                allow=rule.allow,
                hint=rule.hint,
                finite=rule.finite,
                said=rule.said,
            )
