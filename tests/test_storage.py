"""data_split.storage: atomic writes, reads, and clear errors for unwritable paths, dead endpoints, missing buckets."""

from __future__ import annotations

import os
import pickle
import socket
import time
import uuid

import pytest

from data_split import SourceConfig, SplitConfig, SyntheticConfig
from data_split.pipeline import MANIFEST, split_dataset
from data_split.storage import RunStorage, StorageError

DEAD_ENDPOINT_BOUND_S = 60  # an unreachable endpoint must fail within this (it takes a few seconds)

TINY_SOURCE = SourceConfig(name="synthetic", synthetic=SyntheticConfig(train=20, test=5, height=4, width=4))


@pytest.fixture
def closed_port():
    """A port that refuses connections for the whole test: bound by us, never listening (nobody else can take it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# -- local ------------------------------------------------------------------------------------------
def test_local_write_read_roundtrip(tmp_path):
    st = RunStorage(str(tmp_path / "run"))
    assert st.protocol == "file"
    st.write_bytes("a/b/c.bin", b"\x00\x01")
    assert (tmp_path / "run" / "a" / "b" / "c.bin").read_bytes() == b"\x00\x01"
    assert st.read_bytes("a/b/c.bin") == b"\x00\x01"
    assert st.exists("a/b/c.bin") and not st.exists("a/b/d.bin")
    assert st.size("a/b/c.bin") == 2
    st.write_json("m.json", {"k": [1, 2]})
    assert st.read_json("m.json") == {"k": [1, 2]}
    st.write_text("t.txt", "hi")
    assert st.read_bytes("t.txt") == b"hi"
    assert st.ls("") == ["a", "m.json", "t.txt"]
    assert st.ls("missing") == []
    st.append_line("log.jsonl", "one")
    st.append_line("log.jsonl", "two\n")
    assert st.read_bytes("log.jsonl") == b"one\ntwo\n"
    st.remove("a")
    assert not (tmp_path / "run" / "a").exists()
    st.remove("a")  # missing: not an error
    with pytest.raises(FileNotFoundError):
        st.read_bytes("nope")
    # No temporary files left behind by the atomic writes.
    assert not [p for p in (tmp_path / "run").rglob(".*")]


def test_file_uri_and_paths(tmp_path):
    st = RunStorage(f"file://{tmp_path}/run")
    st.write_bytes("x.bin", b"1")
    assert (tmp_path / "run" / "x.bin").read_bytes() == b"1"
    assert st.path("data", "manifest.json") == f"{tmp_path}/run/data/manifest.json"
    s3 = RunStorage("s3://bucket/prefix/", endpoint_url="http://127.0.0.1:1")
    assert s3.protocol == "s3"
    assert s3.url("data", "manifest.json") == "s3://bucket/prefix/data/manifest.json"
    assert "http://127.0.0.1:1" in s3.describe_endpoint()


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    st = RunStorage(str(tmp_path))
    st.write_bytes("f.bin", b"old")

    def crash(src, dst):
        raise OSError("disk pulled")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StorageError, match=r"f\.bin.*disk pulled"):
        st.write_bytes("f.bin", b"new contents")
    assert (tmp_path / "f.bin").read_bytes() == b"old"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temporary left


def test_pickle_ships_uri_not_filesystem(tmp_path):
    st = RunStorage(str(tmp_path), endpoint_url="http://e:1")
    st.write_bytes("x", b"1")  # creates the filesystem object
    assert st._fs is not None
    back = pickle.loads(pickle.dumps(st))
    assert (back.uri, back.endpoint_url, back._fs) == (str(tmp_path), "http://e:1", None)
    assert back.read_bytes("x") == b"1"


def test_read_json_invalid(tmp_path):
    st = RunStorage(str(tmp_path))
    st.write_text("bad.json", "{not json")
    with pytest.raises(StorageError, match=r"bad\.json.*not valid JSON"):
        st.read_json("bad.json")


def test_unwritable_uri(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file, not a folder")
    uri = str(blocker / "run")
    st = RunStorage(uri)
    with pytest.raises(StorageError, match=rf"{uri}"):
        st.check_writable()
    with pytest.raises(StorageError, match=rf"{uri}"):
        split_dataset(TINY_SOURCE, SplitConfig(), st)
    assert not os.path.exists(os.path.join(uri, MANIFEST))
    assert blocker.read_text() == "I am a file, not a folder"


def test_read_only_directory(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StorageError, match=str(ro)):
            RunStorage(str(ro / "run")).check_writable()
    finally:
        ro.chmod(0o700)


# -- S3 on loopback ------------------------------------------------------------------------------------
def test_s3_roundtrip(s3_endpoint):
    import boto3

    prefix = f"storage-{uuid.uuid4().hex[:8]}"
    st = RunStorage(f"s3://test-bucket/{prefix}", endpoint_url=s3_endpoint)
    st.check_writable()
    st.write_json("data/manifest.json", {"v": 1})
    st.write_bytes("data/train/branch=0/part-0.parquet", b"PAR1")
    assert st.read_json("data/manifest.json") == {"v": 1}
    assert st.exists("data/manifest.json") and not st.exists("data/nothing")
    assert st.ls("data") == ["manifest.json", "train"]
    keys = sorted(
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="test-bucket", Prefix=prefix)[
            "Contents"
        ]
    )
    assert keys == [f"{prefix}/data/manifest.json", f"{prefix}/data/train/branch=0/part-0.parquet"]  # no probe left
    st.remove("data")
    assert not st.exists("data/manifest.json")


def test_s3_endpoint_from_environment(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    st = RunStorage(f"s3://test-bucket/env-{uuid.uuid4().hex[:8]}")
    st.write_text("x.txt", "via env")
    assert st.read_bytes("x.txt") == b"via env"
    assert s3_endpoint in st.describe_endpoint()


def test_s3_endpoint_down(closed_port):
    endpoint = f"http://127.0.0.1:{closed_port}"
    st = RunStorage(f"s3://test-bucket/{uuid.uuid4().hex}", endpoint_url=endpoint)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"endpoint {endpoint}") as err:
        st.check_writable()
    elapsed = time.monotonic() - t0
    assert elapsed < DEAD_ENDPOINT_BOUND_S, f"took {elapsed:.1f}s to notice a dead endpoint"
    # Unreachable is not reported as "bucket does not exist".
    assert "does not exist" not in str(err.value)
    # Later calls retry through what may be an outage, for storage.retry_budget_s, then fail naming it.
    st = RunStorage("s3://test-bucket/run", endpoint_url=endpoint, retry_budget_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"{endpoint}.*retry_budget_s = 1"):
        st.exists("data/manifest.json")
    assert time.monotonic() - t0 < DEAD_ENDPOINT_BOUND_S


def test_split_to_dead_endpoint_writes_nothing(tmp_path, closed_port):
    endpoint = f"http://127.0.0.1:{closed_port}"
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=endpoint):
        split_dataset(
            TINY_SOURCE, SplitConfig(), RunStorage(f"s3://test-bucket/{uuid.uuid4().hex}", endpoint_url=endpoint)
        )
    assert time.monotonic() - t0 < DEAD_ENDPOINT_BOUND_S


def test_s3_missing_bucket(s3_endpoint):
    st = RunStorage("s3://no-such-bucket/run", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError, match=rf"bucket 'no-such-bucket' .*{s3_endpoint}.* does not exist"):
        st.check_writable()
    with pytest.raises(StorageError, match="no-such-bucket"):
        split_dataset(TINY_SOURCE, SplitConfig(), st)


def test_transient_errors_are_retried_with_backoff_others_raised_at_once(monkeypatch):
    import botocore.exceptions

    import data_split.storage as storage_mod

    monkeypatch.setattr(storage_mod, "RETRY_FIRST_DELAY_S", 0.01)
    st = RunStorage("s3://test-bucket/run", endpoint_url="http://127.0.0.1:9", retry_budget_s=30)
    calls = []

    class FlakyFS:  # refuses twice, then works
        def pipe_file(self, path, data):
            calls.append(path)
            if len(calls) <= 2:
                raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

        def cat_file(self, path):
            raise FileNotFoundError(path)  # a real answer: not retried

        def invalidate_cache(self):
            pass

        def _strip_protocol(self, uri):
            return uri.split("://", 1)[1]

    object.__setattr__(st, "_fs", FlakyFS())
    st.write_bytes("x.json", b"{}")
    assert len(calls) == 3
    with pytest.raises(FileNotFoundError):
        st.read_bytes("missing.json")
    assert storage_mod.is_transient(ConnectionRefusedError()) and not storage_mod.is_transient(PermissionError())


# -- one object, every read inside the budget --------------------------------------------------------------------
def test_one_object_from_the_config_carries_every_setting_to_workers_and_children():
    from data_split.config import StorageConfig

    cfg = StorageConfig(
        uri="s3://b/run",
        endpoint_url="http://e:1",
        retry_budget_s=7.0,
        access_key_id="KEYID1234",
        secret_access_key="SECRET1234",
    )
    st = RunStorage.from_config(cfg)
    assert (st.uri, st.endpoint_url, st.retry_budget_s, st.credentials) == (
        "s3://b/run",
        "http://e:1",
        7.0,
        ("KEYID1234", "SECRET1234"),
    )
    assert "SECRET1234" not in repr(st) and "KEYID1234" not in repr(st)
    for derived in (pickle.loads(pickle.dumps(st)), st.child("baseline"), st.at("s3://other/out")):
        assert (derived.endpoint_url, derived.retry_budget_s, derived.credentials) == (
            st.endpoint_url,
            7.0,
            st.credentials,
        )
    assert st.child("baseline").uri == "s3://b/run/baseline"


def test_retrying_gives_up_at_once_when_told_to_stop(monkeypatch):
    import threading

    import data_split.storage as storage_mod

    monkeypatch.setattr(storage_mod, "RETRY_FIRST_DELAY_S", 0.5)
    st = RunStorage("memory://stop", retry_budget_s=60)
    stop, calls = threading.Event(), []

    def refused():
        calls.append(time.monotonic())
        if len(calls) == 2:
            stop.set()  # the consumer went away during the outage
        raise ConnectionRefusedError("refused")

    t0 = time.monotonic()
    with pytest.raises(StorageError, match="still failing after 2 attempt"):
        st.retrying("read x", refused, stop=stop)
    assert time.monotonic() - t0 < 5  # not the 60 s budget
    assert not storage_mod.is_transient(StorageError("cannot read ...: Could not connect to the endpoint"))


def test_reads_retry_through_transient_failures_and_report_real_answers(monkeypatch):
    import data_split.storage as storage_mod

    monkeypatch.setattr(storage_mod, "RETRY_FIRST_DELAY_S", 0.01)
    st = RunStorage(f"memory://reads-{uuid.uuid4().hex[:8]}", retry_budget_s=30)
    st.write_bytes("a.bin", b"aaa")
    st.write_bytes("b.bin", b"bbb")
    failures = {"open": 2, "cat": 2}
    fs_open, fs_cat = st.fs.open, st.fs.cat_file

    def flaky(kind, real):
        def call(*args, **kwargs):
            if failures[kind]:
                failures[kind] -= 1
                raise ConnectionResetError(f"{kind} reset (injected)")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(st.fs, "open", flaky("open", fs_open))
    monkeypatch.setattr(st.fs, "cat_file", flaky("cat", fs_cat))
    with st.open_read("a.bin") as f:  # the open retried twice
        assert f.read() == b"aaa"
    assert st.read_with("b.bin", lambda f: f.read()) == b"bbb"
    # many files at once: a transient failure is retried for that file, a real answer is returned as itself
    monkeypatch.setattr(
        st.fs,
        "cat_ranges",
        lambda paths, *a, **kw: [ConnectionResetError("reset"), b"bbb", FileNotFoundError(paths[2])],
    )
    got = st.read_paths([st.path("a.bin"), st.path("b.bin"), st.path("gone.bin")])
    assert got[:2] == [b"aaa", b"bbb"] and isinstance(got[2], FileNotFoundError)
    assert failures == {"open": 0, "cat": 0}
