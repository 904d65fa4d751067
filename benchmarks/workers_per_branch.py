"""A branch as a Ray Train group: K = 2 branches x M = 2 gloo workers against M = 1 (one actor per branch).

One split (sub2: 1 row x 2 cols, DCT; both branches 1x28x14, model fc8) of Fashion-MNIST (Debian's files; the
synthetic source where they are missing) is trained side by side in one local Ray of 2 CPUs, 1 torch thread
per process, the same global batch (``train.batch_size`` 128) and seeds in both modes:

- M = 1: ``resources.workers_per_branch: 1``, the 2 branches as 2 actors of 1 CPU each (2 processes);
- M = 2: ``resources.workers_per_branch: 2``, each branch a Ray Train ``TorchTrainer`` of 2 gloo workers of
  0.5 CPU each (4 processes on the 2 cores: this machine cannot make M = 2 faster, it measures its cost).

Every arm is one ``api.train`` call on fresh storage holding hard links to the same sub-datasets. Arms run in
ABBA order over the seeds ((M1, s0), (M2, s0), (M2, s1), (M1, s1)), so a drifting load hits both modes alike.
Per branch: test accuracy, epoch time (``metrics.jsonl``'s ``seconds``: training plus the validation pass;
training alone = rows / ``images_per_s``), ``train_seconds``; per arm the wall time of ``api.train`` (actor or
Ray Train start-up, data loading, test logits included). For M = 2 the all-reduce bytes each worker's DDP
communication hook counted (``result.json``) are checked to equal steps x parameters x 4 exactly, with the
steps recounted here from the batch partition (``orchestrator._ddp_parts.global_batches``), and the bytes
sent between branches (the isolation record) to be 0; the benchmark fails if either does not hold.
Accuracy "within seed noise" compares |M2 - M1| at one seed with |s1 - s0| at one M.

    .venv/bin/python -m benchmarks.workers_per_branch [--quick] [--epochs 2] [--seeds 2] [--limit 20000] [--out FILE]

``--limit``: the first N images of each source split (20,000 by default: all 10,000 test images, 18,000 training
rows per branch after the validation carve). ``--quick``: 2,000 images per split, 1 epoch, 1 seed, no results
file unless --out is given.
Results: ``benchmarks/results/workers_per_branch.json``; table in docs/benchmarks.md.

Result (2026-12-02, 2-core Intel Xeon VM, Ray 2.60, torch 2.14 on CPU; 2 epochs, 2 seeds; the machine shared with
another test run, load average ~19-23; 157 s in all): all-reduce bytes per worker 1,227,049,680 = 282 steps x
1,087,810 params x 4 in all 4 group branches, 0 bytes between branches; test accuracy |M2 - M1| at most 0.65 pt
against 0.78 pt between the two seeds at one M; M = 2 / M = 1: 1.74x a branch's training clock (all-reduce in
flight 30% of it), 2.85x the wall of ``api.train`` (Ray Train's start-up of two groups, ~30 s, included).
Reading it: 4 single-thread processes on 2 cores do the work of 2 plus the all-reduce, so M = 2 can only cost
here; it pays where each worker has cores (or a GPU) of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from itertools import combinations
from pathlib import Path

from benchmarks._common import REPO, begin, record, start_ray  # first: sets Ray's environment
from data_split import RunStorage, layout, load_manifest
from data_split.sources import FASHION_MNIST_DEBIAN_ROOT
from orchestrator import api, load_config

RAY_CPUS = 2  # the whole machine: M = 1 holds 1 CPU per branch actor, M = 2 0.5 CPU per worker
ROWS, COLS = 1, 2  # K = 2 branches
WORKERS = (1, 2)  # M of the two modes
BATCH = 128  # the global batch of a branch in both modes (64 rows per worker at M = 2)
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
DEFAULT_OUT = Path(__file__).parent / "results" / "workers_per_branch.json"
ROOT = "/tmp/spectral-bench-workers-per-branch"
DEFAULT_LIMIT = 20000  # images kept per source split: the whole test split, a third of the train split (~4 min)
QUICK_LIMIT = 2000
SYNTHETIC = {"train": 12000, "test": 2000}  # 28x28, 10 classes: when Fashion-MNIST is not on this machine


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def source_overrides() -> dict:
    """Fashion-MNIST from Debian's files when present, else the synthetic source (named in the results)."""
    if os.path.isdir(FASHION_MNIST_DEBIAN_ROOT):
        return {"source.name": "fashion-mnist"}
    return {"source.name": "synthetic", "source.synthetic": SYNTHETIC}


def config(uri: str, workers: int, seed: int, epochs: int, limit: int | None, source: dict):
    return load_config(
        CONFIG,
        {
            **source,
            "storage.uri": uri,
            "split.rows": ROWS,
            "split.cols": COLS,
            "split.transform": "dct",
            "source.limit": limit,
            "model.name": "fc8",
            "train.epochs": epochs,
            "train.batch_size": BATCH,
            "train.seed": seed,
            "train.threads": 1,
            "resources.workers_per_branch": workers,
            "resources.cpus_per_branch": RAY_CPUS / (ROWS * COLS * workers),  # every process of the mode at once
            "resources.gpus_per_branch": 0,
            "ensemble.weights": "uniform",
            "ray.num_cpus": RAY_CPUS,
        },
    )


def arm_order(seeds: int) -> list[tuple[int, int]]:
    """(M, seed) of each arm: ABBA over the seeds, (1, 0), (2, 0), (2, 1), (1, 1), (1, 2), ..."""
    return [(m, s) for s in range(seeds) for m in (WORKERS if s % 2 == 0 else WORKERS[::-1])]


def allreduce_check(result: dict, train_rows: int, batch: int, epochs: int) -> dict:
    """A group branch's measured all-reduce bytes per worker against steps x params x 4, the steps recounted."""
    import torch

    from orchestrator._ddp_parts import global_batches

    workers = result["workers"]
    steps = epochs * len(global_batches(train_rows, batch, workers, torch.Generator()))  # count, not order
    expected = steps * result["params"] * 4  # every step all-reduces every fp32 gradient once
    measured = list(result["allreduce_bytes_by_worker"])
    return {
        "steps": steps,
        "steps_recorded": result["steps"],
        "params": result["params"],
        "expected_bytes_per_worker": expected,
        "measured_bytes_by_worker": measured,
        "exact": result["steps"] == steps and measured == [expected] * workers,
    }


def branch_row(storage: RunStorage, r: dict, train_rows: int, epochs: int) -> dict:
    """One branch of one arm: accuracy, times per epoch, and (M > 1) the traffic, checked."""
    from branches.checkpoint import load_checkpoint
    from orchestrator._ddp_parts import worker_totals

    k, metrics = r["k"], layout.read_metrics(storage, r["k"])
    isolation = r["isolation"]
    row = {
        "k": k,
        "test_acc": r["test_acc"],
        "val_acc": r["val_acc"],
        "params": r["params"],
        "epoch_s": [round(m["seconds"], 3) for m in metrics],  # training + validation pass
        "epoch_train_s": [round(train_rows / m["images_per_s"], 3) for m in metrics],  # training alone
        "train_seconds": round(r["train_seconds"], 3),
        "pids": [w["pid"] for w in r["placement"].get("workers", [r["placement"]])],  # a group's, or the actor's
        "bytes_between_branches": isolation["bytes_sent_to_other_branches"],
        "files_written_for_other_branches": isolation["files_written_for_other_branches"],
    }
    if r.get("workers", 1) > 1:
        members = isolation["group"]["members"]
        per = worker_totals(load_checkpoint(storage, layout.checkpoint(k, epochs))["history"])
        row |= {
            "process_group": r["process_group"],
            "group_branches": [m["branch"] for m in members],
            "allreduce": allreduce_check(r, train_rows, BATCH, epochs),
            "allreduce_s_by_worker": [round(p["allreduce_s"], 3) for p in per],
            "allreduce_fraction_by_worker": [round(p["allreduce_s"] / p["train_s"], 3) for p in per],
        }
    return row


def check_isolation(row: dict, workers: int) -> None:
    """The claims the benchmark stands on; a violation is a failed run, not a number."""
    where = f"branch {row['k']} at M = {workers}"
    if row["bytes_between_branches"] or row["files_written_for_other_branches"]:
        raise AssertionError(f"{where} sent {row['bytes_between_branches']} bytes to other branches")
    if workers > 1:
        if row["group_branches"] != [row["k"]] * workers or row["process_group"]["world_size"] != workers:
            raise AssertionError(f"{where}: process group {row['process_group']} holds {row['group_branches']}")
        a = row["allreduce"]
        if not a["exact"]:
            raise AssertionError(
                f"{where}: all-reduce bytes per worker {a['measured_bytes_by_worker']} != steps {a['steps']} "
                f"(recorded {a['steps_recorded']}) x params {a['params']} x 4 = {a['expected_bytes_per_worker']}"
            )


def run_arm(data_src: str, uri: str, cfg) -> dict:
    shutil.rmtree(uri, ignore_errors=True)
    shutil.copytree(data_src, os.path.join(uri, layout.DATA), copy_function=os.link)  # the very same sub-datasets
    storage = RunStorage.from_config(cfg.storage)
    manifest = load_manifest(storage)
    t0 = time.perf_counter()
    outcome = api.train(cfg)
    wall = time.perf_counter() - t0
    epochs = cfg.train.epochs
    rows = [
        branch_row(storage, outcome.results[k], int(manifest.branches[k].splits["train"].rows), epochs)
        for k in sorted(outcome.results)
    ]
    for row in rows:
        check_isolation(row, cfg.resources.workers_per_branch)
    return {
        "workers": cfg.resources.workers_per_branch,
        "seed": cfg.train.seed,
        "processes": len({p for row in rows for p in row["pids"]}),
        "plan": outcome.plan.describe(),
        "train_wall_s": round(wall, 2),
        "branches": rows,
    }


def summary(arms: list[dict]) -> dict:
    """M = 2 against M = 1: time ratios over all arms of each mode, accuracy differences against seed noise."""
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    by_m = {m: [a for a in arms if a["workers"] == m] for m in WORKERS}
    times = {
        m: {
            "train_wall_s": round(mean([a["train_wall_s"] for a in by_m[m]]), 2),
            "train_seconds": round(mean([b["train_seconds"] for a in by_m[m] for b in a["branches"]]), 2),
            "epoch_s": round(mean([s for a in by_m[m] for b in a["branches"] for s in b["epoch_s"]]), 3),
            "epoch_train_s": round(mean([s for a in by_m[m] for b in a["branches"] for s in b["epoch_train_s"]]), 3),
        }
        for m in WORKERS
    }
    acc = {(a["workers"], a["seed"]): [b["test_acc"] for b in a["branches"]] for a in arms}
    seeds = sorted({a["seed"] for a in arms})
    m_diff = [abs(x - y) for s in seeds for x, y in zip(acc[(2, s)], acc[(1, s)])]
    seed_diff = [
        abs(x - y) for m in WORKERS for s, u in combinations(seeds, 2) for x, y in zip(acc[(m, s)], acc[(m, u)])
    ]
    fractions = [f for a in by_m[2] for b in a["branches"] for f in b["allreduce_fraction_by_worker"]]
    return {
        "time": {f"M{m}": t for m, t in times.items()}
        | {
            f"M2_vs_M1_{key}": round(times[2][key] / times[1][key], 3)
            for key in ("train_wall_s", "train_seconds", "epoch_s", "epoch_train_s")
        },
        "max_abs_test_acc_M2_minus_M1": round(max(m_diff), 4),
        "max_abs_test_acc_between_seeds": round(max(seed_diff), 4) if seed_diff else None,
        "M2_allreduce_fraction_of_training": round(mean(fractions), 3),
        "allreduce_exact": all(b["allreduce"]["exact"] for a in by_m[2] for b in a["branches"]),
        "bytes_between_branches": sum(b["bytes_between_branches"] for a in arms for b in a["branches"]),
    }


def benchmark(epochs: int, seeds: int, limit: int | None) -> dict:
    import ray

    shutil.rmtree(ROOT, ignore_errors=True)
    source = source_overrides()
    start_ray(num_cpus=RAY_CPUS, object_store_memory=512 * 1024**2)
    try:
        first = config(f"{ROOT}/split", 1, 0, epochs, limit, source)
        t0 = time.perf_counter()
        api.split(first)
        split_s = round(time.perf_counter() - t0, 2)
        say(f"split written in {split_s} s")
        arms = []
        for m, seed in arm_order(seeds):
            uri = f"{ROOT}/m{m}-seed{seed}"
            arm = run_arm(f"{ROOT}/split/{layout.DATA}", uri, config(uri, m, seed, epochs, limit, source))
            arms.append(arm)
            say(
                f"M={m} seed {seed}: api.train {arm['train_wall_s']} s ({arm['plan']}), test acc "
                + ", ".join(f"{b['test_acc']:.4f}" for b in arm["branches"])
            )
    finally:
        ray.shutdown()
    return {"source": source["source.name"], "split_s": split_s, "arms": arms, "summary": summary(arms)}


# -- output ------------------------------------------------------------------------------------------------------
HEADER = [
    "M (workers / branch)",
    "Seed",
    "Processes",
    "Branch",
    "Test acc",
    "Epoch (s)",
    "of which training (s)",
    "api.train wall (s)",
    "All-reduce bytes / worker",
    "= steps x params x 4",
    "Bytes between branches",
]


def table_rows(res: dict) -> list[list[str]]:
    rows = []
    for a in res["arms"]:
        for b in a["branches"]:
            ar = b.get("allreduce")
            rows.append(
                [
                    str(a["workers"]),
                    str(a["seed"]),
                    str(a["processes"]),
                    str(b["k"]),
                    f"{100 * b['test_acc']:.2f}%",
                    f"{sum(b['epoch_s']) / len(b['epoch_s']):.2f}",
                    f"{sum(b['epoch_train_s']) / len(b['epoch_train_s']):.2f}",
                    f"{a['train_wall_s']:.1f}",
                    f"{ar['measured_bytes_by_worker'][0]:,}" if ar else "0 (no group)",
                    f"{ar['steps']} x {ar['params']:,} x 4: {'exact' if ar['exact'] else 'NOT EQUAL'}" if ar else "-",
                    str(b["bytes_between_branches"]),
                ]
            )
    return rows


def markdown(res: dict) -> str:
    s, t = res["summary"], res["summary"]["time"]
    lines = ["| " + " | ".join(HEADER) + " |", "|:---|" + "---:|" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(res)]
    noise = s["max_abs_test_acc_between_seeds"]
    noise_text = "one seed: no noise measured" if noise is None else f"between seeds at one M {100 * noise:.2f} pt"
    exact = "exact in every branch" if s["allreduce_exact"] else "NOT EXACT"

    def vs(key: str, digits: int) -> str:
        return f"{t['M2'][key]:.{digits}f} s vs {t['M1'][key]:.{digits}f} s ({t[f'M2_vs_M1_{key}']:.2f}x)"

    lines += [
        "",
        f"M = 2 against M = 1 (means over each mode's arms, run in ABBA order): api.train wall "
        f"{vs('train_wall_s', 1)}, a branch's train_seconds {vs('train_seconds', 1)}, an epoch {vs('epoch_s', 2)}, "
        f"its training part {vs('epoch_train_s', 2)}; at M = 2 all-reduce is in flight for "
        f"{100 * s['M2_allreduce_fraction_of_training']:.0f}% of the training part. Test accuracy: largest "
        f"|M2 - M1| per branch and seed {100 * s['max_abs_test_acc_M2_minus_M1']:.2f} pt, {noise_text}. "
        f"All-reduce bytes per worker = steps x params x 4: {exact}; bytes between branches: "
        f"{s['bytes_between_branches']}.",
        "",
        f"{res['source']}, sub2 (1 x 2, DCT) fc8, {res['epochs']} epoch(s), global batch {res['batch_size']}; "
        f"{res['setup']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK_LIMIT} images per split, 1 epoch, 1 seed")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every arm (default 2; quick: 1)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds, each trained at M = 1 and 2 (default 2; quick: 1)")
    ap.add_argument(
        "--limit",
        type=int,
        default=None,
        help=f"first N images of each source split (default {DEFAULT_LIMIT}; quick: {QUICK_LIMIT})",
    )
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT}; quick: none)")
    args = ap.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 2)
    seeds = args.seeds or (1 if args.quick else 2)
    limit = args.limit or (QUICK_LIMIT if args.quick else DEFAULT_LIMIT)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    begun = begin("workers_per_branch", argv)
    res = benchmark(epochs, seeds, limit)
    res = {
        "source": res.pop("source") + (f" (first {limit} images per split)" if limit else ""),
        "epochs": epochs,
        "batch_size": BATCH,
        "ray_cpus": RAY_CPUS,
        "setup": f"one local Ray of {RAY_CPUS} CPUs (ray.init(num_cpus={RAY_CPUS}, include_dashboard=False)) on "
        f"this {len(os.sched_getaffinity(0))}-core machine, 1 torch thread per process; M = 1: 2 branch actors of "
        "1 CPU; M = 2: 2 Ray Train groups of 2 gloo workers of 0.5 CPU (4 processes on the cores)",
        **res,
    }
    doc = record(begun, res, out)
    print(markdown(doc["results"]))
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
