"""Real components with one fault planted, for the tests of fault containment (not mocks: the
wrapped backend and tokenizer do all the real work; only the planted input fails)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lmfast.generation import Generator
from lmfast.generation.text import TextStream

POISON_STOP = "\x00poison-stop"
"""A stop string whose rows fail while decoding their text."""


class PoisonedBackend:
    """A real backend whose forward raises when `poison_id` is among its input ids."""

    def __init__(self, inner: Any, poison_id: int) -> None:
        self.inner = inner
        self.poison_id = poison_id

    def forward(self, input_ids: np.ndarray, *args: Any) -> Any:
        if (input_ids == self.poison_id).any():
            raise RuntimeError("planted fault: poisoned token in a forward call")
        return self.inner.forward(input_ids, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _FailingStream(TextStream):
    def push(self, token_id: int) -> tuple[str, bool]:
        raise RuntimeError("planted fault: decoding this row's text")


class PoisonedCodec:
    """The real codec; rows with `POISON_STOP` among their stop strings fail to decode their text."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def stream(self, stop: list[str]) -> TextStream:
        if POISON_STOP in stop:
            return _FailingStream(self.inner.tokenizer, stop)
        return self.inner.stream(stop)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def poisoned_generator(generator: Generator, poison_word: str) -> tuple[Generator, str]:
    """`generator`'s model and tokenizer with two planted faults: a forward over the last token
    of `poison_word` raises, and a row with stop `POISON_STOP` fails to decode.

    Returns:
        The generator and a prompt that ends in the poisoned token.
    """
    poison_id = generator.codec.encode(poison_word)[-1]
    faulty = Generator(
        PoisonedBackend(generator.backend, poison_id),
        PoisonedCodec(generator.codec),
        generator.info,
        generator.default_params,
        generator.model_name,
    )
    return faulty, f"Truth is a{poison_word}"
