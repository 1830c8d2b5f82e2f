"""`check_text`: text that any encoder takes. Pure Python, so the server's schemas and the bot
(which must not import the serving stack) share the one rule."""

from __future__ import annotations

from typing import Any


def check_text(value: Any) -> Any:
    """`value` if every string in it (lists and dicts searched) is UTF-8 encodable, else ValueError.

    JSON can spell a lone UTF-16 surrogate (`"\\ud800"`), which Python keeps in a str and the
    tokenizer refuses; refused here, at the boundary, it is a 422 naming the field.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"must be valid Unicode text (a lone surrogate at character {exc.start})"
            ) from None
    elif isinstance(value, list | tuple):
        for item in value:
            check_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key)
            check_text(item)
    return value
