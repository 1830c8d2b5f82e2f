"""Which tokens go before and after each document (`--document_bos_token`, `--document_eos_token`).

`auto` follows the tokenizer's own conventions, because a pretrained model learned them:

- before: the tokenizer's BOS when its config says `add_bos_token` (or its post-processor adds
  one, as Llama 3's does), otherwise nothing (SmolLM2, Qwen, GPT-2 as a Hugging Face dir).
  Registered tokenizers (`GPT2Tokenizer`, `register_tokenizer`) keep their `bos_token`.
- after: the pretraining document separator when the vocabulary has one (`<|endoftext|>`,
  `<|end_of_text|>`, `</s>`, `<eos>`), never a chat token such as `<|im_end|>`; otherwise the
  first eos id of `generation_config.json`, otherwise the tokenizer's `eos_token`.

The result is recorded in description.json, and inference prepends `prompt_prefix_token_ids`
(the BOS used here, or nothing) to a prompt, so prompts are encoded the way documents were.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmfast.data.errors import PrepareError
from lmfast.data.tokenizers import Tokenizer

AUTO, NONE = "auto", "none"
# pretraining separators of today's families, most common first (GPT-2/SmolLM2/Qwen, Llama 3,
# Llama 2/Mistral, Gemma); chat-turn tokens are deliberately absent
DOCUMENT_SEPARATORS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


@dataclass(frozen=True)
class DocumentBoundaries:
    """The tokens wrapped around every document (None = no token) and why they were chosen."""

    bos_token: str | None
    bos_token_id: int | None
    eos_token: str | None
    eos_token_id: int | None
    source: str

    def description(self) -> dict[str, object]:
        """description.json keys; `prompt_prefix_token_ids` is what inference prepends to a prompt."""
        return {
            "document_bos_token_used": self.bos_token,
            "document_eos_token_used": self.eos_token,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "document_boundaries_source": self.source,
            "prompt_prefix_token_ids": [] if self.bos_token_id is None else [self.bos_token_id],
        }


def _special_tokens(tokenizer: Tokenizer) -> set[str]:
    return {t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special}


def _auto_bos(tokenizer: Tokenizer) -> tuple[str | None, str]:
    if tokenizer.add_bos_token is None:
        return tokenizer.bos_token, "the registered tokenizer's bos_token"
    if tokenizer.add_bos_token and tokenizer.bos_token is not None:
        return tokenizer.bos_token, "the tokenizer adds its bos_token (add_bos_token or its post-processor)"
    return None, "the tokenizer adds no BOS"


def _auto_eos(tokenizer: Tokenizer) -> tuple[str | None, str]:
    if tokenizer.add_bos_token is None:
        return tokenizer.eos_token, "the registered tokenizer's eos_token"
    special = _special_tokens(tokenizer)
    for token in DOCUMENT_SEPARATORS:
        if token in special:
            return token, "the vocabulary's pretraining document separator"
    for token_id in tokenizer.generation_eos_token_ids:
        token = tokenizer.backend.id_to_token(token_id)
        if token is not None:
            return token, "the first eos of generation_config.json"
    return tokenizer.eos_token, "the tokenizer's eos_token"


def _explicit(tokenizer: Tokenizer, field: str, value: str) -> tuple[str | None, str]:
    if value == NONE:
        return None, f"--{field} none"
    if tokenizer.backend.token_to_id(value) is None:
        raise PrepareError(
            field, f"{value!r} is not a token of {tokenizer.name} (give a token, none or auto)"
        )
    return value, f"--{field} {value}"


def resolve_boundaries(tokenizer: Tokenizer, bos: str = AUTO, eos: str = AUTO) -> DocumentBoundaries:
    """The document boundaries for the flag values `bos`/`eos` ("auto", "none" or a token).

    Raises:
        PrepareError: a named token is not in the tokenizer's vocabulary.
    """
    bos_token, bos_why = (
        _auto_bos(tokenizer) if bos == AUTO else _explicit(tokenizer, "document_bos_token", bos)
    )
    eos_token, eos_why = (
        _auto_eos(tokenizer) if eos == AUTO else _explicit(tokenizer, "document_eos_token", eos)
    )
    token_id = tokenizer.backend.token_to_id
    return DocumentBoundaries(
        bos_token=bos_token,
        bos_token_id=None if bos_token is None else token_id(bos_token),
        eos_token=eos_token,
        eos_token_id=None if eos_token is None else token_id(eos_token),
        source=f"before: {bos_token!r} ({bos_why}); after: {eos_token!r} ({eos_why})",
    )
