"""Ensemble weights on Fashion-MNIST fc8 sub4 and sub16: uniform, geometric, Ray Tune search, exact fit.

What it measures, per run (validation picks the weights, test reports them):

1. Validation and test accuracy / NLL of the weighted logit sum for
   - ``uniform`` (1/K) and ``geometric`` (the paper's rule, p=0.3, ranked by final training loss);
   - ``exact``: the convex weights minimising validation NLL (``tune.exact``, SLSQP, with its
     Frank-Wolfe gap: a certified bound on the distance to the optimum);
   - ``tuned-N``: the Ray Tune search (``tune.weights.search_weights``: Optuna TPE proposals, each
     trial a local search of ``--candidates`` weight vectors) with N = each of ``--samples``;
   - ``tpe-only-N``: the same Tuner with one weight vector per trial (plain TPE), N = max(--samples),
     to show what the per-trial local search buys.
   Gaps to the exact fit: val NLL in percent, val accuracy in points (target: within 2% and 0.2 points).
2. Tune throughput: trials per second of each search (``Tuner.fit`` wall time / trials, 2 trials at a
   time, ``reuse_actors``; Tune's start-up included), and the in-trial work (the local search alone,
   timed in this process), so per-trial overhead = seconds per trial x concurrency - work per trial.
3. Goal: the tuned sub4 ensemble's test accuracy >= the full-resolution fc8 baseline's at equal epochs
   (``<run>/baseline/branches/0/result.json``, trained by ``api.baseline`` with the same config).

Runs: ``--runs URI_sub4 URI_sub16`` (default: ``/tmp/spectral-bench/fmnist-fc8-sub4`` and ``-sub16``,
written by ``benchmarks/branches_vs_baseline.py``). A run that is missing or unfinished is created here
with ``api.run`` + ``api.baseline`` (``configs/fashion_mnist.yaml``: Fashion-MNIST, fc8, DCT;
``--epochs``). The runs are only read: Tune's experiments go to a scratch folder, removed at the end.

Command (repository root; ``--quick``: synthetic 28x28 images, 1 epoch, small searches, its own runs under
/tmp/spectral-bench-ew-quick, no results file unless --out):

    .venv/bin/python -m benchmarks.ensemble_weights [--quick] [--runs URI URI] [--epochs N]
        [--samples 16 64] [--candidates 64] [--out PATH]

Numbers go to ``benchmarks/results/ensemble_weights.json`` (machine, load average, command, date) and
print as a table plus a markdown table (docs/benchmarks.md's).

Result (2-core Xeon VM, load average 3 -> 9 from other jobs during the run; the runs of
branches_vs_baseline.py, 3 epochs, 6,000 validation / 10,000 test images):

- sub4: exact fit val NLL 0.2789 / test acc 88.63%; Tune (64 trials x 64 candidates) +0.00% NLL,
  +0.00 points val acc, test 88.63%; uniform 88.19%, geometric 88.46%; fc8 baseline 88.34%: the goal
  (tuned sub4 >= baseline at equal epochs) holds by +0.29 points.
- sub16: exact val NLL 0.3506 / test 86.60%; Tune-64 +0.13% NLL, -0.18 points; plain TPE (1 candidate
  per trial, 64 trials) +3.33% NLL, outside the 2% tolerance: the per-trial local search is what
  makes 64 trials enough. Already 16 trials x 64 candidates land within tolerance on both runs.
- Throughput: 1.3-2.4 trials/s with 64-candidate trials, 2.1-7.4 trials/s for 1-candidate trials
  (2 at a time, reused actors, Tune start-up included); overhead per trial slot ~0.3-1.3 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import REPO, begin, record, start_ray  # first: sets Ray's environment
from data_split import RunStorage, layout, load_manifest
from orchestrator import SpectralConfig, api, load_config
from orchestrator.ensemble import evaluate_weights, load_branch_outputs, read_train_losses, weight_rule
from orchestrator.weights import ACC_TOLERANCE_POINTS, NLL_TOLERANCE_PCT, compare_to_exact
from tune._simplex import local_search, simplex_from_unit
from tune.config import TuneConfig
from tune.exact import fit_exact_weights
from tune.scoring import COMPUTED_RULES, GEOMETRIC_P
from tune.weights import search_weights

RAY_CPUS = 2
OBJECT_STORE_BYTES = 512 * 1024**2
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
DEFAULT_RUNS = ("/tmp/spectral-bench/fmnist-fc8-sub4", "/tmp/spectral-bench/fmnist-fc8-sub16")
QUICK_RUNS = ("/tmp/spectral-bench-ew-quick/sub4", "/tmp/spectral-bench-ew-quick/sub16")
DEFAULT_OUT = Path(__file__).parent / "results" / "ensemble_weights.json"
DEFAULT_EPOCHS = 3  # as benchmarks/branches_vs_baseline.py
CONCURRENCY = 2  # Tune trials at once (the 2 CPUs)
QUICK_SYNTHETIC = {"train": 3000, "test": 1000, "height": 28, "width": 28, "classes": 10, "noise": 0.9}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the runs ------------------------------------------------------------------------------------------------
def run_config(uri: str, rows: int, epochs: int, quick: bool) -> SpectralConfig:
    overrides = {
        "storage.uri": uri,
        "split.rows": rows,
        "split.cols": rows,
        "split.transform": "dct",
        "model.name": "fc8",
        "train.epochs": epochs,
        "train.threads": 1,
        "resources.cpus_per_branch": 1,
        "resources.gpus_per_branch": 0,
        "ensemble.weights": "geometric",
        "ray.num_cpus": RAY_CPUS,
    }
    if quick:
        overrides |= {"source.name": "synthetic", "source.root": None, "source.synthetic": QUICK_SYNTHETIC}
    return load_config(CONFIG, overrides)


def run_is_finished(storage: RunStorage) -> bool:
    try:
        K = load_manifest(storage).K
    except Exception:
        return False
    return all(layout.read_result(storage, k) is not None for k in range(K))


def ensure_run(uri: str, rows: int, epochs: int, quick: bool, baseline_from: RunStorage | None) -> dict:
    """Create the run (and its baseline) unless it is there; return how."""
    storage = RunStorage(uri)
    created = {"run": False, "baseline": False}
    if not run_is_finished(storage):
        say(f"{uri}: not there or unfinished: training it ({epochs} epoch(s))")
        api.run(run_config(uri, rows, epochs, quick))
        created["run"] = True
    has_baseline = baseline_result(storage, None) is not None
    if not has_baseline and (baseline_from is None or baseline_result(baseline_from, None) is None):
        say(f"{uri}: training the full-resolution baseline")
        api.baseline(run_config(uri, rows, epochs, quick))
        created["baseline"] = True
    return created


def baseline_result(storage: RunStorage, fallback: RunStorage | None) -> dict | None:
    for s in (storage, fallback):
        if s is not None and (result := layout.read_result(s.child(layout.BASELINE), 0)) is not None:
            return result
    return None


# -- the measurements ----------------------------------------------------------------------------------------
def row(result, **extra) -> dict:
    return {
        "method": result.method,
        "weights": [round(float(w), 4) for w in result.weights],
        "val_acc": result.val["acc"],
        "val_nll": result.val["nll"],
        "test_acc": result.test["acc"],
        "test_nll": result.test["nll"],
        **extra,
    }


def search_row(name: str, val, test, exact, cfg: TuneConfig, scratch: RunStorage, seeds: dict) -> dict:
    search = search_weights(
        val.logits, val.y, cfg, scratch, seeds=seeds
    )  # the uniform and geometric rules go first, as in a run
    res = evaluate_weights(name, search.weights, val, test)
    gap = compare_to_exact(res, exact)
    work = in_trial_work_s(val, cfg.candidates_per_trial)
    s_per_trial = search.seconds / search.trials
    return row(
        res,
        num_samples=cfg.num_samples,
        candidates_per_trial=cfg.candidates_per_trial,
        trials=search.trials,
        tune_seconds=search.seconds,
        trials_per_s=search.trials_per_s,
        s_per_trial=s_per_trial,
        work_s_per_trial=work,
        overhead_s_per_trial=s_per_trial * cfg.max_concurrent - work,
        **gap,
    )


def in_trial_work_s(val, candidates: int, repeats: int = 5) -> float:
    """Seconds one trial spends scoring (the local search alone), median of a few proposals."""
    Z, rng, times = val.logits.astype(np.float64), np.random.default_rng(0), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        local_search(simplex_from_unit(rng.random(Z.shape[0])), candidates, Z, val.y, rng)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_run(
    name: str, uri: str, samples: list[int], candidates: int, seed: int, scratch_root: str, fallback: RunStorage | None
) -> dict:
    storage = RunStorage(uri)
    K = load_manifest(storage).K
    val, test = load_branch_outputs(storage, K, "val"), load_branch_outputs(storage, K, "test")
    losses = read_train_losses(storage, K)
    branches = [layout.read_result(storage, k) for k in range(K)]
    seeds = {rule: weight_rule(rule, losses, GEOMETRIC_P) for rule in COMPUTED_RULES}
    rows = [row(evaluate_weights(rule, w, val, test)) for rule, w in seeds.items()]
    t0 = time.perf_counter()
    fit = fit_exact_weights(val.logits, val.y)
    exact_s = time.perf_counter() - t0
    exact = evaluate_weights("exact", fit.weights, val, test)
    rows.append(row(exact, fit_seconds=exact_s, fw_gap=fit.gap, iterations=fit.iterations))
    for n in samples:
        say(f"{name}: Tune search, {n} trials x {candidates} candidates")
        scratch = RunStorage(tempfile.mkdtemp(dir=scratch_root))
        rows.append(
            search_row(
                f"tuned-{n}",
                val,
                test,
                exact,
                TuneConfig(num_samples=n, candidates_per_trial=candidates, seed=seed, max_concurrent=CONCURRENCY),
                scratch,
                seeds,
            )
        )
    n = max(samples)
    say(f"{name}: plain TPE, {n} trials x 1 candidate")
    rows.append(
        search_row(
            f"tpe-only-{n}",
            val,
            test,
            exact,
            TuneConfig(num_samples=n, candidates_per_trial=1, seed=seed, max_concurrent=CONCURRENCY),
            RunStorage(tempfile.mkdtemp(dir=scratch_root)),
            seeds,
        )
    )
    base = baseline_result(storage, fallback)
    return {
        "run": uri,
        "K": K,
        "n_val": int(len(val.y)),
        "n_test": int(len(test.y)),
        "epochs": branches[0]["epochs"],
        "branch_test_acc": [b["test_acc"] for b in branches],
        "baseline": None
        if base is None
        else {"test_acc": base["test_acc"], "epochs": base["epochs"], "params": base["params"]},
        "methods": rows,
    }


# -- output ----------------------------------------------------------------------------------------------------
TABLE_HEADER = [
    "Run",
    "Method",
    "Val acc",
    "Val NLL",
    "Test acc",
    "Test NLL",
    "vs exact (val NLL, acc)",
    "Trials/s",
    "Overhead/trial",
]


def table_rows(res: dict) -> list[list[str]]:
    out = []
    for name, r in res["runs"].items():
        if r["baseline"]:
            b = r["baseline"]
            out.append(
                [
                    name,
                    f"fc8 baseline (full res., {b['epochs']} ep.)",
                    "",
                    "",
                    f"{100 * b['test_acc']:.2f}%",
                    "",
                    "",
                    "",
                    "",
                ]
            )
        for m in r["methods"]:
            gap = f"{m['val_nll_gap_pct']:+.2f}%, {m['val_acc_gap_points']:+.2f} pt" if "val_nll_gap_pct" in m else ""
            out.append(
                [
                    name,
                    m["method"],
                    f"{100 * m['val_acc']:.2f}%",
                    f"{m['val_nll']:.4f}",
                    f"{100 * m['test_acc']:.2f}%",
                    f"{m['test_nll']:.4f}",
                    gap,
                    f"{m['trials_per_s']:.2f}" if "trials_per_s" in m else "",
                    f"{m['overhead_s_per_trial']:.2f} s" if "overhead_s_per_trial" in m else "",
                ]
            )
    return out


def markdown(res: dict) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|:---|:---|" + "---:|" * (len(TABLE_HEADER) - 2)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(res)]
    return "\n".join(lines)


def print_table(res: dict) -> None:
    rows = [TABLE_HEADER] + table_rows(res)
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def verdicts(res: dict, samples: list[int]) -> dict:
    out = {}
    for name, r in res["runs"].items():
        by = {m["method"]: m for m in r["methods"]}
        best_n = max(samples)
        tuned = by[f"tuned-{best_n}"]
        out[f"{name}_tuned_within_tolerance"] = tuned["within_tolerance"]
        out[f"{name}_smallest_samples_within_tolerance"] = next(
            (n for n in sorted(samples) if by[f"tuned-{n}"]["within_tolerance"]), None
        )
        if r["baseline"]:
            out[f"{name}_tuned_test_acc_minus_baseline_points"] = 100 * (tuned["test_acc"] - r["baseline"]["test_acc"])
            out[f"{name}_equal_epochs"] = r["baseline"]["epochs"] == r["epochs"]
    sub4 = res["runs"].get("sub4")
    if sub4 and sub4["baseline"]:
        out["goal_sub4_tuned_test_acc_ge_baseline"] = out["sub4_tuned_test_acc_minus_baseline_points"] >= 0
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="synthetic 28x28 data, 1 epoch, small searches")
    ap.add_argument("--runs", nargs=2, metavar=("SUB4", "SUB16"), default=None, help="the two runs' URIs")
    ap.add_argument(
        "--epochs", type=int, default=None, help=f"epochs when a run must be created (default {DEFAULT_EPOCHS})"
    )
    ap.add_argument("--samples", type=int, nargs="+", default=None, help="Tune num_samples to try (default 16 64)")
    ap.add_argument("--candidates", type=int, default=64, help="weight vectors scored per trial (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT}; quick: none)")
    args = ap.parse_args(argv)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    epochs = args.epochs or (1 if args.quick else DEFAULT_EPOCHS)
    samples = sorted(args.samples or ([8, 16] if args.quick else [16, 64]))
    out = args.out or (None if args.quick else DEFAULT_OUT)

    import ray

    begun = begin("ensemble_weights", argv)
    start_ray(num_cpus=RAY_CPUS, object_store_memory=OBJECT_STORE_BYTES)
    scratch_root = tempfile.mkdtemp(prefix="ensemble-weights-tune-")
    res = {
        "quick": args.quick,
        "samples": samples,
        "candidates_per_trial": args.candidates,
        "concurrency": CONCURRENCY,
        "tolerance": {"val_nll_pct": NLL_TOLERANCE_PCT, "val_acc_points": ACC_TOLERANCE_POINTS},
        "runs": {},
    }
    try:
        first = None
        for (name, rows), uri in zip((("sub4", 2), ("sub16", 4)), runs):
            res.setdefault("created", {})[name] = ensure_run(uri, rows, epochs, args.quick, first)
            res["runs"][name] = measure_run(name, uri, samples, args.candidates, args.seed, scratch_root, first)
            first = first or RunStorage(uri)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
        ray.shutdown()
    res["verdicts"] = verdicts(res, samples)
    print()
    print_table(res)
    print("\n" + markdown(res) + "\n")
    print(json.dumps(res["verdicts"], indent=2))
    record(begun, res, out)
    if out is not None:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
