"""The model to train: a built-in GPT-2 shape from scratch or a local Hugging Face causal LM to fine-tune.

Also the checks that keep a model and a dataset consistent (same tokenizer, vocabulary large
enough, context long enough) and the FLOP count MFU is computed from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfast.flags import UserError
from lmfast.models.context import context_length
from lmfast.train.config import MODEL_PRESETS

log = logging.getLogger(__name__)

VOCAB_MULTIPLE = 64
DEFAULT_CONTEXT = 1024


class TrainInputError(UserError):
    """Bad input to `lmfast train` (dataset, model, sizes): reported as one line, exit code 2."""


@dataclass
class DatasetTokenizer:
    """The dataset's own tokenizer (`<dataset>/tokenizer/`) and its special ids."""

    directory: Path
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int

    @classmethod
    def from_dataset(cls, dataset_dir: Path, description: dict[str, Any]) -> DatasetTokenizer:
        from tokenizers import Tokenizer

        directory = dataset_dir / "tokenizer"
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise TrainInputError(
                f"--dataset_dir {dataset_dir}: missing tokenizer/tokenizer.json (not an lmfast dataset)"
            )
        backend = Tokenizer.from_file(str(path))
        config_path = directory / "tokenizer_config.json"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        except (ValueError, OSError) as error:
            raise TrainInputError(
                f"--dataset_dir {dataset_dir}: {config_path}: unreadable ({error})"
            ) from None

        def token_id(role: str) -> int | None:
            key = f"{role}_token_id"
            if description.get(key) is not None:
                return int(description[key])
            token = config.get(f"{role}_token")
            if isinstance(token, dict):
                token = token.get("content")
            return backend.token_to_id(token) if token else None

        bos, eos, pad = token_id("bos"), token_id("eos"), token_id("pad")
        vocab_size = int(description.get("vocab_size") or backend.get_vocab_size(with_added_tokens=True))
        if pad is None:
            pad = eos if eos is not None else 0  # padding is masked out of attention and loss anyway
        return cls(directory, vocab_size, bos, eos, pad)

    def vocab(self) -> dict[str, int]:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.directory / "tokenizer.json")).get_vocab(with_added_tokens=True)


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round up to a multiple of 64 (50257 -> 50304): faster matmuls; the extra ids never occur."""
    return -(-vocab_size // multiple) * multiple


def preset_config(name: str, tokenizer: DatasetTokenizer, context: int, dropout: float | None) -> Any:
    """A `GPT2Config` for a built-in shape, sized for the dataset's vocabulary and sample length."""
    from transformers import GPT2Config

    p = 0.0 if dropout is None else dropout
    return GPT2Config(
        vocab_size=padded_vocab_size(tokenizer.vocab_size),
        n_positions=max(DEFAULT_CONTEXT, context),
        resid_pdrop=p,
        embd_pdrop=p,
        attn_pdrop=p,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_PRESETS[name],
    )


def check_model_dir(model_dir: Path, tokenizer: DatasetTokenizer, max_sample_length: int) -> Any:
    """Load a local model's config and check it against the dataset; returns the config.

    Raises:
        TrainInputError: not a model directory, a tokenizer that differs from the dataset's, a vocabulary
            smaller than the dataset's, or a context shorter than its longest sample.
    """
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise TrainInputError(
            f"--model {model_dir}: neither a built-in config ({', '.join(MODEL_PRESETS)}) nor a Hugging Face "
            "model directory with config.json"
        )
    config = AutoConfig.from_pretrained(model_dir)
    if config.vocab_size < tokenizer.vocab_size:
        raise TrainInputError(
            f"--model {model_dir}: vocabulary of {config.vocab_size} tokens is smaller than the dataset's "
            f"{tokenizer.vocab_size}; prepare the dataset with this model's tokenizer"
        )
    _check_same_tokenizer(model_dir, tokenizer)
    positions = context_length(config)
    if positions is not None and max_sample_length > positions:
        raise TrainInputError(
            f"--model {model_dir}: context of {positions} tokens is shorter than the dataset's longest sample "
            f"({max_sample_length}); prepare it with a smaller --max_sample_length"
        )
    return config


def _check_same_tokenizer(model_dir: Path, tokenizer: DatasetTokenizer) -> None:
    """Same token -> id mapping in the model's tokenizer and the dataset's, or a clear error."""
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        log.warning("%s has no tokenizer files; cannot check it matches the dataset's tokenizer", model_dir)
        return
    from transformers import AutoTokenizer

    try:
        model_vocab = AutoTokenizer.from_pretrained(model_dir).get_vocab()
    except (OSError, ValueError) as error:
        raise TrainInputError(f"--model {model_dir}: its tokenizer does not load ({error})") from None
    dataset_vocab = tokenizer.vocab()
    differ = [tok for tok, i in model_vocab.items() if dataset_vocab.get(tok) != i]
    missing = len(set(dataset_vocab) - set(model_vocab))
    if differ or missing:
        example = (
            f"; e.g. {differ[0]!r} is {model_vocab[differ[0]]} there, {dataset_vocab.get(differ[0])} in the dataset"
            if differ
            else ""
        )
        raise TrainInputError(
            f"--model {model_dir}: its tokenizer does not match the dataset's ({len(differ)} of {len(model_vocab)} "
            f"tokens map to other ids, {missing} dataset tokens unknown to it{example}); prepare the dataset with "
            "this model's tokenizer"
        )


def resolve_model_source(model: str) -> str:
    """A preset name as given; a path -> the HF dir `resolve_source` finds there (a `.gguf` file's
    dequantized dir, converted once and cached; an experiment's `hf/`); anything else as given, for
    `check_model_dir` to name what is missing.

    Raises:
        TrainInputError: a file that is not GGUF, or a GGUF transformers cannot read.
    """
    path = Path(model)
    if model in MODEL_PRESETS or not path.exists():
        return model
    from lmfast.models.gguf import is_gguf
    from lmfast.models.source import resolve_source

    if path.is_file() and not is_gguf(path):
        raise TrainInputError(
            f"--model {model}: a file that is not GGUF (expected a .gguf, a model dir or a preset)"
        )
    try:
        source = resolve_source(path, ("hf",))
    except ValueError as error:
        if path.is_dir():  # not a model dir: check_model_dir says so in training's words
            return model
        raise TrainInputError(f"--model {error}") from None
    return str(source.path)


def build_model(model: str, tokenizer: DatasetTokenizer, context: int, dropout: float | None) -> Any:
    """A `transformers` causal LM with SDPA attention, in train mode: fresh weights for a preset,
    pretrained for a directory (`from_pretrained` returns eval mode, which would keep dropout off)."""
    from transformers import AutoModelForCausalLM

    if model in MODEL_PRESETS:
        config = preset_config(model, tokenizer, context, dropout)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    model_dir = Path(model)
    config = check_model_dir(model_dir, tokenizer, context)
    if dropout is not None:
        for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout"):
            if hasattr(config, key):
                setattr(config, key, dropout)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(model_dir, config=config, attn_implementation="sdpa")
    except ValueError as error:  # an architecture without an SDPA path
        log.warning("SDPA attention unavailable for %s (%s); using the default", model_dir, error)
        loaded = AutoModelForCausalLM.from_pretrained(model_dir, config=config)
    return loaded.train()


def flops_per_token(config: Any, num_params: int, seq_len: int, trainable_params: int | None = None) -> float:
    """Training FLOPs per token: 6 N + 12 L H Q T (PaLM appendix B, as nanoGPT's estimate_mfu).

    N counts every parameter except position embeddings (lookups, not matmuls); the tied LM head
    counts once, as the matmul it is. With `trainable_params` (LoRA: most weights frozen) the
    weight-gradient third of 6 N counts only those: 4 N + 2 N_trainable, as frozen weights still
    run forward and pass gradients back to the activations but get none themselves.
    """
    n_layer = getattr(config, "n_layer", None) or getattr(config, "num_hidden_layers", 0)
    hidden = getattr(config, "n_embd", None) or getattr(config, "hidden_size", 0)
    positions = context_length(config) or 0
    n = num_params - (positions * hidden if hasattr(config, "n_positions") else 0)
    trained = n if trainable_params is None else min(trainable_params, n)
    return 4.0 * n + 2.0 * trained + 12.0 * n_layer * hidden * seq_len
