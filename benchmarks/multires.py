"""Learning with multi-resolution data: does a low-resolution site B help the branches it determines?

Fashion-MNIST (Debian package). Site A holds a seeded 25% of the train split at full resolution
(28x28); site B holds the other 75% only as 14x14 box averages rounded to uint8, written here as
IDX files (its test split is empty: only the main source gives validation and test data). For each
transform, ``dct`` 2x2 (sub4: B feeds branch 0) and ``haar2`` 4x4 (sub16: B feeds branches 0, 1, 4,
5, the coarse pyramid level), fc8, the same epochs, the tuned ensemble, three configurations:

1. ``A``: only site A;
2. ``A+B``: site A plus site B as ``extra_sources`` (feeding what it can);
3. ``full``: 100% of the train split at full resolution (the upper bound).

Reported per run: the test accuracy of every branch and of the tuned ensemble; per transform and
seed the fraction of the gap that site B recovers, ``(2 - 1) / (3 - 1)`` (of the ensemble's test
accuracy). Goal: configuration 2 beats 1 in both seeds for both transforms.

Command (repository root; few epochs to fit a shared 2-core machine; ``--quick``: 2,000 images,
1 epoch, 8 Tune trials, no results file unless --out):

    .venv/bin/python -m benchmarks.multires [--quick] [--epochs 2] [--seeds 0 1] [--transforms dct haar2]
        [--root /tmp/spectral-bench-multires] [--out benchmarks/results/multires.json]

Runs can be spread over processes (``--seeds``, ``--transforms``, ``--configs`` select a part; each
its own ``--root`` and ``--out``) and combined with ``--merge FILE ... [--out PATH]``.

Numbers go to ``benchmarks/results/multires.json`` (machine, load average, command, date; rewritten
after every run, so an interrupted benchmark keeps what it measured) and print as a table plus a
markdown table (docs/benchmarks.md's).

Result (2026-11-28, shared 2-core VM at load average 52-87, 1 epoch, 8 Tune trials): configuration 2
beats 1 in both seeds for both transforms; tuned ensemble dct 2x2 83.75 -> 85.44% (seed 0, full 86.31%:
0.66 of the gap) and 83.05 -> 85.66% (seed 1, full 86.46%: 0.77); haar2 4x4 77.95 -> 83.36% (seed 0,
full 83.82%: 0.92) and 79.01 -> 83.66% (seed 1, full 83.86%: 0.96 of the gap).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks._common import REPO, begin, load, record, start_ray  # first: sets Ray's environment
from data_split import SourceConfig, make_source
from orchestrator import api, load_config

FMNIST = "/usr/share/datasets/fashion-mnist"
SITE_A_FRACTION = 0.25
SPLITS = {"dct": (2, 2), "haar2": (4, 4)}  # transform -> (rows, cols)
CONFIGS = ("A", "A+B", "full")
DEFAULT_OUT = Path(__file__).parent / "results" / "multires.json"
RAY_CPUS = 2


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` uint8 as an IDX file (magic 0x0803 for images, 0x0801 for labels)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def write_site(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for (x, y), (img, lbl) in (
        (train, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
        (test, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    ):
        write_idx(folder / img, x)
        write_idx(folder / lbl, y)


def make_sites(root: Path, seed: int, limit: int | None) -> tuple[Path, Path, Path]:
    """Site A (25% full resolution + the test split), site B (75% as rounded 14x14 box averages), and
    the full train split, all as IDX folders; ``limit`` keeps the first N train/test images first."""
    src = make_source(SourceConfig(name="fashion-mnist", root=FMNIST, limit=limit))
    (x, y), (xt, yt) = src.read("train", 0, src.count("train")), src.read("test", 0, src.count("test"))
    x, xt = x[:, 0], xt[:, 0]  # (N, 28, 28)
    order = np.random.default_rng(seed).permutation(len(x))
    a, b = np.sort(order[: round(SITE_A_FRACTION * len(x))]), np.sort(order[round(SITE_A_FRACTION * len(x)) :])
    n, h, w = x[b].shape
    low = np.round(x[b].reshape(n, h // 2, 2, w // 2, 2).astype(np.float64).mean(axis=(2, 4))).astype(np.uint8)
    sites = root / f"sites-seed{seed}"
    write_site(sites / "A", (x[a], y[a]), (xt, yt))
    write_site(sites / "B", (low, y[b]), (np.zeros((0, h // 2, w // 2), np.uint8), np.zeros(0, np.uint8)))
    write_site(sites / "full", (x, y), (xt, yt))
    return sites / "A", sites / "B", sites / "full"


def run_one(root: Path, transform: str, config: str, seed: int, folders: tuple[Path, Path, Path], args) -> dict:
    a, b, full = folders
    rows, cols = SPLITS[transform]
    overrides = {
        "source.name": "fashion-mnist",
        "source.root": str(full if config == "full" else a),
        "extra_sources": [{"name": "fashion-mnist", "root": str(b)}] if config == "A+B" else [],
        "split.rows": rows,
        "split.cols": cols,
        "split.transform": transform,
        "split.seed": seed,
        "model.name": "fc8",
        "train.epochs": args.epochs,
        "train.seed": seed,
        "ensemble.weights": "tuned",
        "tune.num_samples": args.tune_samples,
        "tune.seed": seed,
        "storage.uri": str(root / "runs" / f"{transform}-{config}-seed{seed}"),
        "ray.num_cpus": RAY_CPUS,
    }
    cfg = load_config(REPO / "configs" / "fashion_mnist.yaml", overrides)
    t0 = time.perf_counter()
    result = api.run(cfg)
    report = result.report
    manifest = result.split.manifest
    tuned = next(e for e in report["ensembles"] if e["method"] == "tuned")
    return {
        "transform": transform,
        "config": config,
        "seed": seed,
        "K": rows * cols,
        "branch_test_acc": [b["test_acc"] for b in sorted(report["branches"], key=lambda b: b["k"])],
        "ensemble_test_acc": tuned["test_acc"],
        "ensemble_val_acc": tuned.get("val_acc"),
        "fed_by_B": manifest.sources[1].branches if len(manifest.sources) > 1 else [],
        "train_rows": [br.splits["train"].rows for br in manifest.branches],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summarise(runs: list[dict]) -> list[dict]:
    """Per (transform, seed): ensemble accuracies of the three configs and the fraction of the gap recovered."""
    out = []
    for transform in SPLITS:
        for seed in sorted({r["seed"] for r in runs}):
            acc = {
                r["config"]: r["ensemble_test_acc"] for r in runs if r["transform"] == transform and r["seed"] == seed
            }
            if set(acc) != set(CONFIGS):
                continue
            gap = acc["full"] - acc["A"]
            out.append(
                {
                    "transform": transform,
                    "seed": seed,
                    **{f"acc_{c}": acc[c] for c in CONFIGS},
                    "B_beats_A": acc["A+B"] > acc["A"],
                    "gap_recovered": (acc["A+B"] - acc["A"]) / gap if gap else None,
                }
            )
    return out


def markdown(results: dict) -> str:
    """Per transform, seed and config: each branch's test accuracy (fed by site B in bold), the ensemble, and the
    share of the gap between site A alone and the full data that site B's images recover."""
    runs, summary = results["runs"], results["summary"]
    lines = [
        "| Transform | Seed | Config | Branch test accuracy (%) | Ensemble (tuned) | Gap recovered |",
        "|:---|---:|:---|:---|---:|---:|",
    ]
    for r in runs:
        s = next((s for s in summary if (s["transform"], s["seed"]) == (r["transform"], r["seed"])), None)
        fed = set(r["fed_by_B"])
        branches = " ".join(
            f"{'**' if k in fed else ''}{100 * a:.1f}{'**' if k in fed else ''}"
            for k, a in enumerate(r["branch_test_acc"])
        )
        frac = f"{s['gap_recovered']:.2f}" if s and r["config"] == "A+B" and s["gap_recovered"] is not None else ""
        lines.append(
            f"| {r['transform']} {int(np.sqrt(r['K']))}x{int(np.sqrt(r['K']))} | {r['seed']} | {r['config']} | "
            f"{branches} | {100 * r['ensemble_test_acc']:.2f}% | {frac} |"
        )
    return "\n".join(lines)


def print_tables(results: dict) -> None:
    for s in results["summary"]:
        print(
            f"{s['transform']:6s} seed {s['seed']}: A {100 * s['acc_A']:.2f}%  A+B {100 * s['acc_A+B']:.2f}%  "
            f"full {100 * s['acc_full']:.2f}%  B beats A: {s['B_beats_A']}  gap recovered: {s['gap_recovered']}"
        )
    print()
    print(markdown(results))


def merge(begun, parts: list[Path], out: Path) -> None:
    """One results file from several invocations run in parallel: their runs, and each one's command, start,
    machine and load average under ``parts``."""
    loaded = [load(p) for p in parts]
    runs = sorted(
        (r for part in loaded for r in part["results"]["runs"]),
        key=lambda r: (list(SPLITS).index(r["transform"]), r["seed"], CONFIGS.index(r["config"])),
    )
    results = {
        **{k: v for k, v in loaded[0]["results"].items() if k not in ("runs", "summary")},
        "parts": [{k: part[k] for k in ("command", "started", "machine", "load_average")} for part in loaded],
        "runs": runs,
        "summary": summarise(runs),
    }
    record(begun, results, out)
    print_tables(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--transforms", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--tune-samples", type=int, default=16)
    p.add_argument("--root", type=Path, default=Path("/tmp/spectral-bench-multires"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="combine the results files of runs made in parallel (e.g. one per seed) into --out",
    )
    args = p.parse_args()
    begun = begin("multires")
    if args.merge:
        return merge(begun, args.merge, args.out or DEFAULT_OUT)
    limit = 2000 if args.quick else None
    if args.quick:
        args.epochs, args.tune_samples = 1, 8
        args.root = args.root.with_name(args.root.name + "-quick")
    out = args.out or (None if args.quick else DEFAULT_OUT)
    shutil.rmtree(args.root, ignore_errors=True)  # every number comes from this invocation

    start_ray(num_cpus=RAY_CPUS)
    results = {
        "epochs": args.epochs,
        "model": "fc8",
        "tune_samples": args.tune_samples,
        "limit": limit,
        "site_a_fraction": SITE_A_FRACTION,
        "runs": [],
        "summary": [],
    }
    for seed in args.seeds:
        folders = make_sites(args.root, seed, limit)
        for transform in args.transforms:
            for config in args.configs:
                run = run_one(args.root, transform, config, seed, folders, args)
                results["runs"].append(run)
                results["summary"] = summarise(results["runs"])
                print(
                    f"{transform:6s} seed {seed} {config:5s} ensemble {100 * run['ensemble_test_acc']:.2f}%  "
                    f"branches {[round(100 * a, 1) for a in run['branch_test_acc']]}  ({run['seconds']} s)",
                    flush=True,
                )
                record(begun, results, out)  # after every run: an interrupted benchmark keeps what it measured
    print()
    print_tables(results)
    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()
