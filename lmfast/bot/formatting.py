"""Telegram HTML for a prompt and its continuation, split to fit the message-length limit.

Telegram counts a message's length after entity parsing, in UTF-16 code units, and allows 4,096
(https://core.telegram.org/bots/api#sendmessage). Text is split as plain text first and escaped
afterwards, so a cut can never land inside `&amp;` or a tag, and each piece carries its own tags.
"""

from __future__ import annotations

import html

TELEGRAM_MESSAGE_LIMIT = 4096
EMPTY_NOTE = "\n(the model wrote nothing more)"
"""Shown (in italics) when a continuation is blank, so the reply never looks cut off."""


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (characters outside the BMP count twice)."""
    return len(text.encode("utf-16-le")) // 2


def escape(text: str) -> str:
    """Escape the three characters Telegram's HTML parse mode requires (`<`, `>`, `&`)."""
    return html.escape(text, quote=False)


def split_text(text: str, limit: int = TELEGRAM_MESSAGE_LIMIT) -> list[str]:
    """Cut plain text into pieces of at most `limit` UTF-16 units, joining back to `text`.

    Prefers to cut after a newline, else after a space, in the last half of each piece, so that
    words stay whole where they can.
    """
    if limit < 2:
        raise ValueError(f"limit must be >= 2, got {limit}")
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end, used = start, 0
        while end < len(text) and used + utf16_len(text[end]) <= limit:
            used += utf16_len(text[end])
            end += 1
        if end < len(text):
            window = text[start:end]
            for sep in ("\n", " "):
                cut = window.rfind(sep)
                if cut >= len(window) // 2:
                    end = start + cut + 1
                    break
        pieces.append(text[start:end])
        start = end
    return pieces


def render_reply(prompt: str, continuation: str, limit: int = TELEGRAM_MESSAGE_LIMIT) -> list[str]:
    """The prompt in bold followed by the continuation, as HTML messages of at most `limit` units each.

    Returns:
        One HTML string per message, in order; at least one when the prompt is not blank.
    """
    segments: list[tuple[str, str | None]] = [(prompt, "b"), (continuation, None)]
    if not continuation.strip():
        # our note, not the model's words: italic, so nobody mistakes it for generated text
        segments.append((EMPTY_NOTE, "i"))
    return render_segments(segments, limit)


def render_segments(segments: list[tuple[str, str | None]], limit: int = TELEGRAM_MESSAGE_LIMIT) -> list[str]:
    """Render (text, tag or None) runs as HTML messages of at most `limit` plain UTF-16 units each."""
    text = "".join(run for run, _ in segments)
    messages = []
    offset = 0
    for piece in split_text(text, limit):
        if not piece.strip():  # Telegram rejects a message that is empty once trimmed
            offset += len(piece)
            continue
        rendered, run_start = [], 0
        for run, tag in segments:
            lo = max(run_start - offset, 0)
            hi = min(run_start + len(run) - offset, len(piece))
            if lo < hi:
                part = escape(piece[lo:hi])
                rendered.append(f"<{tag}>{part}</{tag}>" if tag else part)
            run_start += len(run)
        messages.append("".join(rendered))
        offset += len(piece)
    return messages
