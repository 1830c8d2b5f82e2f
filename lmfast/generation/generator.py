"""`Generator`: prompts in, continuations out, on a torch model or an ONNX Runtime session.

Every call goes through one `DecodeSession`; the backends differ only in how they run a step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from lmfast.generation.backend import Backend
from lmfast.generation.model_files import LOADABLE, ModelInfo, read_json
from lmfast.generation.params import GenerationParams
from lmfast.generation.prefix_cache import PrefixCache
from lmfast.generation.session import DecodeSession
from lmfast.generation.text import TextCodec
from lmfast.models.source import ModelSource, resolve_source

BackendName = Literal["auto", "torch", "onnx"]
MAX_CALL_BATCH = 64


class Generator:
    """Generates text with one KV-cached decode loop (see `DecodeSession`)."""

    def __init__(
        self,
        backend: Backend,
        codec: TextCodec,
        info: ModelInfo,
        default_params: GenerationParams | None = None,
        model_name: str = "model",
    ) -> None:
        self.backend = backend
        self.codec = codec
        self.info = info
        self.default_params = default_params or GenerationParams()
        self.model_name = model_name

    @classmethod
    def load(
        cls,
        path: str | Path | ModelSource,
        backend: BackendName = "auto",
        provider: Literal["cpu", "cuda"] = "cpu",
        num_threads: int | None = None,
        spin_us: int | None = None,
    ) -> Generator:
        """Load an export dir (ONNX Runtime), an experiment dir (its `hf/`), an HF model dir or a
        `.gguf` file (torch; a GGUF is converted once into a cached HF dir).

        Args:
            path: the directory or .gguf file (or its `resolve_source` answer, not resolved again).
            backend: "auto" picks ONNX for an export dir, torch otherwise.
            provider: "cpu" or "cuda" (the ONNX CUDA provider, or the torch model on a GPU).
            num_threads: intra-op threads (None leaves the library default).
            spin_us: ONNX Runtime only: how long an idle worker thread busy-waits for the next
                operator, in microseconds (None: lmfast's default, 20; 0: no spinning, which
                can be better on a machine shared with busy processes).

        Raises:
            FileNotFoundError, ValueError: no usable model at `path`, or a backend that cannot
            read it (an export dir has no torch weights; an HF dir has no model.onnx).
        """
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
        if provider not in ("cpu", "cuda"):
            raise ValueError(f"provider must be 'cpu' or 'cuda', got {provider!r}")
        source = path if isinstance(path, ModelSource) else resolve_source(path, LOADABLE)
        directory, native, path = source.path, source.backend, source.given
        chosen = native if backend == "auto" else backend
        if chosen != native:
            what = "an ONNX export" if native == "onnx" else "a Hugging Face (torch) model"
            raise ValueError(f"{path}: holds {what}; backend={backend!r} cannot load it")
        if chosen == "onnx":
            from lmfast.generation.onnx_backend import OnnxBackend

            runner: Backend = OnnxBackend.load(
                directory, provider=provider, num_threads=num_threads, spin_us=spin_us
            )
        else:
            from lmfast.generation.torch_backend import TorchBackend

            runner = TorchBackend.load(directory, device=provider, num_threads=num_threads)
        return cls(
            backend=runner,
            codec=TextCodec.load(directory),
            info=ModelInfo.from_dir(directory),
            default_params=_default_params(directory),
            model_name=_model_name(Path(path)),
        )

    @property
    def max_context(self) -> int:
        return self.info.max_context

    def count_tokens(self, text: str) -> int:
        return len(self.codec.encode(text))

    def session(
        self,
        max_batch_size: int | None = None,
        step_token_budget: int | None = None,
        prefix_cache: PrefixCache | None = None,
        stall_ratio: float | None = None,
    ) -> DecodeSession:
        """A fresh decode session (continuous batching) on this model; see `DecodeSession` for
        the token budget, the prefix cache and the stall bound (the server sets them, offline
        calls none)."""
        return DecodeSession(
            self.backend, self.codec, self.info, max_batch_size, step_token_budget, prefix_cache, stall_ratio
        )

    def resolve_params(self, params: GenerationParams | None = None, **overrides: Any) -> GenerationParams:
        """`params` (or the model's defaults) with `overrides` applied and validated: the one
        default rule (`GenerationParams.with_request`; an override of None leaves the default)."""
        base = params if params is not None else self.default_params
        return base.with_request(**overrides) if overrides else base

    def __call__(
        self, prompts: str | list[str], params: GenerationParams | None = None, **overrides: Any
    ) -> list[list[str]]:
        """Continue each prompt `num_return_sequences` times, batched together.

        Returns:
            Per prompt, the generated texts (without the prompt).

        Raises:
            ValueError: invalid params, or a prompt that does not fit the model's context.
        """
        params = self.resolve_params(params, **overrides)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        # all rows in one batch, up to a bound that keeps the cache's memory in check
        rows = len(prompts) * params.num_return_sequences
        session = self.session(max_batch_size=max(params.num_return_sequences, min(rows, MAX_CALL_BATCH)))
        owner: dict[int, tuple[int, int]] = {}
        for p, prompt in enumerate(prompts):
            for s, row_id in enumerate(session.add(prompt, params)):
                owner[row_id] = (p, s)
        texts = [[""] * params.num_return_sequences for _ in prompts]
        while len(session):
            for event in session.step():
                if event.error is not None:
                    raise event.error
                p, s = owner[event.row_id]
                texts[p][s] += event.text
        return texts

    def stream(self, prompt: str, params: GenerationParams | None = None, **overrides: Any) -> Iterator[str]:
        """Yield the continuation of one prompt piece by piece as it is decoded."""
        params = self.resolve_params(params, **overrides)
        if params.num_return_sequences != 1:
            raise ValueError("stream() generates one sequence; num_return_sequences must be 1")
        session = self.session(max_batch_size=1)
        session.add(prompt, params)
        while len(session):
            for event in session.step():
                if event.error is not None:
                    raise event.error
                if event.text:
                    yield event.text


def _model_name(path: Path) -> str:
    """The directory's name; a versioned experiment dir (`<name>/<N>`) is called `name/N`."""
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.name.isdigit() else path.name


def _default_params(directory: Path) -> GenerationParams:
    """`generation_config.json` of an export dir; an HF dir's file of that name has HF's own
    format, so only the fields both share are taken from it."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return GenerationParams()
    values = read_json(path)
    try:
        return GenerationParams.from_dict(values)
    except (TypeError, ValueError):
        known = {f.name for f in dataclasses.fields(GenerationParams)} - {"stop", "banned_words", "seed"}
        shared = {k: v for k, v in values.items() if k in known and v is not None}
        if values.get("do_sample") is False:  # HF decodes greedily then, whatever temperature says
            shared = {k: v for k, v in shared.items() if k not in ("top_k", "top_p")} | {"temperature": 0.0}
        try:
            return GenerationParams(**shared)
        except (TypeError, ValueError):
            return GenerationParams()
