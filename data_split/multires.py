"""Lower-resolution sources: which branches they determine, and those branches' values.

Pure array math, no Ray (docs/design.md section 1, item 5). A source whose images
are the ``fr x fc`` box averages of full-resolution ``H x W`` images
(``fr | r``, ``fc | c``) determines branch ``k`` exactly iff row ``k`` of the
split matrix ``T``, laid out on the ``r x c`` phase grid, is constant on every
``fr x fc`` block of phases. Then, with ``g_k[i, j]`` the value of row ``k`` on
block ``(i, j)`` and ``L`` the low-resolution image,

    branch_k = fr*fc * sum_ij g_k[i, j] * L[:, :, i::r/fr, j::c/fc]

(each block sums ``fr*fc`` full-resolution pixels, of which ``L`` holds the
mean). It is read off the matrix, never from a table: the 1-D ``dct`` feeds
only branch 0 (the mean); ``haar2`` with a 2x-smaller source feeds every
branch with ``kr < r/2, kc < c/2``, a whole pyramid level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_split.transforms import _as_matrix_like, _permute, polyphase_split

CONSTANT_ATOL = 1e-9  # matrix entries within this of each other count as equal


def _blocks(matrix: np.ndarray, r: int, c: int, fr: int, fc: int) -> np.ndarray:
    """Rows of ``matrix`` on the phase grid, cut into blocks: ``(K, r/fr, fr, c/fc, fc)``."""
    if fr < 1 or fc < 1 or r % fr or c % fc:
        raise ValueError(f"reduction factors (fr, fc) = ({fr}, {fc}) must divide the split (r, c) = ({r}, {c})")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (r * c, r * c):
        raise ValueError(f"split matrix has shape {m.shape}, expected ({r * c}, {r * c}) for r={r}, c={c}")
    return m.reshape(r * c, r // fr, fr, c // fc, fc)  # phase a = i*fr + da, b = j*fc + db


def fed_branches(matrix: np.ndarray, r: int, c: int, fr: int, fc: int) -> list[int]:
    """Branches that an ``fr x fc``-times smaller source determines: rows constant on every phase block."""
    blocks = _blocks(matrix, r, c, fr, fc)
    spread = np.ptp(blocks, axis=(2, 4))  # (K, r/fr, c/fc): max - min of each row on each block
    return [int(k) for k in np.flatnonzero((spread <= CONSTANT_ATOL).all(axis=(1, 2)))]


def lowres_matrix(matrix: np.ndarray, r: int, c: int, fr: int, fc: int) -> tuple[list[int], np.ndarray]:
    """The fed branches and ``G`` ``(n_fed, (r/fr)*(c/fc))``: ``branch = G @ polyphase(L, r/fr, c/fc)``.

    ``G[n, i*(c/fc) + j] = fr*fc * g_k[i, j]`` for the ``n``-th fed branch ``k``.
    """
    fed = fed_branches(matrix, r, c, fr, fc)
    g = _blocks(matrix, r, c, fr, fc)[fed][:, :, 0, :, 0]  # (n_fed, r/fr, c/fc): one entry per block
    return fed, fr * fc * g.reshape(len(fed), -1)


def lowres_components(x_low: Any, r: int, c: int, fr: int, fc: int, matrix: np.ndarray) -> tuple[list[int], Any]:
    """Fed branches and their values ``(N, n_fed, C, H/r, W/c)`` from low-resolution images ``(N, C, H/fr, W/fc)``.

    Equal to ``spectral_components(x, r, c, matrix)[:, fed]`` when ``x_low`` is the exact
    ``fr x fc`` box average of ``x``. ``x_low`` must be floating point (numpy or torch).
    """
    fed, g = lowres_matrix(matrix, r, c, fr, fc)
    phases = polyphase_split(x_low, r // fr, c // fc)  # (N, C, H/r, W/c, (r/fr)*(c/fc))
    s = phases @ _as_matrix_like(g.T, x_low)  # (N, C, H/r, W/c, n_fed)
    return fed, _permute(s, (0, 4, 1, 2, 3))


def reduction_factors(full: tuple[int, int], low: tuple[int, int], r: int, c: int, what: str) -> tuple[int, int]:
    """``(fr, fc)`` with ``low == (H/fr, W/fc)``, ``fr | r``, ``fc | c``; else a ``ValueError`` naming ``what``."""
    h, w = full
    allowed = [
        (fr, fc)
        for fr in range(1, r + 1)
        if r % fr == 0 and h % fr == 0
        for fc in range(1, c + 1)
        if c % fc == 0 and w % fc == 0
    ]
    for fr, fc in allowed:
        if (h // fr, w // fc) == tuple(low):
            return fr, fc
    options = ", ".join(f"{h // fr}x{w // fc} (fr={fr}, fc={fc})" for fr, fc in allowed)
    raise ValueError(
        f"{what} has resolution {low[0]}x{low[1]}; with the main source at {h}x{w} and the split r x c = {r}x{c} "
        f"it must be (H/fr, W/fc) with fr | r and fc | c: one of {options}"
    )


def plan_extra_source(
    matrix: np.ndarray, r: int, c: int, full: tuple[int, int], low: tuple[int, int], what: str, transform: str
) -> tuple[int, int, list[int]]:
    """``(fr, fc, fed branches)`` of an extra source; ``ValueError`` for a wrong resolution or for feeding nothing."""
    fr, fc = reduction_factors(full, low, r, c, what)
    fed = fed_branches(matrix, r, c, fr, fc)
    if not fed:
        raise ValueError(
            f"{what} ({low[0]}x{low[1]}, {fr}x{fc} box averages of {full[0]}x{full[1]}) feeds no branch: no row of "
            f"the {transform!r} matrix of the {r}x{c} split is constant on {fr}x{fc} blocks of phases, so no branch "
            "is determined by images at that resolution (the 1-D 'dct' and 'haar' have a constant row 0, "
            "'haar2' a whole coarse pyramid level; 'identity' and 'dft' have none)"
        )
    return fr, fc, fed
