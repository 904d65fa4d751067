"""The placement plan, decided from fake cluster resources (no Ray)."""

import pytest

from orchestrator.config import ResourcesConfig
from orchestrator.placement import NodeResources, PlacementError, plan_placement


def nodes(*specs):
    return [NodeResources(f"n{i}", cpus, gpus) for i, (cpus, gpus) in enumerate(specs)]


def test_cpu_cluster_defaults_to_cpu_branches():
    plan = plan_placement(4, ResourcesConfig(), nodes((2, 0)))
    assert plan.gpus_per_branch == 0
    assert (plan.concurrent, plan.waves) == (2, 2)


def test_gpu_cluster_defaults_to_one_gpu_per_branch_and_queues_the_rest():
    plan = plan_placement(4, ResourcesConfig(), nodes((4, 0), (8, 1), (8, 1)))
    assert plan.gpus_per_branch == 1
    assert (plan.concurrent, plan.waves) == (2, 2)


def test_fractional_gpus_pack_branches_on_one_gpu():
    plan = plan_placement(4, ResourcesConfig(gpus_per_branch=0.25), nodes((16, 1)))
    assert (plan.concurrent, plan.waves) == (4, 1)
    # 0.3 GPU fits three times on one GPU, not four
    plan = plan_placement(4, ResourcesConfig(gpus_per_branch=0.3), nodes((16, 1)))
    assert (plan.concurrent, plan.waves) == (3, 2)


def test_cpus_bound_concurrency_too():
    plan = plan_placement(16, ResourcesConfig(gpus_per_branch=0.25, cpus_per_branch=2), nodes((4, 1)))
    assert plan.concurrent == 2


def test_request_no_node_can_hold_is_an_error_naming_the_keys():
    with pytest.raises(PlacementError, match="gpus_per_branch"):
        plan_placement(4, ResourcesConfig(gpus_per_branch=2), nodes((8, 1), (8, 1)))
    with pytest.raises(PlacementError, match="4 CPU"):
        plan_placement(4, ResourcesConfig(cpus_per_branch=4), nodes((2, 0)))
