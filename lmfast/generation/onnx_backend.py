"""The ONNX Runtime backend: `model.onnx` from `lmfast export onnx`, no torch needed.

Two graph layouts (lmfast.export.decoder). The in-place one (inputs input_ids, position_ids,
seqlens_k, total_sequence_length, logits_index and the cache buffers) keeps the cache in a
`SlotCache` whose buffers ONNX Runtime binds as both past and present, so a step writes only its
new column (CPU provider). The concat one takes input_ids, attention_mask, position_ids,
logits_index and `past_key_values.{i}.key/value`, and returns `logits` of the positions in
logits_index (the last one for a normal step, every one for prompt logprobs) and
`present.{i}.key/value`. Exports made before logits_index existed return last-position logits
only; they serve everything but prompt logprobs. On CPU the concat cache stays in NumPy arrays
that ONNX Runtime reads without copying. On CUDA it stays on the GPU through IO binding; only the
logits come back each step, and the rare cache reshapes (rows joining or leaving) round-trip
through host memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lmfast.generation.backend import NumpyCacheOps
from lmfast.generation.native_ops import inference_session
from lmfast.generation.slot_cache import SlotCache, left_aligned, right_aligned

logger = logging.getLogger(__name__)

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


DEFAULT_SPIN_US = 20
"""How long an idle intra-op worker busy-waits for the next operator before it sleeps."""
DYNAMIC_BLOCK_BASE = 4
"""ONNX Runtime splits a parallel loop into shrinking blocks that threads claim as they go,
instead of one fixed share per thread."""


def session_options(num_threads: int | None, spin_us: int | None = None) -> ort.SessionOptions:
    """Explicit threading for a decode loop: intra-op threads as asked and one inter-op thread (a
    decoder step is a chain of operators).

    Spinning is bounded. A decode step is ~50-100 short operators, and a worker that sleeps
    between them pays a wake-up for each; ONNX Runtime's default unbounded spinning instead fights
    a noisy neighbour for the cores (30-40% slower than no spinning with one busy process beside
    it). Spinning at most 20 us, and never after `run` returns: in lmfast's decode loop (2 threads,
    order rotated, 12 rounds) 12% faster than no spinning on the 16M benchmark model and 4-6% on
    the 82M one. Beside a busy process (timed in bare `run` loops) it was 17% faster at batch 1
    and 9% slower at batch 8. `spin_us=0` turns it off; None means `DEFAULT_SPIN_US`.

    Parallel loops use dynamic block sizes (`DYNAMIC_BLOCK_BASE`): with fixed shares a step waits
    for the slower thread, and on a shared machine one often is. Same loop: 2-5% faster on the
    82M model at batch 1, within noise elsewhere.
    """
    if spin_us is None:
        spin_us = DEFAULT_SPIN_US
    if spin_us < 0:
        raise ValueError(f"spin_us must be >= 0, got {spin_us}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if num_threads:
        options.intra_op_num_threads = num_threads
    options.add_session_config_entry("session.dynamic_block_base", str(DYNAMIC_BLOCK_BASE))
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_us > 0 else "0")
    if spin_us > 0:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OnnxBackend(NumpyCacheOps):
    """One ONNX Runtime session serving both prompt and decode steps."""

    name = "onnx"

    def __init__(self, session: ort.InferenceSession, provider: str = "cpu") -> None:
        self.session = session
        self.swapped_ops = 0
        """How many of the graph's ops lmfast's own replaced (lmfast.generation.native_ops)."""
        self.provider = provider
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = sorted(
            (n for n in inputs if n.startswith("past_key_values.")),
            key=lambda n: (int(n.split(".")[1]), n.endswith("value")),
        )
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.output_names = ["logits", *self.present_names]
        first = inputs[self.past_names[0]]
        self.num_kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.cache_dtype = _NUMPY_DTYPES[first.type]
        self._binding = session.io_binding() if provider == "cuda" else None
        self.has_logits_index = "logits_index" in inputs
        self.inplace = "seqlens_k" in inputs  # --kv_cache inplace: lmfast.generation.slot_cache
        if self.inplace and provider == "cuda":
            # accepted, with its cost: the buffers stay in host memory, bound as they are on the
            # CPU, so ONNX Runtime copies the cache to the GPU and the present back every step
            logger.warning(
                "this export's in-place cache stays in host memory on CUDA: every step copies it to "
                "the GPU and back; for a cache that stays on the GPU export with --kv_cache concat"
            )
        self._inplace_binding = session.io_binding() if self.inplace else None
        # the buffers the in-place binding holds now, and how many of their slots
        self._bound_buffers: list[np.ndarray] | None = None
        self._bound_span = 0
        if self.inplace:  # its logits are written into arrays of ours: (K, V) of a fixed dtype
            logits_info = next(o for o in session.get_outputs() if o.name == "logits")
            self._logits_dtype = _NUMPY_DTYPES[logits_info.type]
            self._vocab_size = logits_info.shape[-1]
            if not isinstance(self._vocab_size, int):
                raise ValueError(f"this export's logits have no fixed vocabulary size: {logits_info.shape}")

    @classmethod
    def load(
        cls,
        directory: Path,
        provider: str = "cpu",
        num_threads: int | None = None,
        spin_us: int | None = None,
        native_ops: bool | None = None,
        native_ops_cache: bool = True,
    ) -> OnnxBackend:
        """Open `directory/model.onnx` on the CPU or CUDA execution provider; on the CPU, with
        lmfast's own ops swapped in (lmfast.generation.native_ops; None: those LMFAST_NATIVE_OPS names,
        True: the default swaps, False: none). `native_ops_cache=False` rewrites in memory, for a
        directory about to move (native_ops.rewritten_source).

        Raises:
            ValueError: provider "cuda" without onnxruntime-gpu / a visible GPU.
        """
        providers = ["CPUExecutionProvider"]
        if provider == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    "provider 'cuda' needs onnxruntime-gpu and a CUDA GPU (pip install lmfast[gpu])"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        options = session_options(num_threads, spin_us)
        session, swapped = inference_session(
            Path(directory) / "model.onnx", options, providers, provider, native_ops, native_ops_cache
        )
        logger.info("loaded %s on %s", directory, session.get_providers()[0])
        backend = cls(session, provider)
        backend.swapped_ops = swapped
        return backend

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list | None,
        all_logits: bool = False,
    ) -> tuple[np.ndarray, list]:
        if self.inplace:
            return self._forward_inplace(input_ids, attention_mask, position_ids, past, all_logits)
        if past is None:
            past = self._empty_past(input_ids.shape[0])
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        steps = input_ids.shape[1]
        if self.has_logits_index:
            feeds["logits_index"] = np.arange(steps if all_logits else 1, dtype=np.int64) + (
                0 if all_logits else steps - 1
            )
        elif all_logits:
            raise ValueError(
                "this export returns last-position logits only (made before prompt logprobs): "
                "export the model again with lmfast export onnx"
            )
        if self._binding is not None:
            logits, present = self._forward_bound(feeds, past)
        else:
            feeds.update(zip(self.past_names, past, strict=True))
            logits, *present = self.session.run(self.output_names, feeds)
        logits = logits.astype(np.float32, copy=False)
        if self.has_logits_index and not all_logits:
            logits = logits[:, -1]
        return logits, present

    def _forward_inplace(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: SlotCache | None,
        all_logits: bool,
    ) -> tuple[np.ndarray, SlotCache]:
        """The loop's left-padded step on the in-place graph: rows right aligned into their
        buffers, each row's last real position projected, the buffers written in place."""
        counts = attention_mask[:, -input_ids.shape[1] :].sum(axis=1)
        steps = int(counts.max(initial=0))
        if len(counts) == 0 or counts.min() < 1:
            raise ValueError("every row of a step needs at least one real token")
        if past is not None and steps != 1 and input_ids.shape[0] != 1:
            # GroupQueryAttention extends a filled cache by several tokens for one row at a time
            raise ValueError(
                "an in-place cache extends by one token per step once prefilled, or one row by a chunk"
            )
        input_ids, position_ids = input_ids[:, -steps:], position_ids[:, -steps:]  # no all-pad columns
        if steps > 1 and (counts != steps).any():
            input_ids, position_ids = right_aligned(input_ids, counts), right_aligned(position_ids, counts)
        batch = input_ids.shape[0]
        if past is None:
            past = SlotCache.empty(
                batch,
                len(self.past_names) // 2,
                self.num_kv_heads,
                self.head_dim,
                steps + 1,
                self.cache_dtype,
            )
        held = past.lengths + counts
        cache = past.fit(int(held.max()))
        span, slots = cache.span, cache.slots
        if span != batch or (slots != np.arange(batch)).any():  # rows in their slots, free ones between
            input_ids, position_ids = (
                _scattered(input_ids, slots, span),
                _scattered(position_ids, slots, span),
            )
            held_slots = np.ones(span, dtype=np.int64)  # a free slot computes a token into its column 0
            held_slots[slots] = held
        else:
            held_slots = held
        if all_logits:
            index = (slots[:, None] * steps + np.arange(steps)[None, :]).reshape(-1)
        else:
            index = slots * steps + counts - 1
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            "seqlens_k": (held_slots - 1).astype(np.int32),
            "total_sequence_length": np.array(held_slots.max(), dtype=np.int32),
            "logits_index": np.ascontiguousarray(index, dtype=np.int64),
        }
        logits = self._run_inplace(feeds, cache, len(index)).astype(np.float32, copy=False)
        cache.lengths = held
        if all_logits:
            logits = left_aligned(logits.reshape(batch, steps, -1), counts)
        return logits, cache

    def _run_inplace(self, feeds: dict[str, np.ndarray], cache: SlotCache, rows: int) -> np.ndarray:
        """One run of the in-place graph; returns the (rows, V) logits.

        The binding outlives the step: the cache buffers, bound as both past and present (their
        first `span` slots), are bound again only for another list of buffers (more slots or
        capacity make one; rows joining or leaving keep it) or another span, and the logits go
        into an array allocated here, so no output is wrapped. Rebinding all 2 * n_layer buffers and wrapping
        every output each step cost 0.6-1.8 ms a step on SmolLM2 (60 buffers, alternating runs), up
        to a tenth of an int4 batch-1 step.
        """
        binding = self._inplace_binding
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        span = cache.span
        if self._bound_buffers is not cache.buffers or self._bound_span != span:
            for past_name, present_name, buffer in zip(
                self.past_names, self.present_names, cache.buffers, strict=True
            ):
                shape, pointer = [span, *buffer.shape[1:]], buffer.ctypes.data  # slots are the first axis
                binding.bind_input(past_name, "cpu", 0, buffer.dtype, shape, pointer)
                binding.bind_output(present_name, "cpu", 0, buffer.dtype, shape, pointer)
            # held, not weakly: while bound, these buffers must not be freed and their memory reused
            self._bound_buffers, self._bound_span = cache.buffers, span
        logits = np.empty((rows, self._vocab_size), dtype=self._logits_dtype)
        binding.bind_output("logits", "cpu", 0, logits.dtype, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits

    def _empty_past(self, batch: int) -> list:
        empty = np.zeros((batch, self.num_kv_heads, 0, self.head_dim), dtype=self.cache_dtype)
        if self._binding is not None:
            return [ort.OrtValue.ortvalue_from_numpy(empty, "cuda", 0) for _ in self.past_names]
        return [empty] * len(self.past_names)

    # --- CUDA: cache as device OrtValues -------------------------------------------------------

    def _forward_bound(self, feeds: dict[str, np.ndarray], past: list) -> tuple[np.ndarray, list]:
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, value in zip(self.past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

    def _to_host(self, past: list) -> list[np.ndarray]:
        return [v.numpy() if isinstance(v, ort.OrtValue) else v for v in past]

    def _to_device(self, past: list[np.ndarray]) -> list:
        return [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", 0) for a in past]

    def select(self, past: list, rows: np.ndarray) -> list:
        if isinstance(past, SlotCache):
            return past.select(rows)
        if self._binding is None:
            return super().select(past, rows)
        return self._to_device(super().select(self._to_host(past), rows))

    def merge(self, first: list, second: list) -> list:
        if isinstance(first, SlotCache):
            return first.merge(second)
        if self._binding is None:
            return super().merge(first, second)
        return self._to_device(super().merge(self._to_host(first), self._to_host(second)))

    def prefix(self, past: list, row: int, first: int, length: int) -> list:
        if isinstance(past, SlotCache):  # rows start at column 0 of their slot
            slot = int(past.slots[row])
            return [np.array(b[slot : slot + 1, :, :length]) for b in past.buffers]
        if self._binding is None:
            return super().prefix(past, row, first, length)
        return super().prefix(self._to_host(past), row, first, length)  # kept in host memory

    def extend_from(self, prefix: list, length: int, room: int) -> list:
        if self.inplace:  # buffers the forward writes into: never the stored copy's
            cache = SlotCache.empty(
                1, len(prefix) // 2, self.num_kv_heads, self.head_dim, length + room + 1, self.cache_dtype
            )
            for buffer, stored in zip(cache.buffers, prefix, strict=True):
                buffer[:, :, :length] = stored[:, :, :length]
            cache.lengths[:] = length
            return cache
        if self._binding is None:
            return super().extend_from(prefix, length, room)
        return self._to_device(super().extend_from(prefix, length, room))

    def trim(self, past: list, columns: int) -> list:
        if isinstance(past, SlotCache):  # rows start at column 0: no leading padding to drop
            return past
        if self._binding is None:
            return super().trim(past, columns)
        return self._to_device(super().trim(self._to_host(past), columns))


def _scattered(array: np.ndarray, slots: np.ndarray, span: int) -> np.ndarray:
    """(B, T) rows placed at their slots of a (span, T) array, zeros in the free slots."""
    placed = np.zeros((span, array.shape[1]), dtype=array.dtype)
    placed[slots] = array
    return placed
