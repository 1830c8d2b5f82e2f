"""`TrainConfig`: every `lmfast train` flag, its default and its check, in one dataclass.

Imports no torch: the CLI builds its flags from these fields (flag = field = description.json
key) and `lmfast train --help` answers without loading the training stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

PRECISIONS = (
    "auto",
    "32",
    "32-true",
    "16",
    "16-mixed",
    "bf16",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64",
    "64-true",
)


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
    batch_size: int = 16
    """Samples per batch on each device (before gradient accumulation)."""
    learning_rate: float = 3e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.1
    """Decoupled weight decay of AdamW, applied to matrices and embeddings only (not to norms or biases)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    num_warmup_steps: int = 100
    """Linear learning-rate warmup, in optimizer steps."""
    num_cycles: int = 0
    """Cosine cycles with hard restarts after warmup; 0 keeps the rate constant after warmup (the default)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use --max_epochs)."""
    max_epochs: int | None = None
    """Stop after this many epochs (default: 1 when --max_steps is -1, else unlimited)."""
    accumulate_grad_batches: int = 1
    """Batches whose gradients are summed before each optimizer step."""
    gradient_clip_val: float | None = 1.0
    """Clip the gradient norm to this value (None or 0: no clipping)."""
    precision: str = "auto"
    """auto (bf16-mixed on GPUs that support it, 16-mixed with loss scaling on older GPUs, 32 on CPU) or any
    Lightning precision: 32-true, 16-mixed, bf16-mixed, bf16-true, ..."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, cuda, mps."""
    devices: str = "auto"
    """Devices per node: auto, a count (2) or a list (0,1)."""
    num_nodes: int = 1
    """Number of nodes (multi-node through SLURM or torchrun)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp, deepspeed, ..."""
    val_check_interval: int | float | None = None
    """Validate every N training batches (int) or fraction of an epoch (float <= 1); default: every epoch or
    every 1000 batches, whichever comes first."""
    limit_val_batches: int | float | None = None
    """Validate on at most this many batches (int) or this fraction (float) of the validation split."""
    checkpoint_every_n_steps: int | None = None
    """Write `last.ckpt` every N optimizer steps (default: at each validation)."""
    checkpoint_every_minutes: float = 10.0
    """Also write `last.ckpt` every N minutes of training (0: off). Ctrl-C, SIGTERM and SIGUSR1 (SLURM
    pre-emption) always write it at the end of the step in progress, then stop; `--resume` continues."""
    save_top_k: int = 3
    """Keep the k best checkpoints by validation loss (plus `last.ckpt`)."""
    log_every_n_steps: int = 10
    """Log training scalars every N steps."""
    seed: int = 228
    """Seed for weights, data order and dropout."""
    unlikelihood_alpha: float = 0.0
    """Weight of the unlikelihood-candidates loss (Welleck et al. 2019) against repeating context tokens; 0 disables."""
    dropout: float | None = None
    """Dropout of built-in models (default 0.0, as nanoGPT for pretraining); fine-tuned models keep theirs unless set."""
    num_workers: int = 2
    """DataLoader worker processes (0 reads in the training process)."""
    group_by_length: bool = True
    """Put samples of similar length in the same batch (less padding); order stays random between batches."""
    pad_to_multiple_of: int = 8
    """Pad each batch's length up to a multiple of this (tensor-core friendly)."""
    compile: bool = False
    """Compile the model with torch.compile (state-dict keys stay plain)."""
    peak_tflops: float | None = None
    """Peak TFLOP/s per device for MFU; default: looked up from the GPU's name (no MFU on CPU)."""
    num_generated_samples: int = 2
    """Texts generated at every validation (written to generated.txt and TensorBoard); 0 disables."""
    generation_max_new_tokens: int = 48
    """Length of each generated text sample, in tokens."""
    lora_r: int = 0
    """LoRA rank: > 0 fine-tunes low-rank adapters (PEFT) on a pretrained --model, base weights frozen;
    checkpoints hold the adapters only, `hf/` the merged model and `adapter/` the PEFT adapter. 0: full fine-tuning."""
    lora_alpha: float | None = None
    """LoRA scaling numerator (the update is scaled by alpha / r); default 2 * r."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch's input."""
    lora_target_modules: str = "all-linear"
    """Modules that get adapters: all-linear (every linear layer but the output head) or names, comma separated
    (e.g. q_proj,v_proj)."""
    resume: str | None = None
    """Continue an experiment from its `checkpoints/last.ckpt` with model, optimizer, scheduler, RNG and data
    position: an experiment dir, or `latest` (the newest run of --experiments_root/--experiment_name)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        positive = ("batch_size", "accumulate_grad_batches", "num_nodes", "log_every_n_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise UserError(f"--learning_rate must be > 0, got {self.learning_rate}")
        for name in (
            "num_warmup_steps",
            "num_cycles",
            "weight_decay",
            "unlikelihood_alpha",
            "num_workers",
            "num_generated_samples",
        ):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserError(f"--max_steps must be -1 or >= 1, got {self.max_steps}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise UserError(f"--max_epochs must be >= 1, got {self.max_epochs}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.pad_to_multiple_of < 1:
            raise UserError(f"--pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        if self.checkpoint_every_n_steps is not None and self.checkpoint_every_n_steps < 1:
            raise UserError(f"--checkpoint_every_n_steps must be >= 1, got {self.checkpoint_every_n_steps}")
        if not 0 <= self.checkpoint_every_minutes < float("inf"):
            raise UserError(f"--checkpoint_every_minutes must be >= 0, got {self.checkpoint_every_minutes}")
        if self.val_check_interval is not None and self.val_check_interval <= 0:
            raise UserError(f"--val_check_interval must be > 0, got {self.val_check_interval}")
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise UserError(f"--gradient_clip_val must be >= 0, got {self.gradient_clip_val}")
        if self.lora_r < 0:
            raise UserError(f"--lora_r must be >= 0 (0: full fine-tuning), got {self.lora_r}")
        if self.lora_r and self.is_preset:
            raise UserError(
                f"--lora_r needs a pretrained --model (a model dir or .gguf), not the preset {self.model}"
            )
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise UserError(f"--lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UserError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
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
