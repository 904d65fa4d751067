"""The ensemble of K branches: weight rules, the weighted logit sum, its score, and its record.

The math (weight rules, ``z = sum_k w_k z_k``, NLL/accuracy) is ``tune.scoring``, shared with
the Tune search and the exact fit (docs/design.md section 1, step 4); this module reads the
branches' outputs, evaluates weights on val and test, and writes the records. ``tuned`` weights
are searched by ``orchestrator.weights`` and only *evaluated* here (``evaluate_weights``).

Files read (written by ``branches.train``), per branch ``k`` and split in {val, test}:
``branches/<k>/logits_<split>.npy`` float32 (N, classes) and ``branches/<k>/rows_<split>.npy``
int64 (N, 2) = columns (idx, y), in the same row order. Files written: ``ensemble/<method>.json``
for every evaluated method and ``ensemble/weights.json`` for the run's chosen one, each
``{method, weights, branches, val_acc, val_nll, test_acc, test_nll, ...}``. ``weights`` has one entry
per branch k of the split; branches left out (``skip``: diverged under ``train.on_nonfinite:
skip_branch``) weigh 0 and are listed in ``skipped_branches``; ``branches`` lists the ones in the sum.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_split import layout
from data_split.errors import SpectralError
from data_split.storage import RunStorage
from tune.scoring import GEOMETRIC_P, ensemble_logits, score, weight_rule

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test")
METHOD_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # method names double as file names: ensemble/<method>.json


class EnsembleInputError(SpectralError, ValueError):
    """Branch outputs are missing or inconsistent; the message names the branch and the file."""


@dataclass(frozen=True)
class BranchOutputs:
    """All branches' outputs on one split, rows aligned across branches."""

    logits: np.ndarray  # (B, N, classes) float32, B = len(branches)
    y: np.ndarray  # (N,) int64 labels
    idx: np.ndarray  # (N,) int64 index of each image in its source split
    branches: tuple[int, ...] = ()  # which of the split's K branches, in logits order (empty: 0..B-1)
    K: int = 0  # the split's branch count (0: B)


@dataclass(frozen=True)
class EnsembleResult:
    """One evaluated weighting of the branches."""

    method: str  # "uniform", "geometric", "tuned", "exact", ...
    weights: np.ndarray  # (B,): one per branch in ``branches``
    val: dict[str, float]  # {"acc", "nll", "n"}
    test: dict[str, float]  # {"acc", "nll", "n"}
    extra: dict[str, Any] = field(default_factory=dict)  # method details kept in the record (e.g. p, trials)
    branches: tuple[int, ...] = ()  # the branches weighed (empty: 0..B-1)
    K: int = 0  # the split's branch count (0: B)

    def to_record(self) -> dict[str, Any]:
        """The record of ``ensemble/<method>.json`` and ``ensemble/weights.json``: K weights, 0 for a skipped branch."""
        branches = list(self.branches) or list(range(len(self.weights)))
        full = np.zeros(max(self.K, len(self.weights)))
        full[branches] = self.weights
        skipped = sorted(set(range(len(full))) - set(branches))
        return {
            "method": self.method,
            "weights": [float(w) for w in full],
            "branches": branches,
            **({"skipped_branches": skipped} if skipped else {}),
            "val_acc": float(self.val["acc"]),
            "val_nll": float(self.val["nll"]),
            "test_acc": float(self.test["acc"]),
            "test_nll": float(self.test["nll"]),
            "n_val": int(self.val["n"]),
            "n_test": int(self.test["n"]),
            **self.extra,
        }


# -- reading branch outputs ---------------------------------------------------------------------
def _load_npy(storage: RunStorage, rel: str, k: int) -> np.ndarray:
    try:
        data = storage.read_bytes(rel)
    except FileNotFoundError:
        raise EnsembleInputError(f"branch {k}: {storage.url(rel)} is missing (did the branch finish?)") from None
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise EnsembleInputError(f"branch {k}: {storage.url(rel)} is not a valid .npy array: {e}") from e


def kept_branches(K: int, skip: Sequence[int] = ()) -> list[int]:
    """Branches ``0..K-1`` less ``skip``; an error naming them when none is left."""
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    kept = [k for k in range(K) if k not in set(skip)]
    if not kept:
        raise EnsembleInputError(f"no branch left to ensemble: all {K} were skipped (diverged: {sorted(skip)})")
    return kept


def load_branch_outputs(storage: RunStorage, K: int, split: str, skip: Sequence[int] = ()) -> BranchOutputs:
    """Read every branch's (but ``skip``'s) logits and (idx, y) rows on ``split``; check they line up row for row."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    kept = kept_branches(K, skip)
    all_logits = []
    ref_rows = None
    for k in kept:
        lrel, rrel = layout.logits(k, split), layout.rows(k, split)
        logits, rows = _load_npy(storage, lrel, k), _load_npy(storage, rrel, k)
        if logits.ndim != 2:
            raise EnsembleInputError(f"branch {k}: {storage.url(lrel)} has shape {logits.shape}, expected (N, classes)")
        if not np.isfinite(logits).all():  # branches never write these; refuse what another writer left
            bad = int((~np.isfinite(logits)).any(axis=1).sum())
            raise EnsembleInputError(
                f"branch {k}: {storage.url(lrel)} holds NaN/inf in {bad} of {len(logits)} rows "
                f"(a diverged branch?): not ensembling it"
            )
        if rows.ndim != 2 or rows.shape[1] != 2 or rows.shape[0] != logits.shape[0]:
            raise EnsembleInputError(
                f"branch {k}: {storage.url(rrel)} has shape {rows.shape}, expected ({logits.shape[0]}, 2) "
                f"to match {lrel} {logits.shape}"
            )
        if k != kept[0]:
            if logits.shape != all_logits[0].shape:
                raise EnsembleInputError(
                    f"branch {k}: shape mismatch: {storage.url(lrel)} is {logits.shape}, "
                    f"branch {kept[0]}'s is {all_logits[0].shape}"
                )
            for col, what in ((0, "idx"), (1, "label")):
                bad = np.flatnonzero(rows[:, col] != ref_rows[:, col])
                if bad.size:
                    i = int(bad[0])
                    raise EnsembleInputError(
                        f"branch {k}: {what} mismatch with branch {kept[0]} in {storage.url(rrel)}: "
                        f"{bad.size} rows differ, "
                        f"first at row {i} ({what} {rows[i, col]} vs {ref_rows[i, col]})"
                    )
        else:
            ref_rows = rows
        all_logits.append(logits)
    return BranchOutputs(
        logits=np.stack(all_logits).astype(np.float32, copy=False),  # (K, N, C)
        y=ref_rows[:, 1].astype(np.int64),
        idx=ref_rows[:, 0].astype(np.int64),
        branches=tuple(kept),
        K=K,
    )


def read_train_losses(storage: RunStorage, K: int, skip: Sequence[int] = ()) -> np.ndarray:
    """(B,) final-epoch mean training loss of each branch but ``skip``: ``result.json``, else ``metrics.jsonl``."""
    losses = []
    for k in kept_branches(K, skip):
        if (result := layout.read_result(storage, k)) is not None:
            losses.append(float(result["train_loss"]))
            continue
        rel, mrel = layout.result(k), layout.metrics(k)
        if not storage.exists(mrel):
            raise EnsembleInputError(f"branch {k}: neither {storage.url(rel)} nor {storage.url(mrel)} exists")
        if not (metrics := layout.read_metrics(storage, k)):
            raise EnsembleInputError(f"branch {k}: {storage.url(mrel)} is empty")
        losses.append(float(metrics[-1]["loss"]))  # by epoch: the last is the final one
    return np.asarray(losses, dtype=np.float64)


# -- evaluation and records ---------------------------------------------------------------------------
def evaluate_weights(
    method: str, weights: np.ndarray, val: BranchOutputs, test: BranchOutputs, extra: dict[str, Any] | None = None
) -> EnsembleResult:
    """Score given weights on already-loaded val and test outputs (no I/O)."""
    if not METHOD_RE.match(method):
        raise ValueError(f"ensemble method name {method!r} must match {METHOD_RE.pattern} (it names a file)")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (val.logits.shape[0],) or not np.all(np.isfinite(w)):
        raise ValueError(f"{method} weights must be {val.logits.shape[0]} finite numbers, got {w.tolist()}")
    if val.logits.shape[2] != test.logits.shape[2]:
        raise EnsembleInputError(f"val has {val.logits.shape[2]} classes but test has {test.logits.shape[2]}")
    if val.branches != test.branches:
        raise EnsembleInputError(f"val has branches {list(val.branches)} but test has {list(test.branches)}")
    return EnsembleResult(
        method=method,
        weights=w,
        val=score(ensemble_logits(w, val.logits), val.y),
        test=score(ensemble_logits(w, test.logits), test.y),
        extra=dict(extra or {}),
        branches=val.branches,
        K=val.K,
    )


def evaluate_ensemble(
    storage: RunStorage,
    K: int,
    method: str,
    weights: np.ndarray | None = None,
    *,
    p: float = GEOMETRIC_P,
    skip: Sequence[int] = (),
) -> EnsembleResult:
    """Score an ensemble of the branches but ``skip`` on val and test (``weights``: one per kept branch).

    ``weights=None`` computes them with ``weight_rule(method, ...)``.
    """
    extra: dict[str, Any] = {}
    if weights is None:
        losses = read_train_losses(storage, K, skip)
        weights = weight_rule(method, losses, p)
        extra = {"train_losses": losses.tolist()} | ({"p": p} if method == "geometric" else {})
        log.info(
            "%s weights from final train losses %s: %s",
            method,
            np.round(losses, 4).tolist(),
            np.round(weights, 4).tolist(),
        )
    val, test = load_branch_outputs(storage, K, "val", skip), load_branch_outputs(storage, K, "test", skip)
    result = evaluate_weights(method, weights, val, test, extra)
    log.info(
        "ensemble %s: val acc %.4f nll %.4f, test acc %.4f nll %.4f",
        method,
        result.val["acc"],
        result.val["nll"],
        result.test["acc"],
        result.test["nll"],
    )
    return result


def write_weights(storage: RunStorage, result: EnsembleResult, *, chosen: bool = True) -> None:
    """Write ``ensemble/<method>.json``, and ``ensemble/weights.json`` too when this is the run's chosen ensemble."""
    record = result.to_record()
    storage.write_json(layout.ensemble_record(result.method), record)
    if chosen:
        storage.write_json(layout.WEIGHTS, record)
