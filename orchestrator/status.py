"""What a run is doing or where it stopped, read from its storage alone: ``spectral status --storage URI``.

No Ray, no torch: ``run_status`` reads the files the run writes anyway (docs/storage.md) and returns one
JSON-able dict, which ``--json`` prints as it is and ``status_tables`` renders:

    lease      the driver working on it (holder command, host, pid, heartbeat age) and whether it is live
    split      K, r x c, transform, dtype, rows per split, bytes stored vs the same images raw
    branches   per branch: pending / training / stopped / done / diverged, epoch e of E, loss, val acc,
               images/s, last update, node
    ensembles  every weight rule evaluated (val/test accuracy), and which is the chosen one
    baseline   the full-resolution baseline (``baseline.engine: single``) as a branch is shown, once its split is
               written: its state, epoch, loss, val acc while it trains (a row ``baseline`` of the branches table)
    baselines  the full-resolution baseline (one process) and the Ray Train DDP one, when trained
    report     where report.md is, when written

A branch with epochs written but no live lease is ``stopped`` (the driver died or was interrupted):
``spectral resume --storage URI`` continues it from its newest checkpoint.
"""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from data_split import layout
from data_split.errors import SpectralError
from data_split.storage import RunStorage
from orchestrator.lease import DEFAULT_TIMEOUT_S
from orchestrator.tables import TextTable, data_bytes

SPLITS = ("train", "val", "test")


class NoRunError(SpectralError, FileNotFoundError):
    """Nothing of a run (no config.yaml, manifest or lease) is at the URI; the message names it."""


BASELINE_RESULT = f"{layout.BASELINE}/{layout.result(0)}"


def _read_json(storage: RunStorage, rel: str) -> Any | None:
    """The JSON there, or None when it is absent or cannot be parsed (a status never fails on one file)."""
    try:
        return storage.read_json(rel) if storage.exists(rel) else None
    except Exception:  # unreadable (mid-write elsewhere, garbage): shown as absent
        return None


def _stored_config(storage: RunStorage) -> dict:
    try:
        return yaml.safe_load(storage.read_bytes(layout.RUN_CONFIG)) or {} if storage.exists(layout.RUN_CONFIG) else {}
    except Exception:
        return {}


def lease_status(storage: RunStorage, timeout_s: float, now: float) -> dict | None:
    lease = _read_json(storage, layout.LEASE)
    if lease is None:
        return None
    age = now - float(lease.get("heartbeat", 0))
    return {
        "holder": lease.get("command"),
        "host": lease.get("host"),
        "pid": lease.get("pid"),
        "started": lease.get("started"),
        "heartbeat_age_s": round(age, 1),
        "timeout_s": timeout_s,
        "live": age <= timeout_s,
    }


def split_status(manifest: dict | None) -> dict | None:
    """K, shape, transform, dtype, rows per split, stored and raw bytes, from the manifest's JSON as stored."""
    if manifest is None:
        return None
    split = manifest.get("split") or {}
    rows = {s: 0 for s in SPLITS}
    stored = 0
    for b in manifest.get("branches", []):
        for s, entry in (b.get("splits") or {}).items():
            stored += entry.get("bytes") or 0
            if b.get("k") == 0:
                rows[s] = rows.get(s, 0) + entry.get("rows", 0)
    raw = sum((manifest.get("raw_bytes") or {}).values())
    return {
        "K": split.get("K"),
        "rows": split.get("r"),
        "cols": split.get("c"),
        "transform": split.get("transform"),
        "dtype": split.get("dtype"),
        "version": manifest.get("version"),
        "rows_per_split": rows,
        "bytes": stored,
        "raw_bytes": raw or None,
        "ratio": round(stored / raw, 4) if raw else None,
        "source": (manifest.get("source") or {}).get("name"),
    }


def branch_status(storage: RunStorage, k: int, epochs: int | None, lease_live: bool) -> dict:
    result = _read_json(storage, layout.result(k))
    diverged = _read_json(storage, layout.diverged(k))
    metrics = layout.read_metrics(storage, k)
    last = metrics[-1] if metrics else {}
    placement = (_read_json(storage, layout.placement(k)) or {}).get("placement") or {}
    if result is not None:
        state = "done"
    elif diverged is not None:
        state = "diverged"
    elif metrics:
        state = "training" if lease_live else "stopped"
    else:
        state = "training" if lease_live and storage.exists(layout.checkpoints_dir(k)) else "pending"
    out = {
        "k": k,
        "state": state,
        "epoch": len(metrics),
        "epochs": (result or {}).get("epochs") or epochs,
        "loss": last.get("loss"),
        "val_acc": (result or {}).get("val_acc", last.get("val_acc")),
        "images_per_s": last.get("images_per_s"),
        "last_update": last.get("time"),
        "node": placement.get("ip") or placement.get("host"),
    }
    if result is not None:
        out["test_acc"] = result.get("test_acc")
    if diverged is not None:
        out["error"] = diverged.get("error")
    return out


def ensemble_status(storage: RunStorage) -> list[dict]:
    chosen = (_read_json(storage, layout.WEIGHTS) or {}).get("method")
    rows = []
    for name in storage.ls(layout.ENSEMBLE):
        if not name.endswith(".json") or name == "weights.json":
            continue
        record = _read_json(storage, layout.ensemble_record(name.removesuffix(".json"))) or {}
        rows.append(
            {
                "method": record.get("method", name.removesuffix(".json")),
                "val_acc": record.get("val_acc"),
                "test_acc": record.get("test_acc"),
                "chosen": record.get("method") == chosen,
            }
        )
    return rows


def baseline_status(storage: RunStorage) -> list[dict]:
    rows = []
    single = _read_json(storage, BASELINE_RESULT)
    if single is not None:
        rows.append(
            {
                "engine": "single",
                "model": single.get("model"),
                "test_acc": single.get("test_acc"),
                "seconds": single.get("train_seconds"),
            }
        )
    ddp = _read_json(storage, layout.BASELINE_DDP_RESULT)
    if ddp is not None:
        rows.append(
            {
                "engine": "ddp",
                "model": ddp.get("model"),
                "test_acc": ddp.get("test_acc"),
                "seconds": ddp.get("seconds"),
                "workers": ddp.get("workers"),
            }
        )
    return rows


def baseline_progress(storage: RunStorage, epochs: int | None, lease_live: bool) -> dict | None:
    """The single-process baseline's branch status (``<run>/baseline`` has a branch's layout), once it is split."""
    run = storage.child(layout.BASELINE)
    if not run.exists(layout.MANIFEST):
        return None
    return branch_status(run, 0, epochs, lease_live)


def run_status(storage: RunStorage, now: float | None = None) -> dict:
    """Everything ``spectral status`` shows, as one JSON-able dict (``--json`` prints it)."""
    now = time.time() if now is None else now
    config = _stored_config(storage)
    timeout_s = float((config.get("storage") or {}).get("lease_timeout_s") or DEFAULT_TIMEOUT_S)
    epochs = (config.get("train") or {}).get("epochs")
    lease = lease_status(storage, timeout_s, now)
    manifest = _read_json(storage, layout.MANIFEST)
    split = split_status(manifest)
    K = (split or {}).get("K") or 0
    if config == {} and lease is None and manifest is None and not storage.exists(layout.BRANCHES):
        raise NoRunError(
            f"no run at {storage.url()}: neither {layout.RUN_CONFIG}, {layout.MANIFEST} nor {layout.LEASE} "
            "is there (is --storage the run's URI?)"
        )
    live = bool(lease and lease["live"])
    report = layout.report("report.md")
    return {
        "uri": storage.url(),
        "time": now,
        "config": storage.url(layout.RUN_CONFIG) if config else None,
        "lease": lease,
        "split": split,
        "branches": [branch_status(storage, k, epochs, live) for k in range(K)],
        "baseline": baseline_progress(storage, epochs, live),
        "ensembles": ensemble_status(storage),
        "baselines": baseline_status(storage),
        "report": storage.url(report) if storage.exists(report) else None,
    }


# -- text -------------------------------------------------------------------------------------------------
def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _ago(t: float | None, now: float) -> str:
    return "-" if t is None else f"{max(0.0, now - t):.0f} s ago"


def status_lines(status: dict) -> list[str]:
    """The run, its lease and its split, one line each."""
    lines = [f"run {status['uri']}" + (f" (config: {status['config']})" if status["config"] else "")]
    lease = status["lease"]
    if lease is None:
        lines.append("lease: free (no driver is working on this run)")
    else:
        lines.append(
            f"lease: {'live' if lease['live'] else 'STALE'}, held by {lease['holder']!r} (host {lease['host']}, "
            f"pid {lease['pid']}), last heartbeat {lease['heartbeat_age_s']:.0f} s ago"
            + ("" if lease["live"] else f" (> {lease['timeout_s']:.0f} s: the next driver takes it over)")
        )
    split = status["split"]
    if split is None:
        lines.append("split: not written yet")
    else:
        rows = ", ".join(f"{n:,} {s}" for s, n in split["rows_per_split"].items())
        ratio = f" ({split['ratio']:.3f} of raw)" if split["ratio"] is not None else ""
        lines.append(
            f"split: K={split['K']} ({split['rows']}x{split['cols']} {split['transform']}, "
            f"{split['dtype'] or 'float32'}), {split['source']}: {rows} rows per branch; "
            f"{data_bytes(split['bytes'])} stored{ratio}"
        )
    if status["report"]:
        lines.append(f"report: {status['report']}")
    return lines


def branches_table(status: dict) -> TextTable:
    now = status["time"]
    shown = [(str(b["k"]), b) for b in status["branches"]]
    if status["baseline"] is not None:
        shown.append(("baseline", status["baseline"]))
    rows = [
        [
            name,
            b["state"],
            f"{b['epoch']}/{b['epochs'] or '?'}",
            _num(b["loss"], ".4f"),
            _num(b["val_acc"], ".4f"),
            _num(b["images_per_s"], ",.0f"),
            _ago(b["last_update"], now),
            b["node"] or "-",
        ]
        for name, b in shown
    ]
    return TextTable(
        ["branch", "state", "epoch", "loss", "val acc", "images/s", "last update", "node"],
        rows,
        "rlrrrrrl",
        title="branches",
    )


def results_table(status: dict) -> TextTable | None:
    rows = [
        [f"{e['method']}{' (chosen)' if e['chosen'] else ''}", _num(e["val_acc"], ".4f"), _num(e["test_acc"], ".4f")]
        for e in status["ensembles"]
    ]
    rows += [[f"baseline ({b['engine']})", "-", _num(b["test_acc"], ".4f")] for b in status["baselines"]]
    return TextTable(["ensemble", "val acc", "test acc"], rows, title="results") if rows else None


def to_json(status: dict) -> str:
    return json.dumps(status, indent=2, sort_keys=False)
