"""`TrainConfig`: every `lmfast train` flag, its default and its check, in one dataclass.

Imports no torch: the CLI builds its flags from these fields (flag = field = description.json
key) and `lmfast train --help` answers without loading the training stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmfast.field_rules import bounds, check_fields
from lmfast.flags import UserError

# Built-in GPT-2 shapes (`--model NAME`); vocab_size comes from the dataset, padded to a multiple of 64
# (50257 -> 50304, as nanoGPT: faster matmuls, the extra rows are never targets).
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "gpt2-tiny": {"n_layer": 2, "n_head": 4, "n_embd": 64},  # trains in minutes on a laptop CPU
    "gpt2-mini": {"n_layer": 6, "n_head": 6, "n_embd": 384},  # nanoGPT's "baby GPT" (~30M with the head)
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # GPT-2 124M
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
}

Precision = Literal[
    "auto", "32", "32-true", "16", "16-mixed", "bf16", "bf16-mixed", "16-true", "bf16-true", "64", "64-true"
]
"""`--precision`: auto, or a precision Lightning takes."""


@dataclass
class TrainConfig:
    """Train or fine-tune a causal LM on a prepared dataset (PyTorch Lightning)."""

    dataset_dir: str = ""
    """Dataset directory written by `lmfast prepare` (`<datasets_root>/<name>/<N>`)."""
    model: str = "gpt2-tiny"
    """A built-in config name (gpt2-tiny, gpt2-mini, gpt2, gpt2-medium, gpt2-large, gpt2-xl) trained from
    scratch, or a pretrained model to fine-tune: a local Hugging Face model directory or a llama.cpp .gguf
    file (dequantized once, cached) (`--model_path` is an alias)."""
    experiments_root: str = "data/experiments"
    """Root of all experiments; the run is written to `<experiments_root>/<experiment_name>/<N>`."""
    experiment_name: str = "default"
    """Name of this experiment; N is the first free integer from 0."""
    batch_size: int = field(default=16, metadata=bounds(ge=1))
    """Samples per batch on each device (before gradient accumulation)."""
    learning_rate: float = field(default=3e-4, metadata=bounds(gt=0))
    """Peak learning rate of AdamW."""
    weight_decay: float = field(default=0.1, metadata=bounds(ge=0))
    """Decoupled weight decay of AdamW, applied to matrices and embeddings only (not to norms or biases)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    num_warmup_steps: int = field(default=100, metadata=bounds(ge=0))
    """Linear learning-rate warmup, in optimizer steps."""
    num_cycles: int = field(default=0, metadata=bounds(ge=0))
    """Cosine cycles with hard restarts after warmup; 0 keeps the rate constant after warmup (the default)."""
    max_steps: int = field(default=-1, metadata=bounds(ge=1, allow=(-1,)))
    """Stop after this many optimizer steps (-1: use --max_epochs)."""
    max_epochs: int | None = field(default=None, metadata=bounds(ge=1))
    """Stop after this many epochs (default: 1 when --max_steps is -1, else unlimited)."""
    accumulate_grad_batches: int = field(default=1, metadata=bounds(ge=1))
    """Batches whose gradients are summed before each optimizer step."""
    gradient_clip_val: float | None = field(default=1.0, metadata=bounds(ge=0))
    """Clip the gradient norm to this value (None or 0: no clipping)."""
    precision: Precision = "auto"
    """auto (bf16-mixed on GPUs that support it, 16-mixed with loss scaling on older GPUs, 32 on CPU) or any
    Lightning precision: 32-true, 16-mixed, bf16-mixed, bf16-true, ..."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, cuda, mps."""
    devices: str = "auto"
    """Devices per node: auto, a count (2) or a list (0,1)."""
    num_nodes: int = field(default=1, metadata=bounds(ge=1))
    """Number of nodes (multi-node through SLURM or torchrun)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp, deepspeed, ..."""
    val_check_interval: int | float | None = field(default=None, metadata=bounds(gt=0))
    """Validate every N training batches (int) or fraction of an epoch (float <= 1); default: every epoch or
    every 1000 batches, whichever comes first."""
    limit_val_batches: int | float | None = None
    """Validate on at most this many batches (int) or this fraction (float) of the validation split."""
    checkpoint_every_n_steps: int | None = field(default=None, metadata=bounds(ge=1))
    """Write `last.ckpt` every N optimizer steps (default: at each validation)."""
    checkpoint_every_minutes: float = field(default=10.0, metadata=bounds(ge=0, finite=True))
    """Also write `last.ckpt` every N minutes of training (0: off). Ctrl-C, SIGTERM and SIGUSR1 (SLURM
    pre-emption) always write it at the end of the step in progress, then stop; `--resume` continues."""
    save_top_k: int = 3
    """Keep the k best checkpoints by validation loss (plus `last.ckpt`)."""
    log_every_n_steps: int = field(default=10, metadata=bounds(ge=1))
    """Log training scalars every N steps."""
    seed: int = 228
    """Seed for weights, data order and dropout."""
    unlikelihood_alpha: float = field(default=0.0, metadata=bounds(ge=0))
    """Weight of the unlikelihood-candidates loss (Welleck et al. 2019) against repeating context tokens; 0 disables."""
    dropout: float | None = field(default=None, metadata=bounds(ge=0, lt=1))
    """Dropout of built-in models (default 0.0, as nanoGPT for pretraining); fine-tuned models keep theirs unless set."""
    num_workers: int = field(default=2, metadata=bounds(ge=0))
    """DataLoader worker processes (0 reads in the training process)."""
    group_by_length: bool = True
    """Put samples of similar length in the same batch (less padding); order stays random between batches."""
    pad_to_multiple_of: int = field(default=8, metadata=bounds(ge=1))
    """Pad each batch's length up to a multiple of this (tensor-core friendly)."""
    compile: bool = False
    """Compile the model with torch.compile (state-dict keys stay plain)."""
    peak_tflops: float | None = None
    """Peak TFLOP/s per device for MFU; default: looked up from the GPU's name (no MFU on CPU)."""
    num_generated_samples: int = field(default=2, metadata=bounds(ge=0))
    """Texts generated at every validation (written to generated.txt and TensorBoard); 0 disables."""
    generation_max_new_tokens: int = 48
    """Length of each generated text sample, in tokens."""
    lora_r: int = field(default=0, metadata=bounds(ge=0, hint="0: full fine-tuning"))
    """LoRA rank: > 0 fine-tunes low-rank adapters (PEFT) on a pretrained --model, base weights frozen;
    checkpoints hold the adapters only, `hf/` the merged model and `adapter/` the PEFT adapter. 0: full fine-tuning."""
    lora_alpha: float | None = field(default=None, metadata=bounds(gt=0))
    """LoRA scaling numerator (the update is scaled by alpha / r); default 2 * r."""
    lora_dropout: float = field(default=0.05, metadata=bounds(ge=0, lt=1))
    """Dropout on the LoRA branch's input."""
    lora_target_modules: str = "all-linear"
    """Modules that get adapters: all-linear (every linear layer but the output head) or names, comma separated
    (e.g. q_proj,v_proj)."""
    resume: str | None = None
    """Continue an experiment from its `checkpoints/last.ckpt` with model, optimizer, scheduler, RNG and data
    position: an experiment dir, or `latest` (the newest run of --experiments_root/--experiment_name)."""

    def __post_init__(self) -> None:
        """Bounds and choices are the fields' metadata and types (`check_fields`); the rules below
        tie fields together, so they stay code."""
        check_fields(self)
        if self.lora_r and self.is_preset:
            raise UserError(
                f"--lora_r needs a pretrained --model (a model dir or .gguf), not the preset {self.model}"
            )
        if self.lora_r and not self.lora_target_modules.strip(" ,"):
            raise UserError("--lora_target_modules: expected all-linear or module names, got nothing")
        if not self.resume and not self.dataset_dir:
            raise UserError("--dataset_dir is required (a directory written by `lmfast prepare`)")

    @property
    def is_preset(self) -> bool:
        """Whether `model` names a built-in config (trained from scratch) rather than a local directory."""
        return self.model in MODEL_PRESETS

    def devices_value(self) -> int | str | list[int]:
        """`devices` in the form Lightning takes: "auto", an int, or a list of indices."""
        text = str(self.devices).strip()
        if text == "auto" or text == "-1":
            return text if text == "auto" else -1
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)

    def to_dict(self) -> dict[str, Any]:
        """What description.json holds."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from description.json, rejecting unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**data)


def claim_experiment_dir(root: str | Path, name: str) -> Path:
    """Create and return the first free `<root>/<name>/<N>` (N from 0), atomically.

    `mkdir` either creates the directory or fails because it exists, so concurrent runs (other
    processes, other nodes on a shared file system) never get the same N. Call it from one rank
    only; the others are told the result (see `lmfast.train.run`).

    Raises:
        OSError: the root cannot be created (read-only, not a directory).
    """
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    taken = {int(p.name) for p in base.iterdir() if p.name.isdigit()}
    n = 0
    while True:
        if n not in taken:
            try:
                (base / str(n)).mkdir()
                return base / str(n)
            except FileExistsError:
                pass  # another run took it since the listing
        n += 1


def latest_experiment_dir(root: str | Path, name: str) -> Path | None:
    """The highest-numbered run of `<root>/<name>` that has a `checkpoints/last.ckpt`, or None."""
    base = Path(root) / name
    if not base.is_dir():
        return None
    runs = sorted((int(p.name), p) for p in base.iterdir() if p.name.isdigit() and p.is_dir())
    for _, path in reversed(runs):
        if (path / "checkpoints" / "last.ckpt").is_file():
            return path
    return None
