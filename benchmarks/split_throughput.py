"""Split throughput and peak memory: the Ray Data pipeline against one plain process.

What it measures (one run, one local Ray with 2 CPUs and a fixed object store):

1. Fashion-MNIST (70k images, Debian's files), sub4 (2x2) and sub16 (4x4), DCT:
   ``split_dataset`` (Ray Data) to local disk, the same to a loopback S3 endpoint
   (moto's server, started here), and ``write_single_process`` (numpy + pyarrow,
   no Ray) to local disk. Seconds and images/s, Ray start-up excluded (Ray is
   started and warmed up with a small split before any clock runs). Both sides
   are timed end to end: validate the source, write every file, write the manifest.
2. Synthetic 28x28x1 images, 700k and 70k, sub4: Ray vs single process, local disk.
   Target: Ray within 2x of the single process at 700k.
3. Peak memory of the Ray pipeline at 70k and 700k synthetic images, each in a
   fresh subprocess (``--memory-probe N``) that starts its own Ray and splits
   while a thread sums, every 0.2 s, the memory of its whole process tree
   (driver, gcs, raylet, agents, workers) read from /proc: PSS (shared pages,
   such as the object store mapped into several workers, counted once) and the
   plain RSS sum. Target: peak PSS within 1.5x from 70k to 700k.

Command (repository root; ``--quick`` shrinks everything to a smoke test of seconds):

    .venv/bin/python -m benchmarks.split_throughput [--quick] [--out PATH]

Numbers go to ``benchmarks/results/split_throughput.json`` (with the machine,
the command and the date) and print as a table. Scratch data live under /tmp and
are removed as soon as each measurement is done.

Result (2026-11-27, 2-core Intel Xeon VM, 23.5 GiB, Ray 2.60, pyarrow 26; quiet machine, load ~1;
700k single runs, the rest best of 2):

    case                 target  ray s   single s  ray/single
    fashion-mnist sub4   local    4.45     5.13     0.87
    fashion-mnist sub4   s3       6.15       -      1.20
    fashion-mnist sub16  local    5.38     6.75     0.80
    fashion-mnist sub16  s3       8.07       -      1.20
    synthetic 70k sub4   local    3.45     4.75     0.73
    synthetic 700k sub4  local   32.55    39.53     0.82   (target <= 2x: met)

    peak memory (PSS, process tree): 70k 1385 MB, 700k 1399 MB, ratio 1.01 (target <= 1.5x: met);
    idle Ray 628 MB; object store ~0 MB (the fused read->transform->write task returns only
    small per-file records, so no image data passes through the object store).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from benchmarks._common import begin, record, start_ray  # first: sets Ray's environment
from data_split import RunStorage, SourceConfig, SplitConfig, StorageConfig, SyntheticConfig
from data_split.layout import write_manifest
from data_split.parts import build_manifest
from data_split.pipeline import split_dataset, write_single_process
from data_split.sources import make_source

for _k, _v in {  # fake credentials for the loopback endpoint; set before Ray starts so workers inherit them
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}.items():
    os.environ.setdefault(_k, _v)
os.environ.pop("AWS_ENDPOINT_URL", None)

RAY_CPUS = 2
OBJECT_STORE_BYTES = 512 * 1024**2  # fixed so that memory numbers are comparable between runs
SAMPLE_INTERVAL_S = 0.2  # memory sampling period of the probe
STORE_POLL_EVERY = 3  # poll the object store's stats every this many samples (an RPC to the raylet)
DEFAULT_OUT = Path(__file__).parent / "results" / "split_throughput.json"


# -- machine and process-tree memory (from /proc; no psutil) ----------------------------------------
def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Ray's gcs/raylet are children of the driver, workers of the raylet)."""
    children = defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(d))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _kb_field(path: str, name: str) -> int:
    for ln in Path(path).read_text().splitlines():
        if ln.startswith(name):
            return int(ln.split()[1])
    return 0


def tree_memory(root: int) -> dict:
    """Summed RSS and PSS (bytes) of the tree, and PSS per process name."""
    rss = pss = 0
    by_name: dict[str, int] = defaultdict(int)
    for pid in process_tree(root):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            p = _kb_field(f"/proc/{pid}/smaps_rollup", "Pss:") * 1024
            rss += _kb_field(f"/proc/{pid}/status", "VmRSS:") * 1024
        except OSError:  # the process ended between listing and reading
            continue
        pss += p
        by_name[name] += p
    return {"rss": rss, "pss": pss, "pss_by_process": dict(by_name)}


class MemorySampler(threading.Thread):
    """Peak tree memory, and peak object-store use once ``watch_store`` is called."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.peak_rss = self.peak_pss = self.peak_store = self.samples = 0
        self.peak_breakdown: dict = {}
        self.store_state = None
        self.store_created_bytes = 0

    def watch_store(self) -> None:
        from ray._private.internal_api import get_state_from_address  # private: pinned Ray 2.60

        self.store_state = get_state_from_address(ray_gcs_address())

    def poll_store(self) -> None:
        from ray._private.internal_api import get_memory_info_reply

        stats = get_memory_info_reply(self.store_state, timeout_seconds=5).store_stats
        self.peak_store = max(self.peak_store, stats.object_store_bytes_used)
        self.store_created_bytes = max(self.store_created_bytes, stats.cumulative_created_bytes)

    def run(self) -> None:
        while not self.stop_event.is_set():
            m = tree_memory(os.getpid())
            self.peak_rss = max(self.peak_rss, m["rss"])
            if m["pss"] > self.peak_pss:
                self.peak_pss, self.peak_breakdown = m["pss"], m["pss_by_process"]
            if self.store_state is not None and self.samples % STORE_POLL_EVERY == 0:
                try:
                    self.poll_store()
                except Exception:  # the raylet is shutting down
                    pass
            self.samples += 1
            self.stop_event.wait(SAMPLE_INTERVAL_S)


# -- Ray and the two writers ----------------------------------------------------------------------------
def ray_gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def synthetic_source(n_images: int) -> SourceConfig:
    """``n_images`` 28x28x1 images, 6/7 train and 1/7 test (as 600k/100k, 60k/10k)."""
    return SourceConfig(name="synthetic", synthetic=SyntheticConfig(train=n_images * 6 // 7, test=n_images // 7))


def run_writer(writer: str, source_cfg: SourceConfig, split_cfg: SplitConfig, storage: RunStorage) -> dict:
    """One timed split, end to end (validate source, write all files and the manifest)."""
    t0 = time.perf_counter()
    if writer == "ray":
        records = split_dataset(source_cfg, split_cfg, storage).records
    else:
        source = make_source(source_cfg)
        storage.check_writable()
        records = write_single_process(source, split_cfg, storage)
        write_manifest(storage, build_manifest(source, source_cfg, split_cfg, records))
    seconds = time.perf_counter() - t0
    images = sum(r.rows for r in records) // split_cfg.k
    return {
        "seconds": round(seconds, 3),
        "images": images,
        "images_per_s": round(images / seconds),
        "files": len(records),
        "mb_written": round(sum(r.bytes for r in records) / 1e6, 1),
    }


def timed(label: dict, writer: str, source_cfg, split_cfg, storage: RunStorage, repeats: int) -> dict:
    """Best of ``repeats`` runs (each into an emptied location); the storage is emptied afterwards."""
    runs = []
    for _ in range(repeats):
        storage.remove("")
        runs.append(run_writer(writer, source_cfg, split_cfg, storage))
        storage.remove("")
    best = min(runs, key=lambda r: r["seconds"])
    row = {**label, "writer": writer, **best, "all_seconds": [r["seconds"] for r in runs]}
    print(f"  {row['case']:<18} {row['target']:<6} {writer:<7} {best['seconds']:8.2f} s", flush=True)
    return row


# -- memory probe (runs in its own process) -----------------------------------------------------------------
def memory_probe(n_images: int, scratch: str) -> dict:
    import ray

    sampler = MemorySampler()
    sampler.start()
    start_ray(num_cpus=RAY_CPUS, object_store_memory=OBJECT_STORE_BYTES)
    time.sleep(1.0)  # let the idle cluster settle: its footprint is the baseline
    idle = tree_memory(os.getpid())
    sampler.watch_store()
    storage = RunStorage(str(Path(scratch) / f"probe-{n_images}"))
    t0 = time.perf_counter()
    split_dataset(synthetic_source(n_images), SplitConfig(rows=2, cols=2), storage)
    seconds = time.perf_counter() - t0
    sampler.poll_store()
    sampler.stop_event.set()
    sampler.join()
    sampler.store_state.disconnect()  # before shutdown, or its GCS client kills the process a minute later
    ray.shutdown()
    shutil.rmtree(storage.root, ignore_errors=True)
    top = sorted(sampler.peak_breakdown.items(), key=lambda kv: -kv[1])[:8]
    return {
        "images": n_images,
        "seconds": round(seconds, 2),
        "samples": sampler.samples,
        "idle_pss_mb": round(idle["pss"] / 1e6),
        "peak_pss_mb": round(sampler.peak_pss / 1e6),
        "peak_rss_sum_mb": round(sampler.peak_rss / 1e6),
        "peak_object_store_mb": round(sampler.peak_store / 1e6, 1),
        "object_store_created_mb": round(sampler.store_created_bytes / 1e6, 1),
        "peak_pss_by_process_mb": {k: round(v / 1e6) for k, v in top},
    }


def run_probe(n_images: int, scratch: str) -> dict:
    cmd = [sys.executable, __file__, "--memory-probe", str(n_images), "--scratch", scratch]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"memory probe {n_images} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  memory probe {n_images:>8}: peak PSS {row['peak_pss_mb']} MB, RSS sum {row['peak_rss_sum_mb']} MB",
        flush=True,
    )
    return row


# -- the whole benchmark -------------------------------------------------------------------------------------
def s3_endpoint() -> tuple[object, str]:
    import logging

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    return server, endpoint


def benchmark(quick: bool, scratch: str) -> dict:
    fm_limit = 2000 if quick else None  # per source split
    synth_sizes = (20_000, 2_000) if quick else (700_000, 70_000)
    repeats = 1 if quick else 2
    res: dict = {"ray_startup_s": round(start_ray(num_cpus=RAY_CPUS, object_store_memory=OBJECT_STORE_BYTES), 2)}
    local = lambda name: RunStorage(str(Path(scratch) / name))  # noqa: E731
    run_writer("ray", synthetic_source(2000), SplitConfig(images_per_task=500), local("warmup"))  # workers up
    local("warmup").remove("")

    server, endpoint = s3_endpoint()
    s3_cfg = StorageConfig(uri="s3://bench/fmnist", endpoint_url=endpoint)
    s3 = RunStorage.from_config(s3_cfg)
    fm, rows = SourceConfig(name="fashion-mnist", limit=fm_limit), []
    try:
        for name, rc in (("sub4", 2), ("sub16", 4)):
            split_cfg = SplitConfig(rows=rc, cols=rc, transform="dct")
            label = {"case": f"fashion-mnist {name}", "K": rc * rc}
            rows.append(timed({**label, "target": "local"}, "ray", fm, split_cfg, local("fm"), repeats))
            rows.append(timed({**label, "target": "s3"}, "ray", fm, split_cfg, s3, repeats))
            rows.append(timed({**label, "target": "local"}, "single", fm, split_cfg, local("fm"), repeats))
    finally:
        server.stop()
    for n in synth_sizes:
        label = {"case": f"synthetic {n // 1000}k sub4", "K": 4, "target": "local"}
        reps = 1 if n >= 700_000 else repeats
        rows.append(timed(label, "single", synthetic_source(n), SplitConfig(), local("syn"), reps))
        rows.append(timed(label, "ray", synthetic_source(n), SplitConfig(), local("syn"), reps))
    import ray

    ray.shutdown()  # the probes start their own Ray

    single = {r["case"]: r["seconds"] for r in rows if r["writer"] == "single"}
    for r in rows:
        r["ratio_vs_single"] = round(r["seconds"] / single[r["case"]], 2)
    res["throughput"] = rows
    big, small = (f"synthetic {n // 1000}k sub4" for n in synth_sizes)
    ratio_big = next(r["ratio_vs_single"] for r in rows if r["case"] == big and r["writer"] == "ray")
    ratio_small = next(r["ratio_vs_single"] for r in rows if r["case"] == small and r["writer"] == "ray")
    res["target_ray_within_2x_of_single"] = {
        "case": big,
        "ratio": ratio_big,
        "small_case": small,
        "small_ratio": ratio_small,
        "met": ratio_big <= 2.0,
    }

    probes = [run_probe(n, scratch) for n in sorted(synth_sizes)]
    growth = probes[1]["peak_pss_mb"] / probes[0]["peak_pss_mb"]
    res["memory"] = probes
    res["target_memory_flat_1_5x"] = {
        "images": [p["images"] for p in probes],
        "peak_pss_ratio": round(growth, 2),
        "peak_rss_sum_ratio": round(probes[1]["peak_rss_sum_mb"] / probes[0]["peak_rss_sum_mb"], 2),
        "met": growth <= 1.5,
    }
    return res


def markdown(res: dict) -> str:
    """The docs page's tables: throughput per case and writer, then the peak memory of the pipeline."""
    lines = [
        "| case | target | writer | images | seconds | images/s | MB written | ray / single |",
        "|:---|:---|:---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['case']} | {r['target']} | {r['writer']} | {r['images']:,} | {r['seconds']:.2f} | "
        f"{r['images_per_s']:,} | {r['mb_written']:,} | {r['ratio_vs_single']:.2f} |"
        for r in res["throughput"]
    ]
    lines += [
        "",
        "| images | seconds | idle PSS MB | peak PSS MB | peak RSS sum MB | peak store MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['images']:,} | {p['seconds']:.1f} | {p['idle_pss_mb']} | {p['peak_pss_mb']} | "
        f"{p['peak_rss_sum_mb']} | {p['peak_object_store_mb']} |"
        for p in res["memory"]
    ]
    a, b = res["target_ray_within_2x_of_single"], res["target_memory_flat_1_5x"]
    lines += [
        "",
        f"Ray within 2x of one process at {a['case']}: {a['ratio']} ({'met' if a['met'] else 'not met'}; "
        f"{a['small_case']}: {a['small_ratio']}). Peak memory flat within 1.5x from {b['images'][0]:,} to "
        f"{b['images'][1]:,} images: PSS ratio {b['peak_pss_ratio']} ({'met' if b['met'] else 'not met'}).",
    ]
    return "\n".join(lines)


def print_tables(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    t = Table(title="split throughput (Ray start-up excluded)")
    for col in ("case", "target", "writer", "images", "seconds", "images/s", "MB written", "ray/single"):
        t.add_column(col, justify="left" if col in ("case", "target", "writer") else "right")
    for r in res["throughput"]:
        t.add_row(
            r["case"],
            r["target"],
            r["writer"],
            f"{r['images']:,}",
            f"{r['seconds']:.2f}",
            f"{r['images_per_s']:,}",
            f"{r['mb_written']:,}",
            f"{r['ratio_vs_single']:.2f}",
        )
    console.print(t)
    m = Table(title=f"peak memory of the Ray pipeline (process tree, object store {OBJECT_STORE_BYTES >> 20} MiB)")
    for col in ("images", "seconds", "idle PSS MB", "peak PSS MB", "peak RSS sum MB", "peak store MB"):
        m.add_column(col, justify="right")
    for p in res["memory"]:
        m.add_row(
            f"{p['images']:,}",
            f"{p['seconds']:.1f}",
            str(p["idle_pss_mb"]),
            str(p["peak_pss_mb"]),
            str(p["peak_rss_sum_mb"]),
            f"{p['peak_object_store_mb']}",
        )
    console.print(m)
    a, b = res["target_ray_within_2x_of_single"], res["target_memory_flat_1_5x"]
    console.print(
        f"Ray within 2x of single process at {a['case']}: ratio {a['ratio']} -> "
        f"{'MET' if a['met'] else 'NOT MET'} ({a['small_case']}: {a['small_ratio']})"
    )
    console.print(
        f"Peak memory flat (<= 1.5x) from {b['images'][0]:,} to {b['images'][1]:,} images: "
        f"PSS ratio {b['peak_pss_ratio']} -> {'MET' if b['met'] else 'NOT MET'}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of seconds")
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT}; quick: none)")
    ap.add_argument("--memory-probe", type=int, metavar="N", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.scratch)))
        return
    begun = begin("split_throughput", argv)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    scratch = tempfile.mkdtemp(prefix="split_bench_", dir="/tmp")
    try:
        res = benchmark(args.quick, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res = {
        "quick": args.quick,
        "ray_cpus": RAY_CPUS,
        "object_store_bytes": OBJECT_STORE_BYTES,
        "images_per_task": SplitConfig().images_per_task,
        **res,
    }
    print_tables(res)
    record(begun, res, out)
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
