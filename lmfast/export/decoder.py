"""The graph that becomes `model.onnx`: one decoder step with an explicit, flat KV cache.

Two cache layouts (docs/architecture.md §3):
- in place (`InPlaceDecoder`, GPT-2 and Llama): preallocated per-layer buffers that the step
  writes its new keys/values into and reads only as far as each row holds, so a step costs the
  same at any context length (`BufferAttention`).
- concat (every family): `forward(input_ids, attention_mask, position_ids, logits_index, *past)
  -> (logits, *present)` with present = past + the new columns. One graph serves the prompt (past
  of length 0) and every decode step; the attention mask is a real input (left-padded batches
  work). `logits_index` (K,) picks the new positions whose logits are computed, shared by every
  row: `[T - 1]` for a normal step (the vocabulary projection runs for the last position only),
  `arange(T)` when a request asks for prompt logprobs; logits are (B, K, V).

Two ways to build it, weights shared with the Hugging Face model (nothing copied):
- `TransformersDecoder`, for every family in `families.EXPORTABLE_FAMILIES`: transformers' own
  modeling code run on a `DynamicCache` filled from the flat inputs, traced by the exporter. Each
  family's details (q/k norms, fused qkv, soft-capping, sliding windows, partial rotary) come
  from transformers itself, so a new family needs a parity test, not a new decoder.
- `GPT2Decoder` / `LlamaDecoder`, hand-written steps over the HF layers: the fast path for GPT-2
  and Llama where they apply (see `build_decoder` for the measured difference).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmfast.models.families import check_exportable

# finite, so a fully masked query (a left-pad position) averages instead of producing NaN that
# would leak through the cache; also representable in float16
MASK_VALUE = -65504.0


class TransformersDecoder(nn.Module):
    """Any HF causal LM with a KV cache as a single step over flat (B, n_kv_head, T, head_dim) tensors.

    The cache handed to the model is a plain `DynamicCache` (full-length layers, also for
    sliding-window layers): the window is applied by transformers' own sliding mask over the cache
    positions, so every layer's present is past + T long, as the loop's cache operations expect.
    Attention runs transformers' eager implementation, the one every family has (Gemma 2's
    soft-capping has no other), and the exporter traces it into standard operators.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model.set_attn_implementation("eager")
        self.model = model.eval()
        # the cache geometry as the model itself produces it (some families set head_dim apart
        # from hidden/heads, some share no kv heads); one token is enough to see it
        with torch.no_grad():
            probe = model(
                input_ids=torch.zeros(1, 1, dtype=torch.int64),
                use_cache=True,
                past_key_values=self._cache([]),
                logits_to_keep=1,
            ).past_key_values
        keys = probe.layers[0].keys
        self.n_layer = len(probe.layers)
        self.num_kv_heads, self.head_dim = int(keys.shape[1]), int(keys.shape[3])
        self.n_head = int(getattr(model.config, "num_attention_heads", self.num_kv_heads))

    @staticmethod
    def _cache(past: list[torch.Tensor] | tuple[torch.Tensor, ...]):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        return cache

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) int64
        attention_mask: torch.Tensor,  # (B, P + T) int64
        position_ids: torch.Tensor,  # (B, T) int64
        logits_index: torch.Tensor,  # (K,) int64 new positions whose logits are computed
        *past: torch.Tensor,  # 2 * n_layer of (B, n_kv_head, P, D)
    ) -> tuple[torch.Tensor, ...]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=self._cache(past),
            use_cache=True,
            logits_to_keep=logits_index,  # a tensor: these positions only (transformers' own rule)
        )
        presents: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


class GPT2Decoder(nn.Module):
    """GPT2LMHeadModel as a single step with the cache as flat (B, n_head, T, head_dim) tensors."""

    def __init__(self, model: nn.Module, fused_attention: bool = False) -> None:
        super().__init__()
        self.fused_attention = fused_attention
        config = model.config
        unsupported = [
            name
            for name, bad in (
                (
                    "scale_attn_by_inverse_layer_idx",
                    getattr(config, "scale_attn_by_inverse_layer_idx", False),
                ),
                ("reorder_and_upcast_attn", getattr(config, "reorder_and_upcast_attn", False)),
                ("add_cross_attention", getattr(config, "add_cross_attention", False)),
            )
            if bad
        ]
        if unsupported:
            raise ValueError(f"GPT-2 config options not supported by the exporter: {', '.join(unsupported)}")
        self.model = model.eval()
        self.n_layer = config.n_layer
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scale = 1.0 / math.sqrt(self.head_dim) if getattr(config, "scale_attn_weights", True) else 1.0

    @property
    def num_kv_heads(self) -> int:
        return self.n_head

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) int64
        attention_mask: torch.Tensor,  # (B, P + T) int64
        position_ids: torch.Tensor,  # (B, T) int64
        logits_index: torch.Tensor,  # (K,) int64 new positions whose logits are computed
        *past: torch.Tensor,  # 2 * n_layer of (B, H, P, D)
    ) -> tuple[torch.Tensor, ...]:
        attention = StepAttention(
            attention_mask, input_ids.shape[1], self.n_head, self.n_head, self.scale, self.fused_attention
        )
        return self.step(input_ids, position_ids, past, attention, _keep_positions(logits_index))

    def step(self, input_ids, position_ids, past, attention, keep) -> tuple[torch.Tensor, ...]:
        """The layers over `attention` (either cache layout); `keep` picks the hidden states whose
        logits are computed."""
        transformer = self.model.transformer
        h = transformer.wte(input_ids) + transformer.wpe(position_ids)  # (B, T, C)
        C = h.shape[2]
        presents: list[torch.Tensor] = []
        for i, block in enumerate(transformer.h):
            q, k, v = _dense(block.attn.c_attn, block.ln_1(h)).split(C, dim=2)
            y, k, v = attention(q, k, v, past[2 * i], past[2 * i + 1])
            presents += [k, v]
            h = h + _dense(block.attn.c_proj, y)
            h = h + _dense(block.mlp.c_proj, block.mlp.act(_dense(block.mlp.c_fc, block.ln_2(h))))
        logits = self.model.lm_head(transformer.ln_f(keep(h)))  # usually the last position only
        return (logits, *presents)


class LlamaDecoder(nn.Module):
    """LlamaForCausalLM as a single step; the cache holds the n_kv_head (grouped) keys/values."""

    def __init__(self, model: nn.Module, fused_attention: bool = False) -> None:
        super().__init__()
        self.fused_attention = fused_attention
        config = model.config
        if getattr(config, "sliding_window", None):
            raise ValueError(
                "Llama-family models with sliding-window attention are not supported by the exporter"
            )
        self.model = model.eval()
        self.n_layer = config.num_hidden_layers
        self.n_head = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        # one product for q, k and v and one for the MLP's gate and up, on weights stacked once
        # here: 3 fewer operators per layer in the graph (and in a quantized graph 3 fewer kernels)
        layers = model.model.layers
        self.qkv = nn.ModuleList(
            _stacked(a.q_proj, a.k_proj, a.v_proj) for a in (layer.self_attn for layer in layers)
        )
        self.gate_up = nn.ModuleList(_stacked(layer.mlp.gate_proj, layer.mlp.up_proj) for layer in layers)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) int64
        attention_mask: torch.Tensor,  # (B, P + T) int64
        position_ids: torch.Tensor,  # (B, T) int64
        logits_index: torch.Tensor,  # (K,) int64 new positions whose logits are computed
        *past: torch.Tensor,  # 2 * n_layer of (B, n_kv_head, P, D)
    ) -> tuple[torch.Tensor, ...]:
        attention = StepAttention(
            attention_mask,
            input_ids.shape[1],
            self.n_head,
            self.num_kv_heads,
            self.scale,
            self.fused_attention,
        )
        return self.step(input_ids, position_ids, past, attention, _keep_positions(logits_index))

    def step(self, input_ids, position_ids, past, attention, keep) -> tuple[torch.Tensor, ...]:
        """The layers over `attention` (either cache layout); `keep` picks the hidden states whose
        logits are computed."""
        inner = self.model.model
        h = inner.embed_tokens(input_ids)  # (B, T, C)
        B, T, _ = h.shape
        cos, sin = inner.rotary_emb(h, position_ids)  # (B, T, D) each
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(inner.layers):
            q_width, kv_width = self.n_head * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = self.qkv[i](_rms_norm(layer.input_layernorm, h)).split(
                [q_width, kv_width, kv_width], dim=2
            )
            q, k = _rotary(q, k, cos, sin, self.n_head, self.num_kv_heads)
            y, k, v = attention(q, k, v, past[2 * i], past[2 * i + 1])
            presents += [k, v]
            h = h + layer.self_attn.o_proj(y)
            mlp = layer.mlp
            gate, up = self.gate_up[i](_rms_norm(layer.post_attention_layernorm, h)).chunk(2, dim=2)
            h = h + mlp.down_proj(mlp.act_fn(gate) * up)
        logits = self.model.lm_head(_rms_norm(inner.norm, keep(h)))  # usually the last position only
        return (logits, *presents)


class StepAttention:
    """Attention for one forward step, shared by every layer: masked attention of the new tokens
    over the cache plus themselves, which also extends the cache.

    By default the attention is written out in standard operators. While exporting with `fused`
    (`--attention fused`) it emits ONNX Runtime's MultiHeadAttention contrib operator instead
    (where the key/value heads equal the query heads), fed the padding mask and
    `unidirectional=1`: one node for the cache concat, transposes, scores and softmax, which
    halves the graph (16M benchmark model: ~100 -> ~48 nodes). Timed in lmfast's own decode loop
    on CPU (2 threads, order rotated) it was no faster: within 2% on the 16M model (30 rounds,
    twice) and 0-9% slower on the 82M one; bare `session.run` loops had suggested 10-17%. So
    plain is the default, and fused stays an option for ONNX Runtime builds whose fused kernels
    do better (its CUDA kernels have not been measured here).
    """

    def __init__(
        self,
        attention_mask: torch.Tensor,
        query_length: int,
        num_heads: int,
        num_kv_heads: int,
        scale: float,
        fused: bool,
    ) -> None:
        """attention_mask: (B, P + T) int64, 1 for real tokens; query_length: T."""
        self.num_heads, self.num_kv_heads, self.scale = num_heads, num_kv_heads, scale
        self.fused = fused and num_kv_heads == num_heads and torch.onnx.is_in_onnx_export()
        if self.fused:
            self.mask = attention_mask.to(torch.int32)  # MultiHeadAttention's key_padding_mask
        else:
            self.mask = _allowed(attention_mask, query_length, attention_mask.shape[1])

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q: (B, T, H * D); k, v: (B, T, Hkv * D); past_k, past_v: (B, Hkv, P, D).

        Returns:
            (output (B, T, H * D), present_k and present_v (B, Hkv, P + T, D)).
        """
        B, T, width = q.shape
        D = width // self.num_heads
        if self.fused:
            present = (B, self.num_heads, past_k.shape[2] + T, D)
            return torch.onnx.ops.symbolic_multi_out(
                "com.microsoft::MultiHeadAttention",
                (q, k, v, None, self.mask, None, past_k, past_v),
                {
                    "num_heads": self.num_heads,
                    "scale": self.scale,
                    "unidirectional": 1,
                    "mask_filter_value": MASK_VALUE,
                },
                dtypes=[q.dtype] * 3,
                shapes=[(B, T, width), present, present],
                version=1,
            )
        present_k = torch.cat([past_k, k.view(B, T, self.num_kv_heads, D).transpose(1, 2)], dim=2)
        present_v = torch.cat([past_v, v.view(B, T, self.num_kv_heads, D).transpose(1, 2)], dim=2)
        keys, values = present_k, present_v
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:  # grouped-query attention: each kv head serves `groups` query heads
            keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
        queries = q.view(B, T, self.num_heads, D).transpose(1, 2)  # (B, H, T, D)
        scores = torch.matmul(queries, keys.transpose(-1, -2)) * self.scale  # (B, H, T, P + T)
        scores = torch.where(self.mask, scores, torch.tensor(MASK_VALUE, dtype=scores.dtype))
        y = torch.matmul(torch.softmax(scores, dim=-1), values)  # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, width), present_k, present_v


class BufferAttention:
    """Attention over preallocated cache buffers that the step updates in place: ONNX Runtime's
    GroupQueryAttention contrib operator, bound by the backend to one buffer per layer for both
    past and present (lmfast.generation.slot_cache).

    Each row's tokens fill its buffer from column 0 (right padded); `seqlens_k` (B,) int32 says
    how many a row holds after this step, minus one, and `total_sequence_length` the most any row
    holds. A step reads and writes only those columns: no concat of the whole cache, no copy of
    the grouped key/value heads per query head, nothing proportional to the buffer's capacity.
    A prompt step (T = total_sequence_length) takes right-padded rows; every later step is T = 1.
    """

    def __init__(
        self,
        seqlens_k: torch.Tensor,
        total_sequence_length: torch.Tensor,
        num_heads: int,
        num_kv_heads: int,
        scale: float,
    ) -> None:
        if not torch.onnx.is_in_onnx_export():
            raise RuntimeError("the in-place cache step exists only as an exported ONNX graph")
        self.seqlens_k, self.total = seqlens_k, total_sequence_length
        self.num_heads, self.num_kv_heads, self.scale = num_heads, num_kv_heads, scale

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q: (B, T, H * D); k, v: (B, T, Hkv * D); past_k, past_v: (B, Hkv, capacity, D).

        Returns:
            (output (B, T, H * D), the same buffers with this step's keys and values written).
        """
        cache = past_k.dtype  # an fp16 cache under fp32 compute: the new keys/values are rounded
        y, present_k, present_v = torch.onnx.ops.symbolic_multi_out(
            "com.microsoft::GroupQueryAttention",
            (q.to(cache), k.to(cache), v.to(cache), past_k, past_v, self.seqlens_k, self.total),
            {"num_heads": self.num_heads, "kv_num_heads": self.num_kv_heads, "scale": self.scale},
            dtypes=[cache] * 3,
            shapes=[q.shape, past_k.shape, past_v.shape],
            version=1,
        )
        return y.to(q.dtype), present_k, present_v


class InPlaceDecoder(nn.Module):
    """A hand-written step (GPT-2, Llama) over cache buffers updated in place (`BufferAttention`).

    `forward(input_ids, position_ids, seqlens_k, total_sequence_length, logits_index, *past)
    -> (logits, *present)`: inputs right padded, each present the same buffer as its past (the
    backend binds them to one array), and `logits_index` (K,) indexes the flattened B * T
    positions, so each row's own last token can be picked: logits are (K, V).
    """

    def __init__(self, step: GPT2Decoder | LlamaDecoder) -> None:
        super().__init__()
        self.inner = step
        self.model = step.model
        self.n_layer, self.n_head = step.n_layer, step.n_head
        self.num_kv_heads, self.head_dim = step.num_kv_heads, step.head_dim

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) int64, right padded
        position_ids: torch.Tensor,  # (B, T) int64
        seqlens_k: torch.Tensor,  # (B,) int32: tokens each row holds after this step, minus one
        total_sequence_length: torch.Tensor,  # () int32: the most any row holds after this step
        logits_index: torch.Tensor,  # (K,) int64 flat positions (row * T + column) to project
        *past: torch.Tensor,  # 2 * n_layer of (B, n_kv_head, capacity, D)
    ) -> tuple[torch.Tensor, ...]:
        attention = BufferAttention(
            seqlens_k, total_sequence_length, self.n_head, self.num_kv_heads, self.inner.scale
        )
        return self.inner.step(input_ids, position_ids, past, attention, _keep_flat(logits_index))


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm, exported as ONNX Runtime's one SimplifiedLayerNormalization node (the
    traced module is 7: Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul, and ONNX Runtime's own
    fusions leave them apart)."""
    if not torch.onnx.is_in_onnx_export():
        return norm(x)
    return torch.onnx.ops.symbolic(
        "::SimplifiedLayerNormalization",
        (x, norm.weight),
        {"axis": -1, "epsilon": float(norm.variance_epsilon)},
        dtype=x.dtype,
        shape=x.shape,
        version=1,
    )


def _rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int, n_kv_head: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's rotary embedding of q (B, T, H*D) and k (B, T, KV*D), token-major in and out.

    Exported as two ONNX Runtime RotaryEmbedding nodes (the traced `apply_rotary_pos_emb` is
    about 14 operators per layer). The nodes index their cos/sin "cache" by position id; here the
    cache is this step's own cos/sin rows (B*T of them, from the model's rotary module, so every
    rope scaling is kept) and the ids are 0..B*T-1.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, T, _ = q.shape
    head_dim = q.shape[-1] // n_head
    half = head_dim // 2
    exported = torch.onnx.is_in_onnx_export() and cos.shape[-1] == head_dim
    if not exported:
        q4, k4 = q.view(B, T, n_head, head_dim), k.view(B, T, n_kv_head, head_dim)
        q4, k4 = apply_rotary_pos_emb(q4, k4, cos, sin, unsqueeze_dim=2)
        return q4.flatten(2), k4.flatten(2)
    cos_rows = cos[..., :half].reshape(B * T, half)  # HF's cos is cat(freqs, freqs)
    sin_rows = sin[..., :half].reshape(B * T, half)
    rows = torch.arange(B * T, device=q.device).view(B, T)
    return tuple(
        torch.onnx.ops.symbolic(
            "com.microsoft::RotaryEmbedding",
            (x, rows, cos_rows, sin_rows),
            {"interleaved": 0, "num_heads": heads},
            dtype=x.dtype,
            shape=x.shape,
            version=1,
        )
        for x, heads in ((q, n_head), (k, n_kv_head))
    )  # type: ignore[return-value]


def _stacked(*linears: nn.Linear) -> nn.Linear:
    """One Linear computing `linears` side by side (their outputs concatenated)."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    stacked = nn.Linear(weight.shape[1], weight.shape[0], bias=linears[0].bias is not None)
    with torch.no_grad():
        stacked.weight.copy_(weight)
        if stacked.bias is not None:
            stacked.bias.copy_(torch.cat([linear.bias.detach() for linear in linears]))
    return stacked.to(weight.dtype).eval()


def _keep_positions(logits_index: torch.Tensor):
    """(B, T, C) -> (B, K, C): the same positions of every row (the concat graph's rule)."""
    return lambda h: h.index_select(1, logits_index)


def _keep_flat(logits_index: torch.Tensor):
    """(B, T, C) -> (K, C): positions of the flattened rows, each row its own (in-place graph)."""
    return lambda h: h.flatten(0, 1).index_select(0, logits_index)


def _dense(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """HF GPT-2's Conv1D (weight stored (in, out)) as MatMul + Add on the 3-D activations, the
    pattern ONNX Runtime's fusions recognise (Conv1D traces to a 2-D Gemm between Reshapes)."""
    return torch.matmul(x, conv.weight) + conv.bias


def _allowed(attention_mask: torch.Tensor, query_length: int, key_length: int) -> torch.Tensor:
    """(B, 1, T, P + T) bool: a query sees unpadded keys at or before its own position."""
    key_index = torch.arange(key_length, device=attention_mask.device)
    query_index = torch.arange(query_length, device=attention_mask.device) + (key_length - query_length)
    causal = key_index[None, :] <= query_index[:, None]  # (T, P + T)
    return causal[None, None, :, :] & attention_mask[:, None, None, :].bool()


def build_decoder(
    model: nn.Module, fused_attention: bool = False, decoder: str = "auto", kv_cache: str = "auto"
) -> nn.Module:
    """The export module for a loaded HF causal LM.

    decoder: "auto" takes the hand-written step for GPT-2 and Llama where it applies and
    transformers' own modeling code (`TransformersDecoder`) for every other family; "transformers"
    forces the latter. fused_attention: hand-written steps only, ONNX Runtime's MultiHeadAttention
    where the key/value heads equal the query heads. kv_cache: "inplace" wraps the hand-written
    step in `InPlaceDecoder`, "concat" keeps the graph that returns past + new, "auto" takes
    inplace wherever it applies (a hand-written step, no fused attention).

    Raises:
        ValueError: the config cannot be exported (`families.export_refusal` says why), or
            kv_cache "inplace" where it does not apply.
    """
    config = model.config
    check_exportable(config.to_dict(), type(model).__name__)
    if decoder not in ("auto", "transformers"):
        raise ValueError(f"decoder must be 'auto' or 'transformers', got {decoder!r}")
    if kv_cache not in ("auto", "inplace", "concat"):
        raise ValueError(f"kv_cache must be 'auto', 'inplace' or 'concat', got {kv_cache!r}")
    native = None
    if decoder == "auto":
        if config.model_type == "gpt2" and _gpt2_step_applies(config):
            native = GPT2Decoder(model, fused_attention)
        elif config.model_type == "llama" and _llama_step_applies(config):
            native = LlamaDecoder(model, fused_attention)
    inplace = kv_cache == "inplace" or (kv_cache == "auto" and native is not None and not fused_attention)
    if inplace:
        if native is None or fused_attention:
            raise ValueError(
                "--kv_cache inplace needs the hand-written GPT-2/Llama step (--decoder auto on one of "
                "those families) without --attention fused"
            )
        return InPlaceDecoder(native).eval()
    return (native or TransformersDecoder(model)).eval()


def _gpt2_step_applies(config) -> bool:
    return not any(
        getattr(config, name, False)
        for name in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention")
    )


def _llama_step_applies(config) -> bool:
    return not getattr(config, "sliding_window", None)
