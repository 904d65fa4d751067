"""The input pipeline's ceiling: rows/s a branch's reader delivers, against pyarrow and against zstd + memcpy.

    .venv/bin/python -m benchmarks.input_pipeline            # 1x14x14, 3x56x56, 3x112x112; ~220 MB each
    .venv/bin/python -m benchmarks.input_pipeline --quick    # seconds, written nowhere
    .venv/bin/python -m benchmarks.input_pipeline --s3       # also from a loopback S3 (moto), 1 thread

Branch 0 of a 2x2 ``dct`` split of synthetic uint8 images (noise 0.1, so the codes compress a little, as
photos do), written without Ray (``write_single_process``) to a local disk: the branch shapes 1x14x14,
3x56x56 and 3x112x112 from 1x28x28, 3x112x112 and 3x224x224 sources, about ``--mb`` MB of stored ``x``
per branch (what this 2-core, 23 GiB machine writes in a minute each). The files are read once before
timing, so "local disk" is the page cache: the reader's own cost, not the disk's.

Measured per shape, with 1 and 2 threads (``torch.set_num_threads``, ``pyarrow.set_cpu_count``), best
of ``--repeats`` rounds, each one pass of every row below over the train split (interleaved, so
that each sees the same phases of the machine's other load):

- ``stream``: ``StreamingSplit.train_batches`` (row groups on its prefetch thread, shuffle buffer, batches
  of 256 on the device as stored): what a GPU receives, where the decode runs on the device;
- ``stream+decode``: the same, decoded and normalised on this CPU (``Decoder``), as a CPU branch trains;
- ``memory``: ``InMemorySplit`` loading the split (``read_branch``, the files to one array on the device),
  and ``memory epoch``: one epoch of its batches (a gather, decoded on the CPU);
- (a) ``pyarrow``: ``pq.read_table`` of each file, every column to numpy (the library's ceiling);
- (b) ``zstd+memcpy``: the same ``x`` bytes, zstd level 1 in 1 MiB chunks (Parquet's page size),
  decompressed and copied once into a batch array (2 threads: two chunks at once). No reader can beat it.

Each is reported as rows per CPU-second (``time.process_time``: every thread of the process, so a reader's
prefetch thread counts; what the machine's other load cannot inflate much) and as a fraction of (b); the
JSON also has wall-clock rows/s (``rows_per_s``, ``of_b_wall``). With ``--s3`` each split is copied to a
moto S3 server running in a process of its own and read from there as well (``<shape>/1/s3``; wall-clock,
since the server's CPU is on the same two cores). Goals (issue 22), 3x56x56: stream >= 70% of (b)
and >= 20k rows per CPU-second, memory >= 90% of (b). Results: ``benchmarks/results/input_pipeline.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks._common import begin, record, upload_folder
from branches._stream import StreamingSplit
from branches.data import InMemorySplit
from data_split import RunStorage, SourceConfig, SplitConfig, SyntheticConfig, make_source
from data_split.layout import load_manifest, write_manifest
from data_split.parts import build_manifest
from data_split.pipeline import write_single_process
from data_split.sources.synthetic import SYNTHETIC_CHUNK

OUT = Path(__file__).parent / "results" / "input_pipeline.json"
SHAPES = {"1x14x14": (1, 28), "3x56x56": (3, 112), "3x112x112": (3, 224)}  # branch shape: (channels, source side)
BATCH = 256
CHUNK = 1 << 20  # bytes per zstd frame in (b): Parquet's default data page size
NOISE = 0.1
LOAD_NOTE = (
    "2 cores shared with other helpers' builds and tests (load average 5-18): figures are the fastest of N "
    "interleaved rounds, ratios side by side; 2 threads on 2 busy cores mostly measure contention"
)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_split(root: Path, channels: int, side: int, n: int) -> None:
    src = SourceConfig(
        name="synthetic",
        synthetic=SyntheticConfig(train=n, test=64, channels=channels, height=side, width=side, noise=NOISE),
    )
    # Files of ~10k images, as the default split.images_per_task writes, or fewer where that many source images
    # would not fit in ~64 MB; whole seeded chunks of the synthetic source, which generates one chunk at a time.
    per_task = SYNTHETIC_CHUNK * max(1, min(10, (64 << 20) // (SYNTHETIC_CHUNK * channels * side * side)))
    split = SplitConfig(rows=2, cols=2, val_fraction=0.0, images_per_task=per_task)
    storage = RunStorage(str(root))
    source = make_source(src)
    write_manifest(storage, build_manifest(source, src, split, write_single_process(source, split, storage)))


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: every thread's) of one call of ``fn``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def x_numpy(col: pa.ChunkedArray) -> np.ndarray:
    """(a)'s conversion of the x column, whichever storage version wrote it (a view where Arrow allows)."""
    arr = col.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if pa.types.is_fixed_size_binary(arr.type):
        return np.frombuffer(
            arr.buffers()[1], np.uint8, len(arr) * arr.type.byte_width, arr.offset * arr.type.byte_width
        )
    return arr.flatten().to_numpy(zero_copy_only=False)


def pyarrow_pass(paths: list, threads: int, fs=None) -> int:
    n = 0
    for p in paths:
        t = pq.read_table(p, use_threads=threads > 1, filesystem=fs)
        x = x_numpy(t.column("x"))
        for name in ("idx", "src", "y"):
            t.column(name).to_numpy()
        n += t.num_rows
        del x
    return n


def zstd_frames(paths: list[Path]) -> tuple[list[tuple[pa.Buffer, int]], int]:
    """The x bytes of every row group as zstd level-1 frames of ``CHUNK`` bytes: (frame, decompressed size)."""
    codec = pa.Codec("zstd", compression_level=1)
    frames, row_bytes = [], 0
    for p in paths:
        f = pq.ParquetFile(p)
        for g in range(f.num_row_groups):
            raw = np.ascontiguousarray(x_numpy(f.read_row_group(g, columns=["x"]).column("x")))
            row_bytes = raw.nbytes // f.metadata.row_group(g).num_rows
            buf = memoryview(raw).cast("B")
            for s in range(0, len(buf), CHUNK):
                piece = buf[s : s + CHUNK]
                frames.append((codec.compress(piece, asbytes=False), len(piece)))
    return frames, row_bytes


def zstd_pass(frames: list[tuple[pa.Buffer, int]], threads: int) -> None:
    codec = pa.Codec("zstd")
    out = np.empty(max(size for _, size in frames), np.uint8)

    def one(frame: tuple[pa.Buffer, int], dst: np.ndarray) -> None:
        buf = codec.decompress(frame[0], decompressed_size=frame[1], asbytes=False)
        np.copyto(dst[: frame[1]], np.frombuffer(buf, np.uint8))  # the one memcpy into the batch

    if threads == 1:
        for fr in frames:
            one(fr, out)
        return
    outs = [np.empty_like(out) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: one(frames[i], outs[i % threads]), range(len(frames))))


@contextlib.contextmanager
def loopback_s3(wanted: bool):
    """A moto S3 server in a process of its own (its CPU is not the reader's), with bucket ``bench``; None if
    not ``wanted``."""
    if not wanted:
        yield None
        return
    import boto3

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server on {endpoint} did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def drain(batches) -> int:
    n = 0
    for x, _ in batches:
        n += len(x)
    return n


def measure_shape(root: Path, threads: int, repeats: int, storage: RunStorage | None = None) -> dict:
    """Every pass over branch 0's train split at ``root``; the readers and (a) read ``storage`` instead when
    given (an S3 copy of ``root``), (b) always the local bytes: the limit does not depend on where they are."""
    remote, dev = storage is not None, torch.device("cpu")
    storage = storage or RunStorage(str(root))
    manifest = load_manifest(storage)
    rels = manifest.branches[0].splits["train"].files
    files = [root / rel for rel in rels]
    rows = int(manifest.branches[0].splits["train"].rows)
    for p in files:
        p.read_bytes()  # into the page cache
    read_from, fs = ([f"{storage.root}/{rel}" for rel in rels], storage.fs) if remote else (files, None)
    torch.set_num_threads(threads)
    pa.set_cpu_count(threads)
    frames, row_bytes = zstd_frames(files)
    stream = StreamingSplit(storage, manifest, "train", 0, dev)
    decode = stream.decode
    as_stored = lambda stored, augment=None, generator=None: stored  # noqa: E731  (the batch as the device receives it)
    holder: list[InMemorySplit] = []

    def stream_pass(decoder) -> None:
        stream.decode = decoder
        drain(stream.train_batches(0, 0, 0, BATCH))

    def load() -> None:
        holder[:] = [InMemorySplit(storage, manifest, "train", 0, dev)]

    passes = {
        "zstd_memcpy": lambda: zstd_pass(frames, threads),
        "pyarrow": lambda: pyarrow_pass(read_from, threads, fs),
        "stream": lambda: stream_pass(as_stored),
        "stream_decode": lambda: stream_pass(decode),
        "memory": load,
        "memory_epoch": lambda: drain(holder[0].train_batches(0, 0, 0, BATCH)),
    }
    wall = {name: float("inf") for name in passes}
    cpu = dict(wall)
    for _ in range(repeats):  # rounds of every pass, so each sees the same phases of the other load
        for name, fn in passes.items():
            w, c = timed(fn)
            wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)
    out = {name: rows / s for name, s in cpu.items()}
    return {
        "rows": rows,
        "row_bytes": row_bytes,
        "stored_mb": round(rows * row_bytes / 1e6, 1),
        "file_mb": round(sum(p.stat().st_size for p in files) / 1e6, 1),
        "zstd_ratio": round(sum(s for _, s in frames) / sum(f.size for f, _ in frames), 3),
        "rows_per_cpu_s": {k: round(v) for k, v in out.items()},
        "rows_per_s": {k: round(rows / v) for k, v in wall.items()},
        "of_b": {k: round(v / out["zstd_memcpy"], 3) for k, v in out.items()},
        "of_b_wall": {k: round(wall["zstd_memcpy"] / v, 3) for k, v in wall.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=220, help="stored MB of x per branch, per shape")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9, help="rounds of every pass (the fastest of each is kept)")
    ap.add_argument("--quick", action="store_true", help="a few MB, one pass: a smoke test, written nowhere")
    ap.add_argument("--s3", action="store_true", help="also read each split from a loopback S3 (moto, 1 thread)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--before",
        type=Path,
        help="an earlier run's record (another storage version): its rows are "
        "kept beside this run's, as fractions of its own (b)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.mb, args.repeats = 4, 1
    begun = begin("input_pipeline", argv)
    res: dict = {
        "note": LOAD_NOTE,
        "batch": BATCH,
        "noise": NOISE,
        "split": "2x2 dct, uint8, branch 0 train",
        "where": "local disk (page cache)",
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp, loopback_s3(args.s3) as endpoint:
        for name in args.shapes:
            channels, side = SHAPES[name]
            n = max(512, int(args.mb * 1e6 / (channels * side * side / 4)))
            t0 = time.perf_counter()
            write_split(Path(tmp) / name, channels, side, n)
            say(f"{name}: {n} rows split in {time.perf_counter() - t0:.0f} s")
            for t in args.threads:
                r = measure_shape(Path(tmp) / name, t, args.repeats)
                res["runs"][f"{name}/{t}"] = r
                say(
                    f"{name} threads={t}: "
                    + ", ".join(f"{k} {v:,} ({r['of_b'][k]:.2f})" for k, v in r["rows_per_cpu_s"].items())
                )
            if endpoint:
                s3 = RunStorage(upload_folder(Path(tmp) / name, endpoint, "bench", name), endpoint)
                r = measure_shape(Path(tmp) / name, 1, args.repeats, s3)
                res["runs"][f"{name}/1/s3"] = r
                say(f"{name} S3: " + ", ".join(f"{k} {v:,} rows/s" for k, v in r["rows_per_s"].items()))
    if GOAL_KEY in res["runs"]:
        res["summary"] = goals(res["runs"][GOAL_KEY])
    res["storage_version"] = load_manifest_version()
    if args.before:
        from benchmarks._common import load

        old = load(args.before)
        res["before"] = {
            "storage_version": old["results"].get("storage_version"),
            "git": old["git"],
            "started": old["started"],
            "runs": old["results"]["runs"],
        }
    record(begun, res, None if args.quick else args.out)
    say(str(res.get("summary")))


GOAL_KEY = "3x56x56/1"  # the shape and thread count of issue 22's goals


def goals(r: dict) -> dict:
    """Issue 22's goals on one run of ``measure_shape``, and both readers against (a)."""
    return {
        "stream_of_b": r["of_b"]["stream"],
        "memory_of_b": r["of_b"]["memory"],
        "stream_rows_per_cpu_s_1_thread": r["rows_per_cpu_s"]["stream"],
        "goal_met": r["of_b"]["stream"] >= 0.7
        and r["of_b"]["memory"] >= 0.9
        and r["rows_per_cpu_s"]["stream"] >= 20_000,
        "pyarrow_of_b": r["of_b"]["pyarrow"],  # (a): Parquet's own decode, what bounds both readers
        "memory_of_a": round(r["of_b"]["memory"] / r["of_b"]["pyarrow"], 3),
        "stream_of_a": round(r["of_b"]["stream"] / r["of_b"]["pyarrow"], 3),
    }


def load_manifest_version() -> int:
    from data_split.layout import MANIFEST_VERSION

    return MANIFEST_VERSION


COLUMNS = (
    ("stream", "stream"),
    ("stream_decode", "stream+decode"),
    ("memory", "memory load"),
    ("memory_epoch", "memory epoch"),
    ("pyarrow", "(a) pyarrow"),
    ("zstd_memcpy", "(b) zstd+memcpy"),
)


def markdown(res: dict) -> str:
    """Rows per CPU-second per shape and thread count, each with its fraction of (b) in parentheses."""
    lines = [
        "| branch shape | threads | " + " | ".join(label for _, label in COLUMNS) + " |",
        "| --- | ---: |" + " ---: |" * len(COLUMNS),
    ]
    for key, r in res["runs"].items():
        if key.endswith("/s3"):
            continue
        shape, threads = key.split("/")
        cells = [f"{r['rows_per_cpu_s'][k]:,} ({r['of_b'][k]:.2f})" for k, _ in COLUMNS]
        lines.append(f"| {shape} ({r['rows']:,} rows, {r['file_mb']:.0f} MB) | {threads} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Storage version {res.get('storage_version', '?')}; {res['split']}; batches of {res['batch']}; "
        f"{res['where']}. (b) covers the x bytes only: at 1x14x14 the label columns (18 B a row against 196 of "
        f"x) are much of what separates (a) from (b). {res['note']}.",
    ]
    s3 = {key.split("/")[0]: r for key, r in res["runs"].items() if key.endswith("/s3")}
    if s3:
        remote = [k for k, _ in COLUMNS if k != "zstd_memcpy"]
        lines += [
            "",
            "From a loopback S3 (moto's server in a process of its own, 1 thread): wall-clock rows/s, each against "
            "the same reader from local disk in this run (the page cache) and against (b):",
            "",
            "| branch shape | " + " | ".join(label for k, label in COLUMNS if k in remote) + " |",
            "| --- |" + " ---: |" * len(remote),
        ]
        for shape, r in s3.items():
            disk = res["runs"][f"{shape}/1"]["rows_per_s"]
            cells = [
                f"{r['rows_per_s'][k]:,} ({r['rows_per_s'][k] / disk[k]:.2f} of disk, {r['of_b_wall'][k]:.2f} of b)"
                for k in remote
            ]
            lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    if "before" in res:
        b = res["before"]
        commit = (b.get("git") or {}).get("commit") or "?"
        lines += [
            "",
            f"Before: storage version {b['storage_version']} (commit {commit[:12]}, {b['started']}), "
            "the same benchmark, each as a fraction of its own run's (b):",
            "",
            "| branch shape | threads | " + " | ".join(label for _, label in COLUMNS) + " |",
            "| --- | ---: |" + " ---: |" * len(COLUMNS),
        ]
        for key, r in b["runs"].items():
            shape, threads = key.split("/")
            cells = [f"{r['rows_per_cpu_s'][k]:,} ({r['of_b'][k]:.2f})" for k, _ in COLUMNS]
            lines.append(f"| {shape} ({r['rows']:,} rows) | {threads} | " + " | ".join(cells) + " |")
    if GOAL_KEY in res["runs"]:
        lines.append("")
        s = goals(res["runs"][GOAL_KEY])
        lines.append(
            f"3x56x56, 1 thread: stream {s['stream_of_b']:.2f} of (b) (goal 0.70), memory "
            f"{s['memory_of_b']:.2f} (goal 0.90), stream {s['stream_rows_per_cpu_s_1_thread']:,} rows per CPU-second "
            f"(goal 20,000); goals met: {s['goal_met']}. Against (a), pyarrow's own read of the same files "
            f"({s['pyarrow_of_b']:.2f} of (b)): memory {s['memory_of_a']:.2f}, stream {s['stream_of_a']:.2f}."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
