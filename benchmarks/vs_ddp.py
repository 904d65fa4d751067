"""Head to head with Ray Train DDP: bytes communicated, wall time, test accuracy and time to accuracy.

What it measures (one run, Fashion-MNIST from Debian's files, model fc8, the same epochs (5), optimizer
(Adam 1e-3, cosine) and global batch (128) everywhere, one local Ray with 2 CPUs, 1 torch thread per process):

1. single: ``spectral baseline`` with ``baseline.engine=single``: fc8 on the 28x28 images in one actor.
2. ddp: ``baseline.engine=ddp, baseline.workers=2``: the same network, initialisation and global batches
   on Ray Train's TorchTrainer, 2 workers with gloo, 64 rows per worker per step (``orchestrator.ddp``).
   Bytes and the time in all-reduce are measured by the DDP communication hook on each worker.
3. spectral sub4: 4 DCT branches (fc8 on 14x14), 2 at a time (1 CPU each), ensemble weights tuned by
   Ray Tune on the validation split; every branch writes its validation logits after each epoch
   (``train.epoch_logits``) so that the ensemble's validation accuracy per epoch is known.

For each: wall time (engine start to the end of its last epoch, read from the run's report, plus the whole
API call timed here), test accuracy, the wall time until its validation accuracy first reaches the single
baseline's final validation accuracy (``orchestrator.engine_comparison``), and bytes sent per worker. The splits are
written first, so no engine's time includes writing data.

Then a projection, labelled as one: ResNet-34 (21.8 M parameters, fp32 gradients) with ring all-reduce
(each worker sends 2(N-1)/N of the gradient bytes per step) on N = 4, 16, 64 workers and 10, 25, 100
Gbit/s links, per ImageNet-1k epoch (1,281,167 images) at a per-worker batch of 32: communication time
per epoch for DDP against 0 for K branches, and against the compute time per epoch from a ResNet-34
step measured here (forward + backward + Adam, 224x224, batch 32, this machine's CPU, 1 thread).

Command (repository root; ``--quick``: 2,000 images per split and 1 epoch, a smoke test that writes no
results file unless --out is given):

    .venv/bin/python -m benchmarks.vs_ddp [--quick] [--epochs N] [--root DIR] [--out PATH]

Numbers go to ``benchmarks/results/vs_ddp.json`` (machine, load average before and after, command, date).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

from benchmarks._common import REPO, begin, load_average, record  # first: sets Ray's environment
from data_split import RunStorage, layout, split_dataset
from orchestrator import api, load_config

RAY_CPUS = 2
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
DEFAULT_OUT = Path(__file__).parent / "results" / "vs_ddp.json"
DEFAULT_ROOT, QUICK_ROOT = "/tmp/spectral-bench-ddp", "/tmp/spectral-bench-ddp-quick"
QUICK_LIMIT = 2000
# The projection's inputs (analytic, stated in the output)
RESNET34_PARAMS = 21_797_672  # torchvision resnet34, 1000 classes (checked against the model below)
IMAGENET_TRAIN_IMAGES = 1_281_167
PROJ_BATCH_PER_WORKER = 32
PROJ_WORKERS = (4, 16, 64)
PROJ_GBITS = (10, 25, 100)
RESNET_STEPS_TIMED = 3  # after one warm-up step


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def measure_resnet34_step() -> dict:
    """Seconds of one ResNet-34 training step (224x224, batch 32, Adam) on this CPU with 1 thread."""
    import torch
    import torchvision

    torch.set_num_threads(1)
    model = torchvision.models.resnet34(weights=None, num_classes=1000)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(PROJ_BATCH_PER_WORKER, 3, 224, 224), torch.randint(0, 1000, (PROJ_BATCH_PER_WORKER,))
    times = []
    for i in range(RESNET_STEPS_TIMED + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step allocates and is not counted
            times.append(time.perf_counter() - t0)
    return {
        "params": params,
        "step_s": sorted(times)[len(times) // 2],
        "steps_timed": times,
        "threads": 1,
        "batch": PROJ_BATCH_PER_WORKER,
    }


def projection(step_s: float, params: int) -> list[dict]:
    rows = []
    for n in PROJ_WORKERS:
        steps = math.ceil(IMAGENET_TRAIN_IMAGES / (PROJ_BATCH_PER_WORKER * n))
        sent = 2 * (n - 1) / n * params * 4  # bytes each worker sends per step, ring all-reduce
        for gbit in PROJ_GBITS:
            comm = steps * sent * 8 / (gbit * 1e9)
            rows.append(
                {
                    "workers": n,
                    "gbit_s": gbit,
                    "steps_per_epoch": steps,
                    "bytes_per_worker_per_step": sent,
                    "ddp_comm_s_per_epoch": comm,
                    "branches_comm_s_per_epoch": 0.0,
                    "compute_s_per_epoch_measured_cpu": steps * step_s,
                    "comm_share_if_not_overlapped": comm / (comm + steps * step_s),
                }
            )
    return rows


def engine_rows(report: dict, walls: dict) -> list[dict]:
    rows = []
    for e in report["comparison"]["engines"]:
        name = "spectral" if e["engine"].startswith("spectral") else e["engine"]
        row = {
            key: e.get(key)
            for key in (
                "engine",
                "workers",
                "bytes_per_worker",
                "process_group",
                "test_acc",
                "val_acc",
                "wall_s",
                "time_to_target_s",
                "curve",
            )
        }
        row["api_call_s"] = walls[name]
        if name == "ddp":
            ddp = report["baseline_ddp"]
            for key in (
                "steps",
                "parameters",
                "allreduce_bytes_by_worker",
                "allreduce_seconds_by_worker",
                "train_seconds_by_worker",
                "allreduce_fraction_by_worker",
                "backend",
                "seconds",
            ):
                row[key] = ddp[key]
        rows.append(row)
    return rows


def markdown(results: dict) -> str:
    """The engines measured side by side, then the labelled ResNet-34 projection (not a measurement)."""
    target = results["target_val_acc"]
    lines = [
        "| Engine | Workers | Bytes sent per worker | Wall time (s) | Test acc | "
        f"Time to {100 * target:.2f}% val acc (s) |",
        "|:---|---:|---:|---:|---:|---:|",
    ]
    for r in results["engines"]:
        t = r["time_to_target_s"]
        lines.append(
            f"| {r['engine']} | {r['workers']} | {r['bytes_per_worker']:,} | {r['wall_s']:.1f} | "
            f"{100 * r['test_acc']:.2f}% | {t if isinstance(t, str) else f'{t:.1f}'} |"
        )
    ddp = next(r for r in results["engines"] if r["engine"] == "ddp")
    lines += [
        "",
        "DDP time in all-reduce per worker: "
        + ", ".join(
            f"{s:.1f} s of {t:.1f} s ({100 * f:.0f}%)"
            for s, t, f in zip(
                ddp["allreduce_seconds_by_worker"], ddp["train_seconds_by_worker"], ddp["allreduce_fraction_by_worker"]
            )
        ),
    ]
    r34 = results["resnet34"]
    lines += [
        "",
        f"**Projection, not a measurement**: ResNet-34 ({r34['params']:,} params, fp32), ring all-reduce, "
        f"one ImageNet epoch, batch {PROJ_BATCH_PER_WORKER} per worker; compute from a measured CPU step of "
        f"{r34['step_s']:.2f} s.",
        "",
        "| Workers N | Link | Steps/epoch | Sent per worker per step | DDP comm per epoch | K branches | Comm "
        "share (no overlap, CPU compute) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['workers']} | {p['gbit_s']} Gbit/s | {p['steps_per_epoch']:,} | "
        f"{p['bytes_per_worker_per_step'] / 1e6:.1f} MB | "
        f"{p['ddp_comm_s_per_epoch']:,.0f} s | 0 s | {100 * p['comm_share_if_not_overlapped']:.1f}% |"
        for p in results["projection"]
    ]
    lines += ["", "Assumptions: " + "; ".join(results["projection_assumptions"]) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--root", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    epochs = args.epochs or (1 if args.quick else 5)
    root = args.root or (QUICK_ROOT if args.quick else DEFAULT_ROOT)
    uri = os.path.join(root, "fmnist-fc8-sub4")
    shutil.rmtree(uri, ignore_errors=True)
    cfg = load_config(
        CONFIG,
        {
            "storage.uri": uri,
            "source.limit": QUICK_LIMIT if args.quick else None,
            "model.name": "fc8",
            "train.epochs": epochs,
            "train.batch_size": 128,
            "train.threads": 1,
            "train.epoch_logits": True,
            "resources.cpus_per_branch": 1,
            "resources.gpus_per_branch": 0,
            "ensemble.weights": "tuned",
            "baseline.workers": 2,
            "baseline.cpus_per_worker": 1,
            "ray.num_cpus": RAY_CPUS,
        },
    )
    begun = begin("vs_ddp")
    say(f"splits under {uri} (load {begun.load_before})")
    api.split(cfg)
    split_dataset(
        cfg.source,
        dataclasses.replace(cfg.split, rows=1, cols=1, transform="identity"),
        RunStorage.from_config(cfg.storage).child(layout.BASELINE),
    )
    walls = {}
    say("single baseline")
    _, walls["single"] = timed(api.baseline, cfg.replace(**{"baseline.engine": "single"}))
    say(f"ddp baseline, 2 workers (load {load_average()})")
    _, walls["ddp"] = timed(api.baseline, cfg.replace(**{"baseline.engine": "ddp"}))
    say(f"spectral sub4, 2 branches at a time (load {load_average()})")
    _, walls["spectral"] = timed(api.train, cfg)
    say("ensemble weights (Ray Tune) and report")
    report = api.evaluate(cfg)
    say("ResNet-34 step for the projection")
    r34 = measure_resnet34_step()
    assert r34["params"] == RESNET34_PARAMS, r34["params"]
    results = {
        "epochs": epochs,
        "quick": args.quick,
        "run": uri,
        "target_val_acc": report["comparison"]["target_val_acc"],
        "engines": engine_rows(report, walls),
        "resnet34": r34,
        "projection": projection(r34["step_s"], r34["params"]),
        "projection_assumptions": [
            "labelled projection, not a measurement: ring all-reduce sends 2(N-1)/N x 21.8 M x 4 bytes per worker "
            "per step",
            "the link's full bandwidth, no latency, no compression, no overlap of communication with compute",
            f"per-worker batch {PROJ_BATCH_PER_WORKER}, one ImageNet-1k epoch = {IMAGENET_TRAIN_IMAGES:,} images",
            "compute per epoch from one CPU thread here; a GPU step is far shorter, so comm's share would be larger",
            "K branches exchange 0 bytes; reading their own data shards is not counted for either engine",
        ],
    }
    out = Path(args.out) if args.out else (None if args.quick else DEFAULT_OUT)
    doc = record(begun, results, out)
    print(f"\nFashion-MNIST fc8, {epochs} epochs, global batch 128, 2 CPUs (load average {doc['load_average']})")
    print(markdown(results))
    if out is not None:
        say(f"results: {out}")


if __name__ == "__main__":
    main()
