"""`hf/`: a Lightning checkpoint turned into a plain Hugging Face model directory (docs/architecture.md §2).

Training writes `hf/` with it; the model inside a `.ckpt` is rebuilt by `lmfast.models.checkpoint`,
the reader the export stage uses too, so both read checkpoints the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmfast.models.checkpoint import checkpoint_lora, load_checkpoint, load_lora, model_from_checkpoint

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _has_tokenizer(directory: Path | None) -> bool:
    return directory is not None and any((directory / name).is_file() for name in _TOKENIZER_FILES)


def checkpoint_to_hf(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    prompt_prefix_token_ids: list[int] | None = None,
) -> Path:
    """Rebuild the model from a `.ckpt` and `save_pretrained` it with its tokenizer and generation config.

    Args:
        checkpoint_path: a lmfast `.ckpt` (its checksum is verified).
        output_dir: the HF directory to write.
        tokenizer_dir: the dataset's tokenizer (used when there is no pretrained source).
        source_dir: the pretrained model that was fine-tuned: its whole tokenizer config (chat
            template, unk and added tokens) and generation config (eos lists) are kept.
        adapter_dir: for a LoRA checkpoint, where the PEFT adapter is written (default: `adapter/`
            beside `output_dir`); `output_dir` gets the merged model.
        prompt_prefix_token_ids: the dataset's (description.json): recorded as `prompt_encoding.json`,
            so inference begins a prompt as training began a document.

    Returns:
        `output_dir`, loadable by `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.

    Raises:
        lmfast.models.checkpoint.CheckpointError: an unreadable or corrupted checkpoint.
        ValueError: weights that do not fit the config.
    """
    from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    output_dir = Path(output_dir)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the training log
    checkpoint = load_checkpoint(checkpoint_path)
    lora = checkpoint_lora(checkpoint, checkpoint_path)
    if lora:
        peft_model = load_lora(checkpoint, checkpoint_path)
        peft_model.save_pretrained(Path(adapter_dir) if adapter_dir else output_dir.parent / "adapter")
        model = peft_model.merge_and_unload()
        source_dir = source_dir if source_dir is not None else lora["base_model"]
    else:
        model = model_from_checkpoint(checkpoint, checkpoint_path)
    source = Path(source_dir) if source_dir is not None else None
    if _has_tokenizer(source):
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    if source is not None and (source / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(source)
    vocab_size = model.config.vocab_size
    if vocab_size > len(tokenizer):
        # rows added to round the vocabulary up (50257 -> 50304) are no tokens: never generate them
        model.generation_config.suppress_tokens = list(range(len(tokenizer), vocab_size))
    with torch.no_grad():
        model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    if prompt_prefix_token_ids is not None:
        from lmfast.generation.text import write_prompt_encoding

        write_prompt_encoding(output_dir, prompt_prefix_token_ids)
    return output_dir
