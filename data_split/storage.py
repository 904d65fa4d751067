"""Run storage: one fsspec URI (a path, ``file://``, ``s3://bucket/prefix``, ...).

Every write is atomic (docs/storage.md): on a local disk we write a hidden
temporary file beside the target and ``os.replace`` it; on object stores a
single PUT is already all-or-nothing (a PUT cut off mid-body creates nothing).
Readers therefore never see half a file. Hidden names start with ``.`` so that
Parquet readers skip leftovers of a crashed writer. Which file lives where is
``data_split.layout``.

Outages: on remote filesystems every call that fails for a transient reason
(connection refused or reset, timeouts, 5xx/throttling) is retried with
exponential backoff for up to ``retry_budget_s`` seconds; after that it fails
with ``StorageError`` naming the endpoint. Local disks are not retried.

Every read path is inside that loop too: ``read_bytes``, ``open_read``, ``read_with`` (open plus ranged
reads, retried together: a streaming branch's row groups) and ``read_paths`` (many files at once: predict's
images, an image folder's). The S3 client's own retries are kept small (``S3_MAX_ATTEMPTS``,
``S3FS_RETRIES``): the outer loop decides, and one of its attempts against a refused endpoint takes ~1.7 s
instead of ~5 s (``benchmarks/storage_retries.py``).

One object per run: ``RunStorage.from_config(cfg.storage)`` builds it once with the endpoint, the retry
budget and the credentials; ``child``/``at`` derive the baseline's, a trial's or an output's with the same
settings, and pickling carries all of them to Ray workers (in the task's arguments, never in a file).
S3 credentials come from ``credentials`` (the config's ``storage.access_key_id`` / ``secret_access_key``)
or else the standard AWS chain (environment, config files, instance profile); the endpoint from
``endpoint_url`` or ``AWS_ENDPOINT_URL``. Credentials are never logged, written or repr'd.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import posixpath
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from data_split.errors import SpectralError

if TYPE_CHECKING:
    from data_split.config import StorageConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound="RunStorage")

S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 60
# The client's own retries, under ``retrying``'s loop (benchmarks/storage_retries.py, loopback, refused port):
# botocore 3 x s3fs 2 took ~5 s per outer attempt (s3fs nests its loop twice in cat_file) and overshot a 2 s
# budget by ~3 s; 2 x 1 takes ~1.7 s and still catches a recovered endpoint within ~0.4 s (botocore's quick
# second attempt); 1 x 1 waits out the outer backoff instead (~2 s). The second botocore attempt also covers
# a dropped connection for the code that uses the filesystem without our loop (Ray Data's writers, Tune).
S3_MAX_ATTEMPTS = 2  # botocore attempts per request, before the error reaches us
S3FS_RETRIES = 1  # s3fs attempts per call: none of its own, every call of ours retries in ``retrying``
DEFAULT_RETRY_BUDGET_S = 120.0  # how long one call keeps retrying through an outage of a remote store
RETRY_FIRST_DELAY_S = 0.25  # backoff: 0.25, 0.5, 1, 2, 4, 5, 5, ... s (times a random 0.5-1 jitter)
RETRY_MAX_DELAY_S = 5.0
_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}
_TRANSIENT_WORDS = (
    "Could not connect",
    "Connection was closed",
    "timed out",
    "Read timeout",
    "SlowDown",
    "Service Unavailable",
    "ServiceUnavailable",
    "InternalError",
    "Please reduce your request rate",
)


class StorageError(SpectralError, RuntimeError):
    """The run URI cannot be read or written; the message names the URI or endpoint."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` from a remote store may go away by itself (an outage), as opposed to a real answer."""
    if isinstance(error, (StorageError, *_NOT_TRANSIENT)):  # a StorageError has spent its retry budget already
        return False
    if isinstance(error, (ConnectionError, TimeoutError)) or getattr(error, "errno", None) in _TRANSIENT_ERRNOS:
        return True
    try:
        import botocore.exceptions as boto

        if isinstance(error, (boto.ConnectionError, boto.HTTPClientError)):  # refused, closed, read/connect timeouts
            return True
    except ImportError:
        pass
    try:
        import aiohttp

        if isinstance(error, aiohttp.ClientConnectionError):
            return True
    except ImportError:
        pass
    return any(word in str(error) for word in _TRANSIENT_WORDS)


@dataclass(frozen=True)
class RunStorage:
    """Files of one run, addressed by paths relative to the run URI."""

    uri: str
    endpoint_url: str | None = None
    retry_budget_s: float = DEFAULT_RETRY_BUDGET_S  # remote stores: how long a call retries through an outage
    credentials: tuple[str, str] | None = field(default=None, repr=False)  # S3 (key, secret); None: the AWS chain
    _fs: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: StorageConfig) -> RunStorage:
        """The run of the config's ``storage`` section: its URI, endpoint, retry budget and credentials."""
        return cls(cfg.uri, cfg.endpoint_url, cfg.retry_budget_s, cfg.credentials)

    @classmethod
    def like(cls: type[S], other: RunStorage, **changes: Any) -> S:
        """``other``'s store and settings as a ``cls`` (a subclass that adds behaviour), with ``changes``."""
        settings = {f.name: getattr(other, f.name) for f in dataclasses.fields(RunStorage) if f.init}
        return cls(**{**settings, **changes})

    # -- filesystem -------------------------------------------------------------------------
    @property
    def protocol(self) -> str:
        return self.uri.split("://", 1)[0] if "://" in self.uri else "file"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            object.__setattr__(self, "_fs", self._make_fs())
        return self._fs

    def _make_fs(self) -> fsspec.AbstractFileSystem:
        options: dict[str, Any] = {}
        if self.protocol == "s3":
            endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
            options = {
                "client_kwargs": {"endpoint_url": endpoint} if endpoint else {},
                "config_kwargs": {
                    "connect_timeout": S3_CONNECT_TIMEOUT_S,
                    "read_timeout": S3_READ_TIMEOUT_S,
                    "retries": {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                },
                "skip_instance_cache": True,
            }
            if self.credentials:
                options["key"], options["secret"] = self.credentials
        fs, _ = fsspec.core.url_to_fs(self.uri, **options)
        if self.protocol == "s3":
            # s3fs's own retry loop on top of botocore's. A class attribute, not a constructor
            # option: passed to the constructor it reaches aiobotocore's session and every call fails.
            fs.retries = S3FS_RETRIES
        return fs

    def __getstate__(self) -> dict[str, Any]:
        # The settings (credentials included: they travel in the task's arguments, never to a file), not a
        # live filesystem, whose connections don't survive pickling. A subclass's own fields come along.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def retrying(self, what: str, call: Callable[[], T], *, stop: threading.Event | None = None) -> T:
        """``call()``, retried with backoff through transient failures for up to ``retry_budget_s`` (remote only).

        ``stop`` set (the reader's consumer is gone): give up at the next backoff instead of waiting it out.
        """
        if self.protocol == "file":
            return call()
        t0, attempt = time.monotonic(), 0
        while True:
            try:
                return call()
            except Exception as e:
                if not is_transient(e):
                    raise
                elapsed = time.monotonic() - t0
                delay = min(RETRY_MAX_DELAY_S, RETRY_FIRST_DELAY_S * 2**attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                if elapsed + delay > self.retry_budget_s or (stop is not None and stop.is_set()):
                    raise StorageError(
                        f"cannot {what} on {self.describe_endpoint()}: still failing after {attempt} "
                        f"attempt(s) over {elapsed:.1f} s (storage.retry_budget_s = "
                        f"{self.retry_budget_s:g}): {e!r}"
                    ) from e
                log.warning(
                    "%s on %s failed (%s); retry %d in %.1f s",
                    what,
                    self.describe_endpoint(),
                    type(e).__name__,
                    attempt,
                    delay,
                )
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
                self.fs.invalidate_cache()

    @property
    def root(self) -> str:
        """The run's root as a path of ``fs`` (no protocol)."""
        return self.fs._strip_protocol(self.uri).rstrip("/")

    def child(self, rel: str) -> RunStorage:
        """The run nested at ``rel`` under this one (the baseline, a sweep trial), same store and settings."""
        return self.at(f"{self.uri.rstrip('/')}/{rel.strip('/')}")

    def path(self, *parts: str) -> str:
        """Absolute ``fs`` path of ``parts`` under the run."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def url(self, *parts: str) -> str:
        """``parts`` as a URI a user can paste (protocol included)."""
        return self.url_of(self.path(*parts))

    def url_of(self, path: str) -> str:
        """An absolute ``fs`` path as a URI a user can paste."""
        return path if self.protocol == "file" else f"{self.protocol}://{path}"

    def at(self, uri: str) -> RunStorage:
        """The same store and settings (endpoint, retry budget, credentials) at another URI."""
        return RunStorage.like(self, uri=uri)

    def describe_endpoint(self) -> str:
        if self.protocol != "s3":
            return self.uri
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
        return f"{self.uri} (endpoint {endpoint})"

    # -- atomic writes --------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomically write ``data`` at ``rel`` (all of it, or nothing)."""
        target = self.path(rel)
        try:
            if isinstance(self.fs, LocalFileSystem):
                directory, name = posixpath.split(target)
                os.makedirs(directory, exist_ok=True)
                tmp = posixpath.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
            else:  # one PUT: atomic on object stores
                self.retrying(f"write {self.url(rel)}", lambda: self.fs.pipe_file(target, data))
        except StorageError:
            raise
        except OSError as e:
            raise StorageError(f"cannot write {self.url(rel)} on {self.describe_endpoint()}: {e}") from e
        except Exception as e:  # botocore/aiohttp errors do not derive from OSError
            raise StorageError(f"cannot write {self.url(rel)} on {self.describe_endpoint()}: {e!r}") from e

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def append_line(self, rel: str, line: str) -> None:
        """Append one line (read, extend, rewrite: atomic on every filesystem, O(file) per call)."""
        old = self.read_bytes(rel) if self.exists(rel) else b""
        self.write_bytes(rel, old + line.rstrip("\n").encode() + b"\n")

    # -- reads ----------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.retrying(f"read {self.url(rel)}", lambda: self.fs.cat_file(self.path(rel)))
        except (FileNotFoundError, StorageError):
            raise
        except Exception as e:
            raise StorageError(f"cannot read {self.url(rel)} on {self.describe_endpoint()}: {e!r}") from e

    def open_read(self, rel: str):
        """A seekable binary file object of ``rel``, opened within the retry budget.

        Reads through it are not retried: ``read_with`` retries an open and its reads together.
        """
        try:
            return self.retrying(f"open {self.url(rel)}", lambda: self.fs.open(self.path(rel), "rb"))
        except (FileNotFoundError, StorageError):
            raise
        except Exception as e:
            raise StorageError(f"cannot open {self.url(rel)} on {self.describe_endpoint()}: {e!r}") from e

    def read_with(self, rel: str, read: Callable[[Any], T], *, stop: threading.Event | None = None) -> T:
        """``read(f)`` on ``rel`` opened for ranged reads (a Parquet footer, a row group); the open and the
        reads are retried together, on a fresh file, through transient failures."""

        def attempt() -> T:
            with self.open_read(rel) as f:
                return read(f)

        return self.retrying(f"read {self.url(rel)}", attempt, stop=stop)

    def read_paths(self, paths: list[str]) -> list[bytes | Exception]:
        """The bytes of each absolute ``fs`` path (fetched concurrently on object stores), or the error that
        reading it met; transient failures are retried one by one within the budget, then ``StorageError``."""
        got = self.retrying(
            f"read {len(paths)} file(s) under {self.url()}",
            lambda: self.fs.cat_ranges(paths, None, None, on_error="return"),
        )
        out: list[bytes | Exception] = []
        for path, data in zip(paths, got):
            if isinstance(data, Exception) and is_transient(data):
                try:
                    data = self.retrying(f"read {self.url_of(path)}", lambda path=path: self.fs.cat_file(path))
                except StorageError:
                    raise
                except Exception as e:  # a real answer this time (gone, forbidden): the caller names the file
                    data = e
            out.append(data)
        return out

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise StorageError(f"{self.url(rel)} is not valid JSON: {e}") from e

    def exists(self, rel: str) -> bool:
        try:
            return self.retrying(f"look up {self.url(rel)}", lambda: self.fs.exists(self.path(rel)))
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(f"cannot reach {self.describe_endpoint()}: {e!r}") from e

    def ls(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty when it does not exist."""
        try:
            entries = self.retrying(f"list {self.url(rel)}", lambda: self.fs.ls(self.path(rel), detail=False))
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def size(self, rel: str) -> int:
        return int(self.retrying(f"stat {self.url(rel)}", lambda: self.fs.size(self.path(rel))))

    def remove(self, rel: str) -> None:
        """Remove ``rel`` and everything under it; a missing path is not an error."""
        if self.exists(rel):
            try:
                self.retrying(f"remove {self.url(rel)}", lambda: self.fs.rm(self.path(rel), recursive=True))
            except FileNotFoundError:
                pass  # removed by an earlier attempt whose answer was lost
            self.fs.invalidate_cache()

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (a rename on a local disk; copy then delete on object stores), retried."""

        def attempt() -> None:
            try:
                self.fs.mv(self.path(src), self.path(dst))
            except FileNotFoundError:
                if not self.fs.exists(self.path(dst)):  # else: moved by an earlier attempt whose answer was lost
                    raise
            self.fs.invalidate_cache()

        self.retrying(f"move {self.url(src)} to {self.url(dst)}", attempt)

    def check_writable(self) -> None:
        """Fail early, naming the URI/endpoint, when the run location cannot be written."""
        probe = f".probe-{uuid.uuid4().hex}"
        try:
            if self.protocol == "s3":
                # head_bucket, not fs.exists: exists() answers False for an unreachable endpoint too.
                bucket = self.root.split("/", 1)[0]
                try:
                    self.fs.call_s3("head_bucket", Bucket=bucket)
                except FileNotFoundError:
                    raise StorageError(f"bucket {bucket!r} of {self.describe_endpoint()} does not exist") from None
            self.write_bytes(probe, b"")
            self.fs.rm(self.path(probe))
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(f"cannot write to {self.describe_endpoint()}: {e!r}") from e
