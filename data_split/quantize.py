"""How a branch's values are stored: uint8 affine codes, float16 or float32 (docs/storage.md, storage version 2).

The one place that encodes and decodes sub-dataset values. The split writes
with ``encode``; training (on the device, per batch) and the exported
ensemble decode with ``dequantize`` / ``decode``. Every function takes a
numpy array or a torch tensor (any device) and returns the same kind;
``dequantize`` is plain elementwise arithmetic, so it traces under
``torch.export``.

uint8 codes: ``value = offset[c] + scale[c] * q``, ``q`` in 0..255. The range
comes from the matrix, not the data: for pixels in [0, 1], branch ``k`` of
``s = T @ phases`` lies in ``[sum_p min(T[k, p], 0), sum_p max(T[k, p], 0)]``,
so no value ever clips and two splits of different data share their codes.
Rounding is to the nearest code (the error is at most ``scale / 2``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_split.manifest import Manifest

DTYPES = ("uint8", "float16", "float32")
LEVELS = 255  # uint8 codes 0..255


def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def branch_ranges(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``, each ``(K,)`` float64: the exact range of every branch for pixels in [0, 1]."""
    t = np.asarray(matrix, dtype=np.float64)
    return np.minimum(t, 0).sum(axis=1), np.maximum(t, 0).sum(axis=1)


def affine_params(matrix: np.ndarray, channels: int) -> list[dict[str, list[float]]]:
    """Per branch ``{"offset": [C floats], "scale": [C floats]}`` of the uint8 codes (the manifest's fields)."""
    lo, hi = branch_ranges(matrix)
    scale = np.maximum(hi - lo, np.finfo(np.float32).tiny) / LEVELS  # a zero row (never orthonormal) stays finite
    return [{"offset": [float(lo[k])] * channels, "scale": [float(scale[k])] * channels} for k in range(len(lo))]


def _per_channel(v: Any, like: Any) -> Any:
    """``v`` (C,) as float32 broadcastable over ``like`` ``(..., C, h, w)``, in ``like``'s library and device."""
    if _is_torch(like):
        import torch

        v = torch.as_tensor(v, dtype=torch.float32, device=like.device)
    else:
        v = np.asarray(v, dtype=np.float32)
    return v.reshape(-1, 1, 1)


def quantize(x: Any, offset: Any, scale: Any) -> Any:
    """Values ``x`` ``(..., C, h, w)`` float -> uint8 codes, rounded to nearest and clamped to 0..255."""
    q = (x - _per_channel(offset, x)) / _per_channel(scale, x)
    if _is_torch(x):
        import torch

        return torch.round(q).clamp_(0, LEVELS).to(torch.uint8)
    return np.clip(np.rint(q), 0, LEVELS).astype(np.uint8)


def dequantize(q: Any, offset: Any, scale: Any) -> Any:
    """uint8 codes ``(..., C, h, w)`` -> float32 values ``offset + scale * q``."""
    if _is_torch(q):
        import torch

        qf = q.to(torch.float32)
    else:
        qf = np.asarray(q).astype(np.float32)
    return _per_channel(offset, qf) + _per_channel(scale, qf) * qf


def encode(x: Any, dtype: str, offset: Any = None, scale: Any = None) -> Any:
    """Float values -> what is stored for ``dtype`` (``offset``/``scale`` needed for uint8 only)."""
    if dtype == "uint8":
        return quantize(x, offset, scale)
    if dtype not in DTYPES:
        raise ValueError(f"split.dtype: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if _is_torch(x):
        import torch

        return x.to(getattr(torch, dtype))
    return np.asarray(x).astype(dtype)


def decode(stored: Any, dtype: str, offset: Any = None, scale: Any = None) -> Any:
    """What was stored for ``dtype`` -> float32 values (the inverse of ``encode`` up to its rounding)."""
    if dtype == "uint8":
        return dequantize(stored, offset, scale)
    if _is_torch(stored):
        import torch

        return stored.to(torch.float32)
    return np.asarray(stored).astype(np.float32)


def branch_codec(manifest: Manifest, k: int) -> tuple[str, Any, Any]:
    """``(dtype, offset, scale)`` of branch ``k`` from a version-2 or -3 manifest (offset/scale None unless uint8)."""
    dtype, b = manifest.split.dtype, manifest.branches[k]
    if dtype == "uint8":
        return dtype, np.asarray(b.offset, np.float32), np.asarray(b.scale, np.float32)
    return dtype, None, None
