"""Calibration of the mixed int4 recipe on a prepared dataset: deterministic, and worth it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from lmfast.export import ExportConfig
from lmfast.export.calibration import calibrate, inspect_model, measure_fisher, use_more_bits

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nietzsche_dataset(tmp_path_factory, nietzsche_dir) -> Path:
    """Nietzsche prepared by `lmfast prepare` with the GPT-2 tokenizer (train calibrates, valid scores)."""
    root = tmp_path_factory.mktemp("calibration")
    command = [
        *(sys.executable, "-m", "lmfast", "prepare", "--quiet"),
        *("--documents_train_file", str(nietzsche_dir / "train.txt")),
        *("--documents_valid_file", str(nietzsche_dir / "valid.txt")),
        *("--end_of_document", "[END_OF_DOCUMENT]", "--tokenizer_cls_name", "GPT2Tokenizer"),
        *("--max_sample_length", "64", "--datasets_root", str(root), "--dataset_name", "nietzsche"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "nietzsche" / "0"


@pytest.fixture(scope="module")
def outlier_model_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 whose layer norms scale channels log-normally, as trained LMs' outlier
    channels do: the activations, not the weights, decide which rounding errors matter."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=50257, n_positions=128, initializer_range=0.1
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                parameter.copy_(torch.exp(torch.randn_like(parameter)))
    directory = tmp_path_factory.mktemp("outlier_gpt2")
    model.save_pretrained(directory)
    GPT2TokenizerFast.from_pretrained(REPO / "lmfast" / "assets" / "gpt2").save_pretrained(directory)
    return directory


def _model(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory).eval()


def test_calibration_is_deterministic_for_a_seed(outlier_model_dir, nietzsche_dataset):
    model = _model(outlier_model_dir)
    first, again, other = (calibrate(model, nietzsche_dataset, 12, seed) for seed in (3, 3, 4))
    assert first.record == again.record and first.record["samples"] == 12
    assert first.record["sha256"] != other.record["sha256"]
    assert first.gram.keys() == again.gram.keys() and len(first.gram) == 2 * 4 + 1  # 4 per block + head
    for name, gram in first.gram.items():
        np.testing.assert_array_equal(gram, again.gram[name])
        assert (np.diag(gram) > 0).all()
        np.testing.assert_allclose(gram, gram.T, rtol=1e-5, atol=1e-6)


def test_columns_are_found_again_by_content(outlier_model_dir):
    """The graph's q/k/v matrix is c_attn: its last third is the attention values."""
    model = _model(outlier_model_dir)
    calibration = inspect_model(model)
    c_attn = model.transformer.h[1].attn.c_attn.weight.detach().numpy()
    spans = calibration.spans(c_attn)
    assert [(s.start, s.stop, s.role, s.layer) for s in spans] == [
        (0, 128, "other", 1),
        (128, 192, "attn_v", 1),
    ]
    assert calibration.spans(c_attn + 1.0) is None
    assert [layer for layer in range(30) if use_more_bits(layer, 30)] == [
        0,
        1,
        2,
        5,
        8,
        11,
        14,
        17,
        20,
        23,
        26,
        27,
        28,
        29,
    ]


def test_a_bad_allocation_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--allocation sensitivity needs --calibration_dataset"):
        ExportConfig(source=tmp_path, output=tmp_path / "out", quantize="int4", allocation="sensitivity")
    with pytest.raises(ValueError, match="--bits_per_weight is the budget of --allocation sensitivity"):
        ExportConfig(source=tmp_path, output=tmp_path / "out", quantize="int4", bits_per_weight=6.0)
    with pytest.raises(ValueError, match="--allocation must be"):
        ExportConfig(source=tmp_path, output=tmp_path / "out", quantize="int4", allocation="greedy")


def test_fisher_is_measured_for_every_output_and_deterministic(outlier_model_dir, nietzsche_dataset):
    """The Fisher diagonal of each linear output: positive where the output matters, one value
    per output column, the same bytes for a seed."""
    model = _model(outlier_model_dir)
    first, again = (calibrate(model, nietzsche_dataset, 8, 0) for _ in range(2))
    for calibration in (first, again):
        measure_fisher(model, calibration, samples=4, seed=1)
    widths = inspect_model(model).widths
    assert first.fisher.keys() == set(widths)
    for name, fisher in first.fisher.items():
        assert fisher.shape == (widths[name],) and (fisher >= 0).all() and fisher.sum() > 0
        np.testing.assert_array_equal(fisher, again.fisher[name])
    assert all(p.requires_grad for p in model.parameters())  # left as found


def test_a_bad_calibration_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--calibration_dataset .*no description.json"):
        ExportConfig(source=tmp_path, output=tmp_path / "out", quantize="int4", calibration_dataset=tmp_path)
    with pytest.raises(ValueError, match="--calibration_dataset needs --recipe mixed"):
        ExportConfig(
            source=tmp_path,
            output=tmp_path / "o",
            quantize="int4",
            recipe="plain",
            calibration_dataset=tmp_path,
        )


@pytest.mark.slow
def test_calibrated_int4_beats_uncalibrated_on_held_out_kl(outlier_model_dir, nietzsche_dataset, tmp_path):
    """One fp32 export (~30 s on 2 cores), then the mixed recipe uncalibrated, calibrated with
    llama.cpp's static choice of 8-bit parts, and calibrated with the parts chosen by measured
    sensitivity within the static choice's bits, by the exporter's own `apply_tier`; mean
    KL(fp32 || int4) per token over held-out (valid) text."""
    import torch

    from lmfast.export import export_onnx
    from lmfast.export.onnx import _save, apply_tier
    from lmfast.export.parity import measure_parity
    from lmfast.generation.onnx_backend import OnnxBackend
    from lmfast.models.dataset import PreparedDataset

    fp32 = export_onnx(ExportConfig(source=outlier_model_dir, output=tmp_path / "fp32", parity_steps=2))
    model = _model(outlier_model_dir)
    ids = np.asarray(PreparedDataset(nietzsche_dataset).valid.corpus[:512], dtype=np.int64).reshape(4, 128)
    with torch.inference_mode():
        reference = torch.log_softmax(model(torch.from_numpy(ids)).logits.double(), -1).numpy()
    kl, recorded = {}, {}
    calibrated = {"calibration_dataset": nietzsche_dataset}
    for name, extra in (
        ("uncalibrated", {}),
        ("static", {**calibrated, "allocation": "static"}),
        ("sensitivity", calibrated),
    ):
        config = ExportConfig(source=outlier_model_dir, output=tmp_path / name, quantize="int4", **extra)
        measured: dict = {}
        graph = apply_tier(onnx.load(str(fp32 / "model.onnx")), config, model, measured)
        (tmp_path / name).mkdir()
        _save(graph, tmp_path / name / "model.onnx")
        for side_file in fp32.iterdir():
            if not side_file.name.startswith("model.onnx"):
                (tmp_path / name / side_file.name).write_bytes(side_file.read_bytes())
        backend = OnnxBackend.load(tmp_path / name, num_threads=1)
        positions = np.arange(128, dtype=np.int64)[None].repeat(4, 0)
        logits, _ = backend.forward(ids, np.ones_like(ids), positions, None, all_logits=True)
        logits = logits.astype(np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        kl[name] = float((np.exp(reference) * (reference - log_probs)).sum(-1).mean())
        recorded[name] = measured
        if name != "sensitivity":  # layer 1's v third at 8 bits
            assert "Concat" in {n.op_type for n in graph.graph.node}
    assert recorded["static"]["calibration"]["samples"] == 256
    assert recorded["uncalibrated"]["calibration"] is None
    assert recorded["uncalibrated"]["allocation"] == recorded["static"]["allocation"] == "static"
    assert recorded["static"]["bits_per_weight"] == recorded["uncalibrated"]["bits_per_weight"]
    assert kl["static"] < 0.9 * kl["uncalibrated"], kl
    # the allocation spends no more than the static rule's bits, and spends them better
    sensitivity = recorded["sensitivity"]
    assert sensitivity["allocation"] == "sensitivity"
    assert sensitivity["budget_bits_per_weight"] == pytest.approx(
        recorded["static"]["bits_per_weight"], abs=1e-3
    )
    assert sensitivity["bits_per_weight"] <= sensitivity["budget_bits_per_weight"] + 1e-4
    assert kl["sensitivity"] < kl["static"], kl
    # per-row activation quantization whatever the formats: a row's greedy tokens ignore the batch
    parity = measure_parity(model, outlier_model_dir, tmp_path / "sensitivity", steps=8)
    assert parity["greedy_batch_invariant"], parity
