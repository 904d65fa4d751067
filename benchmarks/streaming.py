"""Streaming branches against in-memory ones: peak memory as the data grows, and images/s.

    .venv/bin/python -m benchmarks.streaming                      # 70k and 700k images
    .venv/bin/python -m benchmarks.streaming --sizes 70000        # quick

Synthetic 3x32x32 images (10 classes), 2x2 dct (branch shape 3x16x16,
uint8), branch 0 trained for one epoch in a fresh process per measurement
(``train_branch``, CPU, one thread) so that its ``ru_maxrss`` is its own.
Memory (``rss/``): fc8 of hidden width 32, so the data path is what grows.
Speed (``local/``, ``s3/``, at the smallest size): the project's fc8
(hidden width = input width, 768), whose compute the stream's background
reads overlap, as they would on a GPU. Goals (issue 8): stream-mode peak RSS
at 700k within 1.25x of 70k (while memory mode grows ~10x); stream images/s
at 70k >= 85% of memory mode, from local disk and from an S3 endpoint on
loopback (moto).
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

from benchmarks._common import REPO, begin, record, upload_folder  # first: sets Ray's environment
from data_split import RunStorage, SourceConfig, SplitConfig, SyntheticConfig, make_source
from data_split.layout import write_manifest
from data_split.parts import build_manifest
from data_split.pipeline import write_single_process

OUT = Path(__file__).parent / "results" / "streaming.json"
RSS_WIDTH = 32  # the memory runs' hidden width: a cheap model, so an epoch of 700k images takes a minute

# One measurement, in a fresh interpreter: train branch 0 for one epoch, print result.json. Peak memory is
# Linux's VmHWM, reset (clear_refs 5) after the imports, so it is what training adds to a process that has
# loaded torch and pyarrow (~0.6 GiB of libraries, which ru_maxrss would count in every run alike).
CHILD = """
import json, re, sys
from branches import ModelConfig, TrainConfig, train_branch
from data_split import RunStorage
def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
uri, endpoint, mode, width = sys.argv[1], sys.argv[2] or None, sys.argv[3], int(sys.argv[4]) or None
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak: VmHWM = VmRSS now
base = status("VmRSS")
r = train_branch(RunStorage(uri, endpoint_url=endpoint), 0, ModelConfig(name="fc8", width=width),
                 TrainConfig(epochs=1, batch_size=256, data=mode, threads=1, schedule="none"), device="cpu")
r["peak_rss_bytes"], r["rss_after_imports_bytes"] = status("VmHWM"), base
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
    write_manifest(storage, build_manifest(source, src, split, write_single_process(source, split, storage)))
    return time.perf_counter() - t0


def measure(uri: str, endpoint: str | None, mode: str, width: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if endpoint:
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    RunStorage(uri, endpoint_url=endpoint).remove("branches")  # a fresh branch: no resume, no conflict
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, uri, endpoint or "", mode, str(width or 0)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {
        "peak_rss_bytes": r["peak_rss_bytes"],
        "training_rss_bytes": r["peak_rss_bytes"] - r["rss_after_imports_bytes"],
        "images_per_s": r["images_per_s"],
        "data_mode": r["data_mode"],
        "test_acc": r["test_acc"],
        "wall_seconds": time.perf_counter() - t0,
    }


def speed(res: dict, where: str, n: int, uri: str, endpoint: str | None, repeats: int) -> None:
    """Images/s of both modes, alternated ``repeats`` times (the machine is shared): the median of each."""
    import statistics

    tries: dict[str, list[dict]] = {"stream": [], "memory": []}
    for _ in range(repeats):
        for mode in tries:
            r = measure(uri, endpoint, mode)
            tries[mode].append(r)
            say(f"{where} {n} {mode}: {r['images_per_s']:.0f} img/s (load {os.getloadavg()[0]:.1f})")
    for mode, rs in tries.items():
        res["runs"][f"{where}/{n}/{mode}"] = {
            **rs[0],
            "images_per_s": statistics.median(r["images_per_s"] for r in rs),
            "images_per_s_tries": [r["images_per_s"] for r in rs],
        }


def upload(local: Path, endpoint: str) -> str:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    return upload_folder(local, endpoint, "bench", f"stream-{uuid.uuid4().hex[:8]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[70_000, 700_000])
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--no-speed", action="store_true", help="only the memory runs")
    ap.add_argument("--repeats", type=int, default=3, help="speed: alternated runs of each mode (median)")
    args = ap.parse_args(argv)
    begun = begin("streaming", argv)
    res = {"model": f"speed: fc8 (width 768); rss: fc8 width {RSS_WIDTH}; batch 256, 1 epoch, CPU 1 thread", "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"n{n}"
            secs = write_split(root, n)
            say(f"{n} images split in {secs:.0f} s")
            for mode in ("stream", "memory"):  # memory: a narrow model, so the data path is what grows
                r = measure(str(root), None, mode, RSS_WIDTH)
                res["runs"][f"rss/{n}/{mode}"] = r
                say(f"rss {n} {mode}: peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, {r['images_per_s']:.0f} img/s")
            if n != min(args.sizes) or args.no_speed:
                shutil.rmtree(root)
                continue
            speed(res, "local", n, str(root), None, args.repeats)  # fc8 at full width, whose compute reads overlap
            if not args.no_s3:
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
                    speed(res, "s3", n, uri, endpoint, args.repeats)
                finally:
                    server.stop()
            shutil.rmtree(root)
    runs, small, big = res["runs"], min(args.sizes), max(args.sizes)
    summary = {}
    if big != small:
        for mode in ("stream", "memory"):
            a, b = runs[f"rss/{small}/{mode}"], runs[f"rss/{big}/{mode}"]
            summary[f"rss_growth_{mode}"] = b["peak_rss_bytes"] / a["peak_rss_bytes"]  # the whole process
            summary[f"training_rss_growth_{mode}"] = (
                b["training_rss_bytes"] / a["training_rss_bytes"]
            )  # what training adds
        summary["rss_goal_met"] = summary["rss_growth_stream"] <= 1.25
    for where in ("local", "s3"):
        if f"{where}/{small}/stream" in runs:
            summary[f"speed_ratio_{where}"] = (
                runs[f"{where}/{small}/stream"]["images_per_s"] / runs[f"{where}/{small}/memory"]["images_per_s"]
            )
            summary[f"speed_goal_met_{where}"] = summary[f"speed_ratio_{where}"] >= 0.85
    res["summary"] = summary
    record(begun, res, OUT)
    say(json.dumps(summary))


def markdown(res: dict) -> str:
    """Peak memory of both data modes at each size, then images/s of both where measured (median of the tries)."""
    runs = res["runs"]
    sizes = sorted({int(key.split("/")[1]) for key in runs if key.startswith("rss/")})
    lines = ["| images | stream peak RSS | memory peak RSS |", "| ---: | ---: | ---: |"]
    lines += [
        f"| {n:,} | {runs[f'rss/{n}/stream']['peak_rss_bytes'] / 2**20:,.0f} MiB | "
        f"{runs[f'rss/{n}/memory']['peak_rss_bytes'] / 2**20:,.0f} MiB |"
        for n in sizes
    ]
    lines += ["", "| where | images | stream | memory | ratio |", "| --- | ---: | ---: | ---: | ---: |"]
    for key in runs:
        where, n, mode = key.split("/")
        if where != "rss" and mode == "stream":
            a, b = runs[key]["images_per_s"], runs[f"{where}/{n}/memory"]["images_per_s"]
            lines.append(f"| {where} | {int(n):,} | {a:,.0f} img/s | {b:,.0f} img/s | {a / b:.2f} |")
    s = res["summary"]
    if "rss_growth_stream" in s:
        lines += [
            "",
            f"Peak RSS growth from {sizes[0]:,} to {sizes[-1]:,} images: stream {s['rss_growth_stream']:.3f}x, "
            f"memory {s['rss_growth_memory']:.2f}x (what training adds: {s['training_rss_growth_memory']:.1f}x). "
            f"Models: {res['model']}.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
