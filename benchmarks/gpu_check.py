"""GPU check: the fc8 and cnn8 baselines on a whole GPU vs 4 spectral sub4 branches sharing it (4 actors x 0.25 GPU).

For each model: split Fashion-MNIST (Debian's files when present, else synthetic images of the same
shape: 60k + 10k, 28x28x1, 10 classes) 2x2 with the DCT, train the 4 branches at once as Ray actors
of 0.25 GPU each (``resources.gpus_per_branch: 0.25``), ensemble them, and train the same network on
the full-resolution images as one actor holding the whole GPU. Both go through ``orchestrator.api``
(the very code a user runs), with ``train.amp`` (bf16 autocast) and the same epochs and optimizer.

Measured, per model:
- images/s: the baseline's training throughput; each branch's; and the spectral system's in source
  images (every image feeds all 4 branches, which run concurrently): N x epochs / slowest branch's
  training seconds. Ray start, splits and actor start-up are reported apart (``*_wall_s``).
- peak GPU memory (``torch.cuda.max_memory_allocated``) of each branch vs the baseline.
- test accuracy after the same epochs: baseline, each branch, each ensemble rule.

Budget: 5 minutes on one H100/H200 with the defaults (5 epochs). ``--cpu-smoke`` shrinks everything to
seconds on a CPU, with one *logical* GPU (``ray.init(num_gpus=1)``: actors get GPU ids and
``CUDA_VISIBLE_DEVICES``, torch stays on the CPU), so the 0.25-GPU placement path runs for real.

    benchmarks/gpu_check.sh                   # JSON to $OUT/gpu_check.json, else benchmarks/results/
    benchmarks/gpu_check.sh /some/dir         # /some/dir/gpu_check.json (a path ending in .json: that file)
    benchmarks/gpu_check.sh --cpu-smoke       # seconds, on the CPU (tests/test_gpu_check.py)

Result: not measured yet on a GPU (no GPU was lent when this was written); CPU smoke tested.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common
from benchmarks._common import REPO, begin, record

log = logging.getLogger("gpu_check")

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MODELS = ("fc8", "cnn8")
K = 4
GPUS_PER_BRANCH = 1 / K
BUDGET_S = 300  # the whole check on one H100/H200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "out", nargs="?", help="folder for gpu_check.json, or a .json path (default: $OUT, else benchmarks/results)"
    )
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny synthetic data, 1 epoch, CPU with one logical GPU: seconds"
    )
    p.add_argument("--epochs", type=int, help="training epochs of every network (default 5; smoke: 1)")
    p.add_argument(
        "--source",
        choices=("auto", "fashion-mnist", "synthetic"),
        default="auto",
        help="auto: Fashion-MNIST from Debian's package when installed, else synthetic of the same shape",
    )
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from fc8, fc4, cnn8, resnet18")
    p.add_argument("--keep", action="store_true", help="keep the runs' storage (printed) instead of removing it")
    return p.parse_args(argv)


def output_path(arg: str | None) -> Path:
    target = Path(arg or os.environ.get("OUT") or REPO / "benchmarks" / "results")
    return target if target.suffix == ".json" else target / "gpu_check.json"


def source_overrides(args: argparse.Namespace) -> dict:
    if args.cpu_smoke:
        return {
            "source.name": "synthetic",
            "source.synthetic": {"train": 800, "test": 200, "height": 28, "width": 28, "classes": 10},
        }
    if args.source == "fashion-mnist" or (
        args.source == "auto" and (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()
    ):
        return {"source.name": "fashion-mnist", "source.root": str(FASHION_MNIST)}
    return {
        "source.name": "synthetic",
        "source.synthetic": {"train": 60000, "test": 10000, "height": 28, "width": 28, "classes": 10},
    }


def machine_info() -> dict:
    """The common machine record plus the GPUs."""
    import torch

    info = {
        **_common.machine_info(),
        "host": platform.node(),
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory)
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def start_ray(smoke: bool) -> None:
    import ray

    if smoke:  # one logical GPU on a CPU machine: real placement, CPU training
        _common.start_ray(num_cpus=2, num_gpus=1, object_store_memory=256 * 1024**2)
    else:
        _common.start_ray()
    if ray.cluster_resources().get("GPU", 0) < 1:
        raise SystemExit("gpu_check: Ray sees no GPU (use --cpu-smoke on a machine without one)")


def copy_split(src_run: Path, dst_run: Path) -> None:
    """Reuse a written split (same source and split config, so its manifest hash matches) for another model."""
    from data_split import layout  # here, like the project's other imports: after the device setup

    for rel in (layout.DATA, f"{layout.BASELINE}/{layout.DATA}"):
        if (src_run / rel).exists():
            shutil.copytree(src_run / rel, dst_run / rel)


def branch_row(result: dict) -> dict:
    return {
        "k": result["k"],
        "test_acc": result["test_acc"],
        "images_per_s": result["images_per_s"],
        "train_seconds": result["train_seconds"],
        "peak_gpu_memory_bytes": result["peak_memory_bytes"],
        # on CUDA torch.cuda.max_memory_allocated; on a CPU (smoke) the training loop reports the process's max RSS
        "peak_memory_kind": "cuda_max_allocated" if result["device"].startswith("cuda") else "process_max_rss",
        "params": result["params"],
        "device": result["device"],
        "gpu_ids": result.get("placement", {}).get("gpu_ids"),
        "in_shape": result["in_shape"],
    }


def check_model(model: str, base_overrides: dict, run_dir: Path, split_from: Path | None) -> dict:
    from orchestrator import api, load_config

    cfg = load_config(
        REPO / "configs" / "fashion_mnist.yaml", {**base_overrides, "model.name": model, "storage.uri": str(run_dir)}
    )
    if split_from is not None:
        copy_split(split_from, run_dir)
    t0 = time.perf_counter()
    split = api.split(cfg)
    split_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    outcome = api.train(cfg)
    train_wall_s = time.perf_counter() - t0
    report = api.evaluate(cfg)
    n_train = split.manifest.branches[0].splits["train"].rows
    branches = [branch_row(outcome.results[k]) for k in sorted(outcome.results)]

    t0 = time.perf_counter()
    base = api.baseline(cfg.replace(**{"resources.gpus_per_branch": 1.0}))  # the whole GPU
    baseline_wall_s = time.perf_counter() - t0
    baseline = branch_row(base)

    slowest = max(b["train_seconds"] for b in branches)
    epochs = cfg.train.epochs
    peak_branch = max(b["peak_gpu_memory_bytes"] for b in branches)
    return {
        "model": model,
        "epochs": epochs,
        "train_images": n_train,
        "split_wall_s": split_s,
        "baseline": {**baseline, "gpus": 1.0, "wall_s": baseline_wall_s},
        "spectral_sub4": {
            "gpus_per_branch": cfg.resources.gpus_per_branch,
            "branches": branches,
            "source_images_per_s": n_train * epochs / slowest,
            "sum_branch_images_per_s": sum(b["images_per_s"] for b in branches),
            "slowest_branch_train_seconds": slowest,
            "train_wall_s": train_wall_s,
            "max_branch_peak_gpu_memory_bytes": peak_branch,
            "branch_vs_baseline_peak_memory": peak_branch / baseline["peak_gpu_memory_bytes"]
            if baseline["peak_gpu_memory_bytes"]
            else None,
            "ensembles": {e["method"]: e["test_acc"] for e in report["ensembles"]},
            "chosen_ensemble": report["chosen_ensemble"],
            "ensemble_test_acc": next(e["test_acc"] for e in report["ensembles"] if e["chosen"]),
            "params_per_branch": branches[0]["params"],
        },
    }


def markdown(results: dict) -> str:
    """Per model: the baseline on the whole GPU, each quarter-GPU branch, and the sub4 ensemble."""
    mib = 2**20
    lines = [
        "| model | variant | test acc | images/s | peak GPU MiB | train s | params |",
        "|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for r in results["models"].values():
        b, s = r["baseline"], r["spectral_sub4"]
        lines.append(
            f"| {r['model']} | baseline, 1 GPU | {b['test_acc']:.4f} | {b['images_per_s']:,.0f} | "
            f"{b['peak_gpu_memory_bytes'] / mib:.1f} | {b['train_seconds']:.1f} | {b['params']:,} |"
        )
        lines += [
            f"| | branch {br['k']}, {s['gpus_per_branch']:g} GPU | {br['test_acc']:.4f} | {br['images_per_s']:,.0f} | "
            f"{br['peak_gpu_memory_bytes'] / mib:.1f} | {br['train_seconds']:.1f} | {br['params']:,} |"
            for br in s["branches"]
        ]
        lines.append(
            f"| | sub4 ensemble ({s['chosen_ensemble']}) | {s['ensemble_test_acc']:.4f} | "
            f"{s['source_images_per_s']:,.0f} | {s['max_branch_peak_gpu_memory_bytes'] / mib:.1f} | "
            f"{s['slowest_branch_train_seconds']:.1f} | {K * s['params_per_branch']:,} |"
        )
    return "\n".join(lines)


def print_table(results: list[dict]) -> None:
    mib = 2**20
    header = (
        f"{'model':<6} {'variant':<26} {'test acc':>8} {'images/s':>11} {'peak GPU MiB':>12} {'train s':>8} "
        f"{'params':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        b, s = r["baseline"], r["spectral_sub4"]
        print(
            f"{r['model']:<6} {'baseline, 1 GPU':<26} {b['test_acc']:>8.4f} {b['images_per_s']:>11,.0f} "
            f"{b['peak_gpu_memory_bytes'] / mib:>12.1f} {b['train_seconds']:>8.1f} {b['params']:>10,}"
        )
        for br in s["branches"]:
            label = f"branch {br['k']}, {s['gpus_per_branch']:g} GPU"
            print(
                f"{'':<6} {label:<26} {br['test_acc']:>8.4f} {br['images_per_s']:>11,.0f} "
                f"{br['peak_gpu_memory_bytes'] / mib:>12.1f} {br['train_seconds']:>8.1f} {br['params']:>10,}"
            )
        label = f"sub4 ensemble ({s['chosen_ensemble']})"
        print(
            f"{'':<6} {label:<26} {s['ensemble_test_acc']:>8.4f} {s['source_images_per_s']:>11,.0f} "
            f"{s['max_branch_peak_gpu_memory_bytes'] / mib:>12.1f} {s['slowest_branch_train_seconds']:>8.1f} "
            f"{K * s['params_per_branch']:>10,}"
        )
    print(
        "ensemble images/s: source images through all 4 concurrent branches (N x epochs / slowest branch); "
        "its peak memory: the largest branch's"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = output_path(args.out)
    epochs = args.epochs or (1 if args.cpu_smoke else 5)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    cpus = 1 if args.cpu_smoke else max(1, (len(os.sched_getaffinity(0)) - 2) // K)  # leave 2 for driver and Ray
    overrides = {
        **source_overrides(args),
        "split.rows": 2,
        "split.cols": 2,
        "split.transform": "dct",
        "train.epochs": epochs,
        "train.amp": True,
        "train.batch_size": 128,
        "train.threads": cpus,
        "resources.gpus_per_branch": GPUS_PER_BRANCH,
        "resources.cpus_per_branch": cpus,
        "resources.max_restarts": 0,
        "ensemble.weights": "geometric",
    }
    if args.cpu_smoke:
        overrides["model.width"] = 16  # cnn8 base channels / fc width: seconds on a CPU

    begun = begin("gpu_check", argv)
    t_start = time.perf_counter()
    start_ray(args.cpu_smoke)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    results, previous = [], None
    try:
        for model in models:
            log.info(
                "%s: 4 sub4 branches x %.2f GPU, then the baseline on 1 GPU, %d epoch(s)",
                model,
                GPUS_PER_BRANCH,
                epochs,
            )
            run_dir = scratch / model
            results.append(check_model(model, overrides, run_dir, previous))
            previous = run_dir
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    total_s = time.perf_counter() - t_start

    results_record = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "source": overrides["source.name"],
        "split": {"rows": 2, "cols": 2, "K": K, "transform": "dct"},
        "epochs": epochs,
        "amp": True,
        "total_seconds": total_s,
        "budget_seconds": BUDGET_S,
        "within_budget": total_s <= BUDGET_S,
        "models": {r["model"]: r for r in results},
        "storage": str(scratch) if args.keep else None,
    }
    record(begun, results_record, out, machine=machine_info())
    print_table(results)
    print(f"total {total_s:.1f} s (budget {BUDGET_S} s); numbers in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
