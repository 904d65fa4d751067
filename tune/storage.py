"""Where Tune keeps its experiments: under the run, on whatever filesystem the run lives on.

Tune takes a ``storage_path`` plus an optional pyarrow filesystem. A local run passes its
absolute path (Tune trials run with another working directory, so a relative ``./runs/x``
would point elsewhere inside them); any other fsspec protocol (``s3://`` on a loopback
endpoint in tests) passes the path without its scheme plus the run's own fsspec filesystem
wrapped for pyarrow, so the endpoint and credentials are the run's, never a second config.
"""

from __future__ import annotations

import pyarrow.fs

from data_split.storage import RunStorage

EXPERIMENT_NAME = "experiment"  # Tune's experiment folder under each tune/<what>/ folder


def absolute(storage: RunStorage) -> RunStorage:
    """The same run with a URI that means the same thing in any working directory."""
    return storage.at(storage.root) if storage.protocol == "file" else storage


def tune_location(storage: RunStorage, rel: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """(storage_path, storage_filesystem) for a Tune RunConfig writing under ``<run>/<rel>``."""
    path = storage.path(rel)
    if storage.protocol == "file":
        return path, None
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(storage.fs))


def short_trial_dirname(trial) -> str:
    """``trial_<id>``: Tune's default name lists every parameter (16 weights make it too long for a path)."""
    return f"trial_{trial.trial_id}"
