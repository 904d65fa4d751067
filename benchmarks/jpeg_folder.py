"""JPEG folder split throughput: the Ray Data pipeline with 1 and 2 CPUs against one plain process.

What it measures: a generated ImageNet-style folder (``train/<class>/*.jpg`` and ``val/<class>/*.jpg``,
10 classes, 90% train, every image of its own size, each side drawn from 128..192 px; smooth
colour fields plus noise, JPEG quality 90, so that files compress like photographs rather
than like noise) is split with ``source.image_size: 64`` (shorter side to 64, centre 64 x 64
crop), 2x2 DCT, uint8, into a local run folder:

- ``ray-1cpu`` / ``ray-2cpu``: ``split_dataset`` (what ``spectral split`` runs) on a private local Ray
  started with ``num_cpus`` 1 / 2 (Ray start-up excluded, a warm-up split first);
- ``single``: ``write_single_process`` (the same files, no Ray) in this process.

Each is timed end to end (list the folder, decode, transform, write every file and the manifest),
best of ``--repeats``, each into an emptied folder. The load average is recorded before and after
each measurement: the machine is shared with other sessions, so wall-clock numbers are noisy. So
each run also records the CPU seconds of this process and its Ray processes (/proc): images per
CPU-second is the cost of an image whatever else runs, and CPU seconds / wall seconds is the
parallelism the run actually got (near 2 for ``ray-2cpu`` on a quiet machine).

Command (repository root; the images are generated under /tmp and removed at the end):

    .venv/bin/python -m benchmarks.jpeg_folder [--images 20000] [--repeats 2] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

from benchmarks._common import RESULTS, begin, record, start_ray  # first: sets Ray's environment
from data_split import RunStorage, SourceConfig, SplitConfig, make_source
from data_split.layout import write_manifest
from data_split.manifest import PartRecord
from data_split.parts import build_manifest
from data_split.pipeline import split_dataset, write_single_process

CLASSES = 10
SIDE_RANGE = (128, 192)  # each image's height and width, drawn independently (inclusive)
IMAGE_SIZE = 64  # source.image_size: shorter side to 64, centre crop
IMAGES_PER_TASK = 500  # split.images_per_task: 40 tasks for 20k images, enough to keep 2 CPUs busy
VAL_SHARE = 10  # every 10th image goes to val/
DEFAULT_OUT = RESULTS / "jpeg_folder.json"


def _write_images(args: tuple[str, int, int]) -> int:
    """Images ``[lo, hi)`` of the folder at ``root`` (a pure function of the index: reproducible)."""
    import numpy as np
    from PIL import Image

    root, lo, hi = args
    total = 0
    for i in range(lo, hi):
        rng = np.random.default_rng(i)
        h, w = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        a = np.clip(np.asarray(coarse, np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        split = "val" if (i // CLASSES) % VAL_SHARE == 0 else "train"
        path = Path(root) / split / f"class{i % CLASSES:02d}" / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path, format="JPEG", quality=90)
        total += path.stat().st_size
    return total


def make_folder(root: Path, n: int, workers: int) -> dict:
    t0 = time.perf_counter()
    step = max(1, n // (workers * 8))
    with Pool(workers) as pool:
        sizes = pool.map(_write_images, [(str(root), lo, min(lo + step, n)) for lo in range(0, n, step)])
    return {"images": n, "mb": round(sum(sizes) / 1e6, 1), "seconds_to_generate": round(time.perf_counter() - t0, 1)}


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and its live descendants (Ray's gcs/raylet and workers), from /proc."""
    children, own = defaultdict(list), {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            children[int(fields[1])].append(int(name))
            own[int(name)] = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += own.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def run_once(writer: str, source_cfg: SourceConfig, split_cfg: SplitConfig, storage: RunStorage) -> dict:
    storage.remove("")
    load_before, cpu0 = os.getloadavg(), tree_cpu_seconds(os.getpid())
    t0 = time.perf_counter()
    if writer == "single":
        source = make_source(source_cfg)
        storage.check_writable()
        records = write_single_process(source, split_cfg, storage)
        write_manifest(storage, build_manifest(source, source_cfg, split_cfg, records))
        records = [r for r in records if isinstance(r, PartRecord)]
    else:
        records = split_dataset(source_cfg, split_cfg, storage).records
    seconds = time.perf_counter() - t0
    cpu = tree_cpu_seconds(os.getpid()) - cpu0
    images = sum(r.rows for r in records) // split_cfg.k
    storage.remove("")
    return {
        "seconds": round(seconds, 2),
        "images": images,
        "images_per_s": round(images / seconds, 1),
        # CPU time of this process and its Ray processes: cpu_seconds / seconds is the parallelism achieved
        # (what the cores gave us, whatever else ran), images_per_cpu_s the cost of an image whatever the load
        "cpu_seconds": round(cpu, 2),
        "parallelism": round(cpu / seconds, 2),
        "images_per_cpu_s": round(images / cpu, 1),
        "mb_written": round(sum(r.bytes for r in records) / 1e6, 1),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }


def measure(writer: str, source_cfg, split_cfg, storage, repeats: int) -> dict:
    runs = [run_once(writer, source_cfg, split_cfg, storage) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    row = {
        "writer": writer,
        **best,
        "all_seconds": [r["seconds"] for r in runs],
        "load_before_after_each": [[r["load_before"][0], r["load_after"][0]] for r in runs],
    }
    print(
        f"  {writer:<9} {best['images']:>7} images {best['seconds']:8.2f} s {best['images_per_s']:9.1f} images/s"
        f" {best['images_per_cpu_s']:8.1f} images/CPU-s  parallelism {best['parallelism']:4.2f}"
        f"   load {row['load_before_after_each']}",
        flush=True,
    )
    return row


def benchmark(n: int, repeats: int, scratch: Path) -> dict:
    import ray

    folder, run = scratch / "images", RunStorage(str(scratch / "run"))
    generated = make_folder(folder, n, workers=len(os.sched_getaffinity(0)))
    print(f"generated {generated}", flush=True)
    source_cfg = SourceConfig(name="imagefolder", root=str(folder), image_size=IMAGE_SIZE)
    split_cfg = SplitConfig(rows=2, cols=2, images_per_task=IMAGES_PER_TASK)
    t0 = time.perf_counter()
    make_source(source_cfg)  # list the folder: part of every run below, measured alone here
    list_seconds = time.perf_counter() - t0
    warm = SourceConfig(name="imagefolder", root=str(folder), image_size=IMAGE_SIZE, limit=200)
    rows = [measure("single", source_cfg, split_cfg, run, repeats)]
    for cpus in (1, 2):
        startup = start_ray(num_cpus=cpus)
        run_once("ray", warm, split_cfg, run)  # warm-up: worker processes and imports
        rows.append(
            {**measure(f"ray-{cpus}cpu", source_cfg, split_cfg, run, repeats), "ray_startup_s": round(startup, 2)}
        )
        ray.shutdown()
    rate = {r["writer"]: r["images_per_s"] for r in rows}
    return {
        "folder": {
            **generated,
            "classes": CLASSES,
            "side_px": list(SIDE_RANGE),
            "val_share": 1 / VAL_SHARE,
            "jpeg_quality": 90,
            "list_seconds": round(list_seconds, 3),
        },
        "split": {
            "image_size": IMAGE_SIZE,
            "rows": 2,
            "cols": 2,
            "transform": "dct",
            "dtype": "uint8",
            "images_per_task": IMAGES_PER_TASK,
        },
        "rows": rows,
        "ray_1cpu_over_single": round(rate["ray-1cpu"] / rate["single"], 3),
        "ray_2cpu_over_single": round(rate["ray-2cpu"] / rate["single"], 3),
        "scaling_2cpu_over_1cpu": round(rate["ray-2cpu"] / rate["ray-1cpu"], 3),
    }


def markdown(res: dict) -> str:
    """Each writer's best run: time, rate, CPU cost and the parallelism it got (CPU-s over seconds)."""
    lines = [
        "| writer | seconds | images/s | / single | images per CPU-s | parallelism | load (1 min) before -> after |",
        "|:---|---:|---:|---:|---:|---:|:---|",
    ]
    single = next(r for r in res["rows"] if r["writer"] == "single")["images_per_s"]
    lines += [
        f"| {r['writer']} | {r['seconds']:.2f} | {r['images_per_s']:,.0f} | {r['images_per_s'] / single:.2f} | "
        f"{r['images_per_cpu_s']:,.0f} | {r['parallelism']:.2f} | {r['load_before'][0]} -> {r['load_after'][0]} |"
        for r in res["rows"]
    ]
    f, s = res["folder"], res["split"]
    lines += [
        "",
        f"{f['images']:,} generated JPEGs ({f['mb']} MB, {f['classes']} classes, sides "
        f"{f['side_px'][0]}..{f['side_px'][1]} px), `source.image_size: {s['image_size']}`, {s['rows']}x{s['cols']} "
        f"{s['transform']}, {s['dtype']}, {s['images_per_task']} images per task; scaling from 1 to 2 CPUs: "
        f"{res['scaling_2cpu_over_1cpu']:.2f}x; listing the folder: {f['list_seconds']} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000, help="JPEGs to generate (train + val)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per writer (the best is kept)")
    ap.add_argument("--quick", action="store_true", help="2,000 images, one run each: a smoke test")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    n, repeats = (2000, 1) if args.quick else (args.images, args.repeats)
    begun = begin("jpeg_folder")
    scratch = Path(tempfile.mkdtemp(prefix="jpeg-folder-bench-"))
    try:
        res = benchmark(n, repeats, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record(begun, res, args.out)
    print(markdown(res))
    print(
        f"ray 1 CPU / single {res['ray_1cpu_over_single']}, ray 2 CPU / single {res['ray_2cpu_over_single']}, "
        f"2 CPU / 1 CPU {res['scaling_2cpu_over_1cpu']}; written to {args.out}"
    )


if __name__ == "__main__":
    main()
