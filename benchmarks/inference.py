"""Inference throughput: `spectral predict` (Ray Data) and `spectral serve` (Ray Serve) on Fashion-MNIST.

What it measures, on one trained run (Fashion-MNIST, fc8, sub4 DCT, ``--epochs``, geometric weights;
created under ``--root`` unless it is already there):

1. predict: the 10,000 test images written as PNGs (``<root>/png/<class>/<i>.png``), classified
   - in one process by the exported program (``torch.export.load(FILE).module()``), decoding each PNG
     with ``data_split.decode_image`` and running batches of ``--batch-size``: the no-Ray reference;
   - by ``inference.predict_images`` (from_items(paths) -> ActorPoolStrategy map_batches, each actor writing
     its Parquet parts) with 1 and 2 actors, batch ``--batch-size``. Ray start-up excluded; the actors' start,
     listing, decoding, the model and the Parquet write included. Accuracy over the labelled folders is recorded.
   ``--copies N`` classifies N hard-linked copies of the PNG folder (both ways), so that the actors' fixed
   start (~7 s: a worker, the torch import, the model) is amortised as over a real input.
2. serve: ``--requests`` POST /predict requests (one PNG body each, cycling over the test images) at
   concurrency 1, 8 and 32 (one keep-alive connection per client thread) against one replica, once with
   ``@serve.batch`` (max batch 32, wait 5 ms) and once without: requests/s, p50/p99 latency, errors
   (non-200 answers or failed connections; goal 0), and whether answers match the exported program.

Command (repository root):

    .venv/bin/python -m benchmarks.inference [--root /tmp/spectral-bench-inference] [--epochs 1]
        [--requests 2000] [--batch-size 256] [--copies 1] [--out benchmarks/results/inference.json]

Numbers go to ``benchmarks/results/inference.json`` with the machine, the load average and the command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import REPO, begin, record, start_ray  # first: sets Ray's environment
from branches import train_branch
from data_split import RunStorage, decode_image, layout, load_manifest, make_source
from inference import PredictConfig, ServeConfig, export_ensemble, predict_images, start_serving
from orchestrator import api, load_config

RAY_CPUS = 2
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
DEFAULT_OUT = Path(__file__).parent / "results" / "inference.json"
CONCURRENCIES = (1, 8, 32)
SERVE_PORT = 8123


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_run(uri: str, epochs: int) -> None:
    cfg = load_config(
        CONFIG,
        {
            "storage.uri": uri,
            "train.epochs": epochs,
            "ensemble.weights": "geometric",
            "resources.gpus_per_branch": 0,
            "ray.num_cpus": RAY_CPUS,
        },
    )
    if RunStorage(uri).exists(layout.WEIGHTS):
        return
    say(f"training {uri} ({epochs} epoch(s))")
    api.split(cfg)
    storage = RunStorage(uri)
    for k in range(cfg.split.k):  # one after the other in this process: on a shared 2-core VM actors ran out of memory
        train_branch(storage, k, cfg.model, cfg.train)
    api.ensemble(cfg)


def write_pngs(uri: str, folder: Path) -> tuple[np.ndarray, list[str]]:
    """The run's test images as PNGs in class folders; returns the images and their paths (index order)."""
    from PIL import Image

    manifest = load_manifest(RunStorage(uri))
    cfg = load_config(CONFIG, {"storage.uri": uri})
    source = make_source(cfg.source)
    x, y = source.read("test", 0, source.count("test"))
    names = manifest.source.class_names or [str(i) for i in range(int(manifest.source.classes))]
    paths = [str(folder / names[label].replace("/", "-") / f"{i:05d}.png") for i, label in enumerate(y)]
    if not all(os.path.exists(p) for p in paths):
        for img, p in zip(x, paths):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            Image.fromarray(img[0]).save(p)
    return x, paths


def single_process(program_file: str, paths: list[str], batch_size: int, shape: tuple[int, int, int]) -> dict:
    """Decode + exported program in this process, batch by batch: images/s."""
    torch.set_num_threads(
        1
    )  # as each predict actor (1 thread): the comparison is of the pipelines, not of BLAS threads
    model = torch.export.load(program_file).module()
    t0 = time.perf_counter()
    preds = []
    for i in range(0, len(paths), batch_size):
        x = np.stack([decode_image(p, shape[0], shape[1:]) for p in paths[i : i + batch_size]])
        with torch.no_grad():
            preds.append(model(torch.from_numpy(x.astype(np.float32) * np.float32(1 / 255))).argmax(1).numpy())
    seconds = time.perf_counter() - t0
    return {
        "mode": "single process (exported program, 1 thread)",
        "images": len(paths),
        "seconds": seconds,
        "images_per_s": len(paths) / seconds,
    }


def load_test(url: str, bodies: list[bytes], requests: int, concurrency: int, want: np.ndarray) -> dict:
    """``requests`` POSTs from ``concurrency`` keep-alive clients: requests/s, p50/p99 latency, errors, mismatches."""
    host, port = url.split("//")[1].split(":")
    latencies: list[float] = []
    errors, mismatches = [0], [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            j = i % len(bodies)
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=bodies[j], headers={"content-type": "image/png"})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok, data = False, b""
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                if not ok:
                    errors[0] += 1
                elif json.loads(data)["class"] != want[j]:
                    mismatches[0] += 1
        conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    seconds = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "errors": errors[0],
        "mismatches_vs_export": mismatches[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/tmp/spectral-bench-inference")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--copies", type=int, default=1, help="classify this many hard-linked copies of the PNGs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    begun = begin("inference", argv)
    start_ray(num_cpus=RAY_CPUS)
    root, uri = Path(args.root), str(Path(args.root) / "fmnist-fc8-sub4")
    ensure_run(uri, args.epochs)
    x, paths = write_pngs(uri, root / "png")
    program_file = str(root / "model.pt2")
    card = export_ensemble(RunStorage(uri), program_file)
    shape = tuple(card["input_shape"][1:])
    with torch.no_grad():
        # x * float32(1/255), as the split and the server scale pixels: x / 255 differs in the last bit for some pixels,
        # enough to move a uint8 code across a rounding boundary (the 2026-11-28 run counted 1 mismatch that way)
        pixels = torch.from_numpy(x.astype(np.float32) * np.float32(1 / 255))
        want = torch.export.load(program_file).module()(pixels).argmax(1).numpy()

    res: dict = {"run": uri, "test_acc": card["test_acc"], "images": len(paths), "predict": [], "serve": []}
    say("single-process reference")
    images, inputs = root / "png", paths
    if args.copies > 1:
        images = root / f"png-x{args.copies}"
        for c in range(args.copies):
            if not (images / str(c)).exists():
                shutil.copytree(root / "png", images / str(c), copy_function=os.link)
        inputs = sorted(str(p) for p in images.rglob("*.png"))
    res["predict"].append(single_process(program_file, inputs, args.batch_size, shape))
    for actors in (1, 2):
        out = root / f"preds-{actors}"
        if out.exists():
            shutil.rmtree(out)
        say(f"predict with {actors} actor(s)")
        pcfg = PredictConfig(batch_size=args.batch_size, concurrency=actors, cpus_per_actor=1.0)  # 1 thread each
        r = predict_images(RunStorage(uri), str(images), str(out), pcfg)
        res["predict"].append(
            {
                "mode": f"Ray Data, {actors} actor(s)",
                "images": r.images,
                "seconds": r.seconds,
                "images_per_s": r.images_per_s,
                "accuracy": r.accuracy,
                "labelled": r.labelled,
                "cpus_per_actor": pcfg.cpus_per_actor,
            }
        )
    bodies = [Path(p).read_bytes() for p in paths]
    for batching in (True, False):
        url = start_serving(RunStorage(uri), ServeConfig(batching=batching, max_batch_size=32), port=SERVE_PORT)
        for conc in CONCURRENCIES:
            say(f"serve: batching {batching}, concurrency {conc}")
            row = load_test(url, bodies, args.requests, conc, want)
            res["serve"].append({"batching": batching, **row})
        serve.shutdown()
    ray.shutdown()
    doc = record(begun, res, args.out)
    print("\n" + markdown(res))
    print(f"\nload average {doc['load_average']}; results: {args.out}")


def markdown(res: dict) -> str:
    """Batch prediction (one process, then Ray Data) and the Serve endpoint's load test."""
    one = res["predict"][0]["images_per_s"]  # the single-process reference comes first
    lines = ["| predict | images | seconds | images/s | / one process |", "|:---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['mode']} | {r['images']:,} | {r['seconds']:.2f} | {r['images_per_s']:,.0f} | "
        f"{r['images_per_s'] / one:.2f} |"
        for r in res["predict"]
    ]
    lines += [
        "",
        "| serve: @serve.batch | concurrency | requests | requests/s | p50 (ms) | p99 (ms) | errors |",
        "|:---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {'yes' if r['batching'] else 'no'} | {r['concurrency']} | {r['requests']:,} | "
        f"{r['requests_per_s']:,.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
        for r in res["serve"]
    ]
    lines += ["", f"Test accuracy of the run: {100 * res['test_acc']:.2f}%, {res['images']:,} images."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
