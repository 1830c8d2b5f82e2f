"""Escaping and splitting: every piece parses as Telegram HTML, fits the limit, and nothing is lost."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.bot.formatting import EMPTY_NOTE, escape, render_reply, split_text, utf16_len
from tests.bot.peers import BadRequest, parse_telegram_html

# text rich in what breaks naive code: markup characters, newlines, spaces, astral-plane emoji
_tricky = st.lists(st.sampled_from([*"ab <>&;/\n", "😀", "é", "&amp;", "<b>"]), max_size=150).map("".join)


def test_escape_covers_what_telegram_html_needs():
    assert escape("a < b > c & d \"q\" 'q'") == "a &lt; b &gt; c &amp; d \"q\" 'q'"


def test_prompt_is_bold_and_continuation_plain():
    assert render_reply("Hi <you>", " & me") == ["<b>Hi &lt;you&gt;</b> &amp; me"]


def test_blank_continuation_gets_an_italic_note():
    (message,) = render_reply("Hi", "  ")
    assert message == f"<b>Hi</b>  <i>{EMPTY_NOTE}</i>"


def test_split_prefers_newlines_then_spaces():
    text = "x" * 6 + "\n" + "y" * 5 + " zz"
    assert split_text(text, 10) == ["xxxxxx\n", "yyyyy zz"]
    assert split_text("aaaa bbbb cccc", 10) == ["aaaa bbbb ", "cccc"]
    assert split_text("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]


def test_split_counts_utf16_units_like_telegram():
    pieces = split_text("😀" * 5, 4)  # each emoji is two UTF-16 units
    assert pieces == ["😀😀", "😀😀", "😀"]


def test_split_rejects_a_useless_limit():
    with pytest.raises(ValueError, match="limit"):
        split_text("abc", 1)


@settings(max_examples=200, deadline=None)
@given(prompt=_tricky.filter(lambda s: s.strip()), continuation=_tricky, limit=st.integers(4, 60))
def test_rendered_pieces_are_valid_fit_and_lose_nothing(prompt, continuation, limit):
    messages = render_reply(prompt, continuation, limit)
    plains = [parse_telegram_html(m) for m in messages]
    assert all(utf16_len(p) <= limit and p.strip() for p in plains)
    expected = prompt + continuation + ("" if continuation.strip() else EMPTY_NOTE)
    # whitespace-only pieces are dropped (Telegram refuses them); everything else arrives in order
    assert "".join(plains).replace(" ", "").replace("\n", "") == expected.replace(" ", "").replace("\n", "")


@given(_tricky, st.integers(2, 50))
def test_split_joins_back(text, limit):
    pieces = split_text(text, limit)
    assert "".join(pieces) == text
    assert all(0 < utf16_len(p) <= limit for p in pieces)


def test_the_peer_refuses_what_telegram_refuses():
    # guards the guard: the e2e tests rely on this checker to catch bad HTML
    for bad in ["a < b", "a & b", "<b>x", "<script>x</script>", "x</b>", "a > b"]:
        with pytest.raises(BadRequest):
            parse_telegram_html(bad)
    assert parse_telegram_html("<b>a &lt; b</b> &amp; c") == "a < b & c"
