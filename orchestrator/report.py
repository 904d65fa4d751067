"""The run report: what every branch, ensemble and the baseline achieved, as JSON, markdown and plots.

Reads (docs/design.md section 3, through ``data_split.layout``): ``data/manifest.json``; per branch ``branches/<k>/result.json`` and
``metrics.jsonl``; every ``ensemble/<method>.json`` record plus ``ensemble/weights.json`` (the
chosen one); the full-resolution baseline, a run of its own under ``<run>/baseline/`` (K=1), and its
Ray Train DDP version ``<run>/baseline-ddp/result.json``; the engines side by side come from
``orchestrator.engine_comparison``.
Writes ``report/report.json``, ``report/report.md``, ``report/accuracy.png`` and
``report/training_curves.png``, all through ``RunStorage.write_bytes`` so s3:// works too.

The markdown table has the paper's columns (Network | Test accuracy | Model size | Training time).
An ensemble's training time is its slowest branch's, since branches train in parallel without
communication; the sum over branches is in ``totals``. Sizes are MiB, printed "MB" as the paper does.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from data_split import layout
from data_split.errors import SpectralError
from data_split.storage import RunStorage
from orchestrator.engine_comparison import NOT_REACHED, compare_engines

log = logging.getLogger(__name__)

REPORT_VERSION = 1
METHOD_ORDER = ("uniform", "geometric", "tuned", "exact")  # table order; other methods follow by name
TABLE_HEADER = ["Network", "Test accuracy", "Model size", "Training time"]
PLOT_DPI = 120


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
        "sources": [{"src": s.src, "name": s.name, "resolution": s.resolution, "branches": s.branches, "nodes": s.nodes}
                    for s in (manifest.sources if manifest is not None else [])],
        "split": {key: split.get(key) for key in ("r", "c", "K", "transform")} | {"K": K},
        "model": model,
        "branches": branches,
        "missing_branches": missing,
        "skipped_branches": [{key: d.get(key) for key in ("k", "epoch", "step", "error")} for _, d in sorted(diverged.items())],
        "ensembles": ensembles,
        "chosen_ensemble": next((e["method"] for e in ensembles if e["chosen"]), None),
        "baseline": baseline,
        "baseline_ddp": baseline_ddp,
        "totals": _totals(branches),
    }
    report["comparison"] = compare_engines(storage, report, baseline_ddp)
    return report


# -- table and markdown --------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "n/a"
    mib = n_bytes / 2**20
    return f"{mib:.2f} MB" if mib >= 0.01 else f"{n_bytes / 1024:.1f} KB"


def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.1f} s" if s < 10 else f"{s:,.0f} s"


def ensemble_name(report: dict, method: str) -> str:
    """The paper's name for an ensemble row, e.g. ``spectral-fc8-sub4 (uniform)``."""
    return f"spectral-{report.get('model') or 'net'}-sub{report['split']['K']} ({method})"


def format_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the paper's table: baseline, each branch, each ensemble method."""
    rows = []
    if report.get("baseline"):
        b = report["baseline"]
        rows.append([f"{b.get('model') or 'baseline'} (full resolution)", _pct(b.get("test_acc")),
                     _size(b.get("model_bytes")), _seconds(b.get("train_seconds"))])
    skipped = {d["k"]: d for d in report.get("skipped_branches", [])}
    for b in sorted(report["branches"] + list(skipped.values()), key=lambda b: b["k"]):
        if b["k"] in skipped:
            rows.append([f"branch {b['k']}", f"skipped: diverged at epoch {b['epoch']}", "-", "-"])
            continue
        rows.append([f"branch {b['k']}", _pct(b.get("test_acc")), _size(b.get("model_bytes")),
                     _seconds(b.get("train_seconds"))])
    totals, K = report["totals"], report["split"]["K"]
    for e in report["ensembles"]:
        rows.append([ensemble_name(report, e["method"]), _pct(e.get("test_acc")),
                     f"{_size(totals['max_model_bytes'])} x {len(e.get('branches') or range(K))}",
                     _seconds(totals["max_branch_train_seconds"])])
    return list(TABLE_HEADER), rows


def _markdown_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def report_markdown(report: dict) -> str:
    src, split, totals = report["source"], report["split"], report["totals"]
    res = "x".join(str(v) for v in src.get("resolution", [])) or "?"
    lines = [
        f"# Report: {report['title']}", "",
        f"Source: {src.get('name', '?')} ({res}) | K = {split['K']} ({split.get('r')}x{split.get('c')} split) | "
        f"transform: {split.get('transform')} | model: {report.get('model')} | run: {report['run']}", "",
        *_markdown_table(*format_table(report), "lrrr"), "",
        f"Ensemble training time is the slowest branch's (branches train in parallel, without communication); "
        f"all branches together: {_seconds(totals['total_train_seconds'])}. Parameters over all branches: "
        f"{totals['total_params']:,}. Peak training memory of one branch: {_size(totals['max_peak_memory_bytes'])}.",
    ]
    if report["ensembles"]:
        rows = [[e["method"] + (" (chosen)" if e["chosen"] else ""),
                 ", ".join(f"{w:.3f}" for w in e.get("weights", [])), _pct(e.get("val_acc")),
                 f"{e['val_nll']:.4f}" if e.get("val_nll") is not None else "n/a",
                 f"{e['test_nll']:.4f}" if e.get("test_nll") is not None else "n/a"] for e in report["ensembles"]]
        lines += ["", "## Ensemble weights", "",
                  *_markdown_table(["Method", "Weights (branch 0..K-1)", "Val accuracy", "Val NLL", "Test NLL"],
                                   rows, "llrrr")]
    lines += _engines_markdown(report.get("comparison"))
    if len(report.get("sources") or []) > 1:
        lines += ["", *branch_sources_section(report)]
    if report.get("skipped_branches"):
        lines += ["", "**Skipped branches** (`train.on_nonfinite: skip_branch`; every ensemble above uses the others, "
                  "with weight 0 here):", ""]
        lines += [f"- branch {d['k']}: diverged at epoch {d['epoch']}, step {d['step'] if d['step'] is not None else '-'}: "
                  f"{d['error']}" for d in report["skipped_branches"]]
    if report["missing_branches"]:
        lines += ["", f"**Missing branches** (no result.json): {', '.join(map(str, report['missing_branches']))}"]
    return "\n".join(lines) + "\n"


def _engines_markdown(comparison: dict | None) -> list[str]:
    """The engines side by side: bytes communicated, wall time, test accuracy, time to the single's val accuracy."""
    if not comparison or len(comparison["engines"]) < 2:
        return []
    target = comparison["target_val_acc"]
    reach = f"Time to {_pct(target)} val. acc." if target is not None else "Time to single's val. acc."
    rows = []
    for e in comparison["engines"]:
        t = e["time_to_target_s"]
        rows.append([e["engine"], str(e["workers"]), f"{e['bytes_per_worker']:,}" + (" (process group)" if e["process_group"] else ""),
                     _seconds(e["wall_s"]), _pct(e["test_acc"]), t if t == NOT_REACHED else _seconds(t)])
    return ["", "## Engines: communication, wall time, time to accuracy", "",
            *_markdown_table(["Engine", "Workers", "Bytes sent per worker", "Wall time", "Test accuracy", reach],
                             rows, "lrrrrr"), "",
            "Wall time: from the engine's start to the end of its last epoch (DDP includes Ray Train's start-up). "
            "DDP's bytes are measured by a communication hook (gradient buckets handed to all-reduce); a branch's "
            "are the bytes it wrote for other branches (none) with no process group."]


def branch_sources_section(report: dict) -> list[str]:
    """Per branch: the sources that trained it, its training rows, its test accuracy."""
    names = {str(s["src"]): f"{s['src']}: {s['name']} {'x'.join(map(str, s['resolution']))}" for s in report["sources"]}
    rows = []
    for b in report["branches"]:
        by_source = b.get("train_rows_by_source") or {}
        rows.append([str(b["k"]), "; ".join(f"{names.get(src, src)} ({n:,})" for src, n in by_source.items()),
                     f"{sum(by_source.values()):,}", _pct(b.get("test_acc"))])
    lines = ["## Branches by source", "",
             "Lower-resolution sources train only the branches they determine exactly; the main source alone "
             "gives validation and test data.", ""]
    return lines + _markdown_table(["Branch", "Sources (train rows)", "Train rows", "Test accuracy"], rows, "llrr")


# -- plots ---------------------------------------------------------------------------------------------------
def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # no pyplot: no global backend state, safe inside actors and threads
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    return buf.getvalue()


def plot_accuracy(report: dict) -> bytes:
    """Bar chart of test accuracy: baseline, each branch, each ensemble."""
    bars = []  # (label, accuracy, colour)
    if report.get("baseline") and report["baseline"].get("test_acc") is not None:
        bars.append(("baseline", report["baseline"]["test_acc"], "0.4"))
    bars += [(f"branch {b['k']}", b["test_acc"], "tab:blue") for b in report["branches"] if b.get("test_acc") is not None]
    bars += [(f"ensemble ({e['method']})", e["test_acc"], "tab:orange") for e in report["ensembles"] if e.get("test_acc") is not None]
    fig = Figure(figsize=(max(4.0, 0.7 * len(bars) + 1.5), 3.5))
    ax = fig.add_subplot()
    if bars:
        labels, accs, colours = zip(*bars)
        pos = range(len(bars))
        ax.bar(pos, [100 * a for a in accs], color=colours)
        for x, a in zip(pos, accs):
            ax.annotate(f"{100 * a:.1f}", (x, 100 * a), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(pos), labels, rotation=45, ha="right")
        low = max(0.0, 100 * min(accs) - 5.0)  # zoom in: the differences are a few points
        ax.set_ylim(low // 5 * 5, 100 * max(accs) + 4.0)  # headroom for the value labels
    else:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report['source'].get('name', '')} K={report['split']['K']}: branches vs ensembles", fontsize=9)
    return _png(fig)


def plot_training_curves(report: dict) -> bytes:
    """Per-branch training loss and validation accuracy against epoch (baseline dashed, ensembles dotted)."""
    fig = Figure(figsize=(9.0, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    runs = [(f"branch {b['k']}", b["metrics"], {}) for b in report["branches"]]
    if report.get("baseline"):
        runs.append(("baseline", report["baseline"]["metrics"], {"color": "black", "linestyle": "--"}))
    for label, metrics, style in runs:
        if not metrics:
            continue
        epochs = [m["epoch"] for m in metrics]
        ax_loss.plot(epochs, [m.get("loss", float("nan")) for m in metrics], label=label, **style)
        ax_acc.plot(epochs, [100 * m["val_acc"] if m.get("val_acc") is not None else float("nan")
                                    for m in metrics],
                    label=label, **style)
    for i, e in enumerate(report["ensembles"]):  # colours after the branches' (axhline does not advance the cycle)
        if e.get("val_acc") is not None:
            ax_acc.axhline(100 * e["val_acc"], linestyle=":", linewidth=1.5, color=f"C{(len(runs) + i) % 10}",
                           label=f"ensemble ({e['method']})")
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


# -- entry point ------------------------------------------------------------------------------------------
def build_report(storage: RunStorage) -> dict[str, Any]:
    """Collect the run's results and write ``report/`` (JSON, markdown, two PNGs); return the report dict."""
    report = collect_report(storage)
    storage.write_json(layout.report("report.json"), report)
    storage.write_text(layout.report("report.md"), report_markdown(report))
    storage.write_bytes(layout.report("accuracy.png"), plot_accuracy(report))
    storage.write_bytes(layout.report("training_curves.png"), plot_training_curves(report))
    log.info("report of %s: %d branch(es), %d ensemble(s), baseline %s -> %s", storage.url(),
             len(report["branches"]), len(report["ensembles"]), "yes" if report["baseline"] else "no",
             storage.url(layout.REPORT))
    return report
