"""What a model path given to any stage holds: the one place that tells the layouts apart.

`lmfast train --model`, `export onnx SOURCE`, `generate PATH`, `serve MODEL` and `eval SOURCE` all
ask `resolve_source`; each then says which kinds it can read. The layouts (docs/architecture.md):
an export dir (`model.onnx`), an experiment dir (its `hf/`, else its LoRA `adapter/`), a Lightning
`.ckpt`, a Hugging Face model dir (`config.json`), a PEFT LoRA adapter dir (`adapter_config.json`)
and a `.gguf` file (converted once into a cached HF dir by `lmfast.models.gguf`). JSON and file
checks only, except the GGUF conversion, which imports torch and transformers.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SourceKind = Literal["onnx", "hf", "checkpoint", "lora_adapter"]
"""The format of what is loaded: ONNX export, HF weights, Lightning checkpoint, PEFT adapter."""
SourceOrigin = Literal["export", "experiment", "hf", "gguf", "checkpoint", "lora_adapter"]
"""What the user named (an experiment dir is read as its hf/ or adapter/, a .gguf as its HF dir)."""

ADAPTER_CONFIG = "adapter_config.json"  # what marks a PEFT adapter dir
ALL_KINDS: tuple[SourceKind, ...] = ("onnx", "hf", "checkpoint", "lora_adapter")

_EXPECTED = {
    "onnx": ("an export dir with model.onnx",),
    "hf": ("an experiment dir with hf/", "a Hugging Face model dir with config.json", "a .gguf file"),
    "checkpoint": ("a .ckpt file",),
    "lora_adapter": ("a PEFT LoRA adapter dir (or an experiment dir with adapter/)",),
}
_HOLDS = {
    "onnx": "an ONNX export",
    "hf": "a Hugging Face (torch) model",
    "checkpoint": "a Lightning checkpoint",
    "lora_adapter": "a PEFT LoRA adapter",
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model path: where its files are, in which format, and what was named."""

    given: Path
    kind: SourceKind
    origin: SourceOrigin
    path: Path
    """The directory holding config.json and the tokenizer (onnx, hf), the adapter dir, or the .ckpt."""

    @property
    def backend(self) -> Literal["onnx", "torch"]:
        """The backend family that reads it: ONNX Runtime for an export, torch for the rest."""
        return "onnx" if self.kind == "onnx" else "torch"


def resolve_source(path: str | Path, accepts: Collection[SourceKind] = ALL_KINDS) -> ModelSource:
    """Tell which layout PATH is, converting a `.gguf` on first use.

    Args:
        path: what the user gave.
        accepts: the kinds the calling stage can read; any other is refused naming what it holds.

    Raises:
        FileNotFoundError: PATH does not exist.
        ValueError: PATH is no model layout, one the stage cannot read, or a file that is not GGUF.
    """
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(f"{given}: no such file or directory")
    source = _layout(given)
    if source is None:
        noun = "a checkpoint or model" if "checkpoint" in accepts else "a model directory"
        raise ValueError(f"{given}: not {noun} (expected {_expected(accepts)})")
    if source.kind not in accepts:
        raise ValueError(f"{given}: holds {_HOLDS[source.kind]}; expected {_expected(accepts)}")
    return source


def _expected(accepts: Collection[SourceKind]) -> str:
    """'a, b, or c': the layouts of the accepted kinds, in the order they are checked."""
    phrases = [phrase for kind in ALL_KINDS if kind in accepts for phrase in _EXPECTED[kind]]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + ", or " + phrases[-1]


def _layout(given: Path) -> ModelSource | None:
    if given.is_file() and given.suffix == ".gguf":
        return ModelSource(given, "hf", "gguf", gguf_dir(given))
    if given.is_file() and given.suffix == ".ckpt":
        return ModelSource(given, "checkpoint", "checkpoint", given)
    if not given.is_dir():
        return None
    if (given / "model.onnx").is_file():
        return ModelSource(given, "onnx", "export", given)
    if (given / "hf" / "config.json").is_file():
        return ModelSource(given, "hf", "experiment", given / "hf")
    if (given / ADAPTER_CONFIG).is_file():
        return ModelSource(given, "lora_adapter", "lora_adapter", given)
    if (given / "adapter" / ADAPTER_CONFIG).is_file():  # a LoRA run without hf/
        return ModelSource(given, "lora_adapter", "experiment", given / "adapter")
    if (given / "config.json").is_file():
        return ModelSource(given, "hf", "hf", given)
    return None


def gguf_dir(path: Path) -> Path:
    """The cached HF dir of a `.gguf` file (converted on first use).

    Raises:
        ValueError: not a GGUF file, or one transformers cannot read.
    """
    from lmfast.models.gguf import converted_dir, is_gguf

    if not is_gguf(path):
        raise ValueError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    return converted_dir(path)
