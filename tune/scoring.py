"""The ensemble's math (docs/design.md section 1, step 4): weight rules, ``z = sum_k w_k z_k``, NLL, accuracy.

Pure numpy, no Ray and no I/O: the one implementation behind the run's ensemble
(``orchestrator.ensemble``), the Tune search (``tune._simplex``) and the exact fit (``tune.exact``).

Weight rules are a registry (``WEIGHT_RULES``): ``uniform`` (1/K) and ``geometric`` (the paper's:
rank branches by final training loss, ``w = p (1-p)^rank``, normalised) are computed from the
training losses; ``tuned`` is searched by Ray Tune on the validation logits (``tune.weights``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

GEOMETRIC_P = 0.3  # the paper's p of the geometric rule (config: ensemble.p)


def uniform_weights(train_losses: np.ndarray, p: float = GEOMETRIC_P) -> np.ndarray:
    """(K,) all 1/K."""
    return np.full(train_losses.size, 1.0 / train_losses.size)


def geometric_weights(train_losses: np.ndarray, p: float = GEOMETRIC_P) -> np.ndarray:
    """(K,) ``p (1-p)^rank``, normalised; rank 0 = lowest loss (ties: lower index first; NaN ranks last)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"geometric rule: p must be in (0, 1), got {p}")
    order = np.argsort(train_losses, kind="stable")  # stable: ties keep branch order; NaN sorts last
    rank = np.empty(train_losses.size, dtype=np.int64)
    rank[order] = np.arange(train_losses.size)
    w = p * (1.0 - p) ** rank
    return w / w.sum()


# name -> weights from the branches' final training losses; None: searched by Ray Tune, not computed
WEIGHT_RULES: dict[str, Callable[[np.ndarray, float], np.ndarray] | None] = {
    "uniform": uniform_weights,
    "geometric": geometric_weights,
    "tuned": None,
}
COMPUTED_RULES = tuple(name for name, fn in WEIGHT_RULES.items() if fn is not None)


def weight_rule(rule: str, train_losses: np.ndarray | list[float], p: float = GEOMETRIC_P) -> np.ndarray:
    """(K,) weights summing to 1 from the branches' final training losses, by the rule named ``rule``."""
    losses = np.asarray(train_losses, dtype=np.float64)  # (K,)
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"train_losses must be a non-empty 1-D sequence, got shape {losses.shape}")
    if rule not in WEIGHT_RULES:
        raise ValueError(f"unknown weight rule {rule!r}; expected one of {', '.join(COMPUTED_RULES)}")
    if WEIGHT_RULES[rule] is None:
        raise ValueError(
            f"weight rule {rule!r} is searched by Ray Tune (tune/), not computed from losses; "
            "pass the tuned weights to evaluate_ensemble(..., weights=w)"
        )
    return WEIGHT_RULES[rule](losses, p)


def ensemble_logits(weights: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """z = sum_k w_k z_k: (K,) x (K, N, C) -> (N, C)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or logits.ndim != 3 or w.shape[0] != logits.shape[0]:
        raise ValueError(f"weights {w.shape} and logits {logits.shape} do not match: expected (K,) and (K, N, C)")
    return np.tensordot(w, logits, axes=1)  # (N, C)


def nll_and_accuracy(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean NLL of softmax(logits) and accuracy against ``y``: (..., N, C), (N,) -> (...), (...).

    Any leading axes are batches (e.g. B candidate weight vectors); N must be > 0.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    zmax = z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=-1)) + zmax[..., 0]  # (..., N): stable log-sum-exp
    picked = np.take_along_axis(z, np.broadcast_to(y[:, None], (*z.shape[:-1], 1)), axis=-1)[..., 0]  # (..., N)
    return (lse - picked).mean(axis=-1), (z.argmax(axis=-1) == y).mean(axis=-1)


def score(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and mean negative log-likelihood of softmax(logits) against labels ``y``: (N, C), (N,)."""
    z = np.asarray(logits, dtype=np.float64)  # (N, C)
    y = np.asarray(y, dtype=np.int64)  # (N,)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits {z.shape} and labels {y.shape} do not match: expected (N, C) and (N,)")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1]}), got range [{y.min()}, {y.max()}]")
    if z.shape[0] == 0:
        return {"acc": float("nan"), "nll": float("nan"), "n": 0}
    nll, acc = nll_and_accuracy(z, y)
    return {"acc": float(acc), "nll": float(nll), "n": int(z.shape[0])}
