"""The exact reference for ensemble weights: the convex weights that minimise validation NLL.

The ensemble is ``z(w) = sum_k w_k Z_k`` with ``w`` on the simplex (``w >= 0``, ``sum w = 1``),
the same set the Tune search samples. Its validation NLL

    NLL(w) = mean_n [ logsumexp_c z_nc(w) - z_{n, y_n}(w) ]

is convex in ``w`` (log-sum-exp of functions linear in ``w``), so a local optimiser finds the
global minimum. We run SLSQP (scipy, deterministic) on ``w`` itself with the analytic gradient

    dNLL/dw_k = mean_n < softmax(z_n) - onehot(y_n), Z_{k,n} >

and the simplex as constraints, so weights that belong on the boundary (``w_k = 0``) get there
exactly, which a softmax parametrisation only approaches. Convexity also gives a certificate:
for any simplex point, ``NLL(w) - min NLL <= g.w - min_k g_k`` (the Frank-Wolfe gap), which we
report as ``gap`` (an upper bound on how far from the optimum the answer is).

Pure numpy/scipy, no Ray: unit-tested on tiny arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from tune.scoring import ensemble_logits, nll_and_accuracy

log = logging.getLogger(__name__)

MAX_ITERATIONS = 500
FTOL = 1e-12  # SLSQP's tolerance on the objective
GAP_TOLERANCE = 1e-6  # certified distance (in NLL) from the optimum below which the fit counts as converged


@dataclass(frozen=True)
class ExactFit:
    """Convex weights minimising validation NLL, with the optimiser's evidence."""

    weights: np.ndarray  # (K,) on the simplex
    nll: float  # validation NLL at ``weights``
    acc: float  # validation accuracy at ``weights``
    gap: float  # Frank-Wolfe gap: NLL - min NLL <= gap
    iterations: int
    converged: bool  # gap <= GAP_TOLERANCE

    def to_extra(self) -> dict:
        """Fields kept in ``ensemble/exact.json``."""
        return {
            "optimizer": "slsqp (convex weights, analytic gradient)",
            "fw_gap": self.gap,
            "iterations": self.iterations,
            "converged": self.converged,
        }


def nll_and_grad(weights: np.ndarray, logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """NLL of softmax(sum_k w_k Z_k) against ``y`` and its gradient in ``w``: (K,), (K, N, C), (N,) -> float, (K,)."""
    z = np.tensordot(weights, logits, axes=1)  # (N, C)
    z = z - z.max(axis=1, keepdims=True)  # shift-invariant: the gradient is unchanged
    p = np.exp(z)  # (N, C)
    s = p.sum(axis=1)  # (N,)
    rows = np.arange(len(y))
    nll = float(np.mean(np.log(s) - z[rows, y]))
    p /= s[:, None]
    p[rows, y] -= 1.0  # softmax - onehot
    grad = np.einsum("knc,nc->k", logits, p) / len(y)  # (K,)
    return nll, grad


def project_to_simplex(w: np.ndarray) -> np.ndarray:
    """Clip the optimiser's round-off (tiny negatives, sums of 1 +- 1e-12) back onto the simplex."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    total = w.sum()
    return w / total if total > 0 else np.full(w.shape, 1.0 / w.size)


def frank_wolfe_gap(weights: np.ndarray, grad: np.ndarray) -> float:
    """``g.w - min_k g_k``: by convexity, an upper bound on ``NLL(w) - min NLL`` over the simplex."""
    return float(weights @ grad - grad.min())


def fit_exact_weights(logits: np.ndarray, y: np.ndarray, *, start: np.ndarray | None = None) -> ExactFit:
    """Minimise validation NLL over convex weights: logits (K, N, C), labels (N,) -> ExactFit."""
    Z = np.asarray(logits, dtype=np.float64)  # (K, N, C)
    y = np.asarray(y, dtype=np.int64)  # (N,)
    if Z.ndim != 3 or y.shape != (Z.shape[1],) or Z.shape[1] == 0:
        raise ValueError(f"logits {Z.shape} and labels {y.shape} do not match: expected (K, N, C) and (N,), N > 0")
    K = Z.shape[0]
    w0 = np.full(K, 1.0 / K) if start is None else project_to_simplex(start)
    if K == 1:
        nll, grad = nll_and_grad(w0, Z, y)
        return ExactFit(w0, nll, _accuracy(w0, Z, y), 0.0, 0, True)
    result = minimize(
        lambda w: nll_and_grad(w, Z, y),
        w0,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * K,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"maxiter": MAX_ITERATIONS, "ftol": FTOL},
    )
    w = project_to_simplex(result.x)
    nll, grad = nll_and_grad(w, Z, y)
    gap = frank_wolfe_gap(w, grad)
    fit = ExactFit(w, nll, _accuracy(w, Z, y), gap, int(result.nit), gap <= GAP_TOLERANCE)
    log.info(
        "exact fit: val NLL %.6f (gap <= %.1e, %d SLSQP iterations, %s), weights %s",
        nll,
        gap,
        fit.iterations,
        "converged" if fit.converged else f"NOT converged: {result.message}",
        np.round(w, 4).tolist(),
    )
    return fit


def _accuracy(w: np.ndarray, Z: np.ndarray, y: np.ndarray) -> float:
    return float(nll_and_accuracy(ensemble_logits(w, Z), y)[1])
