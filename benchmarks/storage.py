"""What the compact storage (version 2) saves, and what its uint8 codes cost in accuracy.

    .venv/bin/python -m benchmarks.storage                 # both parts, full Fashion-MNIST
    .venv/bin/python -m benchmarks.storage --part storage  # bytes only (a minute)

Part ``storage``: bytes of all K train sub-datasets against the raw train
images (the same 54,000 images as uint8 in one zstd Parquet column), for
Fashion-MNIST 2x2 dct (K=4) and 4x4 dct (K=16), for every ``split.dtype``.
Goal (issue 8): ratio <= 1.10 with uint8.

Part ``accuracy``: fc8 branches, 3 epochs, train seeds 0 and 1, on uint8 and
on float32 sub-datasets of the same split; the test accuracy of the
geometric-weight ensemble (and the uniform one, and the mean branch).
Goal: mean |uint8 - float32| of the ensemble within 0.15 points.

The sub-datasets are written by ``write_single_process`` (the same files as
the Ray pipeline, tested) and each branch trains with ``train_branch`` in
this process, one thread: nothing here measures Ray. Results:
``benchmarks/results/storage.json``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._common import begin, load, load_average, record  # first: sets Ray's environment
from branches import ModelConfig, TrainConfig, train_branch
from data_split import RunStorage, SourceConfig, SplitConfig, layout, make_source
from data_split.layout import write_manifest
from data_split.manifest import Manifest
from data_split.parts import build_manifest, val_mask
from data_split.pipeline import write_single_process
from orchestrator.ensemble import evaluate_ensemble

OUT = Path(__file__).parent / "results" / "storage.json"
SPLITS = {"sub4": (2, 2), "sub16": (4, 4)}
DTYPES = ("uint8", "float16", "float32")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def raw_train_bytes(source_cfg: SourceConfig, split_cfg: SplitConfig) -> int:
    """The yardstick: the split's train images (val carved out) as raw uint8, one zstd Parquet column, one file."""
    source = make_source(source_cfg)
    n = source.count("train")
    x, _ = source.read("train", 0, n)
    keep = ~val_mask(n, split_cfg.val_fraction, split_cfg.seed)
    col = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(x[keep]))
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": col}), buf, compression="zstd")
    return len(buf.getvalue())


def write_split(root: Path, source_cfg: SourceConfig, split_cfg: SplitConfig) -> tuple[RunStorage, Manifest, float]:
    storage = RunStorage(str(root))
    t0 = time.perf_counter()
    records = write_single_process(make_source(source_cfg), split_cfg, storage)
    manifest = build_manifest(make_source(source_cfg), source_cfg, split_cfg, records)
    write_manifest(storage, manifest)
    return storage, manifest, time.perf_counter() - t0


def part_storage(tmp: Path, source_cfg: SourceConfig) -> dict:
    out = {}
    for name, (r, c) in SPLITS.items():
        raw = raw_train_bytes(source_cfg, SplitConfig(rows=r, cols=c))
        row = {"raw_train_bytes": raw}
        for dtype in DTYPES:
            _, m, secs = write_split(tmp / f"{name}-{dtype}", source_cfg, SplitConfig(rows=r, cols=c, dtype=dtype))
            per_branch = [b.splits["train"].bytes for b in m.branches]
            row[dtype] = {
                "train_bytes": sum(per_branch),
                "per_branch_bytes": per_branch,
                "ratio": sum(per_branch) / raw,
                "split_seconds": secs,
            }
            say(
                f"{name} {dtype}: {sum(per_branch) / 1e6:.1f} MB vs raw {raw / 1e6:.1f} MB = "
                f"{sum(per_branch) / raw:.3f}"
            )
            shutil.rmtree(tmp / f"{name}-{dtype}")
        out[name] = row
    return out


def part_accuracy(tmp: Path, source_cfg: SourceConfig, seeds: list[int], epochs: int) -> dict:
    out = {}
    for name, (r, c) in SPLITS.items():
        for dtype in ("uint8", "float32"):
            data_root = tmp / f"acc-{name}-{dtype}"
            storage, m, _ = write_split(data_root, source_cfg, SplitConfig(rows=r, cols=c, dtype=dtype))
            for seed in seeds:
                run = tmp / f"acc-{name}-{dtype}-s{seed}"
                shutil.copytree(data_root / layout.DATA, run / layout.DATA)
                rs = RunStorage(str(run))
                t0 = time.perf_counter()
                results = [
                    train_branch(rs, k, ModelConfig(name="fc8"), TrainConfig(epochs=epochs, seed=seed), device="cpu")
                    for k in range(r * c)
                ]
                ens = {w: evaluate_ensemble(rs, r * c, w).test["acc"] for w in ("geometric", "uniform")}
                out[f"{name}/{dtype}/seed={seed}"] = {
                    "ensemble_test_acc": ens,
                    "mean_branch_test_acc": float(np.mean([x["test_acc"] for x in results])),
                    "train_seconds": time.perf_counter() - t0,
                }
                say(
                    f"{name} {dtype} seed {seed}: geometric {ens['geometric']:.4f} uniform {ens['uniform']:.4f} "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
                shutil.rmtree(run)
            shutil.rmtree(data_root)
    summary = {}
    for name in SPLITS:
        for rule in ("geometric", "uniform"):
            diffs = [
                out[f"{name}/uint8/seed={s}"]["ensemble_test_acc"][rule]
                - out[f"{name}/float32/seed={s}"]["ensemble_test_acc"][rule]
                for s in seeds
            ]
            summary[f"{name}/{rule}"] = {
                "mean_diff_points": 100 * float(np.mean(diffs)),
                "goal_met": abs(100 * float(np.mean(diffs))) <= 0.15,
            }
    return {"runs": out, "uint8_minus_float32": summary}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("storage", "accuracy", "all"), default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="source.limit (default: all 60,000 + 10,000 images)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    source_cfg = SourceConfig(name="fashion-mnist", limit=args.limit)
    begun = begin("storage", argv)
    res = load(OUT)["results"] if OUT.exists() else {}  # one part can be re-run without losing the other
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        if args.part in ("storage", "all"):
            res["storage"] = {
                **part_storage(Path(tmp), source_cfg),
                "goal": "uint8 ratio <= 1.10",
                "command": ".venv/bin/python -m benchmarks.storage --part storage",
                "load_avg": load_average(),
            }
        if args.part in ("accuracy", "all"):
            res["accuracy"] = {
                **part_accuracy(Path(tmp), source_cfg, args.seeds, args.epochs),
                "goal": "mean |uint8 - float32| ensemble test accuracy <= 0.15 points",
                "epochs": args.epochs,
                "seeds": args.seeds,
                "model": "fc8",
                "command": ".venv/bin/python -m benchmarks.storage --part accuracy",
                "load_avg": load_average(),
            }
    record(begun, res, OUT)
    say(f"wrote {OUT}")


def markdown(res: dict) -> str:
    """Bytes of the train sub-datasets per dtype over the raw images; then uint8 against float32 accuracy."""
    lines = []
    if "storage" in res:
        st = res["storage"]
        splits = [name for name in st if isinstance(st[name], dict)]
        dtypes = [d for d in st[splits[0]] if isinstance(st[splits[0]][d], dict)]
        lines += [
            "| split | raw train images | " + " | ".join(dtypes) + " |",
            "| --- | ---: |" + " ---: |" * len(dtypes),
        ]
        for name in splits:
            cells = [f"{st[name][d]['train_bytes'] / 1e6:.1f} MB, {st[name][d]['ratio']:.3f}" for d in dtypes]
            lines.append(f"| {name} | {st[name]['raw_train_bytes'] / 1e6:.1f} MB | " + " | ".join(cells) + " |")
        lines += ["", f"Goal: {st['goal']}. Command: `{st['command']}`.", ""]
    if "accuracy" in res:
        acc = res["accuracy"]
        lines += ["| run | rule | seed | ensemble test accuracy |", "| --- | --- | ---: | ---: |"]
        for key, run in acc["runs"].items():
            name, dtype, seed = key.split("/")
            lines += [
                f"| {name} {dtype} | {rule} | {seed.removeprefix('seed=')} | {100 * a:.2f}% |"
                for rule, a in run["ensemble_test_acc"].items()
            ]
        lines += [
            "",
            "Mean uint8 - float32 (points): "
            + "; ".join(f"{key} {s['mean_diff_points']:+.2f}" for key, s in acc["uint8_minus_float32"].items())
            + f". Goal: {acc['goal']}. Command: `{acc['command']}`.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
