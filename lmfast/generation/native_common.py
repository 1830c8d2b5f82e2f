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
