"""Inline keyboards and their callback data (Telegram allows 64 bytes of it per button).

A text button carries only the id of a row in the SQLite file, never the text itself, so buttons
keep working after a restart and the data always fits.
"""

from __future__ import annotations

from typing import Literal

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from lmfast.bot.settings import CHOICES, LABELS, ChatSettings, format_value


class TextAction(CallbackData, prefix="t"):
    """Repeat (a new sample for the same prompt) or Continue (extend the shown text)."""

    action: Literal["repeat", "continue"]
    text_id: int


class SetValue(CallbackData, prefix="s"):
    """Set one chat setting to one of the offered values."""

    name: str
    value: str


def text_keyboard(text_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text="🔁 Repeat", callback_data=TextAction(action="repeat", text_id=text_id).pack()
                ),
                InlineKeyboardButton(
                    text="➡️ Continue", callback_data=TextAction(action="continue", text_id=text_id).pack()
                ),
            ]
        ]
    )


def settings_keyboard(settings: ChatSettings) -> InlineKeyboardMarkup:
    """One header row per setting, then its choices; the current value is ticked."""
    rows: list[list[InlineKeyboardButton]] = []
    for name, choices in CHOICES.items():
        current = getattr(settings, name)
        rows.append(
            [
                InlineKeyboardButton(
                    text=f"{LABELS[name]}: {format_value(name, current)}", callback_data="noop"
                )
            ]
        )
        rows.append(
            [
                InlineKeyboardButton(
                    text=("✓ " if value == current else "") + _short(value),
                    callback_data=SetValue(name=name, value=_short(value)).pack(),
                )
                for value in choices
            ]
        )
    return InlineKeyboardMarkup(inline_keyboard=rows)


def settings_text(settings: ChatSettings) -> str:
    """The /settings message (HTML): current values and how to change them."""
    lines = ["<b>Settings for this chat</b>"]
    for name in CHOICES:
        lines.append(f"{LABELS[name]}: <code>{format_value(name, getattr(settings, name))}</code>")
    lines.append("")
    lines.append("Tap a value below, or type e.g. <code>/settings temperature 0.9</code>.")
    return "\n".join(lines)


def _short(value: float | int) -> str:
    return f"{value:g}"
