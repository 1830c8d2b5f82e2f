"""The torch backend: a Hugging Face causal LM run step by step with a KV cache.

The reference the ONNX backend is checked against, and the GPU path. Two cache layouts:

- concat (the reference, the default on CPUs): the loop's left-padded layout, a `DynamicCache`
  that grows by concatenation every step; rows joining or leaving copy the whole cache.
- in-place (the default on CUDA, `cache="inplace"` anywhere): a `SlotCache` of preallocated torch
  buffers on the model's device, the same slots the ONNX in-place export uses. A decode step
  writes one column per row into the buffers and copies nothing else; a row that leaves frees its
  slot, a row that joins is copied into a free one (its own columns only).

With `device_sampling` (the default on CUDA) a decode step's logits stay on the device
(`DeviceLogits`): when no row needs a host-side feature (penalties, bans, bias, grammar, logprobs,
top-k/top-p) the sampler takes the argmax, or an inverse-CDF draw with each row's own seeded
uniform, on the device and only the token ids come back. Otherwise the logits are copied as before.

Weights load in bf16 on CUDA (fp16 on GPUs without bf16) and fp32 on CPUs (`dtype` overrides).
Imports torch and transformers, so it is only imported when chosen.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer

from lmfast.generation.slot_cache import SlotCache

logger = logging.getLogger(__name__)

CacheLayout = Literal["auto", "concat", "inplace"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPUs."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def has_sliding_window(config: Any) -> bool:
    """Whether some layer attends over a window only (the in-place layout keeps no per-layer window)."""
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return True
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)


class TorchBackend:
    """Runs an HF model; the cache travels as a flat list of (B, H, T, D) tensors or a `SlotCache`."""

    name = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "cpu",
        cache: CacheLayout = "auto",
        device_sampling: bool | None = None,
    ) -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        sliding = has_sliding_window(model.config)
        if cache == "inplace" and sliding:
            raise ValueError("the in-place cache keeps no sliding window: use cache='concat' for this model")
        self.inplace = cache == "inplace" or (cache == "auto" and on_cuda and not sliding)
        self.device_sampling = on_cuda if device_sampling is None else device_sampling
        # transformers 5 renamed the cache argument (`past_key_values` -> `cache`)
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )

    @classmethod
    def load(
        cls,
        directory: Path,
        device: str = "cpu",
        num_threads: int | None = None,
        dtype: str | torch.dtype | None = None,
        cache: CacheLayout = "auto",
    ) -> TorchBackend:
        """Load an HF model dir; `dtype` None: `default_dtype(device)` (bf16 on CUDA, fp32 on CPUs)."""
        if num_threads:
            torch.set_num_threads(num_threads)
        if isinstance(dtype, str):
            dtype = DTYPES[dtype]
        dtype = dtype or default_dtype(device)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
        logger.info("loaded %s (%s, %s) on %s", directory, type(model).__name__, dtype, device)
        return cls(model, device, cache=cache)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[torch.Tensor] | SlotCache | None,
        all_logits: bool = False,
    ) -> tuple[Any, list[torch.Tensor] | SlotCache]:
        if self.inplace:
            logits, cache = self._forward_inplace(input_ids, attention_mask, position_ids, past, all_logits)
        else:
            logits, cache = self._forward_concat(input_ids, attention_mask, position_ids, past, all_logits)
        if self.device_sampling and not all_logits and input_ids.shape[1] == 1:
            return DeviceLogits(logits), cache  # a decode step: the sampler may keep them on the device
        return logits.float().cpu().numpy(), cache

    def _run(
        self, input_ids: Any, attention_mask: Any, position_ids: Any, cache: DynamicCache, all_logits: bool
    ) -> tuple[torch.Tensor, Any]:
        out = self.model(
            input_ids=torch.as_tensor(input_ids).to(self.device),
            attention_mask=torch.as_tensor(attention_mask).to(self.device),
            position_ids=torch.as_tensor(position_ids).to(self.device),
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,  # 0: every position (prompt logprobs)
            **{self._cache_arg: cache},
        )
        logits = out.logits if all_logits else out.logits[:, -1]
        return logits, getattr(out, "cache", None) or out.past_key_values

    def _forward_concat(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[torch.Tensor] | None,
        all_logits: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # full-length layers even where the model has a sliding window (without `config`, no
        # layer truncates itself): transformers' sliding mask applies the window over the cache
        # positions, and every layer stays as long as the loop's attention mask, which the
        # loop's select/merge/trim rely on (the ONNX export keeps its cache the same way)
        cache = DynamicCache()
        for i in range(0, len(past or ()), 2):
            cache.update(past[i], past[i + 1], i // 2)
        logits, new_cache = self._run(input_ids, attention_mask, position_ids, cache, all_logits)
        flat: list[torch.Tensor] = []
        for layer in new_cache.layers:
            flat += [layer.keys, layer.values]
        return logits, flat

    def _forward_inplace(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: SlotCache | None,
        all_logits: bool,
    ) -> tuple[torch.Tensor, SlotCache]:
        """The loop's left-padded step on slot buffers: each row writes its new columns after its
        own held ones and attends over them; rows run in their slots (free ones compute a dummy
        token into their column 0, as in the ONNX in-place graph)."""
        steps_given = input_ids.shape[1]
        counts = attention_mask[:, -steps_given:].sum(axis=1)
        if len(counts) == 0 or counts.min() < 1:
            raise ValueError("every row of a step needs at least one real token")
        if past is None:  # fresh prompts: the usual left-padded prefill, then each row into a slot
            logits, flat = self._forward_concat(input_ids, attention_mask, position_ids, None, all_logits)
            return logits, self._slots_from(flat, counts)
        steps = int(counts.max())
        if steps != 1 and input_ids.shape[0] != 1:
            raise ValueError(
                "an in-place cache extends by one token per step once prefilled, or one row by a chunk"
            )
        input_ids, position_ids = input_ids[:, -steps:], position_ids[:, -steps:]  # no all-pad columns
        held = past.lengths + counts
        cache = past.fit(int(held.max()))
        span, slots = cache.span, cache.slots
        ids = np.zeros((span, steps), dtype=np.int64)
        positions = np.zeros((span, steps), dtype=np.int64)
        ids[slots], positions[slots] = input_ids, position_ids
        held_slots = np.ones(span, dtype=np.int64)  # a free slot computes a token into its column 0
        held_slots[slots] = held
        attend = int(held_slots.max())
        held_on_device = torch.as_tensor(held_slots, device=self.device)
        if steps == 1:  # each row's new column right after its own
            columns: int | torch.Tensor = held_on_device - 1
        else:  # one row, a chunk after its held columns
            columns = int(held_slots[0]) - steps
        # built on the device: a (span, attend) host mask copied every step would grow with the context
        mask = (torch.arange(attend, device=self.device)[None, :] < held_on_device[:, None]).long()
        rows = torch.arange(span, device=self.device)
        layers = [
            _SlotLayer(cache.buffers[i], cache.buffers[i + 1], rows, attend - steps, columns)
            for i in range(0, len(cache.buffers), 2)
        ]
        step_cache = DynamicCache()
        step_cache.layers = layers
        logits, _ = self._run(ids, mask, positions, step_cache, all_logits)
        cache.lengths = held
        index = torch.as_tensor(slots, device=logits.device)
        return logits.index_select(0, index), cache

    def _slots_from(self, flat: list[torch.Tensor], counts: np.ndarray) -> SlotCache:
        """A `SlotCache` of left-padded (B, H, T, D) tensors: each row's `counts[b]` real (last)
        columns moved to the front of its slot."""
        batch, heads, steps, head_dim = flat[0].shape
        cache = SlotCache.empty(
            batch,
            len(flat) // 2,
            heads,
            head_dim,
            steps + 1,
            allocate=flat[0].new_zeros,  # masked columns must be finite (0 * NaN)
        )
        shift = torch.as_tensor(steps - counts, device=flat[0].device)
        index = (torch.arange(steps, device=flat[0].device)[None, :] + shift[:, None]) % steps
        index = index[:, None, :, None].expand(batch, heads, steps, head_dim)
        for buffer, tensor in zip(cache.buffers, flat, strict=True):
            buffer[:batch, :, :steps] = tensor.gather(2, index)
        cache.lengths = np.asarray(counts, dtype=np.int64).copy()
        return cache

    @torch.inference_mode()  # the buffers are inference tensors: written only in this mode
    def select(self, past: list[torch.Tensor] | SlotCache, rows: np.ndarray) -> Any:
        if isinstance(past, SlotCache):
            return past.select(rows)
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        return [t.index_select(0, index) for t in past]

    @torch.inference_mode()
    def merge(self, first: Any, second: Any) -> Any:
        if isinstance(first, SlotCache):
            return first.merge(second)
        length = max(first[0].shape[2], second[0].shape[2])
        return [
            torch.cat([_left_pad(a, length), _left_pad(b, length)])
            for a, b in zip(first, second, strict=True)
        ]

    @torch.inference_mode()
    def trim(self, past: Any, columns: int) -> Any:
        if isinstance(past, SlotCache):  # rows start at column 0: no leading padding to drop
            return past
        return [t[:, :, columns:].contiguous() for t in past]

    @torch.inference_mode()
    def prefix(self, past: Any, row: int, first: int, length: int) -> list[torch.Tensor]:
        if isinstance(past, SlotCache):  # rows start at column 0 of their slot
            slot = int(past.slots[row])
            return [b[slot : slot + 1, :, :length].clone() for b in past.buffers]
        return [t[row : row + 1, :, first : first + length].clone() for t in past]

    @torch.inference_mode()
    def extend_from(self, prefix: list[torch.Tensor], length: int, room: int) -> Any:
        if self.inplace:  # buffers the forward writes into: never the stored copy's
            _, heads, _, head_dim = prefix[0].shape
            cache = SlotCache.empty(
                1, len(prefix) // 2, heads, head_dim, length + room + 1, allocate=prefix[0].new_zeros
            )
            for buffer, stored in zip(cache.buffers, prefix, strict=True):
                buffer[:, :, :length] = stored[:, :, :length]
            cache.lengths[:] = length
            return cache
        # DynamicCache concatenates the new columns into new tensors: the copy is only read
        return [t[:, :, :length] for t in prefix]


class _SlotLayer(DynamicLayer):
    """One layer's slot buffers as a transformers cache layer: `update` writes the step's new
    columns into the buffers in place and returns the columns the step attends over."""

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        rows: torch.Tensor,
        seen: int,
        columns: int | torch.Tensor,
    ) -> None:
        super().__init__()
        self.key_buffer, self.value_buffer, self.rows, self.columns = keys, values, rows, columns
        self.span = span = len(rows)
        self.keys, self.values = keys[:span, :, :seen], values[:span, :, :seen]
        self.device = keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        steps = key_states.shape[2]
        end = self.keys.shape[2] + steps
        for buffer, new in ((self.key_buffer, key_states), (self.value_buffer, value_states)):
            if isinstance(self.columns, int):
                buffer[: self.span, :, self.columns : self.columns + steps] = new
            else:  # one new column per row, each at its own place
                buffer[self.rows, :, self.columns] = new[:, :, 0]
        self.keys, self.values = (
            self.key_buffer[: self.span, :, :end],
            self.value_buffer[: self.span, :, :end],
        )
        return self.keys, self.values


class DeviceLogits:
    """A decode step's (B, V) logits left on the model's device. NumPy code sees a host copy
    (`np.asarray`, indexing, `shape`); the sampler's fast path (`next_tokens`) copies ids only."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self.tensor.float().cpu().numpy()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self)[index]

    @torch.inference_mode()
    def next_tokens(
        self,
        vocab_size: int,
        sampling: np.ndarray,
        temperature: np.ndarray,
        top_k: np.ndarray,
        top_p: np.ndarray,
        uniforms: np.ndarray,
    ) -> np.ndarray:
        """(B,) int64 token ids: each row's argmax, except the `sampling` rows, which draw with
        their given uniform as `lmfast.generation.sampling.sample` does on the host: inverse CDF
        over the temperature-scaled softmax, in vocabulary order without top-k/top-p, else over
        the sorted top-k (renormalized) or the nucleus of the full softmax."""
        logits = self.tensor[:, :vocab_size].float()
        tokens = logits.argmax(dim=1)
        if sampling.size:
            device = logits.device
            rows = torch.as_tensor(sampling, device=device)
            divisor = torch.as_tensor(np.maximum(temperature, 1e-6), dtype=torch.float32, device=device)
            scaled = logits.index_select(0, rows) / divisor[:, None]
            k = torch.as_tensor(np.where(top_k > 0, np.minimum(top_k, vocab_size), vocab_size), device=device)
            p = torch.as_tensor(top_p, dtype=torch.float32, device=device)
            filtered = torch.as_tensor((top_k > 0) | (top_p < 1.0), device=device)
            values, ids = scaled.sort(dim=1, descending=True, stable=True)
            values = values.masked_fill(
                torch.arange(vocab_size, device=device)[None, :] >= k[:, None], -torch.inf
            )
            renormalized = torch.as_tensor(top_k > 0, device=device)[:, None]
            norm = torch.where(
                renormalized, values.logsumexp(dim=1, keepdim=True), scaled.logsumexp(dim=1, keepdim=True)
            )
            probs = torch.exp(values - norm)
            probs = torch.where(probs.cumsum(dim=1) - probs < p[:, None], probs, 0.0)  # the top token stays
            # rows without a filter: the full softmax in vocabulary order, exactly as on the host
            probs = torch.where(
                filtered[:, None], probs, torch.exp(scaled - scaled.max(dim=1, keepdim=True).values)
            )
            ids = torch.where(filtered[:, None], ids, torch.arange(vocab_size, device=device)[None, :])
            cumulative = probs.cumsum(dim=1)
            target = torch.as_tensor(uniforms, dtype=torch.float32, device=device) * cumulative[:, -1]
            choice = (cumulative > target[:, None]).int().argmax(dim=1)
            tokens[rows] = ids.gather(1, choice[:, None])[:, 0]
        return tokens.cpu().numpy().astype(np.int64)


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[2]
    if missing == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0))
