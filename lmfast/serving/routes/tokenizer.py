"""vLLM's `POST /detokenize` and `GET /tokenizer_info`, so clients such as lm-evaluation-harness can
use the served model's own tokenizer remotely (with `POST /tokenize`, which routes/chat.py serves
because it also renders chat messages). They answer from the tokenizer alone, no batch slot."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from lmfast.serving.deps import get_generator, require_api_key
from lmfast.serving.dispatch import invalid
from lmfast.serving.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizerInfo,
)

router = APIRouter(tags=["tokenizer"], dependencies=[Depends(require_api_key)], responses={401: {}, 503: {}})


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, generator: Any = Depends(get_generator)) -> DetokenizeResponse:
    """The text of token ids, special tokens included (as vLLM)."""
    vocab_size = generator.codec.vocab_size
    if any(not 0 <= token < vocab_size for token in body.tokens):
        raise invalid("tokens", f"every token id must be in [0, {vocab_size})")
    text = await asyncio.to_thread(generator.codec.tokenizer.decode, body.tokens, skip_special_tokens=False)
    return DetokenizeResponse(prompt=text)


@router.get("/tokenizer_info", response_model=TokenizerInfo)
async def tokenizer_info(generator: Any = Depends(get_generator)) -> TokenizerInfo:
    """The tokenizer's special tokens and sizes."""
    tokenizer, info = generator.codec.tokenizer, generator.info
    eos = info.eos_token_ids[0] if info.eos_token_ids else None
    return TokenizerInfo(
        tokenizer_class=type(tokenizer.model).__name__,
        eos_token=None if eos is None else tokenizer.id_to_token(int(eos)),
        bos_token=None if info.bos_token_id is None else tokenizer.id_to_token(int(info.bos_token_id)),
        vocab_size=generator.codec.vocab_size,
        model_max_length=generator.max_context,
    )
