"""The exported ensemble's speed, packed (one batched network) against the branches one after another.

For each model (``--models``: fc8, and cnn8 at ``--cnn8-width``) a sub16 DCT run on Fashion-MNIST is trained
(``--limit`` images per split, 1 epoch: the speed does not depend on the weights) and its ensemble exported
twice with ``torch.export``: ``packed`` (``SpectralEnsemble``'s default: the 16 branches as grouped layers,
BatchNorms folded into the layers before them) and ``unpacked`` (the 16 branches' own modules, one after
another: the program before packing). Each program runs on 1 torch thread at batch sizes 1, 32, 256 and
1024 (a serving request, a Serve batch, a predict batch): ``--rounds`` rounds, the two programs alternating
within each, of enough calls for ~2,000 images; the fastest round of each is kept. images/s and the ratio;
the largest difference between the two programs' logits.

    .venv/bin/python -m benchmarks.packed_export [--models fc8,cnn8] [--rounds 7] [--limit 2000]

Results: ``benchmarks/results/packed_export.json``; table in docs/benchmarks.md.
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

CONFIG = REPO / "configs" / "fashion_mnist.yaml"
DEFAULT_OUT = Path(__file__).parent / "results" / "packed_export.json"
ROOT = "/tmp/spectral-bench-packed-export"
BATCHES = (1, 32, 256, 1024)
IMAGES_PER_ROUND = 2048


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_run(model: str, width: int | None, limit: int):
    cfg = load_config(
        CONFIG,
        {
            "storage.uri": f"{ROOT}/{model}-sub16",
            "split.rows": 4,
            "split.cols": 4,
            "source.limit": limit,
            "model.name": model,
            "model.width": width,
            "train.epochs": 1,
            "resources.branches_per_process": "auto",
            "ensemble.weights": "uniform",
            "ray.num_cpus": 2,
        },
    )
    api.split(cfg)
    api.train(cfg)
    api.ensemble(cfg)
    return RunStorage.from_config(cfg.storage)


def programs(storage: RunStorage) -> dict:
    """The run's ensemble exported packed and unpacked: the loaded ``torch.export`` modules."""
    from inference import load_ensemble
    from inference.export import export_program
    from inference.model import SpectralEnsemble

    packed = load_ensemble(storage)
    unpacked = SpectralEnsemble(
        rows=packed.rows,
        cols=packed.cols,
        matrix=packed.matrix.numpy(),
        dtype=packed.dtype,
        mean=packed.mean[:, 0, :, 0, 0].numpy(),
        std=packed.std[:, 0, :, 0, 0].numpy(),
        offset=packed.offset.numpy(),
        scale=packed.scale.numpy(),
        branches=[member(storage, k) for k in packed.ks],
        weights=packed.weights.numpy(),
        ks=packed.ks,
        packed=False,
        info=packed.info,
    )
    return {"unpacked": export_program(unpacked).module(), "packed": export_program(packed).module()}


def member(storage: RunStorage, k: int):
    """Branch k as its own module, from the run's final checkpoint."""
    from branches import ModelConfig, build_model
    from branches.checkpoint import load_checkpoint

    result = layout.read_result(storage, k)
    ck = load_checkpoint(storage, layout.checkpoint(k, int(result["epochs"])))
    model = build_model(ModelConfig(**ck["model_config"]), tuple(ck["in_shape"]), int(ck["classes"]))
    model.load_state_dict(ck["model"])
    return model.eval()


def speeds(progs: dict, shape: tuple[int, ...], rounds: int) -> dict:
    import torch

    torch.set_num_threads(1)
    out: dict = {"max_abs_logit_difference": 0.0, "batches": {}}
    with torch.no_grad():
        for batch in BATCHES:
            x = torch.rand(batch, *shape)
            got = {name: p(x) for name, p in progs.items()}  # also the first call's one-off costs
            diff = float((got["packed"] - got["unpacked"]).abs().max())
            out["max_abs_logit_difference"] = max(out["max_abs_logit_difference"], diff)
            calls = max(1, IMAGES_PER_ROUND // batch)
            best = dict.fromkeys(progs, float("inf"))
            for _ in range(rounds):
                for name, p in progs.items():
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        p(x)
                    best[name] = min(best[name], time.perf_counter() - t0)
            ips = {f"{name}_images_per_s": round(calls * batch / s, 1) for name, s in best.items()}
            ratio = round(ips["packed_images_per_s"] / ips["unpacked_images_per_s"], 2)
            out["batches"][str(batch)] = {**ips, "packed_vs_unpacked": ratio}
            say(f"batch {batch}: {ips}, {ratio}x")
    return out


def benchmark(models: list[str], rounds: int, limit: int, cnn8_width: int) -> dict:
    import ray

    shutil.rmtree(ROOT, ignore_errors=True)
    start_ray(num_cpus=2)
    try:
        runs = {m: train_run(m, cnn8_width if m == "cnn8" else None, limit) for m in models}
    finally:
        ray.shutdown()
    res = {}
    for model, storage in runs.items():
        from inference import load_ensemble

        info = load_ensemble(storage).info
        say(f"{model} sub16")
        res[model] = speeds(programs(storage), (info.channels, info.height, info.width), rounds)
    return res


def markdown(res: dict) -> str:
    lines = [
        "| network | batch | unpacked images/s | packed images/s | packed / unpacked |",
        "|:---|---:|---:|---:|---:|",
    ]
    for model, r in res["runs"].items():
        for batch, b in r["batches"].items():
            lines.append(
                f"| {model} sub16 | {int(batch):,} | {b['unpacked_images_per_s']:,.0f} | "
                f"{b['packed_images_per_s']:,.0f} | {b['packed_vs_unpacked']:.2f}x |"
            )
    diffs = ", ".join(f"{m} {r['max_abs_logit_difference']:.1e}" for m, r in res["runs"].items())
    lines.append(
        f"\n1 torch thread; fastest of {res['rounds']} alternating rounds of ~{IMAGES_PER_ROUND:,} images; "
        f"cnn8 at base width {res['cnn8_width']}. Largest logit difference between the two programs: {diffs}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="fc8,cnn8")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--limit", type=int, default=2000, help="first N images of each source split")
    ap.add_argument("--cnn8-width", type=int, default=16)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    begun = begin("packed_export", argv)
    runs = benchmark(args.models.split(","), args.rounds, args.limit, args.cnn8_width)
    res = {"rounds": args.rounds, "limit": args.limit, "cnn8_width": args.cnn8_width, "threads": 1, "runs": runs}
    doc = record(begun, res, args.out)
    print(markdown(doc["results"]))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
