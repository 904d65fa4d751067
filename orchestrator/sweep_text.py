"""The sweep's results table, printed by the CLI and written as ``<run>/tune/sweep.md``."""

from __future__ import annotations

import json

from orchestrator.tables import TextTable


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def sweep_table(result) -> TextTable:
    """One row per trial, best first; the chosen one is marked ``*``."""
    header = ["#", "trial", *result.keys, "epochs", "val_acc", "val_loss", "train loss", "status", "seconds"]
    rows = []
    for i, r in enumerate(result.rows, 1):
        mark = "*" if r is result.best else ""
        rows.append(
            [
                f"{i}{mark}",
                r["trial"],
                *[_fmt(r["overrides"][k]) for k in result.keys],
                f"{r['epochs_run']}/{r['epochs']}",
                "-" if r["val_acc"] is None else f"{r['val_acc']:.4f}",
                "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}",
                "-" if r["loss"] is None else f"{r['loss']:.4f}",
                r["status"],
                "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
            ]
        )
    title = f"sweep: {result.metric} ({result.mode}), {result.stopped_early} of {len(rows)} trials stopped early" + (
        ", resumed" if result.restored else ""
    )
    return TextTable(header, rows, "".join("l" if h in ("trial", "status") else "r" for h in header), title=title)


def sweep_markdown(result, cfg) -> str:
    sc = cfg.sweep
    lines = [
        "# Sweep",
        "",
        f"Run: {result.experiment.rsplit('/tune/', 1)[0]} | branches {sc.branches} | metric {result.metric} "
        f"({result.mode}) | {len(result.rows)} trials | scheduler {sc.scheduler}"
        + (
            f" (grace {sc.grace_period}, reduction {sc.reduction_factor:g}): {result.stopped_early} stopped early"
            if sc.scheduler == "asha"
            else ""
        )
        + (" | resumed after an interruption" if result.restored else ""),
        "",
        "Search space: `" + json.dumps(sc.space) + "`",
        "",
        *sweep_table(result).markdown(),
        "",
        f"`*` best: trial {result.best['trial']}, overrides `{json.dumps(result.best['overrides'])}`. "
        f"Full config: `{result.best_config_path}` (`spectral run --config` accepts it).",
    ]
    return "\n".join(lines) + "\n"
