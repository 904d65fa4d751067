"""Packed branches (``resources.branches_per_process: P = K``) against one actor per branch and the baseline.

For each model (fc8, cnn8) and split (sub4, sub16; DCT) on Fashion-MNIST, one split is trained three ways
side by side in one local Ray with 2 CPUs (1 CPU and 1 torch thread per actor): ``unpacked`` (K actors),
``packed`` (one process training the K branches as one batched network), ``auto``
(``resources.branches_per_process: auto``: ceil(K / 2) per process here, two packs side by side) and the
full-resolution ``baseline``
(``api.baseline``, one actor). Per run: training compute (sum over processes of their training clock:
unpacked, every branch's ``train_seconds``; packed, the pack's, which every member records), wall time of
``api.train``, per-branch and uniform-ensemble test accuracy, peak memory per process (``ru_maxrss``). The
exported ensemble's speed, packed against unpacked: ``benchmarks/packed_export.py``.

    .venv/bin/python -m benchmarks.packing [--epochs 1] [--limit 10000] [--models fc8,cnn8] [--cnn8-width 16]

``--limit`` keeps the first N images of each source split; cnn8 runs at ``--cnn8-width`` base channels (64 is
the registry default; on 2 shared CPUs it would not finish in the time this benchmark was given).
Results: ``benchmarks/results/packing.json``; table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from benchmarks._common import REPO, begin, record, start_ray  # first: sets Ray's environment
from data_split import RunStorage, layout
from orchestrator import api, load_config

RAY_CPUS = 2
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
DEFAULT_OUT = Path(__file__).parent / "results" / "packing.json"
ROOT = "/tmp/spectral-bench-packing"
SPLITS = (("sub4", 2), ("sub16", 4))
MODES = ("unpacked", "packed", "auto")  # branches_per_process 1, K, auto (ceil(K / 2): 2 CPUs, 1 per process)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def config(uri: str, model: str, width: int | None, rc: int, epochs: int, limit: int | None, packed: int | str):
    return load_config(
        CONFIG,
        {
            "storage.uri": uri,
            "split.rows": rc,
            "split.cols": rc,
            "split.transform": "dct",
            "source.limit": limit,
            "model.name": model,
            "model.width": width,
            "train.epochs": epochs,
            "train.threads": 1,
            "resources.cpus_per_branch": 1,
            "resources.gpus_per_branch": 0,
            "resources.branches_per_process": packed,
            "ensemble.weights": "uniform",
            "ray.num_cpus": RAY_CPUS,
        },
    )


def run_row(cfg, results: dict[int, dict], wall: float) -> dict:
    storage = RunStorage.from_config(cfg.storage)
    api.ensemble(cfg)
    ens = storage.read_json(layout.WEIGHTS)
    packs = {tuple(r.get("packed_with") or [k]) for k, r in results.items()}
    by_pack = {p: results[p[0]]["train_seconds"] for p in packs}  # a pack's compute counts once
    return {
        "train_compute_s": round(sum(by_pack.values()), 2),
        "train_wall_s": round(wall, 2),
        "processes": len({r["placement"]["pid"] for r in results.values()}),
        "branch_test_acc": [results[k]["test_acc"] for k in sorted(results)],
        "ensemble_test_acc": ens["test_acc"],
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in results.values()),
    }


def benchmark(models: list[str], epochs: int, limit: int | None, cnn8_width: int) -> dict:
    import ray

    from orchestrator.launcher import train_branches

    shutil.rmtree(ROOT, ignore_errors=True)
    start_ray(num_cpus=RAY_CPUS, object_store_memory=512 * 1024**2)
    res: dict = {}
    try:
        for model in models:
            width = cnn8_width if model == "cnn8" else None
            first = config(f"{ROOT}/{model}-sub4-unpacked", model, width, 2, epochs, limit, 1)
            t0 = time.perf_counter()
            base = api.baseline(first)
            base_wall = time.perf_counter() - t0
            res[model] = {
                "baseline": {
                    "train_compute_s": round(base["train_seconds"], 2),
                    "train_wall_s": round(base_wall, 2),
                    "test_acc": base["test_acc"],
                    "peak_memory_bytes": base["peak_memory_bytes"],
                    "params": base["params"],
                }
            }
            say(f"{model} baseline: {base['train_seconds']:.1f} s, test acc {base['test_acc']:.4f}")
            for name, rc in SPLITS:
                rows = {}
                for mode, p in (("unpacked", 1), ("packed", rc * rc), ("auto", "auto")):
                    cfg = config(f"{ROOT}/{model}-{name}-{mode}", model, width, rc, epochs, limit, p)
                    if mode == "unpacked" or not os.path.exists(f"{ROOT}/{model}-{name}-unpacked/data"):
                        api.split(cfg)
                    else:  # the very same sub-datasets
                        shutil.copytree(
                            f"{ROOT}/{model}-{name}-unpacked/data", f"{cfg.storage.uri}/data", copy_function=os.link
                        )
                    t0 = time.perf_counter()
                    outcome = train_branches(
                        RunStorage.from_config(cfg.storage), rc * rc, cfg.model, cfg.train, cfg.resources
                    )
                    rows[mode] = run_row(cfg, outcome.results, time.perf_counter() - t0)
                    say(
                        f"{model} {name} {mode}: compute {rows[mode]['train_compute_s']} s, wall "
                        f"{rows[mode]['train_wall_s']} s, ensemble {rows[mode]['ensemble_test_acc']:.4f}"
                    )
                b = res[model]["baseline"]
                for mode in MODES:
                    rows[mode]["compute_vs_baseline"] = round(rows[mode]["train_compute_s"] / b["train_compute_s"], 3)
                    rows[mode]["wall_vs_baseline"] = round(rows[mode]["train_wall_s"] / b["train_wall_s"], 3)
                rows["packed_vs_unpacked_wall"] = round(
                    rows["packed"]["train_wall_s"] / rows["unpacked"]["train_wall_s"], 3
                )
                unpacked_wall = rows["unpacked"]["train_wall_s"]
                rows["auto_vs_unpacked_wall"] = round(rows["auto"]["train_wall_s"] / unpacked_wall, 3)
                rows["ensemble_acc_packed_minus_unpacked"] = round(
                    rows["packed"]["ensemble_test_acc"] - rows["unpacked"]["ensemble_test_acc"], 4
                )
                res[model][name] = rows
    finally:
        ray.shutdown()
    return res


def table_rows(res: dict) -> list[list[str]]:
    rows = []
    for model, r in res["runs"].items():
        b = r["baseline"]
        rows.append(
            [
                f"{model} baseline",
                "-",
                f"{b['train_compute_s']:.1f}",
                "100%",
                f"{b['train_wall_s']:.1f}",
                f"{100 * b['test_acc']:.2f}%",
                "-",
                f"{b['peak_memory_bytes'] / 1e6:.0f}",
            ]
        )
        for name, _ in SPLITS:
            for mode in (m for m in MODES if m in r[name]):
                x = r[name][mode]
                accs = x["branch_test_acc"]
                packs = x.get("processes")
                rows.append(
                    [
                        f"{model} {name}",
                        mode if packs is None else f"{mode} ({packs} process{'es' if packs > 1 else ''})",
                        f"{x['train_compute_s']:.1f}",
                        f"{100 * x['compute_vs_baseline']:.0f}%",
                        f"{x['train_wall_s']:.1f}",
                        f"{100 * x['ensemble_test_acc']:.2f}%",
                        f"{100 * min(accs):.1f}-{100 * max(accs):.1f}%",
                        f"{x['peak_memory_bytes'] / 1e6:.0f}",
                    ]
                )
    return rows


HEADER = [
    "Network",
    "Branches",
    "Train compute (s)",
    "vs baseline",
    "Train wall (s)",
    "Ensemble test acc",
    "Branch test acc",
    "Peak mem / process (MB)",
]


def markdown(res: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|:---|:---|" + "---:|" * (len(HEADER) - 2)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(res)]
    for model, r in res["runs"].items():
        for name, _ in SPLITS:
            lines.append(
                f"\n{model} {name}: packed/unpacked wall {r[name]['packed_vs_unpacked_wall']:.2f}"
                + (f", auto/unpacked wall {r[name]['auto_vs_unpacked_wall']:.2f}" if "auto" in r[name] else "")
                + ", ensemble "
                f"accuracy packed - unpacked {100 * r[name]['ensemble_acc_packed_minus_unpacked']:+.2f} pt."
            )
    lines.append(f"\n{res['source']}, {res['epochs']} epoch(s); {res['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each source split (default: all)")
    ap.add_argument("--models", default="fc8,cnn8")
    ap.add_argument("--cnn8-width", type=int, default=16)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    begun = begin("packing", argv)
    runs = benchmark(args.models.split(","), args.epochs, args.limit, args.cnn8_width)
    res = {
        "source": "fashion-mnist" + (f" (first {args.limit} images per split)" if args.limit else ""),
        "epochs": args.epochs,
        "cnn8_width": args.cnn8_width,
        "ray_cpus": RAY_CPUS,
        "threads_per_process": 1,
        "note": "ratios were measured side by side in one run; the load average before and after is in the record",
        "runs": runs,
    }
    doc = record(begun, res, args.out)
    print(markdown(doc["results"]))


if __name__ == "__main__":
    main()
