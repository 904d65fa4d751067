"""Run storage: one fsspec URI (a path, ``file://``, ``s3://bucket/prefix``, ...).

Every write is atomic (DESIGN.md section 3): on a local disk we write a hidden
temporary file beside the target and ``os.replace`` it; on object stores a
single PUT is already all-or-nothing. Readers therefore never see half a file.
Hidden names start with ``.`` so that Parquet readers skip leftovers of a
crashed writer.

S3 credentials come from the standard AWS chain (environment, config files,
instance profile); the endpoint from ``endpoint_url`` or ``AWS_ENDPOINT_URL``.
Neither is ever logged.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 60
S3_MAX_ATTEMPTS = 3  # botocore attempts per request, before the error reaches us
S3FS_RETRIES = 2  # s3fs attempts per call (each of them up to S3_MAX_ATTEMPTS botocore attempts)


class StorageError(RuntimeError):
    """The run URI cannot be read or written; the message names the URI or endpoint."""


@dataclass(frozen=True)
class RunStorage:
    """Files of one run, addressed by paths relative to the run URI."""

    uri: str
    endpoint_url: str | None = None
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
        fs, _ = fsspec.core.url_to_fs(self.uri, **options)
        if self.protocol == "s3":
            # s3fs's own retry loop on top of botocore's. A class attribute, not a constructor
            # option: passed to the constructor it reaches aiobotocore's session and every call fails.
            fs.retries = S3FS_RETRIES
        return fs

    def __getstate__(self) -> dict[str, Any]:
        # Ship the URI, not a live filesystem (its connections don't survive pickling).
        return {"uri": self.uri, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "uri", state["uri"])
        object.__setattr__(self, "endpoint_url", state["endpoint_url"])
        object.__setattr__(self, "_fs", None)

    @property
    def root(self) -> str:
        """The run's root as a path of ``fs`` (no protocol)."""
        return self.fs._strip_protocol(self.uri).rstrip("/")

    def path(self, *parts: str) -> str:
        """Absolute ``fs`` path of ``parts`` under the run."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def url(self, *parts: str) -> str:
        """``parts`` as a URI a user can paste (protocol included)."""
        p = self.path(*parts)
        return p if self.protocol == "file" else f"{self.protocol}://{p}"

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
            else:
                self.fs.pipe_file(target, data)  # one PUT: atomic on object stores
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
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise
        except Exception as e:
            raise StorageError(f"cannot read {self.url(rel)} on {self.describe_endpoint()}: {e!r}") from e

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise StorageError(f"{self.url(rel)} is not valid JSON: {e}") from e

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.exists(self.path(rel))
        except Exception as e:
            raise StorageError(f"cannot reach {self.describe_endpoint()}: {e!r}") from e

    def ls(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty when it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def remove(self, rel: str) -> None:
        """Remove ``rel`` and everything under it; a missing path is not an error."""
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)
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
