"""`lmfast eval`'s perplexity against Hugging Face's own sliding-window loop, on real text."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmfast.evaluation.cli import main
from lmfast.evaluation.config import EvalConfig
from lmfast.evaluation.perplexity import evaluate, plan_windows


@given(n=st.integers(0, 300), length=st.integers(2, 64), data=st.data())
def test_windows_score_each_token_once_with_context_from_its_window(n, length, data):
    stride = data.draw(st.integers(1, length))
    windows = plan_windows(n, length, stride)
    targets = [t for w in windows for t in range(w.first_target, w.end)]
    # stride == length: windows are back to back, and each one's first token has no context
    expected = [t for t in range(1, n) if stride < length or t % length]
    assert targets == expected
    for w in windows:
        assert w.end - w.begin <= length and w.begin < w.first_target <= w.end


@functools.cache
def hf_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_guide_nll(model_dir: Path, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """The windows of transformers' "Perplexity of fixed-length models" guide, one window at a time
    and unpadded. The loss is summed over the labels that are not -100 after the model's shift (the
    guide multiplies its mean loss by one label fewer per window, which undercounts overlapping
    windows by one token each)."""
    import torch

    model = hf_model(model_dir)
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(input_ids).logits
        labels = target_ids[0, 1:]
        nll_sum += float(torch.nn.functional.cross_entropy(logits[0, :-1], labels, reduction="sum"))
        n_tokens += int((labels != -100).sum())
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


@pytest.fixture(scope="module")
def valid_text(tmp_path_factory, nietzsche_dir) -> Path:
    path = tmp_path_factory.mktemp("text") / "valid.txt"
    path.write_text((nietzsche_dir / "valid.txt").read_text(encoding="utf-8")[:1500], encoding="utf-8")
    return path


@pytest.mark.slow  # a reference loop in transformers beside lmfast's, twice (~15 s on 2 busy cores)
def test_text_file_equals_the_transformers_loop_batched_and_padded(tiny_model_dir, valid_text, tmp_path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    ids = [50256, *tokenizer.encode(valid_text.read_text(encoding="utf-8")).ids]  # GPT-2: BOS = EOS
    for length, stride in ((64, 24), (48, 48)):  # overlapping windows, and back-to-back ones
        report = evaluate(
            EvalConfig(
                source=str(tiny_model_dir),
                text_file=str(valid_text),
                context_length=length,
                stride=stride,
                batch_size=3,  # the last batch is short, the last window too: padding in both
                output=str(tmp_path / "report.json"),
                progress=False,
            )
        )
        nll, count = hf_guide_nll(tiny_model_dir, ids, length, stride)
        assert report["tokens_scored"] == count == (len(ids) - 1 if stride < length else count)
        assert report["nll_sum_nats"] == pytest.approx(nll, rel=1e-5)
        assert report["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
        if stride < length:  # every text token is scored: bits per byte covers the whole file
            size = len(valid_text.read_bytes())
            assert report["bytes_scored"] == size
            assert report["bits_per_byte"] == pytest.approx(report["nll_sum_nats"] / math.log(2) / size)
    assert json.loads((tmp_path / "report.json").read_text())["perplexity"] == report["perplexity"]


def _tiny_dataset(tmp_path: Path, nietzsche_dir: Path, **config: Any) -> Path:
    """A dataset of 2,000 characters of Nietzsche (the same text as train and valid), prepared."""
    from lmfast.data.prepare import PrepareConfig, prepare

    documents = (nietzsche_dir / "valid.txt").read_text(encoding="utf-8")[:2000]
    (tmp_path / "train.txt").write_text(documents, encoding="utf-8")
    (tmp_path / "valid.txt").write_text(documents, encoding="utf-8")
    return prepare(
        PrepareConfig(
            documents_train_file=str(tmp_path / "train.txt"),
            documents_valid_file=str(tmp_path / "valid.txt"),
            end_of_document="[END_OF_DOCUMENT]",
            tokenizer_cls_name="GPT2Tokenizer",
            max_sample_length=64,
            min_sample_length=8,
            datasets_root=str(tmp_path / "datasets"),
            dataset_name="tiny",
            **config,
        )
    )


@pytest.mark.slow  # prepare + both loops (~10 s on 2 busy cores)
def test_dataset_split_scores_its_corpus(tiny_model_dir, tmp_path, nietzsche_dir):
    from lmfast.models.dataset import PreparedDataset

    dataset = _tiny_dataset(tmp_path, nietzsche_dir)
    report = evaluate(
        EvalConfig(source=str(tiny_model_dir), dataset_dir=str(dataset), context_length=64, progress=False)
    )
    corpus = np.asarray(PreparedDataset(dataset).valid.corpus, dtype=np.int64).tolist()
    nll, count = hf_guide_nll(tiny_model_dir, corpus, 64, 32)
    assert report["data"] == {
        "kind": "dataset",
        "path": str(dataset),
        "split": "valid",
        "tokens": len(corpus),
    }
    assert report["tokens_scored"] == count == len(corpus) - 1
    assert report["nll_sum_nats"] == pytest.approx(nll, rel=1e-5)


def test_bad_input_is_one_line_and_exit_2_with_no_report(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    text = tmp_path / "text.txt"
    text.write_text("Supposing that Truth is a woman--what then?", encoding="utf-8")
    report = tmp_path / "report.json"
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    (tmp_path / "junk.ckpt").write_bytes(b"\0" * 64)
    cases = {
        (str(tmp_path / "junk.gguf"), "--text_file", str(text)): "SOURCE: ",
        (str(tmp_path / "junk.ckpt"), "--text_file", str(text)): "SOURCE: ",
        ("/nonexistent/model", "--text_file", str(empty)): "SOURCE: /nonexistent/model: no such file",
        (str(tmp_path), "--text_file", str(empty)): "SOURCE: ",  # a directory that holds no model
        (str(tiny_model_dir), "--text_file", str(tmp_path / "missing.txt")): "--text_file: ",
        (str(tiny_model_dir), "--text_file", str(empty)): "--text_file: ",
        (str(tiny_model_dir), "--dataset_dir", str(tmp_path)): "--dataset_dir: ",
        (str(tiny_model_dir),): "--dataset_dir: give exactly one",
        (str(tiny_model_dir), "--text_file", str(text), "--context_length", "100000"): "--context_length",
        (str(tiny_model_dir), "--text_file", str(empty), "--backend", "onnx"): "--backend: ",
        (str(tiny_model_dir), "--text_file", str(empty), "--batch_size", "x"): "--batch_size",
    }
    for argv, expected in cases.items():
        assert main([*argv, "--output", str(report)]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("lmfast eval: error: ") and expected in err, (
            argv,
            err,
        )
        assert not report.exists()


@pytest.mark.slow  # an ONNX export (~15 s on 2 cores) and a real `lmfast eval` subprocess
def test_onnx_export_scores_as_its_torch_source_through_the_cli(tiny_model_dir, valid_text, tmp_path):
    import subprocess
    import sys

    from lmfast.export import ExportConfig, export_onnx

    export = export_onnx(ExportConfig(source=tiny_model_dir, output=tmp_path / "export"))
    report = tmp_path / "onnx.json"
    command = [sys.executable, "-m", "lmfast", "eval", str(export), "--text_file", str(valid_text)]
    command += ["--context_length", "64", "--batch_size", "3", "--output", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "perplexity" in result.stdout and f"report: {report}" in result.stdout
    onnx = json.loads(report.read_text())
    torch_report = evaluate(
        EvalConfig(source=str(tiny_model_dir), text_file=str(valid_text), context_length=64, progress=False)
    )
    assert onnx["source"] == {"path": str(export), "kind": "onnx", "backend": "onnx"}
    assert onnx["tokens_scored"] == torch_report["tokens_scored"]
    assert onnx["nll_sum_nats"] == pytest.approx(torch_report["nll_sum_nats"], rel=1e-5)
    # the one-pass path (the graph's logits_index) and the token-by-token path (exports made
    # before it) score the same windows alike, padded batch included
    from lmfast.evaluation.perplexity import StepScorer
    from lmfast.generation.onnx_backend import OnnxBackend

    backend = OnnxBackend.load(export, num_threads=1)
    assert backend.has_logits_index
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 1000, size=n) for n in (9, 17, 5)]
    contexts = [1, 8, 2]
    one_pass = StepScorer(backend, vocab_size=1000).score(windows, contexts)
    grouped = StepScorer(backend, vocab_size=10**9).score(windows, contexts)  # one window per call
    stepwise = StepScorer(backend, vocab_size=1000)._score_stepwise(windows, contexts)
    for a, b, c in zip(one_pass, grouped, stepwise, strict=True):
        assert len(a) == len(c)
        np.testing.assert_allclose(a, c, rtol=0, atol=2e-5)
        np.testing.assert_allclose(b, c, rtol=0, atol=2e-5)


def test_a_damaged_dataset_is_refused_before_scoring(tiny_model_dir, tmp_path, nietzsche_dir, capsys):
    """`eval --dataset_dir` runs the `verify()` that train and merge run: an id past the vocabulary
    or start positions out of order are one line and exit 2, never an ONNX Runtime traceback."""
    dataset = _tiny_dataset(tmp_path, nietzsche_dir, tokenizer_engine="tokenizers")
    corpus_path = dataset / "valid" / "corpus.npy"
    corpus = np.load(corpus_path, mmap_mode="r+")
    corpus[11] = 60000  # beyond GPT-2's 50,257 ids
    corpus.flush()
    del corpus
    report = tmp_path / "report.json"
    assert main([str(tiny_model_dir), "--dataset_dir", str(dataset), "--output", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "token id 60000 at position 11 is outside the vocabulary" in err, err
    assert not report.exists()


@pytest.mark.parametrize("output", ["/proc/self/report.json", "/dev/null/report.json"])
def test_an_unwritable_output_is_refused_before_the_run(tiny_model_dir, tmp_path, output, capsys):
    """A real write probe, not os.access (which says yes to root anywhere)."""
    text = tmp_path / "text.txt"
    text.write_text("Supposing that Truth is a woman--what then?", encoding="utf-8")
    assert main([str(tiny_model_dir), "--text_file", str(text), "--output", output]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmfast eval: error: --output: "), err
