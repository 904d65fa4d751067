"""Streaming branches against in-memory ones: peak memory as the data grows, and images/s.

    .venv/bin/python -m benchmarks.streaming                      # 70k and 700k images
    .venv/bin/python -m benchmarks.streaming --sizes 70000        # quick

Synthetic 3x32x32 images (10 classes), 2x2 dct (branch shape 3x16x16,
uint8), branch 0 trained for one epoch in a fresh process per measurement
(``train_branch``, CPU, one thread) so that its ``ru_maxrss`` is its own.
The model is the project's fc8 (hidden width = input width, 768): the
stream's background reads overlap its compute, as they would on a GPU. Goals (issue 8): stream-mode peak RSS at 700k within 1.25x
of 70k (while memory mode grows ~10x); stream images/s at 70k >= 85% of
memory mode, from local disk and from an S3 endpoint on loopback (moto).
Results: ``benchmarks/results/streaming.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks._common import REPO, machine_info, write_results  # first: sets Ray's environment
from data_split import RunStorage, SourceConfig, SplitConfig, SyntheticConfig, make_source
from data_split.layout import MANIFEST
from data_split.pipeline import build_manifest, write_single_process

OUT = Path(__file__).parent / "results" / "streaming.json"

# One measurement, in a fresh interpreter: train branch 0 for one epoch, print result.json.
CHILD = """
import json, sys
from branches import ModelConfig, TrainConfig, train_branch
from data_split import RunStorage
uri, endpoint, mode = sys.argv[1], sys.argv[2] or None, sys.argv[3]
r = train_branch(RunStorage(uri, endpoint_url=endpoint), 0, ModelConfig(name="fc8"),
                 TrainConfig(epochs=1, batch_size=256, data=mode, threads=1, schedule="none"), device="cpu")
print("RESULT " + json.dumps(r))
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_split(root: Path, n: int) -> float:
    src = SourceConfig(name="synthetic", synthetic=SyntheticConfig(train=n, test=1000, channels=3, height=32, width=32))
    split = SplitConfig(rows=2, cols=2, val_fraction=0.02)
    storage = RunStorage(str(root))
    t0 = time.perf_counter()
    source = make_source(src)
    storage.write_json(MANIFEST, build_manifest(source, src, split, write_single_process(source, split, storage)))
    return time.perf_counter() - t0


def measure(uri: str, endpoint: str | None, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if endpoint:
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    RunStorage(uri, endpoint_url=endpoint).remove("branches")  # a fresh branch: no resume, no conflict
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, uri, endpoint or "", mode], env=env, capture_output=True,
                         text=True, check=True).stdout
    r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {"peak_rss_bytes": r["peak_memory_bytes"], "images_per_s": r["images_per_s"], "data_mode": r["data_mode"],
            "test_acc": r["test_acc"], "wall_seconds": time.perf_counter() - t0}


def upload(local: Path, endpoint: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    prefix = f"stream-{uuid.uuid4().hex[:8]}"
    for p in local.rglob("*"):
        if p.is_file():
            client.upload_file(str(p), "bench", f"{prefix}/{p.relative_to(local)}")
    return f"s3://bench/{prefix}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[70_000, 700_000])
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args(argv)
    res = {"machine": machine_info(), "load_avg_start": os.getloadavg(),
           "command": " ".join(["python -m benchmarks.streaming", *(argv if argv is not None else sys.argv[1:])]),
           "model": "fc8 (width 768), batch 256, 1 epoch, CPU 1 thread", "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"n{n}"
            secs = write_split(root, n)
            say(f"{n} images split in {secs:.0f} s")
            for mode in ("stream", "memory"):
                r = measure(str(root), None, mode)
                res["runs"][f"local/{n}/{mode}"] = r
                say(f"local {n} {mode}: peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, {r['images_per_s']:.0f} img/s")
            if n == min(args.sizes) and not args.no_s3:
                from moto.server import ThreadedMotoServer

                os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
                import socket

                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                server.start()
                endpoint = f"http://127.0.0.1:{port}"
                try:
                    uri = upload(root, endpoint)
                    for mode in ("stream", "memory"):
                        r = measure(uri, endpoint, mode)
                        res["runs"][f"s3/{n}/{mode}"] = r
                        say(f"s3 {n} {mode}: peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, {r['images_per_s']:.0f} img/s")
                finally:
                    server.stop()
            shutil.rmtree(root)
    runs, small, big = res["runs"], min(args.sizes), max(args.sizes)
    summary = {}
    if big != small:
        for mode in ("stream", "memory"):
            summary[f"rss_growth_{mode}"] = runs[f"local/{big}/{mode}"]["peak_rss_bytes"] / runs[f"local/{small}/{mode}"]["peak_rss_bytes"]
        summary["rss_goal_met"] = summary["rss_growth_stream"] <= 1.25
    for where in ("local", "s3"):
        if f"{where}/{small}/stream" in runs:
            summary[f"speed_ratio_{where}"] = runs[f"{where}/{small}/stream"]["images_per_s"] / runs[f"{where}/{small}/memory"]["images_per_s"]
            summary[f"speed_goal_met_{where}"] = summary[f"speed_ratio_{where}"] >= 0.85
    res["summary"], res["load_avg_end"] = summary, os.getloadavg()
    write_results(res, OUT)
    say(json.dumps(summary))


if __name__ == "__main__":
    main()
