"""CNN-class accuracy: the full-resolution baseline against the sub4 and sub16 spectral ensembles, two seeds.

The paper's CIFAR-10 and ImageNet tables are about CNNs; this is the same comparison on the data this machine
has (Fashion-MNIST, Debian's files). For each model (``--models``: cnn8 by default, ``torchvision:resnet18``
with the small stem on request) and each seed (``train.seed``; the split and its validation carve are the
same for every seed): the baseline (``api.baseline``: the same network on the 28x28 images), then the
sub4 (2x2) and sub16 (4x4) DCT splits trained with ``resources.branches_per_process: auto`` and their
ensembles by every weight rule: ``uniform``, ``geometric`` (p = 0.3), ``tuned`` (Ray Tune over the
validation logits) and ``exact`` (the fitted weights). Test accuracy of each, and of the best single branch,
with the gap to the baseline next to the paper's CIFAR-10 CNN gaps (92.42% full, 91.68% sub4, 80.27% sub16).

    .venv/bin/python -m benchmarks.cnn_accuracy [--models cnn8,torchvision:resnet18] [--seeds 0,1] [--epochs 3]
        [--cnn8-width 16] [--limit N] [--quick]

cnn8 runs at ``--cnn8-width`` base channels (64 is the registry's default: on 2 CPUs one baseline epoch
would take most of an hour); ``--limit`` keeps the first N images of each source split; ``--quick`` is a
smoke test (1,000 images, 1 epoch, one seed) that writes no results file unless ``--out`` is given.
Results: ``benchmarks/results/cnn_accuracy.json``; table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from benchmarks import packing  # first: its benchmarks._common sets Ray's environment
from benchmarks._common import begin, record, start_ray
from data_split import RunStorage, layout
from orchestrator import api

RAY_CPUS = packing.RAY_CPUS
DEFAULT_OUT = Path(__file__).parent / "results" / "cnn_accuracy.json"
ROOT = "/tmp/spectral-bench-cnn"
SPLITS = (("sub4", 2), ("sub16", 4))
METHODS = ("uniform", "geometric", "tuned", "exact")
PAPER = {"dataset": "CIFAR-10", "network": "CNN", "baseline": 0.9242, "sub4": 0.9168, "sub16": 0.8027}
QUICK_LIMIT = 1000


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def config(uri: str, model: str, width: int | None, rc: int, seed: int, epochs: int, limit: int | None):
    """The packing benchmark's configuration (1 CPU and 1 thread per process), packed ``auto``, with ``seed``;
    ``tuned`` weights, which computes uniform, geometric and exact too."""
    cfg = packing.config(uri, model, width, rc, epochs, limit, "auto")
    return cfg.replace(**{"train.seed": seed, "ensemble.weights": "tuned"})


def slug(model: str) -> str:
    return model.replace(":", "-")


def one_seed(model: str, width: int | None, seed: int, epochs: int, limit: int | None) -> dict:
    first = config(f"{ROOT}/{slug(model)}-seed{seed}-sub4", model, width, 2, seed, epochs, limit)
    t0 = time.perf_counter()
    base = api.baseline(first)
    out: dict = {
        "baseline": {
            "test_acc": base["test_acc"],
            "params": base["params"],
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    }
    say(f"{model} seed {seed} baseline: test acc {base['test_acc']:.4f} ({out['baseline']['wall_s']} s)")
    for name, rc in SPLITS:
        cfg = (
            first
            if rc == 2
            else config(f"{ROOT}/{slug(model)}-seed{seed}-{name}", model, width, rc, seed, epochs, limit)
        )
        t0 = time.perf_counter()
        api.split(cfg)
        outcome = api.train(cfg)
        api.ensemble(cfg)
        storage = RunStorage.from_config(cfg.storage)
        branches = [outcome.results[k]["test_acc"] for k in sorted(outcome.results)]
        out[name] = {
            "params_per_branch": outcome.results[0]["params"],
            "branch_test_acc": branches,
            "best_branch_test_acc": max(branches),
            "ensemble_test_acc": {m: storage.read_json(layout.ensemble_record(m))["test_acc"] for m in METHODS},
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        accs = ", ".join(f"{m} {a:.4f}" for m, a in out[name]["ensemble_test_acc"].items())
        say(f"{model} seed {seed} {name}: {accs}; best branch {max(branches):.4f} ({out[name]['wall_s']} s)")
    return out


def benchmark(models: list[str], seeds: list[int], epochs: int, limit: int | None, cnn8_width: int) -> dict:
    import ray

    shutil.rmtree(ROOT, ignore_errors=True)
    start_ray(num_cpus=RAY_CPUS, object_store_memory=512 * 1024**2)
    try:
        return {
            model: {
                f"seed{seed}": one_seed(model, cnn8_width if model == "cnn8" else None, seed, epochs, limit)
                for seed in seeds
            }
            for model in models
        }
    finally:
        ray.shutdown()


def mean(values: list[float]) -> str:
    """Percent, as mean +- half the range over the seeds (one seed: the value)."""
    m = 100 * statistics.fmean(values)
    return f"{m:.2f}%" if len(values) == 1 else f"{m:.2f} ± {50 * (max(values) - min(values)):.2f}%"


HEADER = ["Network", "Params / branch", "Test acc", "vs baseline (pt)", "Best branch", "Paper's CIFAR-10 CNN"]


def table_rows(res: dict) -> list[list[str]]:
    rows = []
    for model, by_seed in res["runs"].items():
        seeds = list(by_seed.values())
        base = [s["baseline"]["test_acc"] for s in seeds]
        rows.append(
            [
                f"{model} baseline (28x28)",
                f"{seeds[0]['baseline']['params']:,}",
                mean(base),
                "-",
                "-",
                f"{100 * PAPER['baseline']:.2f}%",
            ]
        )
        for name, _ in SPLITS:
            for method in METHODS:
                accs = [s[name]["ensemble_test_acc"][method] for s in seeds]
                gap = statistics.fmean(accs) - statistics.fmean(base)
                paper = PAPER[name] - PAPER["baseline"]
                rows.append(
                    [
                        f"{model} {name} {method}",
                        f"{seeds[0][name]['params_per_branch']:,}",
                        mean(accs),
                        f"{100 * gap:+.2f}",
                        mean([s[name]["best_branch_test_acc"] for s in seeds]),
                        f"{100 * PAPER[name]:.2f}% ({100 * paper:+.2f} pt)" if method == "uniform" else "",
                    ]
                )
    return rows


def markdown(res: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|:---|" + "---:|" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(res)]
    lines.append(
        f"\n{res['source']}, {res['epochs']} epoch(s), seeds {', '.join(map(str, res['seeds']))} (mean ± half the "
        f"range); cnn8 at base width {res['cnn8_width']}. The paper's column is its CIFAR-10 CNN table (other data, "
        f"network and epochs): compare the gaps, not the accuracies. {res['note']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cnn8", help="comma-separated model.name values (default cnn8)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated train.seed values (default 0,1)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cnn8-width", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each source split (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK_LIMIT} images, 1 epoch, seed 0: smoke test")
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT}; quick: none)")
    args = ap.parse_args(argv)
    if args.quick:
        args.limit, args.epochs, args.seeds = args.limit or QUICK_LIMIT, 1, "0"
    seeds = [int(s) for s in args.seeds.split(",")]
    begun = begin("cnn_accuracy", argv)
    runs = benchmark(args.models.split(","), seeds, args.epochs, args.limit, args.cnn8_width)
    res = {
        "source": "fashion-mnist" + (f" (first {args.limit} images per split)" if args.limit else ""),
        "epochs": args.epochs,
        "seeds": seeds,
        "cnn8_width": args.cnn8_width,
        "ray_cpus": RAY_CPUS,
        "paper": PAPER,
        "note": "Every number of a row comes from runs of this one invocation.",
        "runs": runs,
    }
    doc = record(begun, res, args.out or (None if args.quick else DEFAULT_OUT))
    print(markdown(doc["results"]))


if __name__ == "__main__":
    main()
