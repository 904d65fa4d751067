"""Data locality on a two-node Ray cluster: an extra source is read only where its custom resource is.

The session's two-node cluster (``conftest.two_node_cluster``: ``ray start`` with private ports and
temp dirs): a head and a second node that alone has the custom resource ``site_b``. A driver process
joins the cluster and splits site A (the main source, no resources) plus site B (``extra_sources[0]`` with ``resources:
{site_b: 1}``). The manifest's ``sources[i].nodes`` (node ids recorded by the read tasks themselves)
must name only the second node for site B; site A may be read anywhere in the cluster. A source
asking for a resource that no node has fails at once, before any task is submitted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fixtures_formats import write_mnist_files
from ray_cluster import ray_env

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent("""
    import json, sys, time
    import ray
    from data_split import ExtraSourceConfig, RunStorage, SourceConfig, SplitConfig, split_dataset
    address, a, b, run, resource = sys.argv[1:]
    ray.init(address=address, log_to_driver=False)
    deadline = time.monotonic() + 60  # both nodes registered (ray start returns as the second one joins)
    while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    nodes = {n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]}
    t0 = time.monotonic()
    try:
        result = split_dataset(SourceConfig(name="mnist", root=a), SplitConfig(rows=2, cols=2, images_per_task=20),
                               RunStorage(run), extra_sources=[ExtraSourceConfig(name="mnist", root=b,
                                                                                  resources={resource: 1})])
        out = {"sources": result.manifest.to_json()["sources"]}
    except ValueError as e:
        out = {"error": str(e)}
    print("RESULT " + json.dumps({**out, "nodes": nodes, "seconds": time.monotonic() - t0}))
""")


def _drive(address: str, a, b, run, resource: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, address, str(a), str(b), str(run), resource],
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("sites")
    a = {
        "train": (rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), rng.integers(0, 10, 60).astype(np.uint8)),
        "test": (rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), rng.integers(0, 10, 20).astype(np.uint8)),
    }
    b = {
        "train": (rng.integers(0, 256, (80, 4, 4), dtype=np.uint8), rng.integers(0, 10, 80).astype(np.uint8)),
        "test": (np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.uint8)),
    }
    write_mnist_files(root / "a", a, gz=False)
    write_mnist_files(root / "b", b, gz=False)
    return root


def test_extra_source_is_read_only_on_the_node_with_its_resource(two_node_cluster, sites, tmp_path):
    out = _drive(two_node_cluster.address, sites / "a", sites / "b", tmp_path / "run", "site_b")
    assert len(out["nodes"]) == 2, out["nodes"]
    assert "error" not in out, out["error"]
    (site_b_node,) = [n for n, res in out["nodes"].items() if "site_b" in res]
    main, extra = out["sources"]
    assert extra["resources"] == {"site_b": 1.0}
    assert extra["nodes"] == [site_b_node]  # all 4 read tasks of site B ran there
    assert main["nodes"] and set(main["nodes"]) <= set(out["nodes"])  # site A: anywhere in the cluster


def test_resource_no_node_has_fails_within_seconds(two_node_cluster, sites, tmp_path):
    out = _drive(two_node_cluster.address, sites / "a", sites / "b", tmp_path / "run", "site_c")
    assert "site_c" in out["error"] and "extra_sources[0]" in out["error"] and "site_b" in out["error"]
    assert out["seconds"] < 10  # a check of the cluster's resources, not a wait on a pending task
    assert not (tmp_path / "run").exists()
