"""The fast engine is proven identical per model family (byte-level BPE with Qwen2 / Llama 3
regexes, SentencePiece BPE with byte fallback), and prepare follows each family's boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.tokenizer_families import FAMILIES, build_family
from lmfast.data import engines
from lmfast.data.prepare import PrepareConfig, prepare
from lmfast.data.tokenizers import load_tokenizer
from tests.data.conftest import reference_documents

pytestmark = pytest.mark.slow
DELIMITER = "[END_OF_DOCUMENT]"


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, nietzsche_dir) -> dict[str, Path]:
    texts = reference_documents(nietzsche_dir / "train.txt", DELIMITER)
    root = tmp_path_factory.mktemp("families")
    return {family: build_family(family, root / family, texts) for family in FAMILIES}


@pytest.fixture(scope="session")
def family_engines(family_dirs):
    loaded = {}
    for family, directory in family_dirs.items():
        tokenizer = load_tokenizer(str(directory))
        loaded[family] = (tokenizer, engines.build_engine("gigatoken", tokenizer, num_threads=1))
    return loaded


def _encode(engine, texts):
    flat, offsets = engines._as_pieces(texts)
    ids, id_offsets = engine.encode(flat, offsets)
    return [ids[a:b].tolist() for a, b in zip(id_offsets[:-1], id_offsets[1:], strict=True)]


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_picks_gigatoken_and_it_equals_the_reference_on_prose(family, family_engines, nietzsche_dir):
    tokenizer, engine = family_engines[family]
    texts = reference_documents(nietzsche_dir / "valid.txt", DELIMITER)
    texts += [*engines.PROBE_TEXTS, "\n".join(texts)]  # one long document too
    expected = "spbpe" if family in ("llama2", "mistral") else "gigatoken"
    assert engines.select_engine(tokenizer, "auto", samples=texts[:3]).name == expected
    reference = tokenizer.plain_text_backend().encode_batch(texts, add_special_tokens=False)
    assert _encode(engine, texts) == [e.ids for e in reference]


ODD_TEXT = st.lists(
    st.sampled_from(
        list("aZ9 '\n\t.,-é中😀\u00a0\u2028\r<|>\x04\x00ÿ")
        + ["<|endoftext|>", "</s>", "'S", "X\nY", "  ", "1234", "e\u0301"]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(ODD_TEXT, min_size=1, max_size=6))
def test_every_family_against_the_reference_on_odd_text(family_engines, texts):
    for family, (tokenizer, engine) in family_engines.items():
        reference = tokenizer.plain_text_backend().encode_batch(texts, add_special_tokens=False)
        assert _encode(engine, texts) == [e.ids for e in reference], family


def test_llama3_documents_get_its_bos_and_end_of_text(tmp_path, family_dirs, nietzsche_dir):
    valid = nietzsche_dir / "valid.txt"
    config = PrepareConfig(
        documents_train_file=valid, documents_valid_file=valid, end_of_document=DELIMITER,
        tokenizer_cls_name=str(family_dirs["llama3"]), max_sample_length=100_000, min_sample_length=1,
        datasets_root=tmp_path,
    )  # fmt: skip
    directory = prepare(config)
    description = json.loads((directory / "description.json").read_text())
    tokenizer = load_tokenizer(str(family_dirs["llama3"]))
    bos, eos = (
        tokenizer.backend.token_to_id("<|begin_of_text|>"),
        tokenizer.backend.token_to_id("<|end_of_text|>"),
    )
    assert (description["bos_token_id"], description["eos_token_id"]) == (bos, eos)
    assert description["prompt_prefix_token_ids"] == [bos]
    assert description["tokenizer_engine_used"] == "gigatoken"
    expected = [
        t for d in reference_documents(valid, DELIMITER) for t in tokenizer.encode_document(d, bos, eos)
    ]
    assert np.load(directory / "valid" / "corpus.npy").tolist() == expected
