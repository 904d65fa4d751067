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
on first use from ``CredentialBroker``, an actor that holds them in memory only, for as long as the run
lasts (``with credentials_broker(storage): ... fit()``). Credentials from the AWS chain are never in the
filesystem's pickle to begin with. A Tune restore replaces the stored filesystems with the new run's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import uuid
from collections.abc import Iterator

import pyarrow.fs

from data_split.storage import RunStorage

EXPERIMENT_NAME = "experiment"  # Tune's experiment folder under each tune/<what>/ folder
BROKER_PREFIX = "spectral-credentials-"

# credentials -> (broker's name, its handle, open scopes), this driver's. The handle keeps the actor alive:
# Ray ends an actor whose last handle is gone.
_brokers: dict[tuple[str, str], tuple[str, object, int]] = {}
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


@contextlib.contextmanager
def credentials_broker(storage: RunStorage) -> Iterator[None]:
    """Around a Tune or Ray Train run on ``storage``: the broker of its config credentials, killed at the end
    (nothing to broker for a local run or credentials from the AWS chain). Re-entrant."""
    credentials = storage.credentials if storage.protocol != "file" else None
    if not credentials:
        yield
        return
    import ray

    with _brokers_lock:
        name, actor, scopes = _brokers.get(credentials, (None, None, 0))
        if name is None:
            name = BROKER_PREFIX + uuid.uuid4().hex
            actor = ray.remote(num_cpus=0)(CredentialBroker).options(name=name).remote(credentials)
        _brokers[credentials] = (name, actor, scopes + 1)
    try:
        yield
    finally:
        with _brokers_lock:
            name, actor, scopes = _brokers.pop(credentials)
            if scopes > 1:
                _brokers[credentials] = (name, actor, scopes - 1)
            else:
                ray.kill(actor)


def _active_broker(credentials: tuple[str, str] | None) -> str | None:
    """The open broker of ``credentials``; None outside ``credentials_broker`` (a copy pickled then, such as
    the Tuner's own state at its construction, is replaced when it is restored, never used)."""
    with _brokers_lock:
        return _brokers[credentials][0] if credentials in _brokers else None


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
        self._broker = broker  # set on an unpickled copy: where its credentials come from

    @property
    def fs(self):
        if self._broker is not None and self._storage.credentials is None:  # unpickled: ask the driver's broker
            import ray

            credentials = ray.get(ray.get_actor(self._broker).get.remote())
            self._storage = dataclasses.replace(self._storage, credentials=tuple(credentials))
        return self._storage.fs

    def __reduce__(self):
        broker = self._broker or _active_broker(self._storage.credentials)
        return RunHandler, (dataclasses.replace(self._storage, credentials=None), broker)

    def __eq__(self, other) -> bool:
        return isinstance(other, RunHandler) and other._storage.uri == self._storage.uri

    def get_type_name(self) -> str:
        return f"fsspec+{self._storage.protocol}"  # FSSpecHandler's name, without building the filesystem


def short_trial_dirname(trial) -> str:
    """``trial_<id>``: Tune's default name lists every parameter (16 weights make it too long for a path)."""
    return f"trial_{trial.trial_id}"
