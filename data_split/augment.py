"""Exact augmentation in the spectral domain (docs/design.md section 1, item 6): pure math, numpy or torch.

A translation of the image by whole multiples of (r, c) pixels is a
translation of every sub-image by whole pixels: exact for any ``T``
(``crop``: pad by ``pad`` sub-pixels of zeros -- a zero pixel is zero in
every branch -- and crop back at a random offset, the CIFAR crop at the
branch's resolution). A flip or rotation ``f`` of the image permutes the
phases (a matrix ``P``) and applies ``f`` to every sub-image, so branch
``k`` of the augmented image is ``f(sum_p (T P T^T)[k, p] s_p)``: exact per
branch iff ``T P T^T`` is diagonal with entries +1 or -1, and then it is
``sign[k] * f(s_k)``. ``P`` and the signs are computed from the matrix here,
never tabulated. A quarter turn (``transpose``, ``rot90``, ``rot270``) maps
phases onto phases only when ``r == c``, and keeps a branch's shape only
when its sub-images are square: elsewhere it is not exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_split.errors import ConfigError

QUARTER_TURNS = ("transpose", "rot90", "rot270")  # swap the image's axes: square images, r == c
SYMMETRIES = ("hflip", "vflip", "rot180", *QUARTER_TURNS)  # each applied to a random half of a batch's images
AUGMENTATIONS = ("crop", *SYMMETRIES)


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
        if name == "transpose":
            return x.transpose(-2, -1)
        if name in ("rot90", "rot270"):
            return x.rot90(1 if name == "rot90" else -1, (-2, -1))
    else:
        if name == "hflip":
            return x[..., ::-1]
        if name == "vflip":
            return x[..., ::-1, :]
        if name == "rot180":
            return x[..., ::-1, ::-1]
        if name == "transpose":
            return np.swapaxes(x, -2, -1)
        if name in ("rot90", "rot270"):
            return np.rot90(x, 1 if name == "rot90" else -1, axes=(-2, -1))
    raise ConfigError(f"unknown symmetry {name!r}; expected one of {', '.join(SYMMETRIES)}")


def phase_permutation(name: str, r: int, c: int) -> np.ndarray:
    """``P`` (K, K): augmented phase ``new`` is ``f`` of phase ``old`` where ``P[new, old] = 1`` (quarter turns:
    r == c)."""
    m = 2  # a (2r, 2c) image of phase labels is enough to see where each phase goes
    labels = np.arange(r)[:, None] * c + np.arange(c)[None, :]
    img = np.tile(labels, (m, m))  # pixel (i, j) holds its phase (i % r) * c + (j % c)
    moved = image_op(name, img)
    p = np.zeros((r * c, r * c))
    for i in range(moved.shape[0]):
        for j in range(moved.shape[1]):
            p[(i % r) * c + (j % c), moved[i, j]] = 1
    assert (p.sum(axis=1) == 1).all(), name  # symmetries map whole phases onto phases
    return p


def branch_signs(name: str, matrix: np.ndarray, r: int, c: int) -> np.ndarray | None:
    """Per-branch signs ``diag(T P T^T)`` when ``name`` is exact for ``T`` (off-diagonal zero, entries +-1), else
    None."""
    if name in QUARTER_TURNS and r != c:
        return None  # phase (i, j) would go to (j, i): not a phase of an r x c grid
    p = phase_permutation(name, r, c)
    t = np.asarray(matrix, dtype=np.float64)
    d = t @ p @ t.T
    signs = np.round(np.diag(d))
    if not np.allclose(d, np.diag(signs), atol=1e-9) or not np.all(np.abs(signs) == 1):
        return None
    return signs


def exact_augmentations(matrix: np.ndarray, r: int, c: int, branch_shape: tuple[int, ...] | None = None) -> list[str]:
    """The augmentations that are exact for this split: ``crop`` always, symmetries where ``T P T^T`` is a sign
    matrix (quarter turns also need square sub-images, when ``branch_shape`` (C, h, w) says they are not)."""
    square = branch_shape is None or branch_shape[-1] == branch_shape[-2]
    return ["crop"] + [
        f for f in SYMMETRIES if (square or f not in QUARTER_TURNS) and branch_signs(f, matrix, r, c) is not None
    ]


def check_augment(
    names: list[str], matrix: np.ndarray, r: int, c: int, transform: str, branch_shape: tuple[int, ...] | None = None
) -> None:
    """Raise ``ValueError`` naming each augmentation that is not exact, and listing those that are."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"train.augment: unknown {unknown}; expected some of {', '.join(AUGMENTATIONS)}")
    exact = exact_augmentations(matrix, r, c, branch_shape)
    bad = [n for n in names if n not in exact]
    if bad:
        why = "T P T^T is not a diagonal of +-1"
        if any(n in QUARTER_TURNS for n in bad):
            why += "; quarter turns need r == c and square sub-images"
        raise ConfigError(
            f"train.augment: {', '.join(bad)} is not exact for the {r}x{c} {transform} split "
            f"({why}); exact here: {', '.join(exact)}"
        )


def translate(x: Any, dy: int, dx: int) -> Any:
    """Shift the last two axes by (dy, dx) whole pixels, filling with zeros (numpy or torch)."""
    h, w = x.shape[-2], x.shape[-1]
    out = x * 0
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out
