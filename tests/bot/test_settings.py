"""Per-chat settings: GenerationParams' defaults and bounds, button choices that fit Telegram."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmfast.bot.keyboards import SetValue, TextAction, settings_keyboard, text_keyboard
from lmfast.bot.settings import CHOICES, ChatSettings, format_value
from lmfast.generation.params import GenerationParams


def test_defaults_are_generation_params_defaults():
    defaults, params = ChatSettings(), GenerationParams()
    assert (defaults.temperature, defaults.max_new_tokens, defaults.top_p) == (
        params.temperature,
        params.max_new_tokens,
        params.top_p,
    )


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("top_p", "0", "top_p must be in"),
        ("temperature", "-1", "temperature must be in"),
        ("temperature", "nan", "must be a number"),
        ("max_new_tokens", "1.5", "must be an integer"),
        ("max_new_tokens", "100000", "max_new_tokens must be in"),
        ("top_k", "5", "unknown setting"),
    ],
)
def test_bad_values_are_refused_with_a_reason(name, raw, message):
    with pytest.raises(ValueError, match=message):
        ChatSettings().with_value(name, raw)


def test_with_value_parses_and_keeps_the_rest():
    settings = ChatSettings().with_value("max_new_tokens", "32").with_value("temperature", "0")
    assert settings == ChatSettings(temperature=0.0, max_new_tokens=32, top_p=1.0)
    assert settings.to_params().greedy


def test_every_offered_choice_is_valid_and_fits_callback_data():
    keyboard = settings_keyboard(ChatSettings())
    datas = [b.callback_data for row in keyboard.inline_keyboard for b in row]
    for name, choices in CHOICES.items():
        for value in choices:
            ChatSettings().with_value(name, value)
    assert all(len(d.encode()) <= 64 for d in datas)  # Telegram's limit on callback data
    assert SetValue.unpack(SetValue(name="top_p", value="0.95").pack()).value == "0.95"
    data = text_keyboard(2**62).inline_keyboard[0][1].callback_data
    assert len(data.encode()) <= 64 and TextAction.unpack(data).text_id == 2**62


def test_format_value_marks_greedy():
    assert format_value("temperature", 0.0) == "0 (greedy)"
    assert format_value("max_new_tokens", 64) == "64"
    assert format_value("top_p", 0.95) == "0.95"


@given(
    name=st.sampled_from(["temperature", "top_p"]),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, 2.0, 2.0001, 3.0, 100.0])
    ),
)
def test_the_bot_accepts_exactly_what_both_routes_it_calls_accept(name, value):
    """One source: a setting the bot stores is never refused by /v1/chat/completions or
    /generated_texts/ (the bug: temperature 3 was stored, then every chat reply was a 422)."""
    from pydantic import ValidationError

    from lmfast.serving.chat_schemas import ChatCompletionRequest
    from lmfast.serving.schemas import GeneratedTextsRequest

    try:
        ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **{name: value})
        GeneratedTextsRequest(seed_text="x", **{name: value})
        routes_accept = True
    except ValidationError:
        routes_accept = False
    try:
        ChatSettings().with_value(name, value)
        bot_accepts = True
    except ValueError:
        bot_accepts = False
    assert bot_accepts == routes_accept, (name, value)
