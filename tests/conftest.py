"""Shared fixtures: one small local Ray per session, tiny synthetic splits, a real S3 endpoint on loopback."""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import random
import shutil
import socket
import tempfile
import time

import pytest

import leaks

# Fake credentials for the loopback S3 endpoint, set before Ray starts so its workers inherit them.
# Nothing in the tests talks to real AWS.
for _k, _v in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    # One OpenMP thread per process (torch's intra-op pool; train.threads still sets a branch's own): two
    # pytest-xdist workers, their CLIs and Ray workers on 2 cores, each with a pool of 2 spinning threads,
    # took twice the CPU (the unit tests: 202 core-s against 109, 112 s against 63 s wall).
    "OMP_NUM_THREADS": "1",
    # Ray Train starts a PreemptionWatcher actor (a process of its own, importing Ray Train) for every worker
    # group it starts, to checkpoint before a node is drained; no test drains a node.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}.items():
    os.environ.setdefault(_k, _v)
os.environ.pop("AWS_ENDPOINT_URL", None)
# pytest-xdist workers start with COLUMNS=80 (and LINES) in their environment; rich reads them once, when the CLI's
# consoles are created at import, and then ignores the COLUMNS a test sets: its tables and log lines wrapped at 80.
for _k in ("COLUMNS", "LINES"):
    os.environ.pop(_k, None)
leaks.mark_session()  # before anything starts: every process of this session carries its id (tests/leaks.py)
LEAKS = leaks.LeakCheck()
# Where tests ask branches to pause or exit at a known point (tests/holds.py, branches/_faults.py); inherited by
# Ray workers and CLIs.
os.environ["SPECTRAL_TEST_FAULTS_DIR"] = tempfile.mkdtemp(prefix="spectral-faults-")
atexit.register(shutil.rmtree, os.environ["SPECTRAL_TEST_FAULTS_DIR"], ignore_errors=True)


def pytest_configure(config):
    import suite_profile

    runs_tests = hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)
    if runs_tests:  # not pytest-xdist's controller, whose own children are the workers
        config.pluginmanager.register(LEAKS, "spectral-leak-check")
    if not hasattr(config, "workerinput"):  # one profile of the whole run, in the process that reports it
        suite_profile.register(config)  # on with SPECTRAL_SUITE_PROFILE=FILE.json: per-test wall, CPU, leftovers


# Tests that share an expensive session fixture run in one pytest-xdist worker (``--dist loadgroup``), so it
# is built once; every other test file is a group of its own (its module fixtures are built once too).
SHARED_FIXTURE_GROUPS = ("two_node_cluster", "finished_job", "trained_tiny_run")


def xdist_group(items) -> dict[str, str]:
    """Test file -> its pytest-xdist group: the first shared fixture any of its tests uses, else the file."""
    groups: dict[str, str] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        fixtures = getattr(item, "fixturenames", ())
        shared = next((name for name in SHARED_FIXTURE_GROUPS if name in fixtures), None)
        if shared or path not in groups:
            groups[path] = shared or groups.get(path) or path
    return groups


RAY_TEST_CPUS = 2
RAY_TEST_OBJECT_STORE_BYTES = 256 * 1024**2


def _ephemeral_start() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS_HANDED_OUT: set[int] = set()
_PORT_RNG = random.SystemRandom()


def free_port() -> int:
    """A port for a server we cannot hand a bound socket to (``ray start``): free now, and safe to reuse soon.

    Binding port 0 and closing gives an *ephemeral* port, which the kernel may hand to any outgoing
    connection (Ray opens many) before the server binds it. This picks a random port below the
    ephemeral range instead, where only an explicit bind can take it, checks it is free on every
    interface, and never hands the same port out twice in this process. It starts above Ray's default
    worker port range (10002-19999): `ray start` refuses a component port that lies inside it.
    """
    low, high = 20000, min(_ephemeral_start(), 32768)
    while True:
        port = _PORT_RNG.randrange(low, high)
        if port in _PORTS_HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _PORTS_HANDED_OUT.add(port)
        return port


def wait_until(condition, *, timeout_s: float, what: str, alive=None, detail=None, poll_s: float = 0.05):
    """``condition()``'s first truthy value: the tests' one way to wait on an event, never a bare sleep.

    Fails once ``timeout_s`` has passed, or at once when ``alive()`` turns False (the process under test
    ended first); ``detail()`` (a log's tail, say) is added to either failure.
    """
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        more = f"\n{detail()}" if detail else ""
        assert alive is None or alive(), f"the process under test ended before {what}{more}"
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting until {what}{more}"
        time.sleep(poll_s)
    return value


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by the session (starting one costs seconds on 2 cores)."""
    import ray
    from ray.data import DataContext

    with leaks.owned_by("ray_session"):  # its daemons and workers are shared, not the current test's
        ray.init(
            address="local",
            num_cpus=RAY_TEST_CPUS,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=RAY_TEST_OBJECT_STORE_BYTES,
        )
    LEAKS.hold("ray_session")
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    LEAKS.release("ray_session")


@pytest.fixture(scope="session")
def ray_address(ray_session) -> str:
    """The session Ray's GCS address: a CLI subprocess given it as ``RAY_ADDRESS`` joins that Ray (as under
    ``ray job submit``) instead of starting a local one, which costs ~5 s on 2 cores and, while another
    pytest-xdist worker keeps the cores busy, risks Ray's fixed 30 s wait for a new raylet."""
    return ray_session.get_runtime_context().gcs_address


# -- one two-node `ray start` cluster for the tests that only use one (locality, multinode: jobs, ray://) --
_shared_cluster = contextlib.ExitStack()
_last_cluster_test: str | None = None


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(config, items):
    global _last_cluster_test
    # A test that kills one of the shared cluster's nodes (marked ``breaks_shared_cluster``) is its last user.
    items.sort(key=lambda item: item.get_closest_marker("breaks_shared_cluster") is not None)  # stable
    groups = xdist_group(items)
    group_of = {item.nodeid: groups[item.nodeid.split("::", 1)[0]] for item in items}
    # The groups with the most end-to-end (``slow``) tests first: pytest-xdist (``--no-loadscope-reorder``) hands
    # groups out in this order, so the longest do not start last while the other worker idles. Stable: a
    # group's tests keep their order.
    slow = collections.Counter(group_of[item.nodeid] for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[group_of[item.nodeid]])
    users = [item.nodeid for item in items if "two_node_cluster" in getattr(item, "fixturenames", ())]
    _last_cluster_test = users[-1] if users else None
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of[item.nodeid]))


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    if item.nodeid == _last_cluster_test:  # stop it as soon as its last test is done, not at the session's end
        _shared_cluster.close()


@pytest.fixture(scope="session")
def two_node_cluster():
    """A head and a second node (``tests/ray_cluster.py``), shared by every test that uses one: starting and
    stopping one costs ~15 s on 2 cores. The node-loss test, marked ``breaks_shared_cluster``, kills its second
    node as its last user; the head declares a killed node dead within seconds (``FAST_NODE_DEATH``)."""
    from ray_cluster import FAST_NODE_DEATH, node_owner, start_two_node_cluster

    cluster = _shared_cluster.enter_context(start_two_node_cluster(FAST_NODE_DEATH))
    owners = [node_owner(d) for d in cluster.temp_dirs]
    for owner in owners:
        LEAKS.hold(owner)
    _shared_cluster.callback(lambda: [LEAKS.release(owner) for owner in owners])  # runs first: a LIFO stack
    yield cluster
    _shared_cluster.close()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server) with an empty bucket ``test-bucket``."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the OS picks and keeps the port
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="test-bucket")
    yield endpoint
    server.stop()


def tiny_config(storage_uri: str, **overrides):
    """A seconds-fast config: synthetic 8x8 images, 4 classes, sub4, fc4, 2 epochs."""
    from orchestrator.config import load_config

    base = {
        "source.name": "synthetic",
        "source.synthetic": {"train": 400, "test": 100, "height": 8, "width": 8, "classes": 4, "noise": 0.5},
        "split.rows": 2,
        "split.cols": 2,
        "split.images_per_task": 150,
        "model.name": "fc4",
        "train.epochs": 2,
        "train.batch_size": 64,
        "ensemble.weights": "uniform",  # the default, tuned, runs a Ray Tune search: tests ask for it by name
        "storage.uri": storage_uri,
        "ray.num_cpus": RAY_TEST_CPUS,
    }
    base.update(overrides)
    return load_config(None, base)


@pytest.fixture
def tiny_cfg(tmp_path):
    return tiny_config(str(tmp_path / "run"))


@pytest.fixture
def tiny_split(ray_session, tiny_cfg):
    """A written tiny split: (config, RunStorage)."""
    from data_split import RunStorage, split_dataset

    storage = RunStorage(tiny_cfg.storage.uri)
    split_dataset(tiny_cfg.source, tiny_cfg.split, storage)
    return tiny_cfg, storage


@pytest.fixture(scope="session")
def trained_tiny_run(ray_session, tmp_path_factory):
    """A finished tiny run (split, 4 branches trained 1 epoch, geometric weights chosen): its config.

    Session-scoped: the inference tests (model, export, predict, serve) only read it.
    """
    from branches import train_branch
    from data_split import RunStorage, split_dataset
    from orchestrator import api

    cfg = tiny_config(
        str(tmp_path_factory.mktemp("trained") / "run"),
        **{"train.epochs": 1, "ensemble.weights": "geometric", "source.limit": 200},
    )
    storage = RunStorage(cfg.storage.uri)
    split_dataset(cfg.source, cfg.split, storage)
    for k in range(cfg.split.k):  # in this process: four tiny branches train faster than four actors start
        train_branch(storage, k, cfg.model, cfg.train)
    api.ensemble(cfg)
    return cfg


@pytest.fixture(scope="session")
def finished_job(ray_session, tmp_path_factory):
    """One whole tiny job through ``api.run`` (split, 4 branch actors, tuned ensemble, report): (config, RunResult).

    Session-scoped and read-only: the orchestrator and tuned-weights tests check the same job (a test that
    needs to break it copies the run first).
    """
    from orchestrator import api

    cfg = tiny_config(
        str(tmp_path_factory.mktemp("job") / "run"),
        **{"ensemble.weights": "tuned", "tune.num_samples": 4, "tune.candidates_per_trial": 16},
    )
    return cfg, api.run(cfg)
