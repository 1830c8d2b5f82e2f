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


def test_a_model_dir_trained_by_lmfast_begins_prompts_as_its_documents(tiny_model_dir, tmp_path):
    """`prompt_encoding.json` (hf/ of an experiment, and its exports): the dataset's
    `prompt_prefix_token_ids`, then the text without the tokenizer's special tokens."""
    import shutil

    from lmfast.generation import Generator
    from lmfast.generation.text import PROMPT_ENCODING_FILE, read_prompt_prefix, write_prompt_encoding
    from lmfast.serving.app import create_app
    from lmfast.serving.config import ServeConfig

    plain = TextCodec.load(tiny_model_dir)
    assert plain.prefix_ids is None  # a plain HF dir: the tokenizer's own conventions
    model = tmp_path / "hf"
    shutil.copytree(tiny_model_dir, model)
    write_prompt_encoding(model, [50256])
    generator = Generator.load(model, backend="torch", num_threads=1)
    assert generator.codec.encode("Truth is") == [50256, *plain.encode("Truth is")]
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServeConfig(model=str(model)), generator=generator)) as client:
        tokens = client.post("/tokenize", json={"prompt": "Truth is"}).json()["tokens"]
    assert tokens == [50256, *plain.encode("Truth is")]
    write_prompt_encoding(model, [])  # a dataset without BOS: nothing before the text
    assert TextCodec.load(model).encode("Truth is") == plain.encode("Truth is")
    (model / PROMPT_ENCODING_FILE).write_text('{"prefix_token_ids": ["<s>"]}')
    with pytest.raises(ValueError, match=PROMPT_ENCODING_FILE):
        read_prompt_prefix(model)
