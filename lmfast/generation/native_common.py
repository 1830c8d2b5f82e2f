"""What lmfast's ONNX Runtime ops and their graph rewrites share: the op domain, and the int8
rounding of activations that the quantized kernels and their NumPy references agree on. A leaf
module, so that native_ops, quant_pack and native_gqa import it and never each other in a circle."""

from __future__ import annotations

import numpy as np

DOMAIN = "lmfast"
"""The custom-op domain of every lmfast op (csrc/ortops/register.cc)."""


def quantize_activations(a: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of A[..., K] as integers in [-127, 127] per `block` elements, and each block's scale
    (max |x| / 127; x = q * scale), as lmfast.QuantizedMatMul rounds them (fp32, nearest even)."""
    k = a.shape[-1]
    blocks = -(-k // block)
    padded = np.zeros((*a.shape[:-1], blocks * block), dtype=np.float32)
    padded[..., :k] = a
    padded = padded.reshape(*a.shape[:-1], blocks, block)
    amax = np.abs(padded).max(axis=-1)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(padded * inverse[..., None]).astype(np.int64)
    return q, (amax / np.float32(127.0)).astype(np.float32)


def block_dot_reference(
    a: np.ndarray, q: np.ndarray, zero: np.ndarray, w_scales: np.ndarray, block: int
) -> np.ndarray:
    """What every quantized kernel computes once its weights are integers q [N, blocks, block] with
    zero points and scales [N, blocks]: A's rows rounded per block (`quantize_activations`), then
    the sum over blocks of scale_w * scale_x * (xq . q - zero point * sum xq), in float64."""
    xq, x_scales = quantize_activations(a, block)  # [..., blocks, block], [..., blocks]
    dots = np.einsum("...bi,nbi->...nb", xq, q.astype(np.int64))
    dots = dots - zero.astype(np.int64) * xq.sum(axis=-1)[..., None, :]
    terms = dots * w_scales.astype(np.float64) * x_scales[..., None, :].astype(np.float64)
    return terms.sum(axis=-1).astype(np.float32)
