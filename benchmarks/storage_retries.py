"""How the S3 client's own retries add to ``RunStorage``'s retry loop, measured against a loopback endpoint.

    .venv/bin/python -m benchmarks.storage_retries            # ~3 minutes
    .venv/bin/python -m benchmarks.storage_retries --quick    # one repetition

Every read and write of a run goes through ``RunStorage.retrying`` (backoff 0.25 s doubling to 5 s, for
``storage.retry_budget_s``). Under it, botocore makes ``S3_MAX_ATTEMPTS`` attempts per request and s3fs
repeats a failed call ``S3FS_RETRIES`` times (twice nested in ``cat_file``). For each setting of the two:

- ``refused_s``: one call against a port that refuses connections (median over repetitions): the time one
  outer attempt takes, i.e. how late ``retrying`` gets to decide again;
- ``recovered_after_s``: a read started while a moto server is down for ``--outage`` seconds: the time from
  the server's restart to the read returning (the outer loop's backoff plus the inner attempt in progress);
- ``gave_up_after_s``: with a 2 s budget and the endpoint down: the time until ``StorageError``.

Results: ``benchmarks/results/storage_retries.json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from benchmarks._common import begin, record  # first: sets Ray's environment

OUT = Path(__file__).parent / "results" / "storage_retries.json"
SETTINGS = [(3, 2), (3, 1), (2, 1), (1, 1)]  # (botocore attempts, s3fs retries)


def refused_port() -> tuple[socket.socket, int]:
    """A bound, non-listening socket: connections to its port are refused, and nothing else can take it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(attempts: int, retries: int, repeats: int, outage_s: float) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    import data_split.storage as st

    st.S3_MAX_ATTEMPTS, st.S3FS_RETRIES = attempts, retries
    sock, port = refused_port()
    dead = st.RunStorage("s3://bench/run", f"http://127.0.0.1:{port}", retry_budget_s=0)
    refused = []
    for _ in range(repeats + 1):  # the first call also builds the client: not counted
        t0 = time.perf_counter()
        try:
            dead.fs.cat_file(dead.path("x"))
        except Exception:
            pass
        refused.append(time.perf_counter() - t0)
    gave_up = []
    for _ in range(repeats):
        short = st.RunStorage("s3://bench/run", f"http://127.0.0.1:{port}", retry_budget_s=2.0)
        t0 = time.perf_counter()
        try:
            short.read_bytes("x")
        except st.StorageError:
            pass
        gave_up.append(time.perf_counter() - t0)
    sock.close()

    say(f"{attempts} x {retries}: refused {refused[1:]}, gave up after {gave_up}")
    recovered = []
    for _ in range(repeats):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        port = server.get_host_and_port()[1]
        endpoint = f"http://127.0.0.1:{port}"
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        storage = st.RunStorage(f"s3://{bucket}/run", endpoint, retry_budget_s=120)
        storage.write_bytes("x", b"payload")
        server.stop()
        placeholder, _ = socket.socket(), None  # holds the port, refusing connections, until the restart
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.bind(("127.0.0.1", port))
        done: dict = {}
        reader = threading.Thread(
            target=lambda done=done, storage=storage: done.update(data=storage.read_bytes("x"), t=time.perf_counter())
        )
        reader.start()
        time.sleep(outage_s)  # the outage itself: a duration
        placeholder.close()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        up = time.perf_counter()
        reader.join()
        server.stop()
        assert done["data"] == b"payload"
        recovered.append(done["t"] - up)
    return {
        "botocore_attempts": attempts,
        "s3fs_retries": retries,
        "refused_s": round(statistics.median(refused[1:]), 3),
        "refused_all_s": [round(t, 3) for t in refused[1:]],
        "gave_up_after_s": [round(t, 2) for t in gave_up],
        "recovered_after_s": [round(t, 2) for t in recovered],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repetition per setting")
    ap.add_argument("--outage", type=float, default=6.0, help="seconds the endpoint is down in the recovery runs")
    args = ap.parse_args(argv)
    begun = begin("storage_retries", argv)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request lines
    logging.getLogger("data_split.storage").setLevel(logging.ERROR)  # the retry lines
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    repeats = 1 if args.quick else 5
    rows = [measure(a, r, repeats, args.outage) for a, r in SETTINGS]
    print(f"{'attempts':>8} {'retries':>7} {'refused s':>9} {'gave up after s (budget 2)':>28} recovered after s")
    for row in rows:
        print(
            f"{row['botocore_attempts']:>8} {row['s3fs_retries']:>7} {row['refused_s']:>9.2f} "
            f"{str(row['gave_up_after_s']):>28} {row['recovered_after_s']}"
        )
    record(begun, {"outage_s": args.outage, "rows": rows}, OUT)


def markdown(results: dict) -> str:
    """One row per setting of the client's own retries (botocore attempts x s3fs retries), medians."""
    lines = [
        "| botocore attempts | s3fs retries | one attempt, refused port (s) | gave up, 2 s budget (s) | "
        f"returned after a {results['outage_s']:g} s outage ended (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['botocore_attempts']} | {r['s3fs_retries']} | {r['refused_s']:.2f} | "
            f"{statistics.median(r['gave_up_after_s']):.2f} | {statistics.median(r['recovered_after_s']):.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
