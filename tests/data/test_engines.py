"""Every engine gives the reference ids on real prose and odd text; unsafe engines are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from lmfast.data import chunking, engines
from lmfast.data.tokenizers import Tokenizer, load_tokenizer

# the engines that serve GPT-2's byte-level BPE (spbpe serves SentencePiece BPE only: test_spbpe.py)
BYTE_LEVEL_ENGINES = tuple(name for name in engines.ENGINES if name != "spbpe")


def _documents(text: str) -> list[str]:
    return [d for d in text.split("\n\n") if d.strip()]


@pytest.mark.parametrize("name", BYTE_LEVEL_ENGINES)
def test_against_reference_on_real_prose(name, gpt2, gutenberg_path):
    """~1.5 MB of Gutenberg prose (blank-line documents) plus the probe texts, id for id."""
    text = gutenberg_path.read_bytes()[: 3 << 19].decode("utf-8", errors="ignore")
    documents = [*_documents(text), *engines.PROBE_TEXTS, text[:200_000]]  # one long document too
    engine = engines.build_engine(name, gpt2, num_threads=2)
    flat, offsets = engines._as_pieces(documents)
    ids, id_offsets = engine.encode(flat, offsets)
    expected = gpt2.plain_text_backend().encode_batch(documents, add_special_tokens=False)
    assert id_offsets.tolist() == np.cumsum([0] + [len(e.ids) for e in expected]).tolist()
    assert ids.tolist() == [t for e in expected for t in e.ids]


def test_special_token_strings_are_plain_text(gpt2):
    for name in BYTE_LEVEL_ENGINES:
        engine = engines.build_engine(name, gpt2, num_threads=1)
        flat, offsets = engines._as_pieces(["a<|endoftext|>b"])
        ids, _ = engine.encode(flat, offsets)
        assert 50256 not in ids.tolist(), name
    assert gpt2.encode_document("<|endoftext|>")[1:-1] != [50256]


ODD_TEXT = st.lists(
    st.sampled_from(
        list("aZ9 '\n\t.,-é中😀\u00a0\u2028\r<|>") + ["<|endoftext|>", "'s", "X\nY", "  ", "\n\n"]
    ),
    max_size=80,
).map("".join)


@pytest.fixture(scope="session")
def all_engines(gpt2):
    return [engines.build_engine(name, gpt2, num_threads=1) for name in BYTE_LEVEL_ENGINES]


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(ODD_TEXT, min_size=1, max_size=8))
def test_engines_against_reference_on_odd_text(gpt2, all_engines, texts):
    reference = [e.ids for e in gpt2.plain_text_backend().encode_batch(texts, add_special_tokens=False)]
    flat, offsets = engines._as_pieces(texts)
    for engine in all_engines:
        ids, id_offsets = engine.encode(flat, offsets)
        got = [ids[a:b].tolist() for a, b in zip(id_offsets[:-1], id_offsets[1:], strict=True)]
        assert got == reference, engine.name


@settings(max_examples=60, deadline=None)
@given(text=ODD_TEXT)
def test_safe_cuts_keep_ids(gpt2, text):
    """Cutting at every safe point and encoding the parts separately gives the whole's ids."""
    reference = gpt2.plain_text_backend()
    data = text.encode("utf-8")
    buf = np.frombuffer(data, dtype=np.uint8)
    cuts = [p for p in range(len(data)) if chunking.last_safe_cut(buf, p, p) == p]
    bounds = [0, *cuts, len(data)]
    parts = [data[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    pieces = [t for part in parts for t in reference.encode(part, add_special_tokens=False).ids]
    assert pieces == reference.encode(text, add_special_tokens=False).ids


def _word_level() -> Tokenizer:
    backend = HFTokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "</s>": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return Tokenizer(name="word-level", backend=backend, eos_token="</s>")


def test_auto_falls_back_to_tokenizers_for_other_models():
    tokenizer = _word_level()
    assert not engines.is_byte_level_bpe(tokenizer)
    assert engines.select_engine(tokenizer, "auto").name == "tokenizers"
    with pytest.raises(ValueError, match="gigatoken"):
        engines.select_engine(tokenizer, "gigatoken")


def test_auto_prefers_the_fastest_identical_engine(gpt2):
    assert engines.select_engine(gpt2, "auto", samples=["Some text."]).name == "gigatoken"
    assert engines.select_engine(gpt2, "tiktoken").name == "tiktoken"
    with pytest.raises(ValueError, match="unknown tokenizer engine"):
        engines.select_engine(gpt2, "sentencepiece")


def test_a_differing_engine_is_refused(gpt2, monkeypatch):
    """If an engine disagreed with the reference, auto skips it and forcing it raises."""

    class Wrong:
        name = "gigatoken"

        def encode(self, flat, offsets):
            ids, id_offsets = engines.TokenizersEngine(gpt2).encode(flat, offsets)
            return ids + 1, id_offsets

    monkeypatch.setattr(engines, "build_engine", lambda name, *args: Wrong())
    with pytest.raises(ValueError, match="differs from the reference"):
        engines.select_engine(gpt2, "gigatoken")
    assert engines.select_engine(gpt2, "auto").name == "tokenizers"


def test_tiktoken_is_refused_when_ids_do_not_follow_merge_order(gpt2):
    """Swap the ids of the first two merges' results: HF BPE is unaffected, tiktoken would not be."""
    import json

    config = json.loads(gpt2.backend.to_str())
    vocab = config["model"]["vocab"]
    vocab["Ġt"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġt"]
    swapped = Tokenizer(
        name="swapped", backend=HFTokenizer.from_str(json.dumps(config)), eos_token="<|endoftext|>"
    )
    assert swapped.plain_text_backend().encode(" t").ids == [gpt2.backend.token_to_id("Ġa")]
    with pytest.raises(ValueError, match="out of id order"):
        engines.select_engine(swapped, "tiktoken")
    assert engines.select_engine(swapped, "auto", samples=["a tale of two cities"]).name == "gigatoken"


def test_the_identity_check_reads_special_tokens_as_text_without_a_copy():
    """Without a cached plain copy, the backend itself encodes special-token strings as text for
    the block and is restored after it, also when the block raises; a cached copy is used as is."""
    tokenizer = load_tokenizer("GPT2Tokenizer")  # its own: the session fixture may have a copy cached
    special = [tokenizer.backend.token_to_id("<|endoftext|>")]
    with tokenizer.special_tokens_as_text() as backend:
        assert backend is tokenizer.backend and backend.encode("<|endoftext|>").ids != special
    assert tokenizer.backend.encode("<|endoftext|>").ids == special
    with pytest.raises(RuntimeError), tokenizer.special_tokens_as_text():
        raise RuntimeError
    assert not tokenizer.backend.encode_special_tokens and tokenizer._plain is None
    plain = tokenizer.plain_text_backend()
    with tokenizer.special_tokens_as_text() as backend:
        assert backend is plain
