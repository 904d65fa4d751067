"""The run report: what every branch, ensemble and the baseline achieved, as JSON, markdown and plots.

Reads (docs/storage.md, through ``data_split.layout``): ``data/manifest.json``; per branch
``branches/<k>/result.json`` and ``metrics.jsonl``; every ``ensemble/<method>.json`` record plus
``ensemble/weights.json`` (the chosen one); the full-resolution baseline, a run of its own under
``<run>/baseline/`` (K=1), and its Ray Train DDP version ``<run>/baseline-ddp/result.json``; the engines
side by side come from ``orchestrator.engine_comparison``.
Writes ``report/report.json``, ``report/report.md`` (``orchestrator.report_text``), ``report/accuracy.png``
and ``report/training_curves.png`` (``orchestrator.report_plots``), all through ``RunStorage.write_bytes`` so
s3:// works too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from data_split import layout
from data_split.errors import SpectralError
from data_split.storage import RunStorage
from orchestrator.engine_comparison import compare_engines
from orchestrator.report_text import report_markdown

log = logging.getLogger(__name__)

REPORT_VERSION = 1
METHOD_ORDER = ("uniform", "geometric", "tuned", "exact")  # table order; other methods follow by name


class ReportError(SpectralError, RuntimeError):
    """The run has nothing to report (no manifest and no branches); the message names the URI."""


# -- reading --------------------------------------------------------------------------------------------
def read_branch_result(storage: RunStorage, k: int) -> dict | None:
    """``result.json`` of branch ``k`` plus its ``metrics`` list; None when the branch has no result."""
    result = layout.read_result(storage, k)
    return None if result is None else {**result, "k": k, "metrics": layout.read_metrics(storage, k)}


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def read_ensembles(storage: RunStorage) -> list[dict]:
    """Every ``ensemble/<method>.json`` record, ``chosen`` marking the one in ``ensemble/weights.json``."""
    rows: dict[str, dict] = {}
    for name in storage.ls(layout.ENSEMBLE):
        rel = f"{layout.ENSEMBLE}/{name}"
        if name.startswith(".") or not name.endswith(".json") or rel == layout.WEIGHTS:
            continue
        record = storage.read_json(rel)
        rows[record.get("method", name[: -len(".json")])] = {**record, "chosen": False}
    chosen = storage.read_json(layout.WEIGHTS) if storage.exists(layout.WEIGHTS) else None
    if chosen is not None:
        method = chosen.get("method", "chosen")
        rows[method] = {**chosen, "method": method, "chosen": True}  # weights.json is the authority for its method
    return [rows[m] for m in sorted(rows, key=_method_key)]


def _totals(branches: list[dict]) -> dict[str, Any]:
    def values(key: str) -> list[float]:
        return [b[key] for b in branches if b.get(key) is not None]

    return {
        "total_params": int(sum(values("params"))),
        "total_model_bytes": int(sum(values("model_bytes"))),
        "total_train_seconds": float(sum(values("train_seconds"))),
        "max_branch_train_seconds": max(values("train_seconds"), default=None),
        "max_peak_memory_bytes": max(values("peak_memory_bytes"), default=None),
        "max_model_bytes": max(values("model_bytes"), default=None),
    }


def collect_report(storage: RunStorage) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict (reads only)."""
    manifest = layout.load_manifest(storage, fields=("split",)) if storage.exists(layout.MANIFEST) else None
    if manifest is not None:
        K = manifest.K
    else:
        K = len([n for n in storage.ls(layout.BRANCHES) if n.isdigit()])
        if K == 0:
            raise ReportError(f"{storage.url()} has neither {layout.MANIFEST} nor any branch output")
        log.warning("%s has no manifest; reporting the %d branch folder(s) found", storage.url(), K)
    branches, missing = [], []
    diverged = layout.read_diverged(storage, K)  # train.on_nonfinite: skip_branch
    for k in range(K):
        b = read_branch_result(storage, k)
        if b is not None:
            branches.append(b)
        elif k not in diverged:
            missing.append(k)
    if missing:
        log.warning("branches %s of %s have no result.json; the report leaves them out", missing, storage.url())
    baseline = read_branch_result(storage.child(layout.BASELINE), 0)
    ensembles = read_ensembles(storage)
    split = manifest.split.to_json() if manifest is not None else {}
    source = manifest.source.to_json() if manifest is not None else {}
    model = next((b.get("model") for b in branches if b.get("model")), None)
    split_branches = manifest.branches if manifest is not None else []
    for b in branches:  # where each branch's training rows came from (extra sources feed some branches only)
        entry = split_branches[b["k"]].splits.get("train") if b["k"] < len(split_branches) else None
        b["train_rows_by_source"] = entry.rows_by_source if entry else None
    baseline_ddp = storage.read_json(layout.BASELINE_DDP_RESULT) if storage.exists(layout.BASELINE_DDP_RESULT) else None
    report = {
        "report_version": REPORT_VERSION,
        "title": f"spectral-{model or 'net'}-sub{K} on {source.get('name', '?')} ({split.get('transform', '?')})",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": storage.url(),
        "source": source,
        "sources": [
            {"src": s.src, "name": s.name, "resolution": s.resolution, "branches": s.branches, "nodes": s.nodes}
            for s in (manifest.sources if manifest is not None else [])
        ],
        "split": {key: split.get(key) for key in ("r", "c", "K", "transform")} | {"K": K},
        "model": model,
        "branches": branches,
        "missing_branches": missing,
        "skipped_branches": [
            {key: d.get(key) for key in ("k", "epoch", "step", "error")} for _, d in sorted(diverged.items())
        ],
        "ensembles": ensembles,
        "chosen_ensemble": next((e["method"] for e in ensembles if e["chosen"]), None),
        "baseline": baseline,
        "baseline_ddp": baseline_ddp,
        "totals": _totals(branches),
    }
    report["comparison"] = compare_engines(storage, report, baseline_ddp)
    return report


# -- entry point ------------------------------------------------------------------------------------------
def build_report(storage: RunStorage) -> dict[str, Any]:
    """Collect the run's results and write ``report/`` (JSON, markdown, two PNGs); return the report dict."""
    from orchestrator.report_plots import plot_accuracy, plot_training_curves  # matplotlib: only to draw

    report = collect_report(storage)
    storage.write_json(layout.report("report.json"), report)
    storage.write_text(layout.report("report.md"), report_markdown(report))
    storage.write_bytes(layout.report("accuracy.png"), plot_accuracy(report))
    storage.write_bytes(layout.report("training_curves.png"), plot_training_curves(report))
    log.info(
        "report of %s: %d branch(es), %d ensemble(s), baseline %s -> %s",
        storage.url(),
        len(report["branches"]),
        len(report["ensembles"]),
        "yes" if report["baseline"] else "no",
        storage.url(layout.REPORT),
    )
    return report
