"""Where Tune and Ray Train keep their experiments: under the run, on whatever filesystem the run lives on.

Tune takes a ``storage_path`` plus an optional pyarrow filesystem. A local run passes its
absolute path (Tune trials run with another working directory, so a relative ``./runs/x``
would point elsewhere inside them); any other fsspec protocol (``s3://`` on a loopback
endpoint in tests) passes the path without its scheme plus the run's own fsspec filesystem
wrapped for pyarrow, so the endpoint and credentials are the run's, never a second config.

Credentials and Tune's experiment state: Tune cloudpickles every trial's storage context, filesystem
included, into ``experiment_state-*.json`` under the run, and an fsspec S3 filesystem pickles with its
key and secret. So the wrapper (``RunHandler``) pickles without them when the run's credentials come
from the config: a process that unpickles it (a trial, Ray Train's controller and workers) fetches them
on first use from ``CredentialBroker``, an actor of the driver's job that holds them in memory only and
ends with the driver. Credentials from the AWS chain are never in the filesystem's pickle to begin with.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid

import pyarrow.fs

from data_split.storage import RunStorage

EXPERIMENT_NAME = "experiment"  # Tune's experiment folder under each tune/<what>/ folder
BROKER_PREFIX = "spectral-credentials-"

_brokers: dict[tuple[str, str], tuple[object, str]] = {}  # credentials -> (actor handle, name), this driver's
_brokers_lock = threading.Lock()


def absolute(storage: RunStorage) -> RunStorage:
    """The same run with a URI that means the same thing in any working directory."""
    return storage.at(storage.root) if storage.protocol == "file" else storage


def tune_location(storage: RunStorage, rel: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """(storage_path, storage_filesystem) for a Tune or Train RunConfig writing under ``<run>/<rel>``."""
    path = storage.path(rel)
    if storage.protocol == "file":
        return path, None
    return path, pyarrow.fs.PyFileSystem(RunHandler(storage))


def _broker_name(credentials: tuple[str, str]) -> str:
    """The name of this driver's broker of ``credentials`` (started on first use; it lives as long as the driver)."""
    import ray

    with _brokers_lock:
        if credentials not in _brokers:
            name = BROKER_PREFIX + uuid.uuid4().hex
            actor = ray.remote(num_cpus=0)(CredentialBroker).options(name=name).remote(credentials)
            _brokers[credentials] = (actor, name)
        return _brokers[credentials][1]


class CredentialBroker:
    """Holds the run's credentials in memory for the processes of this job (a Ray actor of the driver)."""

    def __init__(self, credentials: tuple[str, str]) -> None:
        self._credentials = credentials

    def get(self) -> tuple[str, str]:
        return self._credentials

    def __repr__(self) -> str:  # Ray logs actor reprs
        return "CredentialBroker()"


class RunHandler(pyarrow.fs.FSSpecHandler):
    """pyarrow's view of the run's fsspec filesystem, pickled without the credentials (see the module docstring)."""

    def __init__(self, storage: RunStorage, broker: str | None = None) -> None:  # no super().__init__: fs is a property
        self._storage = storage
        self._broker = broker if broker is not None or not storage.credentials else _broker_name(storage.credentials)

    @property
    def fs(self):
        if self._broker is not None and self._storage.credentials is None:  # unpickled: ask the driver's broker
            import ray

            credentials = ray.get(ray.get_actor(self._broker).get.remote())
            self._storage = dataclasses.replace(self._storage, credentials=tuple(credentials))
        return self._storage.fs

    def __reduce__(self):
        return RunHandler, (dataclasses.replace(self._storage, credentials=None), self._broker)

    def __eq__(self, other) -> bool:
        return isinstance(other, RunHandler) and other._storage.uri == self._storage.uri

    def get_type_name(self) -> str:
        return f"fsspec+{self._storage.protocol}"  # FSSpecHandler's name, without building the filesystem


def short_trial_dirname(trial) -> str:
    """``trial_<id>``: Tune's default name lists every parameter (16 weights make it too long for a path)."""
    return f"trial_{trial.trial_id}"
