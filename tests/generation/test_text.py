"""Incremental decoding and stop sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from lmfast.generation.text import TextCodec


@pytest.fixture(scope="module")
def codec(tiny_model_dir: Path) -> TextCodec:
    return TextCodec(Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")))


def _feed(codec: TextCodec, text: str, stop: list[str]) -> tuple[list[str], bool]:
    stream = codec.stream(stop)
    pieces = []
    for token in codec.encode(text):
        piece, stopped = stream.push(token)
        pieces.append(piece)
        if stopped:
            return pieces, True
    pieces.append(stream.flush())
    return pieces, False


def test_pieces_join_to_the_text_even_across_split_characters(codec):
    text = "Héllo wörld 🙂 — ok"
    pieces, stopped = _feed(codec, text, [])
    assert "".join(pieces) == text and not stopped


def test_stop_text_is_cut_and_never_shown_in_pieces(codec):
    pieces, stopped = _feed(codec, "one two. three four", [". th"])
    assert stopped and "".join(pieces) == "one two"
    assert all(". " not in p for p in pieces)


def test_text_held_back_for_a_possible_stop_is_released(codec):
    pieces, stopped = _feed(codec, "one two. Then", [". th"])
    assert not stopped and "".join(pieces) == "one two. Then"


def test_banned_ids_cover_every_spelling_of_a_word(codec):
    ids = set(codec.banned_ids(["Nietzsche"]).tolist())
    assert set(codec.encode(" Nietzsche")) <= ids and set(codec.encode("Nietzsche")) <= ids
