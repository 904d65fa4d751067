"""Spectral branches against the full-resolution baseline: accuracy, size, training compute, memory, parallelism.

What it measures (one run, Fashion-MNIST from Debian's files, model fc8, the same epochs everywhere, one local
Ray with 2 CPUs, every branch and the baseline trained by an actor holding 1 CPU with ``train.threads=1``):

1. The baseline: fc8 on the full-resolution 28x28 images (``orchestrator.api.baseline``: the K=1 identity
   split, trained under ``<run>/baseline``). Trained once, under the sub4 run; the sub16 run gets a
   hard-linked copy of the same folder (the K=1 split does not depend on rows/cols, so the data, the
   manifest's config hash and the result are identical), and both runs' reports read the same numbers.
2. spectral-fc8-sub4 and -sub16 with the DCT (``api.split``, ``api.train``, ``api.evaluate``): test accuracy of
   the uniform and geometric (p=0.3) ensembles and of the best single branch, parameters per branch and
   their ratio to the baseline's, total training compute, wall time of the training stage, peak memory.
   - total training compute = sum over branches of ``result.json``'s ``train_seconds`` (the branch's own
     clock over its epochs: training plus the per-epoch validation pass, one CPU thread each), against the
     baseline's ``train_seconds`` (also one thread). Branches of one run train 2 at a time, so this is CPU
     time spent, not elapsed time; the elapsed time is ``train_wall_s`` (the whole ``api.train`` call:
     actor start-up, data loading, training, test logits; for the baseline the ``api.baseline`` call after
     its split was written, so that call only finds the split up to date).
   - peak memory per process = ``result.json``'s ``peak_memory_bytes`` (``ru_maxrss`` of the actor process:
     Ray worker, torch, the branch's data and model), the baseline's and the largest branch's.
3. Parallel efficiency: a 2-branch split (sub2 = 1 row x 2 cols, DCT; both branches 1x28x14, equal work)
   trained with ``orchestrator.launcher.train_branches`` twice, each time into fresh storage holding the
   same sub-datasets: "parallel" with ``cpus_per_branch=1`` (both actors at once on the 2-CPU Ray) and
   "sequential" with ``cpus_per_branch=2`` (Ray can hold one actor at a time, so it queues the second:
   the same two branches one after the other, still 1 thread each). Speed-up = T_seq / T_par, efficiency
   = speed-up / 2, from the wall times of the two calls (actor start-up included) and from the branches'
   own clocks (sum of the sequential branches' ``train_seconds`` / (2 x the slower parallel branch's)).
   Modes run in ABBA order (seq, par, par, seq for --pair-repeats 2) and are summed per mode, so a
   drifting machine load hits both alike.

Sub-datasets are all written first, in a Ray session of their own; training runs in a second, fresh
session, so no actor lands in a worker process that ran a split task (its ``ru_maxrss`` would be the
split's). Runs go under ``--root`` (default /tmp/spectral-bench; /tmp/spectral-bench-quick with --quick),
which ``benchmarks/ensemble_weights.py`` reuses: ``<root>/fmnist-fc8-sub4``, ``<root>/fmnist-fc8-sub16``,
each with its baseline at ``<run>/baseline``. This benchmark removes and rewrites exactly those two runs
and ``<root>/parallel-efficiency`` at the start, so every number is measured, never read back.

Command (repository root; ``--quick``: the first 2,000 images of each split and 1 epoch, a smoke test of a
minute or two that writes no results file unless --out is given):

    .venv/bin/python -m benchmarks.branches_vs_baseline [--quick] [--epochs N] [--root DIR] [--out PATH]

Numbers go to ``benchmarks/results/branches_vs_baseline.json`` (machine, load average before and after,
command, date, epochs) and print as a table plus a markdown table (docs/benchmarks.md's).

Result (2026-11-27, 2-core Intel Xeon VM, 23.5 GiB, Ray 2.60, torch 2.14 on CPU; 3 epochs everywhere, Adam 1e-3,
cosine, batch 128; quiet machine (load ~1.9); the whole benchmark took 382 s):

    network                 test acc unif/geo  best branch  params/branch     compute s (vs base)  wall s  peak MB
    fc8 baseline (28x28)    88.34%             -            4,326,906          71.0 (100%)          81.0   1,758
    spectral-fc8-sub4 dct   88.19% / 88.46%    87.58%       274,998 (1/15.7)   35.8  (50%)          33.4   1,107
    spectral-fc8-sub16 dct  84.53% / 86.44%    85.54%       18,336 (1/236)     72.8 (103%)          83.3     955
    (an idle actor with torch imported: 649 MB, the floor under every process)

    targets: sub4 params/branch 1/15.7 <= 1/12: MET; sub4 training compute 50% <= 35%: NOT MET;
    parallel efficiency (sub2, 2 epochs, ABBA x2) 92% by wall time (speed-up 1.84x), 99% by the
    branches' clocks >= 80%: MET.

Reading it: sub4's FLOPs are 25% of the baseline's, but on one CPU thread a 196-wide fc8 step at batch 128 is
dominated by per-op framework overhead (about 7-9 ms per step against 46-77 ms at 784 wide), so four branches
cost about half the baseline's training time; sub16's 16 tiny branches are all overhead and spend their wall time
on actor start-up (16 actors, 2 at a time). Accuracies are deterministic on CPU (threads=1): identical to an
earlier run under load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from benchmarks._common import REPO, begin, record, start_ray  # first: sets Ray's environment
from data_split import RunStorage, layout, split_dataset
from orchestrator import SpectralConfig, api, load_config
from orchestrator.launcher import train_branches

RAY_CPUS = 2  # the whole machine here; branches and the baseline hold 1 CPU (1 torch thread) each
OBJECT_STORE_BYTES = 512 * 1024**2  # small and fixed: training moves no tensors through the object store
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
DEFAULT_OUT = Path(__file__).parent / "results" / "branches_vs_baseline.json"
DEFAULT_ROOT, QUICK_ROOT = "/tmp/spectral-bench", "/tmp/spectral-bench-quick"
DEFAULT_EPOCHS = 3  # fits the whole benchmark in ~15 min on the 2-core VM (baseline ~40 s/epoch on 1 thread)
DEFAULT_PAIR_EPOCHS = 2  # long enough that training, not actor start-up, dominates a branch's wall time
QUICK_LIMIT = 2000  # --quick: images kept per source split
SPECTRAL_RUNS = (("sub4", 2), ("sub16", 4))  # name, rows = cols
RUN_NAME = "fmnist-fc8-{}"  # <root>/fmnist-fc8-sub4, -sub16: the names benchmarks/ensemble_weights.py reads
PAIR_DIR = "parallel-efficiency"
TARGET_PARAMS_RATIO = 1 / 12  # sub4 params per branch <= 1/12 of the baseline's
TARGET_COMPUTE_RATIO = 0.35  # sub4 total training compute <= 35% of the baseline's
TARGET_EFFICIENCY = 0.80  # 2 branches at once vs one after the other (wall time)


# -- machine ---------------------------------------------------------------------------------------------
def idle_actor_memory() -> int:
    """ru_maxrss (bytes) of a fresh 1-CPU actor that imported what a branch actor imports, and trained nothing:
    the floor under every ``peak_memory_bytes`` (Ray worker, torch, pyarrow)."""
    import ray

    @ray.remote(num_cpus=1)
    class IdleActor:
        def peak(self) -> int:
            import resource

            import branches.train  # noqa: F401  torch, the model zoo, data_split's readers
            import orchestrator.branch_task  # noqa: F401

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    actor = IdleActor.remote()
    try:
        return ray.get(actor.peak.remote())
    finally:
        ray.kill(actor)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- configs and storage ------------------------------------------------------------------------------------
def bench_config(
    uri: str, rows: int, cols: int, epochs: int, limit: int | None, cpus_per_branch: int = 1
) -> SpectralConfig:
    return load_config(
        CONFIG,
        {
            "storage.uri": uri,
            "split.rows": rows,
            "split.cols": cols,
            "split.transform": "dct",
            "source.limit": limit,
            "model.name": "fc8",
            "train.epochs": epochs,
            "train.threads": 1,
            "resources.cpus_per_branch": cpus_per_branch,
            "resources.gpus_per_branch": 0,
            "ensemble.weights": "geometric",
            "ray.num_cpus": RAY_CPUS,
        },
    )


def baseline_split_cfg(cfg: SpectralConfig):
    """The split ``api.baseline`` writes: K=1 identity of the same source (written ahead, see the docstring)."""
    import dataclasses

    return dataclasses.replace(cfg.split, rows=1, cols=1, transform="identity")


def hardlink_tree(src: str, dst: str) -> None:
    """Copy a folder by hard links: every write in RunStorage is write-then-rename, so the copies never alias."""
    shutil.copytree(src, dst, copy_function=os.link)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# -- the measurements ------------------------------------------------------------------------------------------
def branch_row(r: dict) -> dict:
    keep = (
        "k",
        "params",
        "model_bytes",
        "train_loss",
        "val_acc",
        "test_acc",
        "train_seconds",
        "images_per_s",
        "peak_memory_bytes",
        "in_shape",
    )
    return {key: r.get(key) for key in keep} | {"pid": (r.get("placement") or {}).get("pid")}


def summarise_run(report: dict, split_s: float, train_wall_s: float) -> dict:
    branches = report["branches"]
    ens = {e["method"]: e for e in report["ensembles"]}
    best = max(branches, key=lambda b: b["test_acc"])
    return {
        "uri": report["run"],
        "K": report["split"]["K"],
        "transform": report["split"]["transform"],
        "test_acc": {m: ens[m]["test_acc"] for m in ("uniform", "geometric") if m in ens},
        "val_acc": {m: ens[m]["val_acc"] for m in ("uniform", "geometric") if m in ens},
        "geometric_weights": ens.get("geometric", {}).get("weights"),
        "best_branch": {"k": best["k"], "test_acc": best["test_acc"]},
        "params_per_branch": max(b["params"] for b in branches),
        "total_params": report["totals"]["total_params"],
        "total_train_seconds": report["totals"]["total_train_seconds"],
        "max_branch_train_seconds": report["totals"]["max_branch_train_seconds"],
        "train_wall_s": round(train_wall_s, 2),
        "split_s": round(split_s, 2),
        "max_peak_memory_bytes": report["totals"]["max_peak_memory_bytes"],
        "baseline_in_report": report["baseline"] is not None,
        "branches": [branch_row(b) for b in branches],
    }


def train_pair(data_src: str, run_dir: str, cfg: SpectralConfig, cpus_per_branch: int) -> dict:
    """One call of train_branches on the 2-branch split, in fresh storage holding a hard-linked copy of the data."""
    shutil.rmtree(run_dir, ignore_errors=True)
    hardlink_tree(data_src, os.path.join(run_dir, "data"))
    cfg = cfg.replace(**{"resources.cpus_per_branch": cpus_per_branch})
    outcome, wall = timed(train_branches, RunStorage(run_dir), 2, cfg.model, cfg.train, cfg.resources)
    res = [outcome.results[k] for k in (0, 1)]
    return {
        "wall_s": wall,
        "train_seconds": [r["train_seconds"] for r in res],
        "plan": outcome.plan.describe(),
        "concurrent": outcome.plan.concurrent,
        "pids": [r["placement"]["pid"] for r in res],
    }


def parallel_efficiency(pair_root: str, cfg: SpectralConfig, repeats: int) -> dict:
    data_src = os.path.join(pair_root, "split", "data")
    order = [("sequential", "parallel")[(i + i // 2) % 2] for i in range(repeats * 2)]  # ABBA...: s p p s s p ...
    runs = []
    for i, mode in enumerate(order):
        r = train_pair(data_src, os.path.join(pair_root, f"{mode}-{i}"), cfg, 2 if mode == "sequential" else 1)
        say(
            f"  pair {i} {mode:<10}: wall {r['wall_s']:6.1f} s, branch train_seconds "
            f"{', '.join(f'{s:.1f}' for s in r['train_seconds'])} ({r['plan']})"
        )
        runs.append({"mode": mode, **{k: (round(v, 2) if k == "wall_s" else v) for k, v in r.items()}})
    return {
        "split": "sub2 (rows 1, cols 2, dct), 2 branches of 1x28x14",
        "epochs": cfg.train.epochs,
        "method": "parallel: cpus_per_branch=1 on a 2-CPU Ray (both at once); sequential: cpus_per_branch=2 "
        "(Ray queues the second actor until the first is killed); train.threads=1 in both; "
        "fresh storage for every call; modes in ABBA order, summed per mode",
        "definition": "speedup = T_sequential / T_parallel; efficiency = speedup / 2 (branches' clocks: "
        "sum of the sequential branches' train_seconds / (2 x max of the parallel pair's))",
        "runs": runs,
        **efficiency_summary(runs),
    }


def _efficiency(seq: list[dict], par: list[dict]) -> dict:
    t_seq, t_par = sum(r["wall_s"] for r in seq), sum(r["wall_s"] for r in par)
    c_seq = sum(sum(r["train_seconds"]) for r in seq)  # both branches, one after the other
    c_par = sum(max(r["train_seconds"]) for r in par)  # the slower of the two running together
    return {
        "wall": {
            "sequential_s": round(t_seq, 2),
            "parallel_s": round(t_par, 2),
            "speedup": round(t_seq / t_par, 3),
            "efficiency": round(t_seq / (2 * t_par), 3),
        },
        "train_seconds": {
            "sequential_s": round(c_seq, 2),
            "parallel_s": round(c_par, 2),
            "speedup": round(c_seq / c_par, 3),
            "efficiency": round(c_seq / (2 * c_par), 3),
        },
    }


def efficiency_summary(runs: list[dict]) -> dict:
    """Efficiency over all runs (summed per mode: the headline), and per adjacent (seq, par) block, which shows
    whether a burst of outside load hit one block only."""
    by_mode = lambda rs, m: [r for r in rs if r["mode"] == m]  # noqa: E731
    per_block = []
    for i in range(0, len(runs) - 1, 2):  # ABBA: (seq, par), (par, seq), ...
        eff = _efficiency(by_mode(runs[i : i + 2], "sequential"), by_mode(runs[i : i + 2], "parallel"))
        per_block.append(
            {"runs": [i, i + 1], "wall": eff["wall"]["efficiency"], "train_seconds": eff["train_seconds"]["efficiency"]}
        )
    return {**_efficiency(by_mode(runs, "sequential"), by_mode(runs, "parallel")), "per_block_efficiency": per_block}


def benchmark(root: str, epochs: int, pair_epochs: int, pair_repeats: int, limit: int | None) -> dict:
    import ray

    cfgs = {
        name: bench_config(os.path.join(root, RUN_NAME.format(name)), rc, rc, epochs, limit)
        for name, rc in SPECTRAL_RUNS
    }
    pair_root = os.path.join(root, PAIR_DIR)
    pair_cfg = bench_config(os.path.join(pair_root, "split"), 1, 2, pair_epochs, limit)
    for path in [c.storage.uri for c in cfgs.values()] + [pair_root]:
        shutil.rmtree(path, ignore_errors=True)  # fresh: a finished branch would be skipped, not measured
    first = cfgs["sub4"]

    # Session 1: every sub-dataset (Ray Data tasks).
    res: dict = {
        "ray_startup_s": round(start_ray(num_cpus=RAY_CPUS, object_store_memory=OBJECT_STORE_BYTES), 2),
        "runs": {},
    }
    _, base_split_s = timed(
        split_dataset,
        first.source,
        baseline_split_cfg(first),
        RunStorage.from_config(first.storage).child(layout.BASELINE),
    )
    say(f"split baseline (K=1 identity): {base_split_s:.1f} s")
    split_s = {}
    for name, cfg in cfgs.items():
        _, split_s[name] = timed(api.split, cfg)
        say(f"split {name}: {split_s[name]:.1f} s")
    api.split(pair_cfg)
    ray.shutdown()

    # Session 2: training only, in fresh worker processes.
    res["ray_restart_s"] = round(start_ray(num_cpus=RAY_CPUS, object_store_memory=OBJECT_STORE_BYTES), 2)
    res["idle_actor_peak_memory_bytes"] = idle_actor_memory()
    say(f"idle actor: ru_maxrss {res['idle_actor_peak_memory_bytes'] / 1e6:.0f} MB")
    baseline, base_wall = timed(api.baseline, first)
    say(
        f"baseline: test acc {baseline['test_acc']:.4f}, train_seconds {baseline['train_seconds']:.1f}, "
        f"wall {base_wall:.1f} s"
    )
    res["baseline"] = {
        **branch_row(baseline),
        "uri": RunStorage.from_config(first.storage).child(layout.BASELINE).uri,
        "train_wall_s": round(base_wall, 2),
        "split_s": round(base_split_s, 2),
        "shared_with": [
            RunStorage.from_config(c.storage).child(layout.BASELINE).uri for n, c in cfgs.items() if n != "sub4"
        ],
    }
    for name, cfg in cfgs.items():
        if name != "sub4":  # the same K=1 split and training: share the finished baseline
            hardlink_tree(
                RunStorage.from_config(first.storage).child(layout.BASELINE).root,
                RunStorage.from_config(cfg.storage).child(layout.BASELINE).root,
            )
        _, wall = timed(api.train, cfg)
        report = api.evaluate(cfg)
        row = summarise_run(report, split_s[name], wall)
        res["runs"][name] = row
        say(
            f"{name}: test acc uniform {row['test_acc']['uniform']:.4f} geometric {row['test_acc']['geometric']:.4f}, "
            f"total train_seconds {row['total_train_seconds']:.1f}, wall {wall:.1f} s"
        )
    say(f"parallel efficiency: sub2, {pair_epochs} epoch(s), {pair_repeats} pair(s)")
    res["parallel_efficiency"] = parallel_efficiency(pair_root, pair_cfg, pair_repeats)
    ray.shutdown()
    return res


def add_ratios_and_targets(res: dict) -> None:
    base = res["baseline"]
    for row in res["runs"].values():
        row["params_ratio_vs_baseline"] = row["params_per_branch"] / base["params"]
        row["compute_ratio_vs_baseline"] = row["total_train_seconds"] / base["train_seconds"]
        row["wall_ratio_vs_baseline"] = row["train_wall_s"] / base["train_wall_s"]
        row["peak_memory_ratio_vs_baseline"] = row["max_peak_memory_bytes"] / base["peak_memory_bytes"]
    sub4, eff = res["runs"]["sub4"], res["parallel_efficiency"]
    res["targets"] = {
        "sub4_params_per_branch_le_1_12_of_baseline": {
            "value": round(sub4["params_ratio_vs_baseline"], 4),
            "target": round(TARGET_PARAMS_RATIO, 4),
            "met": sub4["params_ratio_vs_baseline"] <= TARGET_PARAMS_RATIO,
        },
        "sub4_total_train_compute_le_35pct_of_baseline": {
            "value": round(sub4["compute_ratio_vs_baseline"], 4),
            "target": TARGET_COMPUTE_RATIO,
            "met": sub4["compute_ratio_vs_baseline"] <= TARGET_COMPUTE_RATIO,
        },
        "parallel_efficiency_ge_80pct_wall": {
            "value": eff["wall"]["efficiency"],
            "target": TARGET_EFFICIENCY,
            "met": eff["wall"]["efficiency"] >= TARGET_EFFICIENCY,
            "train_seconds_efficiency": eff["train_seconds"]["efficiency"],
        },
    }


# -- output ------------------------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f}"


def table_rows(res: dict) -> tuple[list[str], list[list[str]]]:
    header = [
        "Network",
        "Test acc (uniform)",
        "Test acc (geometric)",
        "Best branch",
        "Params / branch",
        "vs baseline",
        "Train compute (s)",
        "vs baseline",
        "Train wall (s)",
        "Peak mem / process (MB)",
    ]
    b = res["baseline"]
    rows = [
        [
            "fc8 baseline (28x28)",
            f"{100 * b['test_acc']:.2f}%",
            "-",
            "-",
            f"{b['params']:,}",
            "1",
            f"{b['train_seconds']:,.1f}",
            "100%",
            f"{b['train_wall_s']:,.1f}",
            _mb(b["peak_memory_bytes"]),
        ]
    ]
    for name, r in res["runs"].items():
        rows.append(
            [
                f"spectral-fc8-{name} (dct, K={r['K']})",
                f"{100 * r['test_acc']['uniform']:.2f}%",
                f"{100 * r['test_acc']['geometric']:.2f}%",
                f"{100 * r['best_branch']['test_acc']:.2f}%",
                f"{r['params_per_branch']:,} x {r['K']}",
                f"1/{1 / r['params_ratio_vs_baseline']:.1f}",
                f"{r['total_train_seconds']:,.1f}",
                f"{100 * r['compute_ratio_vs_baseline']:.0f}%",
                f"{r['train_wall_s']:,.1f}",
                _mb(r["max_peak_memory_bytes"]),
            ]
        )
    return header, rows


def markdown(res: dict) -> str:
    header, rows = table_rows(res)
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    e = res["parallel_efficiency"]
    lines += [
        "",
        f"Parallel efficiency (2 sub2 branches at once vs one after the other, 1 CPU each): "
        f"{100 * e['wall']['efficiency']:.0f}% by wall time (speed-up {e['wall']['speedup']:.2f}x), "
        f"{100 * e['train_seconds']['efficiency']:.0f}% by the branches' own training clocks. "
        f"Per-process memory floor (an idle actor with torch imported): "
        f"{_mb(res['idle_actor_peak_memory_bytes'])} MB.",
    ]
    return "\n".join(lines)


def print_tables(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    header, rows = table_rows(res)
    t = Table(
        title=f"fc8 on Fashion-MNIST, {res['epochs']} epoch(s), 1 CPU thread per branch "
        f"(train compute = sum of the branches' train_seconds)"
    )
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        t.add_row(*r)
    console.print(t)
    e = res["parallel_efficiency"]
    p = Table(title=f"parallel efficiency: sub2 (2 branches), {e['epochs']} epoch(s)")
    for col in ("clock", "sequential s", "parallel s", "speed-up", "efficiency"):
        p.add_column(col, justify="left" if col == "clock" else "right")
    for clock in ("wall", "train_seconds"):
        c = e[clock]
        p.add_row(
            clock,
            f"{c['sequential_s']:.1f}",
            f"{c['parallel_s']:.1f}",
            f"{c['speedup']:.2f}",
            f"{100 * c['efficiency']:.0f}%",
        )
    console.print(p)
    console.print(
        "per (seq, par) block: "
        + "; ".join(
            f"runs {b['runs'][0]}-{b['runs'][1]}: wall {100 * b['wall']:.0f}%, "
            f"train clocks {100 * b['train_seconds']:.0f}%"
            for b in e["per_block_efficiency"]
        )
    )
    for name, tgt in res["targets"].items():
        console.print(f"{name}: {tgt['value']} (target {tgt['target']}) -> {'MET' if tgt['met'] else 'NOT MET'}")
    print("\n" + markdown(res))  # plain: rich would wrap the long lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK_LIMIT} images per split, 1 epoch: smoke test")
    ap.add_argument(
        "--epochs", type=int, default=None, help=f"epochs of every network (default {DEFAULT_EPOCHS}; quick: 1)"
    )
    ap.add_argument(
        "--pair-epochs",
        type=int,
        default=None,
        help=f"epochs of the parallel-efficiency pair (default {DEFAULT_PAIR_EPOCHS}; quick: 1)",
    )
    ap.add_argument("--pair-repeats", type=int, default=None, help="ABBA repeats of the pair (default 2; quick: 1)")
    ap.add_argument("--root", default=None, help=f"where the runs go (default {DEFAULT_ROOT}; quick: {QUICK_ROOT})")
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT}; quick: none)")
    args = ap.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else DEFAULT_EPOCHS)
    pair_epochs = args.pair_epochs or (1 if args.quick else DEFAULT_PAIR_EPOCHS)
    pair_repeats = args.pair_repeats or (1 if args.quick else 2)
    root = args.root or (QUICK_ROOT if args.quick else DEFAULT_ROOT)
    limit = QUICK_LIMIT if args.quick else None
    out = args.out or (None if args.quick else DEFAULT_OUT)
    begun = begin("branches_vs_baseline", argv)
    res = benchmark(root, epochs, pair_epochs, pair_repeats, limit)
    res = {
        "quick": args.quick,
        "source": "fashion-mnist" + (f" (first {limit} per split)" if limit else ""),
        "model": "fc8",
        "epochs": epochs,
        "ray_cpus": RAY_CPUS,
        "cpus_per_branch": 1,
        "threads_per_branch": 1,
        "root": root,
        "definitions": {
            "total_train_seconds": "sum over branches of result.json train_seconds (each branch's own clock over "
            "its epochs, training + per-epoch validation, 1 CPU thread); the baseline's is "
            "its own train_seconds (1 thread)",
            "train_wall_s": "elapsed time of api.train (K actors, 2 at a time on 2 CPUs; actor start-up, data "
            "loading and test logits included); baseline: of api.baseline with its split written",
            "peak_memory_bytes": "result.json peak_memory_bytes: ru_maxrss of the actor process (baseline; max "
            "over branches)",
            "idle_actor_peak_memory_bytes": "ru_maxrss of a fresh 1-CPU actor that only imported branches.train "
            "and orchestrator.branch_task: the per-process floor",
            "params_per_branch": "trainable parameters of one branch network (all branches of a run are equal)",
        },
        **res,
    }
    add_ratios_and_targets(res)
    print_tables(res)
    record(begun, res, out)
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
