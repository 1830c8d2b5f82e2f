"""Per-chat sampling settings: the three knobs a chat may turn, their button choices and bounds.

Defaults and validity come from `GenerationParams` (pure Python) and from `openai_bounds`, the
bounds of `/v1/chat/completions` (temperature at most OpenAI's 2), which the bot calls beside
`/generated_texts/`: one source, so the bot never stores a value the server would refuse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lmfast.field_rules import bounds, check_fields
from lmfast.generation.params import GenerationParams, ParamError, openai_bounds

_DEFAULTS = GenerationParams()

# the bot caps replies well below the server's hard limit: a chat message, not a novel
MAX_BOT_NEW_TOKENS = 512


@dataclass(frozen=True)
class ChatSettings:
    """What one chat asked for; everything else is the server's default."""

    # /v1/chat/completions' bounds (inside GenerationParams'), and the bot's own cap on replies
    temperature: float = field(default=_DEFAULTS.temperature, metadata=bounds(openai_bounds("temperature")))
    max_new_tokens: int = field(
        default=_DEFAULTS.max_new_tokens, metadata=bounds(ge=1, le=MAX_BOT_NEW_TOKENS)
    )
    top_p: float = field(default=_DEFAULTS.top_p, metadata=bounds(openai_bounds("top_p")))

    def __post_init__(self) -> None:
        check_fields(self, ParamError)
        # the shared dataclass and the routes' own bodies hold the one definition of what is valid
        self.to_params()

    def to_params(self) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature, max_new_tokens=self.max_new_tokens, top_p=self.top_p
        )

    def with_value(self, name: str, raw: str | float | int) -> ChatSettings:
        """A copy with setting `name` parsed from `raw` and validated.

        Raises:
            ValueError: unknown setting name or a value out of bounds (message says which).
        """
        if name not in SETTING_NAMES:
            raise ValueError(f"unknown setting {name!r}; choose one of {', '.join(SETTING_NAMES)}")
        kind = int if name == "max_new_tokens" else float
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be a{'n integer' if kind is int else ' number'}, got {raw!r}"
            ) from None
        if kind is float and value != value:  # NaN passes every range check
            raise ValueError(f"{name} must be a number, got {raw!r}")
        return dataclasses.replace(self, **{name: value})


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ChatSettings))

# the values offered as inline buttons, per setting (any valid value can also be typed)
CHOICES: dict[str, tuple[float | int, ...]] = {
    "temperature": (0.0, 0.3, 0.7, 1.0, 1.3),
    "max_new_tokens": (16, 32, 64, 128, 256),
    "top_p": (0.5, 0.8, 0.9, 0.95, 1.0),
}

LABELS: dict[str, str] = {
    "temperature": "Temperature",
    "max_new_tokens": "Max tokens",
    "top_p": "Top-p",
}


def format_value(name: str, value: float | int) -> str:
    """How a value reads on a button and in /settings (`0` temperature means greedy)."""
    if name == "max_new_tokens":
        return str(int(value))
    text = f"{float(value):g}"
    return f"{text} (greedy)" if name == "temperature" and value == 0 else text
