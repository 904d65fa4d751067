"""Weight vectors on the simplex for the Tune search: the parametrisation and batched scoring.

Parametrisation: Tune samples ``u_k ~ U(0, 1)`` independently, and

    e_k = -log(1 - u_k)      (an Exp(1) variable),      w = e / sum(e)

so every sample is a valid weight vector, and uniform ``u`` gives the flat Dirichlet, i.e.
the uniform distribution on the simplex. ``u_k -> 1`` gives branch k all the weight, ``u_k -> 0``
none. ``unit_from_simplex`` inverts it (up to scale) to seed the search with known weights.

Candidates per trial: a trial costs Tune ~0.3-1.3 s while scoring one weight vector costs ~1 ms,
so a trial spends a budget of ``n`` candidates on a derivative-free local search from its TPE
proposal (``local_search``): rounds of Dirichlet samples ``Dir(c * w_best + floor)`` around the
best point so far, each round one batched tensor expression; the concentration ``c`` starts broad
(``2K``) and narrows (x1.5 after a round that improved, x3 after one that did not). TPE picks the
starting points; the trial reports the best point it reached.
"""

from __future__ import annotations

import numpy as np

from tune.scoring import nll_and_accuracy

U_MAX = 1.0 - 1e-12  # keeps -log(1 - u) finite
DIRICHLET_FLOOR = 0.02  # added to every alpha so that a zero weight can become non-zero again
ROUND_SIZE = 16  # candidates scored together per local-search round
INITIAL_CONCENTRATION_PER_BRANCH = 2.0  # first round: Dir(2K w), broad
NARROW_ON_SUCCESS = 1.5  # concentration factor after a round that improved ...
NARROW_ON_FAILURE = 3.0  # ... and after one that did not
SCORE_CHUNK_BYTES = 64 * 2**20  # float64 scratch per chunk of candidates


def simplex_from_unit(u: np.ndarray) -> np.ndarray:
    """(..., K) in [0, 1] -> (..., K) weights >= 0 summing to 1."""
    e = -np.log1p(-np.clip(np.asarray(u, dtype=np.float64), 0.0, U_MAX))  # (..., K), Exp(1) when u is uniform
    total = e.sum(axis=-1, keepdims=True)
    k = e.shape[-1]
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 1.0 / k)


def unit_from_simplex(w: np.ndarray) -> np.ndarray:
    """A ``u`` that maps to ``w`` (scaled so that the mean ``e`` is 1)."""
    w = np.asarray(w, dtype=np.float64)
    return 1.0 - np.exp(-w * w.size)


def dirichlet_around(center: np.ndarray, concentration: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, K) samples of ``Dir(concentration * center + floor)``: mean ~ center, spread ~ 1/concentration."""
    alpha = concentration * np.asarray(center, dtype=np.float64) + DIRICHLET_FLOOR  # (K,)
    g = rng.gamma(np.broadcast_to(alpha, (n, alpha.size)))  # (n, K): normalised gammas are Dirichlet
    return g / g.sum(axis=1, keepdims=True)


def local_search(
    center: np.ndarray, budget: int, logits: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, float, float, float]:
    """Best point of ``budget`` candidates (the center included): (weights (K,), nll, acc, center's nll)."""
    K = center.size
    nll, acc = score_candidates(center[None, :], logits, y)
    best_w, best_nll, best_acc, start_nll = center, float(nll[0]), float(acc[0]), float(nll[0])
    used, concentration = 1, INITIAL_CONCENTRATION_PER_BRANCH * K
    while used < budget:
        W = dirichlet_around(best_w, concentration, min(ROUND_SIZE, budget - used), rng)  # (m, K)
        nll, acc = score_candidates(W, logits, y)
        used += len(W)
        j = int(np.argmin(nll))
        if nll[j] < best_nll:
            best_w, best_nll, best_acc = W[j], float(nll[j]), float(acc[j])
            concentration *= NARROW_ON_SUCCESS
        else:
            concentration *= NARROW_ON_FAILURE
    return best_w, best_nll, best_acc, start_nll


def score_candidates(weights: np.ndarray, logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validation NLL and accuracy of each candidate: (B, K), (K, N, C), (N,) -> (B,), (B,)."""
    W = np.asarray(weights, dtype=np.float64)
    Z = np.asarray(logits, dtype=np.float64)
    B, (_, N, C) = W.shape[0], Z.shape
    nll, acc = np.empty(B), np.empty(B)
    step = max(1, SCORE_CHUNK_BYTES // (8 * N * C))
    for lo in range(0, B, step):
        z = np.einsum("bk,knc->bnc", W[lo : lo + step], Z)  # (b, N, C)
        nll[lo : lo + step], acc[lo : lo + step] = nll_and_accuracy(z, y)
    return nll, acc
