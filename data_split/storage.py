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

S3 credentials come from ``credentials`` (the config's ``storage.access_key_id``
/ ``secret_access_key``) or else the standard AWS chain (environment, config
files, instance profile); the endpoint from ``endpoint_url`` or
``AWS_ENDPOINT_URL``. Credentials are never logged, written or repr'd.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from data_split.errors import SpectralError

log = logging.getLogger(__name__)

S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 60
S3_MAX_ATTEMPTS = 3  # botocore attempts per request, before the error reaches us
S3FS_RETRIES = 2  # s3fs attempts per call (each of them up to S3_MAX_ATTEMPTS botocore attempts)
DEFAULT_RETRY_BUDGET_S = 120.0  # how long one call keeps retrying through an outage of a remote store
RETRY_FIRST_DELAY_S = 0.25  # backoff: 0.25, 0.5, 1, 2, 4, 5, 5, ... s (times a random 0.5-1 jitter)
RETRY_MAX_DELAY_S = 5.0
_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EHOSTUNREACH, errno.ENETUNREACH}
_TRANSIENT_WORDS = ("Could not connect", "Connection was closed", "timed out", "Read timeout", "SlowDown",
                    "Service Unavailable", "ServiceUnavailable", "InternalError", "Please reduce your request rate")


class StorageError(SpectralError, RuntimeError):
    """The run URI cannot be read or written; the message names the URI or endpoint."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` from a remote store may go away by itself (an outage), as opposed to a real answer."""
    if isinstance(error, _NOT_TRANSIENT):
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
        # Ship the URI, not a live filesystem (its connections don't survive pickling).
        return {"uri": self.uri, "endpoint_url": self.endpoint_url, "retry_budget_s": self.retry_budget_s,
                "credentials": self.credentials}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "uri", state["uri"])
        object.__setattr__(self, "endpoint_url", state["endpoint_url"])
        object.__setattr__(self, "retry_budget_s", state.get("retry_budget_s", DEFAULT_RETRY_BUDGET_S))
        object.__setattr__(self, "credentials", state.get("credentials"))
        object.__setattr__(self, "_fs", None)

    def _retrying(self, what: str, call):
        """``call()``, retried with backoff through transient failures for up to ``retry_budget_s`` (remote only)."""
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
                if elapsed + delay > self.retry_budget_s:
                    raise StorageError(f"cannot {what} on {self.describe_endpoint()}: still failing after {attempt} "
                                       f"attempt(s) over {elapsed:.1f} s (storage.retry_budget_s = "
                                       f"{self.retry_budget_s:g}): {e!r}") from e
                log.warning("%s on %s failed (%s); retry %d in %.1f s", what, self.describe_endpoint(),
                            type(e).__name__, attempt, delay)
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
        p = self.path(*parts)
        return p if self.protocol == "file" else f"{self.protocol}://{p}"

    def at(self, uri: str) -> RunStorage:
        """The same store and settings (endpoint, retry budget, credentials) at another URI."""
        return RunStorage(uri, self.endpoint_url, self.retry_budget_s, self.credentials)

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
                self._retrying(f"write {self.url(rel)}", lambda: self.fs.pipe_file(target, data))
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
            return self._retrying(f"read {self.url(rel)}", lambda: self.fs.cat_file(self.path(rel)))
        except (FileNotFoundError, StorageError):
            raise
        except Exception as e:
            raise StorageError(f"cannot read {self.url(rel)} on {self.describe_endpoint()}: {e!r}") from e

    def open_read(self, rel: str):
        """A seekable binary file object of ``rel`` (ranged reads: a streaming branch reads one row group at a time)."""
        try:
            return self.fs.open(self.path(rel), "rb")
        except FileNotFoundError:
            raise
        except Exception as e:
            raise StorageError(f"cannot open {self.url(rel)} on {self.describe_endpoint()}: {e!r}") from e

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise StorageError(f"{self.url(rel)} is not valid JSON: {e}") from e

    def exists(self, rel: str) -> bool:
        try:
            return self._retrying(f"look up {self.url(rel)}", lambda: self.fs.exists(self.path(rel)))
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(f"cannot reach {self.describe_endpoint()}: {e!r}") from e

    def ls(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty when it does not exist."""
        try:
            entries = self._retrying(f"list {self.url(rel)}", lambda: self.fs.ls(self.path(rel), detail=False))
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def size(self, rel: str) -> int:
        return int(self._retrying(f"stat {self.url(rel)}", lambda: self.fs.size(self.path(rel))))

    def remove(self, rel: str) -> None:
        """Remove ``rel`` and everything under it; a missing path is not an error."""
        if self.exists(rel):
            try:
                self._retrying(f"remove {self.url(rel)}", lambda: self.fs.rm(self.path(rel), recursive=True))
            except FileNotFoundError:
                pass  # removed by an earlier attempt whose answer was lost
            self.fs.invalidate_cache()

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
