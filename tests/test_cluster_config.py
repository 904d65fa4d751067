"""cluster.yaml and the on-premises example, validated offline by Ray's own cluster-config code.

``prepare_config`` (fills Ray's defaults for the provider, merges setup commands, checks Docker and
the node types' min/max) then ``validate_config`` (Ray's JSON schema plus its own checks): what
``ray up`` runs before it contacts anything. ``bootstrap_config`` is never called: it talks to AWS.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import click
import pytest
import tomllib
import yaml

ray = pytest.importorskip("ray")
jsonschema = pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402  (private: Ray is pinned)

REPO = Path(__file__).resolve().parents[1]
AWS = REPO / "cluster.yaml"
ON_PREM = REPO / "configs" / "cluster_local.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def validated(config: dict) -> dict:
    """What `ray up` does to a config before it touches a node (minus the provider's bootstrap)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", [AWS, ON_PREM], ids=["aws", "on-prem"])
def test_cluster_config_passes_rays_validator(path):
    prepared = validated(load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_aws_config_has_a_cpu_head_and_one_gpu_per_worker():
    prepared = validated(load(AWS))
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    (worker_name,) = [name for name in types if name != prepared["head_node_type"]]
    worker = types[worker_name]
    assert worker["resources"]["GPU"] == 1
    assert 1 <= worker["min_workers"] <= worker["max_workers"] <= prepared["max_workers"]
    for node_type in (head, worker):  # S3 access comes from an instance profile, never from keys on disk
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")


def test_aws_images_pin_the_installed_ray():
    docker = load(AWS)["docker"]
    major_minor = ".".join(ray.__version__.split(".")[:2])
    for key in ("head_image", "worker_image"):
        match = re.fullmatch(r"rayproject/ray:(\d+\.\d+)\.\d+-py311(-gpu)?", docker[key])
        assert match, docker[key]
        assert match.group(1) == major_minor, f"{key} {docker[key]} but pyproject pins Ray {ray.__version__}"
    assert docker["worker_image"].endswith("-gpu") and not docker["head_image"].endswith("-gpu")


@pytest.mark.parametrize("path", [AWS, ON_PREM], ids=["aws", "on-prem"])
def test_every_node_gets_the_project_installed(path):
    config = load(path)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    mounted = {Path(local).as_posix(): remote for remote, local in config["file_mounts"].items()}
    needed = ["pyproject.toml", "README.md", *pyproject["tool"]["setuptools"]["packages"]]
    missing = [name for name in needed if name not in mounted]
    assert not missing, f"{path.name}: file_mounts lacks {missing}: the setup's pip install would break"
    for local in mounted:
        assert (REPO / local).exists(), f"{path.name}: file_mounts names {local}, which the repository lacks"
    project_dir = str(Path(mounted["pyproject.toml"]).parent)
    assert any("pip install" in cmd and project_dir in cmd for cmd in config["setup_commands"])


@pytest.mark.parametrize("path", [AWS, ON_PREM], ids=["aws", "on-prem"])
def test_every_section_says_what_it_is(path):
    # A section: top-level keys not separated by a blank line. Each needs a comment of its own.
    sections, current = [], None
    for line in path.read_text().splitlines():
        if not line.strip():
            current = None
            continue
        if current is None:
            current = {"keys": [], "comment": False}
            sections.append(current)
        if line.lstrip().startswith("#") or " #" in line:
            current["comment"] = True
        if re.match(r"^[a-z_]+:", line):
            current["keys"].append(line.split(":")[0])
    bare = [s["keys"] for s in sections if s["keys"] and not s["comment"]]
    assert not bare, f"{path.name}: sections without a comment: {bare}"


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(
            lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"), id="node type without node_config"
        ),
        pytest.param(lambda c: c.update(head_node_type="gpu"), id="head_node_type not among the types"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9), id="min_workers above max_workers"
        ),
        pytest.param(lambda c: c["auth"].update(ssh_port=2222), id="unknown auth key"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), id="fractional node GPU"
        ),
    ],
)
def test_a_broken_config_fails_validation(breakage):
    config = load(AWS)
    breakage(config)
    with pytest.raises((ValueError, jsonschema.ValidationError, AssertionError)):
        validated(config)


def test_on_prem_example_without_head_ip_fails():
    config = load(ON_PREM)
    del config["provider"]["head_ip"]
    with pytest.raises(click.ClickException, match="head_ip"):  # Ray's cli_logger.abort
        validated(config)
