"""The engines side by side: single baseline, Ray Train DDP and the spectral branches.

For each engine the report shows the bytes it communicated per worker, its wall time, its test
accuracy, its validation accuracy after every epoch with the wall time since the engine started,
and from that the time until it first reaches the single baseline's final validation accuracy
("not reached" when it never does). Everything is read from the run (docs/storage.md):

- single: ``baseline/branches/0/result.json`` (``started``) and ``metrics.jsonl`` (``time``, ``val_acc``);
  one process, no process group: 0 bytes.
- ddp: ``baseline-ddp/result.json`` (``val_curve``, ``allreduce_bytes_per_worker`` measured by its comm hook).
- spectral: every ``branches/<k>/metrics.jsonl``; epoch ``e`` of the ensemble exists once the last branch
  finished epoch ``e`` (``max_k time_k(e)``), counted from the earliest branch ``started``. Its accuracy per
  epoch is the chosen weights applied to ``branches/<k>/epochs/logits_val_<e>.npy`` when every branch
  wrote them (``train.epoch_logits``), else only the final epoch is known (the chosen ensemble's
  ``val_acc``). Bytes: the sum of what each branch recorded sending to other branches
  (``placement.json``: 0 when it wrote only its own folder and had no process group).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from data_split import layout
from data_split.storage import RunStorage
from tune.scoring import ensemble_logits, score

NOT_REACHED = "not reached"


def time_to_accuracy(curve: list[dict], target: float | None) -> float | str | None:
    """Seconds of the first point of ``curve`` ({elapsed_s, val_acc}, epoch order) with val_acc >= target.

    None when there is no target; ``NOT_REACHED`` when no point reaches it.
    """
    if target is None:
        return None
    for point in curve:
        if point.get("val_acc") is not None and point["val_acc"] >= target:
            return float(point["elapsed_s"])
    return NOT_REACHED


def _npy(storage: RunStorage, rel: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(rel)), allow_pickle=False)


def single_engine(baseline: dict | None) -> dict | None:
    """The single baseline (report's ``baseline`` entry: result.json plus metrics)."""
    if not baseline or baseline.get("started") is None:
        return None
    curve = [
        {"epoch": m["epoch"], "val_acc": m.get("val_acc"), "elapsed_s": m["time"] - baseline["started"]}
        for m in baseline["metrics"]
        if "time" in m
    ]
    return {
        "engine": "single",
        "workers": 1,
        "bytes_per_worker": 0,
        "process_group": False,
        "test_acc": baseline.get("test_acc"),
        "val_acc": baseline.get("val_acc"),
        "curve": curve,
    }


def ddp_engine(result: dict | None) -> dict | None:
    if not result:
        return None
    return {
        "engine": "ddp",
        "workers": result["workers"],
        "bytes_per_worker": result["allreduce_bytes_per_worker"],
        "process_group": True,
        "backend": result.get("backend"),
        "test_acc": result["test_acc"],
        "val_acc": result.get("val_acc"),
        "curve": result["val_curve"],
        "allreduce_fraction_by_worker": result.get("allreduce_fraction_by_worker"),
    }


def spectral_engine(storage: RunStorage, branches: list[dict], chosen: dict | None) -> dict | None:
    """The spectral ensemble as one engine (``branches``: the report's entries, with ``metrics``)."""
    if not branches or chosen is None or any(b.get("started") is None for b in branches):
        return None
    started = min(b["started"] for b in branches)
    by_epoch = [{m["epoch"]: m for m in b["metrics"] if "time" in m} for b in branches]
    epochs = sorted(set.intersection(*(set(e) for e in by_epoch)))
    weights = np.asarray(chosen["weights"], dtype=np.float64)[[b["k"] for b in branches]]  # (B,): skipped ones weigh 0
    have_logits = all(storage.exists(layout.epoch_logits(b["k"], e)) for b in branches for e in epochs)
    y = _npy(storage, layout.rows(branches[0]["k"], "val"))[:, 1] if have_logits else None
    curve = []
    for e in epochs:
        if have_logits:
            logits = np.stack([_npy(storage, layout.epoch_logits(b["k"], e)) for b in branches])
            acc = score(ensemble_logits(weights, logits), y)["acc"]  # (K, N, C) -> (N, C)
        else:
            acc = chosen["val_acc"] if e == epochs[-1] else None
        curve.append({"epoch": e, "val_acc": acc, "elapsed_s": max(m[e]["time"] for m in by_epoch) - started})
    sent, groups = 0, False
    for b in branches:
        rel = layout.placement(b["k"])
        isolation = storage.read_json(rel).get("isolation", {}) if storage.exists(rel) else {}
        sent += int(isolation.get("bytes_sent_to_other_branches", 0))
        groups = groups or bool(isolation.get("process_group"))
    return {
        "engine": f"spectral ({chosen.get('method')})",
        "workers": len(branches),
        "bytes_per_worker": sent,
        "process_group": groups,
        "test_acc": chosen.get("test_acc"),
        "val_acc": chosen.get("val_acc"),
        "curve": curve,
        "per_epoch_accuracy": have_logits,
    }


def compare_engines(storage: RunStorage, report: dict[str, Any], ddp_result: dict | None) -> dict[str, Any]:
    """``{"target_val_acc", "engines": [...]}``: every engine present, with wall time and time to the target."""
    chosen = next((e for e in report["ensembles"] if e["chosen"]), None)
    engines = [
        e
        for e in (
            single_engine(report.get("baseline")),
            ddp_engine(ddp_result),
            spectral_engine(storage, report["branches"], chosen),
        )
        if e is not None
    ]
    target = (report.get("baseline") or {}).get("val_acc")
    for e in engines:
        e["wall_s"] = e["curve"][-1]["elapsed_s"] if e["curve"] else None
        e["time_to_target_s"] = time_to_accuracy(e["curve"], target)
    return {"target_val_acc": target, "engines": engines}
