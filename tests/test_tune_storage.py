"""tune.storage: the filesystem Tune and Ray Train write under the run pickles without the config's credentials.

Tune cloudpickles it (hex-encoded) into ``experiment_state-*.json`` under the run; a process that unpickles it
fetches the credentials from the driver's in-memory broker actor.
"""

from __future__ import annotations

import base64
import uuid

import pyarrow.fs
from ray import cloudpickle

from conftest import wait_until
from data_split import RunStorage
from tune.storage import BROKER_PREFIX, RunHandler, credentials_broker, tune_location

KEY_ID, SECRET = f"CFGKEY{uuid.uuid4().hex[:8]}", f"cfgsecret{uuid.uuid4().hex[:8]}"


def encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw)]


def test_tune_filesystem_pickles_without_credentials_and_gets_them_back_from_the_broker(ray_session, s3_endpoint):
    storage = RunStorage(f"s3://test-bucket/tunefs-{uuid.uuid4().hex[:8]}", s3_endpoint, credentials=(KEY_ID, SECRET))
    storage.write_bytes("tune/x.txt", b"hello")
    path, filesystem = tune_location(storage, "tune")
    assert isinstance(filesystem, pyarrow.fs.PyFileSystem)

    @ray_session.remote(num_cpus=0)
    def read_in_a_worker(fs, path: str) -> tuple[bytes, tuple[str, str] | None]:
        with fs.open_input_file(f"{path}/x.txt") as f:
            data = f.read()
        return data, fs.handler._storage.credentials

    def brokers() -> list[str]:
        return [
            a["name"]
            for a in ray_session.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(BROKER_PREFIX)
        ]

    with credentials_broker(storage):  # as around Tune's and Ray Train's fit()
        blob = cloudpickle.dumps(filesystem)  # what Tune writes into its experiment state
        assert not any(e in blob or e in blob.hex().encode() for value in (KEY_ID, SECRET) for e in encodings(value))
        data, credentials = ray_session.get(read_in_a_worker.remote(filesystem, path))
        assert data == b"hello" and tuple(credentials) == (KEY_ID, SECRET)  # the broker's, not the environment's
        assert len(brokers()) == 1
    wait_until(lambda: brokers() == [], timeout_s=60, what="the broker ended with the run")  # ray.kill is async

    public = RunStorage(storage.uri, s3_endpoint)  # credentials from the AWS chain: nothing to broker
    with credentials_broker(public):
        assert brokers() == [] and cloudpickle.loads(cloudpickle.dumps(RunHandler(public)))._broker is None
