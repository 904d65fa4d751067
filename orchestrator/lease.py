"""One driver per run: ``<run>/lease.json`` (docs/storage.md).

Every API step (split, train, evaluate, baseline, run, sweep; the CLI's tune-weights is an evaluate)
runs inside ``hold_lease(storage, ...)``: it takes the lease on the run URI, a background thread
renews its heartbeat, and leaving the block removes it. A second driver on a live run is refused at
once (``LeaseHeldError`` names the holder); a lease whose heartbeat is older than the timeout, or whose
holder process is gone from this very host, is taken over and the takeover is logged.

The decision is ``decide`` (pure, unit-tested without Ray). The writes are compare-and-swap so that two
drivers racing for the same lease cannot both win:

- S3: ``PutObject`` with ``If-None-Match: *`` to take a free lease, ``If-Match: <ETag>`` to take over,
  renew or release (S3 and moto support both; an endpoint that ignores them leaves a race window of
  one read-then-write, a few milliseconds, which the re-read after writing narrows further);
- local disk: an exclusive ``filelock.FileLock`` on ``<run>/.lease.lock`` around read-decide-write
  (``flock`` on Unix, ``msvcrt.locking`` on Windows: the same code wherever Python runs; on NFS the same
  few-millisecond window applies);
- other fsspec protocols: read, decide, write, re-read (the same window).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import filelock

from data_split import layout
from data_split.errors import SpectralError
from data_split.storage import RunStorage, StorageError
from orchestrator.config import SECRET_KEYS

log = logging.getLogger(__name__)

LEASE_FILE = layout.LEASE  # <run>/lease.json
LOCK_FILE = ".lease.lock"
DEFAULT_TIMEOUT_S = 60.0  # a lease whose heartbeat is older than this is a dead driver's
SECRET_ARG = re.compile(rf"^(-*(?:set=)?(?:{'|'.join(re.escape(k) for k in SECRET_KEYS)}))=.*$")
HEARTBEATS_PER_TIMEOUT = 4  # renew 4 times per timeout: one slow write does not make a live lease stale


class LeaseHeldError(SpectralError, RuntimeError):
    """Another live driver holds the run's lease; the message names it."""


class Decision(enum.Enum):
    TAKE = "take"  # no lease, or it is ours already
    REFUSE = "refuse"  # a live driver holds it
    TAKE_OVER = "take over"  # its holder is dead (stale heartbeat, or its pid is gone from this host)


def decide(
    current: dict | None, *, token: str, now: float, timeout_s: float, host: str, pid_alive: Callable[[int], bool]
) -> Decision:
    """What a driver (``token`` on ``host``) does with the lease ``current`` (None: there is none)."""
    if current is None or current.get("token") == token:
        return Decision.TAKE
    if now - float(current.get("heartbeat", 0)) > timeout_s:
        return Decision.TAKE_OVER
    if current.get("host") == host and not pid_alive(int(current.get("pid", -1))):
        return Decision.TAKE_OVER
    return Decision.REFUSE


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


def describe(lease: dict, now: float | None = None) -> str:
    age = (now or time.time()) - float(lease.get("heartbeat", 0))
    return (
        f"{lease.get('command', '?')!r} (host {lease.get('host')}, pid {lease.get('pid')}, since "
        f"{_iso(lease.get('started', 0))}, last heartbeat {age:.0f} s ago)"
    )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), timezone.utc).isoformat(timespec="seconds")


# -- compare-and-swap on storage ----------------------------------------------------------------------
class _Conflict(Exception):
    """The lease changed between our read and our write."""


@dataclass
class _Store:
    """Read the lease with a version; write/delete it only if the version is unchanged."""

    storage: RunStorage

    @property
    def s3(self) -> bool:
        return self.storage.protocol == "s3"

    def read(self) -> tuple[dict | None, str | None]:
        rel = LEASE_FILE
        try:
            version = None
            if self.s3:
                self.storage.fs.invalidate_cache()
                version = self.storage.retrying(  # first: a newer body fails the CAS
                    f"look up {self.storage.url(rel)}", lambda: self.storage.fs.info(self.storage.path(rel))["ETag"]
                )
            return json.loads(self.storage.read_bytes(rel)), version
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError:
            return {"command": "unreadable lease", "heartbeat": 0}, version  # garbage: treat as stale

    def write(self, lease: dict, version: str | None, *, exists: bool) -> str | None:
        body = (json.dumps(lease, indent=2) + "\n").encode()
        if not self.s3:
            self.storage.write_bytes(LEASE_FILE, body)
            return None
        bucket, key = self.storage.path(LEASE_FILE).split("/", 1)
        condition = {"IfMatch": version} if exists else {"IfNoneMatch": "*"}
        try:
            return self.storage.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
        except (FileExistsError, FileNotFoundError) as e:
            raise _Conflict(str(e)) from e
        except OSError as e:
            if "pre-condition" in str(e) or "Precondition" in str(e):
                raise _Conflict(str(e)) from e
            raise StorageError(
                f"cannot write {self.storage.url(LEASE_FILE)} on {self.storage.describe_endpoint()}: {e}"
            ) from e

    def delete(self, version: str | None) -> None:
        if not self.s3:
            self.storage.remove(LEASE_FILE)
            return
        bucket, key = self.storage.path(LEASE_FILE).split("/", 1)
        with contextlib.suppress(OSError):  # changed meanwhile (taken over): not ours to delete
            self.storage.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Local disk: an exclusive file lock around read-decide-write; elsewhere the CAS does the work."""
        if self.storage.protocol != "file":
            yield
            return
        os.makedirs(self.storage.root, exist_ok=True)
        with filelock.FileLock(self.storage.path(LOCK_FILE)):
            yield


# -- the lease ------------------------------------------------------------------------------------------
class Lease:
    """A held lease: renews its heartbeat in a daemon thread until ``release``."""

    def __init__(self, storage: RunStorage, command: str, timeout_s: float) -> None:
        self.store, self.timeout_s = _Store(storage), timeout_s
        now = time.time()
        self.body = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": now,
            "heartbeat": now,
            "command": command,
            "token": uuid.uuid4().hex,
        }
        self.version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.store.storage.url(LEASE_FILE)

    def acquire(self) -> None:
        for _ in range(5):  # a lost CAS race: read again and decide again
            with self.store.locked():
                current, version = self.store.read()
                now = time.time()
                decision = decide(
                    current,
                    token=self.body["token"],
                    now=now,
                    timeout_s=self.timeout_s,
                    host=self.body["host"],
                    pid_alive=pid_alive,
                )
                if decision is Decision.REFUSE:
                    raise LeaseHeldError(
                        f"{self.store.storage.url()} is in use by another driver: {describe(current, now)}; "
                        f"wait for it to finish (its lease {self.url} is taken over once its "
                        f"heartbeat is {self.timeout_s:.0f} s old)"
                    )
                try:
                    self.body["started"] = self.body["heartbeat"] = now
                    self.version = self.store.write(self.body, version, exists=current is not None)
                except _Conflict:
                    continue
            if decision is Decision.TAKE_OVER:
                log.warning("took over the lease of %s from a dead driver: %s", self.url, describe(current, now))
            self._thread = threading.Thread(target=self._heartbeat, name="spectral-lease", daemon=True)
            self._thread.start()
            return
        raise LeaseHeldError(f"{self.url}: another driver keeps changing the lease; try again")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timeout_s / HEARTBEATS_PER_TIMEOUT):
            try:
                with self.store.locked():
                    current, version = self.store.read()
                    if current is None or current.get("token") != self.body["token"]:
                        log.error(
                            "lost the lease of %s to %s; stopped renewing it",
                            self.url,
                            describe(current) if current else "nobody (it was removed)",
                        )
                        return
                    self.body["heartbeat"] = time.time()
                    self.version = self.store.write(self.body, version, exists=True)
            except _Conflict:
                continue  # changed under us; the next beat reads it again
            except Exception as e:  # storage hiccup: keep trying, the timeout has room for a few misses
                log.warning("lease heartbeat of %s failed: %s", self.url, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self.store.locked():
                current, version = self.store.read()
                if current is not None and current.get("token") == self.body["token"]:
                    self.store.delete(version)
        except Exception as e:  # never mask the step's own outcome; a stale lease is taken over later
            log.warning("could not release the lease %s: %s", self.url, e)


_held: dict[str, tuple[Lease, int]] = {}  # run URL -> (lease, depth): run() calls split(), train(), ...
_held_lock = threading.Lock()


def command_line(argv: list[str] | None = None) -> str:
    """What the lease names as its holder: the CLI's command line (secrets masked), or the Python program."""
    argv = sys.argv if argv is None else argv
    args = [re.sub(SECRET_ARG, r"\1=***", a) for a in argv[1:]]
    return " ".join(
        [
            "spectral"
            if argv[0].endswith(("spectral", "cli.py", "orchestrator/__main__.py"))
            else os.path.basename(argv[0] or "python"),
            *args,
        ]
    )


@contextlib.contextmanager
def hold_lease(
    storage: RunStorage, command: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[Lease]:
    """Hold ``<run>/lease.json`` for the block; re-entrant within a process (a step calling steps)."""
    key = storage.url()
    with _held_lock:
        if key in _held:
            lease, depth = _held[key]
            _held[key] = (lease, depth + 1)
        else:
            lease = Lease(storage, command or command_line(), timeout_s)
            lease.acquire()
            _held[key] = (lease, 1)
    try:
        yield lease
    finally:
        with _held_lock:
            lease, depth = _held[key]
            if depth > 1:
                _held[key] = (lease, depth - 1)
            else:
                del _held[key]
                lease.release()
