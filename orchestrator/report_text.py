"""The report as text: the paper's table, the ensemble weights, the engines side by side and the sources
by branch, as ``TextTable``s (printed by the CLI) and as ``report/report.md``.

An ensemble's training time is its slowest branch's, since branches train in parallel without
communication; the sum over branches is in the report's ``totals``. Sizes are MiB, printed "MB" as the
paper does.
"""

from __future__ import annotations

from orchestrator.engine_comparison import NOT_REACHED
from orchestrator.tables import TextTable, pct, seconds, size

TABLE_HEADER = ["Network", "Test accuracy", "Model size", "Training time"]


def ensemble_name(report: dict, method: str) -> str:
    """The paper's name for an ensemble row, e.g. ``spectral-fc8-sub4 (uniform)``."""
    return f"spectral-{report.get('model') or 'net'}-sub{report['split']['K']} ({method})"


def paper_table(report: dict) -> TextTable:
    """The paper's table (Network | Test accuracy | Model size | Training time): baseline, each branch, each
    ensemble method."""
    rows = []
    if report.get("baseline"):
        b = report["baseline"]
        rows.append(
            [
                f"{b.get('model') or 'baseline'} (full resolution)",
                pct(b.get("test_acc")),
                size(b.get("model_bytes")),
                seconds(b.get("train_seconds")),
            ]
        )
    skipped = {d["k"]: d for d in report.get("skipped_branches", [])}
    for b in sorted(report["branches"] + list(skipped.values()), key=lambda b: b["k"]):
        if b["k"] in skipped:
            rows.append([f"branch {b['k']}", f"skipped: diverged at epoch {b['epoch']}", "-", "-"])
            continue
        rows.append(
            [f"branch {b['k']}", pct(b.get("test_acc")), size(b.get("model_bytes")), seconds(b.get("train_seconds"))]
        )
    totals, K = report["totals"], report["split"]["K"]
    for e in report["ensembles"]:
        rows.append(
            [
                ensemble_name(report, e["method"]),
                pct(e.get("test_acc")),
                f"{size(totals['max_model_bytes'])} x {len(e.get('branches') or range(K))}",
                seconds(totals["max_branch_train_seconds"]),
            ]
        )
    return TextTable(list(TABLE_HEADER), rows, "lrrr", title=report.get("title", "report"))


def report_markdown(report: dict) -> str:
    """``report/report.md``: the paper's table, the ensemble weights, the engines, the sources, what is missing."""
    src, split, totals = report["source"], report["split"], report["totals"]
    res = "x".join(str(v) for v in src.get("resolution", [])) or "?"
    lines = [
        f"# Report: {report['title']}",
        "",
        f"Source: {src.get('name', '?')} ({res}) | K = {split['K']} ({split.get('r')}x{split.get('c')} split) | "
        f"transform: {split.get('transform')} | model: {report.get('model')} | run: {report['run']}",
        "",
        *paper_table(report).markdown(),
        "",
        f"Ensemble training time is the slowest branch's (branches train in parallel, without communication); "
        f"all branches together: {seconds(totals['total_train_seconds'])}. Parameters over all branches: "
        f"{totals['total_params']:,}. Peak training memory of one branch: {size(totals['max_peak_memory_bytes'])}.",
    ]
    if report["ensembles"]:
        rows = [
            [
                e["method"] + (" (chosen)" if e["chosen"] else ""),
                ", ".join(f"{w:.3f}" for w in e.get("weights", [])),
                pct(e.get("val_acc")),
                f"{e['val_nll']:.4f}" if e.get("val_nll") is not None else "n/a",
                f"{e['test_nll']:.4f}" if e.get("test_nll") is not None else "n/a",
            ]
            for e in report["ensembles"]
        ]
        lines += [
            "",
            "## Ensemble weights",
            "",
            *TextTable(
                ["Method", "Weights (branch 0..K-1)", "Val accuracy", "Val NLL", "Test NLL"], rows, "llrrr"
            ).markdown(),
        ]
    lines += _engines_markdown(report.get("comparison"))
    if len(report.get("sources") or []) > 1:
        lines += ["", *branch_sources_section(report)]
    if report.get("skipped_branches"):
        lines += [
            "",
            "**Skipped branches** (`train.on_nonfinite: skip_branch`; every ensemble above uses the others, "
            "with weight 0 here):",
            "",
        ]
        lines += [
            f"- branch {d['k']}: diverged at epoch {d['epoch']}, step {d['step'] if d['step'] is not None else '-'}: "
            f"{d['error']}"
            for d in report["skipped_branches"]
        ]
    if report["missing_branches"]:
        lines += ["", f"**Missing branches** (no result.json): {', '.join(map(str, report['missing_branches']))}"]
    return "\n".join(lines) + "\n"


def _engines_markdown(comparison: dict | None) -> list[str]:
    """The engines side by side: bytes communicated, wall time, test accuracy, time to the single's val accuracy."""
    if not comparison or len(comparison["engines"]) < 2:
        return []
    target = comparison["target_val_acc"]
    reach = f"Time to {pct(target)} val. acc." if target is not None else "Time to single's val. acc."
    rows = []
    for e in comparison["engines"]:
        t = e["time_to_target_s"]
        rows.append(
            [
                e["engine"],
                str(e["workers"]),
                f"{e['bytes_per_worker']:,}" + (" (process group)" if e["process_group"] else ""),
                seconds(e["wall_s"]),
                pct(e["test_acc"]),
                t if t == NOT_REACHED else seconds(t),
            ]
        )
    return [
        "",
        "## Engines: communication, wall time, time to accuracy",
        "",
        *TextTable(
            ["Engine", "Workers", "Bytes sent per worker", "Wall time", "Test accuracy", reach], rows, "lrrrrr"
        ).markdown(),
        "",
        "Wall time: from the engine's start to the end of its last epoch (DDP includes Ray Train's start-up). "
        "DDP's bytes are measured by a communication hook (gradient buckets handed to all-reduce); a branch's "
        "are the bytes it wrote for other branches (none) with no process group.",
    ]


def branch_sources_section(report: dict) -> list[str]:
    """Per branch: the sources that trained it, its training rows, its test accuracy."""
    names = {str(s["src"]): f"{s['src']}: {s['name']} {'x'.join(map(str, s['resolution']))}" for s in report["sources"]}
    rows = []
    for b in report["branches"]:
        by_source = b.get("train_rows_by_source") or {}
        rows.append(
            [
                str(b["k"]),
                "; ".join(f"{names.get(src, src)} ({n:,})" for src, n in by_source.items()),
                f"{sum(by_source.values()):,}",
                pct(b.get("test_acc")),
            ]
        )
    lines = [
        "## Branches by source",
        "",
        "Lower-resolution sources train only the branches they determine exactly; the main source alone "
        "gives validation and test data.",
        "",
    ]
    return lines + TextTable(["Branch", "Sources (train rows)", "Train rows", "Test accuracy"], rows, "llrr").markdown()


def ensemble_table(report: dict) -> TextTable:
    """The CLI's view of the ensembles: weights, and validation (which picks) beside test (which reports)."""
    rows = [
        [
            e["method"] + (" (chosen)" if e["chosen"] else ""),
            " ".join(f"{w:.3f}" for w in e["weights"]),
            f"{e['val_acc']:.4f}",
            f"{e['val_nll']:.4f}",
            f"{e['test_acc']:.4f}",
            f"{e['test_nll']:.4f}",
        ]
        for e in report["ensembles"]
    ]
    return TextTable(
        ["method", "weights", "val acc", "val NLL", "test acc", "test NLL"],
        rows,
        "llrrrr",
        title="ensemble weights (validation picks, test reports)",
    )
