"""spbpe, the native SentencePiece BPE: kernel == plain Python reference == `tokenizers`, per pipeline.

One SentencePiece vocabulary is trained on the Nietzsche example (benchmarks/tokenizer_families.py)
and run under every pipeline the engine accepts (Llama 2's normalizer; Metaspace first / always /
never, split or not) plus one where a merge joins a byte token (no cut around byte-fallback
characters then).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from benchmarks.tokenizer_families import build_family
from lmfast.data import engines
from lmfast.data.spbpe import SentencePieceBpe, SpbpeEngine, native_kernel
from lmfast.data.tokenizers import Tokenizer, load_tokenizer
from tests.data.conftest import reference_documents

pytestmark = pytest.mark.skipif(native_kernel() is None, reason="lmfast.data._spbpe is not built")
DELIMITER = "[END_OF_DOCUMENT]"


def _metaspace(scheme: str, split: bool) -> dict:
    return {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split}


def _variant(config: dict, name: str) -> Tokenizer:
    backend = HFTokenizer.from_str(json.dumps(config))
    return Tokenizer(name=name, backend=backend, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def llama2_config(tmp_path_factory, nietzsche_dir) -> dict:
    texts = reference_documents(nietzsche_dir / "train.txt", DELIMITER)
    directory = build_family("llama2", tmp_path_factory.mktemp("spbpe") / "llama2", texts, vocab_size=2000)
    return json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def variants(llama2_config) -> dict[str, tuple[Tokenizer, SentencePieceBpe, SpbpeEngine]]:
    configs = {"llama2": llama2_config}
    for scheme in ("first", "always", "never"):
        for split in (False, True):
            configs[f"metaspace-{scheme}-{split}"] = {
                **llama2_config, "normalizer": None, "pre_tokenizer": _metaspace(scheme, split)
            }  # fmt: skip
    joined = json.loads(json.dumps(llama2_config))  # a merge with a byte token: "a" + "<0x0A>"
    joined["model"]["vocab"]["a<0x0A>"] = len(joined["model"]["vocab"])
    joined["model"]["merges"].append(["a", "<0x0A>"])
    configs["byte-merge"] = joined
    loaded = {}
    for name, config in configs.items():
        tokenizer = _variant(config, name)
        loaded[name] = (tokenizer, SentencePieceBpe.from_tokenizer(tokenizer), SpbpeEngine(tokenizer, 2))
    assert loaded["llama2"][1].cut_around_bytes and not loaded["byte-merge"][1].cut_around_bytes
    return loaded


def _kernel(engine: SpbpeEngine, texts: list[str]) -> list[list[int]]:
    flat, offsets = engines._as_pieces(texts)
    ids, id_offsets = engine.encode(flat, offsets)
    return [ids[a:b].tolist() for a, b in zip(id_offsets[:-1], id_offsets[1:], strict=True)]


def _check(variants, texts: list[str], python_reference: bool = True) -> None:
    for name, (tokenizer, spec, engine) in variants.items():
        expected = [
            e.ids for e in tokenizer.plain_text_backend().encode_batch(texts, add_special_tokens=False)
        ]
        assert _kernel(engine, texts) == expected, name
        if python_reference:
            assert [spec.encode(t) for t in texts] == expected, name


EDGE_TEXTS = [
    "", " ", "  ", "▁", " ▁ ", "a", " a", "▁a", "a ", "a  b", "\n", "\n\n a\n", "\t \t", "a\x00b\x01\x1f\x7f",
    "".join(map(chr, range(32))), "中文 😀 𝔘𝔫𝔦 \U0010ffff", "e\u0301 ß ǅ \u00a0nbsp\u2028", "<s> </s> <unk> <0x0A>",
    "x" * 5000, "the" * 2000 + " " + "▁" * 300 + " end", " " * 1000, "\n" * 300 + "a",
]  # fmt: skip


def test_edge_cases(variants):
    _check(variants, EDGE_TEXTS)


ODD_TEXT = st.lists(
    st.one_of(
        st.sampled_from(
            list("abeT.,' \n\t▁\r\x00\x04\x7fé中😀𝔘ß\u00a0\u3000")
            + ["  ", "the", " the", "\r\n", "<s>", "</s>", "<0x0A>", "e\u0301", "a\n", "ing "]
        ),
        st.text(max_size=8),
    ),
    max_size=60,
).map("".join)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(ODD_TEXT, min_size=1, max_size=6))
def test_random_text(variants, texts):
    _check(variants, texts)


def test_real_prose_and_a_long_document(variants, nietzsche_dir):
    texts = reference_documents(nietzsche_dir / "valid.txt", DELIMITER)
    texts += [*engines.PROBE_TEXTS, "\n".join(texts)]
    _check({k: v for k, v in variants.items() if k in ("llama2", "metaspace-first-False")}, texts, False)


def test_auto_picks_spbpe_and_refuses_what_it_cannot_prove(variants, llama2_config, gpt2):
    tokenizer = variants["llama2"][0]
    assert engines.select_engine(tokenizer, "auto", samples=["Some text."]).name == "spbpe"
    # a merge that spans a cut before "▁": cutting there could change ids, so spbpe refuses
    spanning = json.loads(json.dumps(llama2_config))
    spanning["model"]["vocab"]["e▁"] = len(spanning["model"]["vocab"])
    spanning["model"]["merges"].append(["e", "▁"])
    with pytest.raises(ValueError, match="spans a word boundary"):
        SentencePieceBpe.from_tokenizer(_variant(spanning, "spanning"))
    with pytest.raises(ValueError, match="tokenizer engine 'spbpe' cannot serve spanning"):
        engines.select_engine(_variant(spanning, "spanning"), "spbpe")
    assert engines.select_engine(_variant(spanning, "spanning"), "auto").name == "gigatoken"
    with pytest.raises(ValueError, match="not SentencePiece"):
        SentencePieceBpe.from_tokenizer(gpt2)
    assert engines.select_engine(gpt2, "auto").name == "gigatoken"


def test_prepare_with_spbpe_equals_the_reference(tmp_path, llama2_config, nietzsche_dir):
    from lmfast.data.prepare import PrepareConfig, prepare

    directory = tmp_path / "tok"
    directory.mkdir()
    (directory / "tokenizer.json").write_text(json.dumps(llama2_config), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    valid = nietzsche_dir / "valid.txt"
    config = PrepareConfig(
        documents_train_file=valid, documents_valid_file=valid, end_of_document=DELIMITER,
        tokenizer_cls_name=str(directory), max_sample_length=1 << 20, min_sample_length=1,
        datasets_root=tmp_path / "out", num_threads=2,
        document_bos_token="none", document_eos_token="none",
    )  # fmt: skip
    out = prepare(config)
    assert json.loads((out / "description.json").read_text())["tokenizer_engine_used"] == "spbpe"
    tokenizer = load_tokenizer(str(directory))
    expected = [
        t for d in reference_documents(valid, DELIMITER) for t in tokenizer.encode_document(d, None, None)
    ]
    assert np.load(out / "valid" / "corpus.npy").tolist() == expected


def test_a_forked_child_encodes_with_fresh_threads(variants):
    """A fork copies no threads: the child must start its own pool, not wait on the parent's forever."""
    import os
    import time

    engine = variants["llama2"][2]
    texts = ["first document", "second one, a little longer", "third"] * 50
    expected = _kernel(engine, texts)  # the parent's pool exists from here on
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: encode, report, exit without running pytest's teardown
        try:
            os.write(write, json.dumps(_kernel(engine, texts)).encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the forked child hung in encode")
        time.sleep(0.05)
    with os.fdopen(read) as pipe:
        assert json.loads(pipe.read()) == expected


def test_many_distinct_words_through_a_growing_and_a_tiny_word_cache(variants):
    """The shared word cache grows between calls and is shared by 2 threads (ids of words with more
    than 3 ids in its arena); a tiny one fills up (words then go to each thread's own cache) and is
    cleared by the next call. Words of 7-9 and 15-17 bytes straddle its 8-byte key halves and its
    16-byte limit."""
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyzé中😀\x00") + ["ing", "the", "▁"]
    words = ["".join(rng.choice(letters, size=int(rng.integers(1, 12)))) for _ in range(12000)]
    words += ["x" * n for n in (7, 8, 9, 15, 16, 17)] + ["ab" * n for n in (4, 8)]
    texts = [" ".join(words[i : i + 400]) for i in range(0, len(words), 400)] * 2  # then all are cached
    for name in ("llama2", "metaspace-first-True", "byte-merge"):
        tokenizer = variants[name][0]
        expected = [
            e.ids for e in tokenizer.plain_text_backend().encode_batch(texts, add_special_tokens=False)
        ]
        for engine in (variants[name][2], SpbpeEngine(tokenizer, 2, cache_slots=2)):
            assert _kernel(engine, texts) == expected, name  # > 128 KiB: both threads run
            assert _kernel(engine, texts[:3]) + _kernel(engine, texts[3:]) == expected, name
    with pytest.raises(ValueError, match="power of two"):
        SpbpeEngine(variants["llama2"][0], 1, cache_slots=100)
