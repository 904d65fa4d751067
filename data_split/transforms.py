"""The spectral split: polyphase decomposition plus an orthonormal transform.

Pure array math, no Ray. Every function accepts a numpy array or a torch
tensor (on any device) and returns the same kind, so the pipeline (numpy on
CPU workers) and training code (torch on GPU batches) share one
implementation.

Layout (docs/design.md section 1): an image batch ``x`` of shape ``(N, C, H, W)``
is split into ``K = r*c`` polyphase components; component ``k = a*c + b`` is
``x[:, :, a::r, b::c]``. The components are mixed by an orthonormal ``K x K``
matrix ``T``: ``s = stack @ T.T``. Because ``T`` is orthonormal the split is
lossless: ``stack = s @ T``. The separable ``dct2``/``haar2`` use
``T = T_r (x) T_c`` (``split_matrix``), so branch ``k = kr*c + kc`` is the 2-D
frequency ``(kr, kc)``.

Two layouts of the same numbers:
- ``spectral_components``: branch-major ``(N, K, C, H/r, W/c)``, what the
  pipeline writes (one branch is one contiguous slice);
- ``spectral_split``: DESIGN's ``(N, C, H/r, W/c, K)``, a view of the above.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

TRANSFORMS = ("dct", "dft", "haar", "identity", "dct2", "haar2")
SEPARABLE = {"dct2": "dct", "haar2": "haar"}  # 2-D transform -> its 1-D factor: T = T_r (x) T_c


def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def _permute(a: Any, axes: tuple[int, ...]) -> Any:
    return a.permute(*axes) if _is_torch(a) else a.transpose(axes)


def _as_matrix_like(t: Any, like: Any) -> Any:
    """``t`` (numpy, or a torch buffer of a module) cast to ``like``'s dtype, library and device."""
    # Casting T to an integer dtype would round its entries to 0/1 and return garbage silently.
    floating = like.is_floating_point() if _is_torch(like) else np.issubdtype(like.dtype, np.floating)
    if not floating:
        raise ValueError(f"expected floating point values, got dtype {like.dtype}; convert (e.g. pixels / 255) first")
    if _is_torch(like):
        import torch

        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return np.asarray(t).astype(like.dtype, copy=False)


@lru_cache(maxsize=64)
def _transform_matrix_cached(name: str, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"K must be >= 1, got K={k}")
    n = np.arange(k)
    if name == "dct":
        # DCT-II, orthonormal (scipy.fft.dct(..., norm="ortho")): row 0 is 1/sqrt(K).
        t = np.sqrt(2.0 / k) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * k))
        t[0] /= np.sqrt(2.0)
    elif name == "dft":
        # Discrete Hartley transform: the real-valued, orthonormal (and
        # symmetric) Fourier basis. cas(t) = cos(t) + sin(t). Unlike taking
        # `.real` of a complex FFT, it keeps every bit of information.
        angle = 2 * np.pi * np.outer(n, n) / k
        t = (np.cos(angle) + np.sin(angle)) / np.sqrt(k)
    elif name == "haar":
        if k & (k - 1):
            raise ValueError(f"transform 'haar' needs K = rows*cols to be a power of two, got K={k}")
        t = np.ones((1, 1))
        while t.shape[0] < k:
            m = t.shape[0]
            # Coarse rows: the previous basis on pairs (averages); fine rows: pair differences.
            coarse = np.kron(t, [1.0, 1.0])
            fine = np.kron(np.eye(m), [1.0, -1.0])
            t = np.vstack([coarse, fine]) / np.sqrt(2.0)
    elif name == "identity":
        t = np.eye(k)
    elif name in SEPARABLE:
        raise ValueError(f"transform {name!r} is separable: its matrix depends on (rows, cols), use split_matrix")
    else:
        raise ValueError(f"unknown transform {name!r}; expected one of {', '.join(TRANSFORMS)}")
    t.setflags(write=False)
    return t


def transform_matrix(name: str, k: int) -> np.ndarray:
    """The orthonormal ``(K, K)`` float64 matrix of the 1-D transform ``name`` (not ``dct2``/``haar2``)."""
    return _transform_matrix_cached(name, int(k)).copy()


def split_matrix(name: str, r: int, c: int) -> np.ndarray:
    """The ``(K, K)`` matrix ``T`` that an ``r x c`` split with transform ``name`` applies, ``K = r*c``.

    1-D transforms act on the row-major phase index ``k = a*c + b``; the separable
    ones are ``T = T_r (x) T_c``, so branch ``k = kr*c + kc`` is the 2-D frequency
    ``(kr, kc)`` (``haar2`` needs r and c to be powers of two).
    """
    if name not in SEPARABLE:
        return transform_matrix(name, r * c)
    if r < 1 or c < 1:
        raise ValueError(f"split rows and cols must be >= 1, got r={r}, c={c}")
    one_d = SEPARABLE[name]
    try:
        t = np.kron(transform_matrix(one_d, r), transform_matrix(one_d, c))
    except ValueError as e:  # haar on a side that is not a power of two
        raise ValueError(f"transform {name!r} needs rows and cols that suit {one_d!r} (got {r} x {c}): {e}") from None
    return t


def _check_divisible(shape: tuple[int, ...], r: int, c: int) -> None:
    if len(shape) != 4:
        raise ValueError(f"expected an image batch of shape (N, C, H, W), got shape {tuple(shape)}")
    _, _, h, w = shape
    if r < 1 or c < 1:
        raise ValueError(f"split rows and cols must be >= 1, got r={r}, c={c}")
    if h % r or w % c:
        raise ValueError(
            f"image shape (H, W) = ({h}, {w}) is not divisible by the split (rows, cols) = ({r}, {c}); "
            "choose a split that divides the image size or resize the source (source.image_size)"
        )


def polyphase_split(x: Any, r: int, c: int) -> Any:
    """``(N, C, H, W)`` -> ``(N, C, H/r, W/c, K)``; component ``a*c + b`` is ``x[:, :, a::r, b::c]``."""
    _check_divisible(tuple(x.shape), r, c)
    n, ch, h, w = x.shape
    y = x.reshape(n, ch, h // r, r, w // c, c)  # (N, C, h, a, w, b)
    return _permute(y, (0, 1, 2, 4, 3, 5)).reshape(n, ch, h // r, w // c, r * c)


def spectral_components(x: Any, r: int, c: int, transform: str | np.ndarray = "dct") -> Any:
    """Branch-major spectral components ``(N, K, C, H/r, W/c)`` of ``x`` ``(N, C, H, W)``.

    ``x`` should be floating point; the result has its dtype.
    """
    _check_divisible(tuple(x.shape), r, c)
    k = r * c
    # A torch matrix stays torch: inference's exported module holds T as a buffer (torch.export traces this).
    t = (
        split_matrix(transform, r, c)
        if isinstance(transform, str)
        else transform
        if _is_torch(transform)
        else np.asarray(transform)
    )
    if tuple(t.shape) != (k, k):
        raise ValueError(f"transform matrix has shape {tuple(t.shape)}, expected ({k}, {k}) for r={r}, c={c}")
    n, ch, h, w = x.shape
    y = x.reshape(n, ch, h // r, r, w // c, c)  # (N, C, h, a, w, b)
    phases = _permute(y, (0, 3, 5, 1, 2, 4)).reshape(n, k, ch * (h // r) * (w // c))  # (N, K, C*h*w)
    s = _as_matrix_like(t, x) @ phases  # (K, K) @ (N, K, M) -> (N, K, M)
    return s.reshape(n, k, ch, h // r, w // c)


def spectral_split(x: Any, r: int, c: int, transform: str | np.ndarray = "dct") -> Any:
    """docs/design.md layout ``(N, C, H/r, W/c, K)``: ``s = polyphase_split(x) @ T.T``."""
    return _permute(spectral_components(x, r, c, transform), (0, 2, 3, 4, 1))


def spectral_merge(s: Any, r: int, c: int, transform: str | np.ndarray = "dct") -> Any:
    """Exact inverse of ``spectral_split``: ``(N, C, h, w, K)`` -> ``(N, C, h*r, w*c)``."""
    if len(s.shape) != 5 or s.shape[-1] != r * c:
        raise ValueError(f"expected spectral components of shape (N, C, h, w, {r * c}), got {tuple(s.shape)}")
    t = split_matrix(transform, r, c) if isinstance(transform, str) else np.asarray(transform)
    stack = s @ _as_matrix_like(t, s)  # (N, C, h, w, K): s @ T undoes s = stack @ T.T
    n, ch, h, w, _ = stack.shape
    y = stack.reshape(n, ch, h, w, r, c)  # (N, C, h, w, a, b)
    return _permute(y, (0, 1, 2, 4, 3, 5)).reshape(n, ch, h * r, w * c)
