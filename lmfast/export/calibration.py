"""What the quantizer learns from the torch model: each matrix's role and its inputs' importance.

The exported graph names its weights `val_128` and stacks q/k/v and gate/up into one matrix, so
the torch modules are found again by content: every output column of a linear layer is hashed,
and a graph MatMul's columns are walked hash by hash. With `--calibration_dataset`, the fp32
torch model runs over a seeded sample of the prepared dataset's train split and each linear
layer's input records its mean x x^T (the Gram matrix): its diagonal, the mean of x^2 per
channel, weighs that channel's rounding error in `quantize._searched` (llama.cpp's importance
matrix, from the user's own tokens), and the whole matrix drives GPTQ's error-compensating
rounding (`quantize.gptq_levels`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_SAMPLES = 256
"""Train samples the importance is measured on (a few hundred, as llama-imatrix's chunks)."""


@dataclass(frozen=True)
class Span:
    """Columns [start, stop) of a graph MatMul that one torch layer (or a part of it) computes."""

    start: int
    stop: int
    module: str
    role: str  # attn_v, ffn_down, output or other
    layer: int | None


@dataclass
class Calibration:
    """Per torch module: its (K, N) weight's column spans by role, and the inputs' importance."""

    layers: int
    owners: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # column hash -> (module, column)
    widths: dict[str, int] = field(default_factory=dict)  # module -> output columns
    gram: dict[str, np.ndarray] = field(default_factory=dict)  # module -> (K, K) mean x x^T
    record: dict[str, Any] | None = None  # export.json's "calibration" entry, None when uncalibrated
    samples: list[np.ndarray] = field(default_factory=list)  # the token ids calibrated on
    fisher: dict[str, np.ndarray] = field(default_factory=dict)  # module -> (N,) mean squared output gradient

    def importance(self, module: str) -> np.ndarray | None:
        """The mean x^2 of each input channel of `module` (None: not calibrated)."""
        gram = self.gram.get(module)
        return None if gram is None else np.ascontiguousarray(np.diag(gram), dtype=np.float32)

    def spans(self, weight: np.ndarray) -> list[Span] | None:
        """The torch layers whose columns make up the graph weight (K, N), or None if any column
        is not found (an optimized or transformed graph: the caller falls back to one role)."""
        spans, column = [], 0
        while column < weight.shape[1]:
            owner = self.owners.get(_column_hash(weight[:, column]))
            if owner is None or owner[1] != 0:
                return None
            module = owner[0]
            width = self.widths[module]
            spans.extend(
                Span(column + start, column + stop, module, role, layer_of(module))
                for start, stop, role in roles_of(module, width)
            )
            column += width
        return spans if column == weight.shape[1] else None


def inspect_model(model: Any) -> Calibration:
    """Hash every output column of the model's linear layers (Linear and GPT-2's Conv1D)."""
    calibration = Calibration(
        layers=int(getattr(model.config, "num_hidden_layers", 0) or model.config.n_layer)
    )
    for name, module in _linear_modules(model):
        weight = _kn_weight(module)
        calibration.widths[name] = weight.shape[1]
        for column in range(weight.shape[1]):
            calibration.owners.setdefault(_column_hash(weight[:, column]), (name, column))
    return calibration


def calibrate(
    model: Any, dataset_dir: Path, samples: int = CALIBRATION_SAMPLES, seed: int = 0
) -> Calibration:
    """`inspect_model` plus the mean squared input of every linear layer over `samples` train
    samples drawn with `seed` from the prepared dataset in `dataset_dir` (one forward each)."""
    import torch

    from lmfast.models.dataset import PreparedDataset

    dataset = PreparedDataset(dataset_dir)
    split = dataset.split("train")
    if len(split) == 0:
        raise ValueError(f"--calibration_dataset {dataset_dir}: its train split has no samples")
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if dataset.description["vocab_size"] > vocab:
        raise ValueError(
            f"--calibration_dataset {dataset_dir}: vocab_size {dataset.description['vocab_size']} is larger "
            f"than the model's {vocab} (prepared with another tokenizer?)"
        )
    calibration = inspect_model(model)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(split))[: min(samples, len(split))])
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    digest = hashlib.sha256()
    # q/k/v (gate/up) read one input tensor: one Gram for all; the tensor is held until the
    # forward ends so that its id cannot be reused by another layer's input
    shared: dict[int, tuple[Any, str]] = {}

    head = model.get_output_embeddings()

    def hook(name: str):
        def record(module, inputs) -> None:
            if module is head:  # the last layer: record its input, skip the vocabulary product
                stop = _StopForward()
            else:
                stop = None
            if id(inputs[0]) in shared:
                aliases[name] = shared[id(inputs[0])][1]
                return
            shared[id(inputs[0])] = (inputs[0], name)
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
            if stop is not None:
                raise stop

        return record

    aliases: dict[str, str] = {}
    modules = _linear_modules(model)
    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules]
    window = int(
        getattr(model.config, "max_position_embeddings", 0) or getattr(model.config, "n_positions", 1024)
    )
    tokens = 0
    try:
        with torch.inference_mode():
            for index in chosen:
                ids = np.asarray(split[int(index)], dtype=np.int64)[:window]
                calibration.samples.append(ids)
                digest.update(ids.tobytes())
                tokens += len(ids)
                shared.clear()
                try:
                    model(torch.from_numpy(ids)[None])
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    grams = {name: (sums[name] / counts[name]).double().numpy() for name in sums}
    calibration.gram = {
        name: grams[aliases.get(name, name)] for name, _ in modules if aliases.get(name, name) in grams
    }
    calibration.record = {
        "dataset": str(dataset_dir),
        "split": "train",
        "samples": len(chosen),
        "tokens": tokens,
        "seed": seed,
        "sha256": digest.hexdigest(),
    }
    return calibration


FISHER_SAMPLES = 32
"""Calibration samples `measure_fisher` back-propagates (the first ones drawn)."""


def measure_fisher(
    model: Any, calibration: Calibration, samples: int = FISHER_SAMPLES, seed: int = 0
) -> None:
    """Fill `calibration.fisher`: per linear module and output column, the mean over positions of
    the squared gradient of log p(y) w.r.t. that output, y a token sampled from the model itself
    (seeded): the diagonal of the Fisher information of the model's output distribution, so that
    KL(fp32 || perturbed) ~ 1/2 sum_n F_n E[dy_n^2] for a small perturbation dy of the outputs."""
    import torch

    if not calibration.samples:
        raise ValueError("measure_fisher needs a calibrated Calibration (calibrate(), not inspect_model())")
    sums: dict[str, torch.Tensor] = {}
    modules = _linear_modules(model)

    def hook(name: str):
        def forward(module, inputs, output) -> None:
            def backward(grad) -> None:
                g = grad.detach().reshape(-1, grad.shape[-1]).double()
                sums[name] = sums.get(name, 0) + (g * g).sum(0)

            output.register_hook(backward)

        return forward

    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # gradients of the activations only
    handles = [module.register_forward_hook(hook(name)) for name, module in modules]
    generator = torch.Generator().manual_seed(seed)
    positions = 0
    try:
        with torch.enable_grad():
            for ids in calibration.samples[:samples]:
                tokens = torch.from_numpy(ids)[None]
                embeds = model.get_input_embeddings()(tokens).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds).logits[0].float()
                log_probs = torch.log_softmax(logits, -1)
                sampled = torch.multinomial(log_probs.detach().exp(), 1, generator=generator)
                log_probs.gather(1, sampled).sum().backward()
                positions += len(ids)
    finally:
        for handle in handles:
            handle.remove()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable[name])
    calibration.fisher = {name: (total / positions).numpy() for name, total in sums.items()}


class _StopForward(Exception):
    """Raised by the output head's hook: its input is all calibration needs of it."""


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attention values and FFN down projection Q4_K_M
    keeps at 6 bits: the first and last eighth and every third layer between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def _linear_modules(model: Any) -> list[tuple[str, Any]]:
    import torch

    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            found.append((name, module))
    return found


def kn_weights(model: Any) -> dict[str, np.ndarray]:
    """Every linear module's weight as the graph's MatMul reads it, (in, out), by module name."""
    return {name: _kn_weight(module) for name, module in _linear_modules(model)}


def _kn_weight(module: Any) -> np.ndarray:
    """The module's weight as the graph's MatMul reads it: (in, out)."""
    weight = module.weight.detach().float().numpy()
    return weight if type(module).__name__ == "Conv1D" else weight.T


def _column_hash(column: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(column, dtype=np.float32).tobytes(), digest_size=16).digest()


def layer_of(module: str) -> int | None:
    match = re.search(r"\.(\d+)\.", module)
    return int(match.group(1)) if match else None


def roles_of(module: str, width: int) -> list[tuple[int, int, str]]:
    """Column ranges of one module by role; GPT-2's c_attn computes q, k and v (a third each)."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf in ("v_proj", "value"):
        return [(0, width, "attn_v")]
    if leaf == "c_attn" and width % 3 == 0:
        third = width // 3
        return [(0, 2 * third, "other"), (2 * third, width, "attn_v")]
    if leaf in ("down_proj", "fc2", "w2") or module.endswith("mlp.c_proj"):
        return [(0, width, "ffn_down")]
    if leaf in ("lm_head", "embed_out", "output"):
        return [(0, width, "output")]
    return [(0, width, "other")]
