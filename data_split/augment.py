"""Exact augmentation in the spectral domain (DESIGN.md section 1, item 6): pure math, numpy or torch.

A translation of the image by whole multiples of (r, c) pixels is a
translation of every sub-image by whole pixels: exact for any ``T``
(``crop``: pad by ``pad`` sub-pixels of zeros -- a zero pixel is zero in
every branch -- and crop back at a random offset, the CIFAR crop at the
branch's resolution). A flip or rotation ``f`` of the image permutes the
phases (a matrix ``P``) and applies ``f`` to every sub-image, so branch
``k`` of the augmented image is ``f(sum_p (T P T^T)[k, p] s_p)``: exact per
branch iff ``T P T^T`` is diagonal with entries +1 or -1, and then it is
``sign[k] * f(s_k)``. ``P`` and the signs are computed from the matrix here,
never tabulated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_split.errors import ConfigError

FLIPS = ("hflip", "vflip", "rot180")  # each applied to a random half of a batch's images
AUGMENTATIONS = ("crop", *FLIPS)


def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def image_op(name: str, x: Any) -> Any:
    """``name`` applied to the last two axes (H, W) of ``x`` (numpy or torch)."""
    if _is_torch(x):
        if name == "hflip":
            return x.flip(-1)
        if name == "vflip":
            return x.flip(-2)
        if name == "rot180":
            return x.flip(-2, -1)
    else:
        if name == "hflip":
            return x[..., ::-1]
        if name == "vflip":
            return x[..., ::-1, :]
        if name == "rot180":
            return x[..., ::-1, ::-1]
    raise ConfigError(f"unknown flip {name!r}; expected one of {', '.join(FLIPS)}")


def phase_permutation(name: str, r: int, c: int) -> np.ndarray:
    """``P`` (K, K): augmented phase ``new`` is ``f`` of phase ``old`` where ``P[new, old] = 1``."""
    m = 2  # a (2r, 2c) image of phase labels is enough to see where each phase goes
    labels = (np.arange(r)[:, None] * c + np.arange(c)[None, :])
    img = np.tile(labels, (m, m))  # pixel (i, j) holds its phase (i % r) * c + (j % c)
    moved = image_op(name, img)
    p = np.zeros((r * c, r * c))
    for i in range(moved.shape[0]):
        for j in range(moved.shape[1]):
            p[(i % r) * c + (j % c), moved[i, j]] = 1
    assert (p.sum(axis=1) == 1).all(), name  # flips map whole phases onto phases
    return p


def branch_signs(name: str, matrix: np.ndarray, r: int, c: int) -> np.ndarray | None:
    """Per-branch signs ``diag(T P T^T)`` when ``name`` is exact for ``T`` (off-diagonal zero, entries +-1), else None."""
    p = phase_permutation(name, r, c)
    t = np.asarray(matrix, dtype=np.float64)
    d = t @ p @ t.T
    signs = np.round(np.diag(d))
    if not np.allclose(d, np.diag(signs), atol=1e-9) or not np.all(np.abs(signs) == 1):
        return None
    return signs


def exact_augmentations(matrix: np.ndarray, r: int, c: int) -> list[str]:
    """The augmentations that are exact for this split: ``crop`` always, flips where ``T P T^T`` is a sign matrix."""
    return ["crop"] + [f for f in FLIPS if branch_signs(f, matrix, r, c) is not None]


def check_augment(names: list[str], matrix: np.ndarray, r: int, c: int, transform: str) -> None:
    """Raise ``ValueError`` naming each augmentation that is not exact, and listing those that are."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"train.augment: unknown {unknown}; expected some of {', '.join(AUGMENTATIONS)}")
    exact = exact_augmentations(matrix, r, c)
    bad = [n for n in names if n not in exact]
    if bad:
        raise ConfigError(f"train.augment: {', '.join(bad)} is not exact for the {r}x{c} {transform} split "
                         f"(T P T^T is not a diagonal of +-1); exact here: {', '.join(exact)}")


def translate(x: Any, dy: int, dx: int) -> Any:
    """Shift the last two axes by (dy, dx) whole pixels, filling with zeros (numpy or torch)."""
    h, w = x.shape[-2], x.shape[-1]
    out = x * 0
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out
