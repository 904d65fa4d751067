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


def test_packs_are_consecutive_equal_row_branches_and_placement_counts_packs():
    from orchestrator.placement import plan_packs

    rows = {k: 100 for k in range(8)}
    ok = dict.fromkeys(range(8), True)
    assert plan_packs(list(range(8)), 4, rows, ok) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan_packs([0, 1, 3, 4, 5], 4, rows, ok) == [[0, 1], [3, 4, 5]]  # only consecutive k (2 had finished)
    # an extra source feeds branch 0 only: it has more rows and trains alone; a streamed branch too
    assert plan_packs(list(range(6)), 4, {**rows, 0: 150}, {**ok, 4: False}) == [[0], [1, 2, 3], [4], [5]]
    packs = plan_packs(list(range(16)), 4, {k: 10 for k in range(16)}, dict.fromkeys(range(16), True))
    plan = plan_placement(16, ResourcesConfig(branches_per_process=4), nodes((2, 0)), packs)
    assert (plan.branches, plan.concurrent, plan.waves) == (4, 2, 2)  # 4 actors on 2 CPUs, not 16 branches
    assert plan.describe().startswith("4 packs [0,1,2,3] [4,5,6,7] [8,9,10,11] [12,13,14,15] x (CPU only, 1 CPU)")


def test_branches_per_process_is_validated():
    from data_split.errors import ConfigError

    for bad in (0, "many", True):
        with pytest.raises(ConfigError, match="branches_per_process"):
            ResourcesConfig(branches_per_process=bad)
    assert ResourcesConfig(branches_per_process="auto").branches_per_process == "auto"


def test_auto_packs_just_enough_for_every_branch_to_start_in_the_first_wave():
    from orchestrator.placement import pack_size

    auto = ResourcesConfig(branches_per_process="auto")
    assert pack_size(auto, 16, nodes((2, 0))) == 8  # 2 CPUs, 1 each: two packs of 8 side by side
    assert pack_size(auto, 4, nodes((2, 0))) == 2
    assert pack_size(auto, 4, nodes((4, 0), (4, 0))) == 1  # 8 processes fit: none is packed
    assert pack_size(auto, 9, nodes((2, 0), (2, 0))) == 3  # 4 slots: ceil(9 / 4)
    assert pack_size(auto, 16, nodes((16, 1))) == 16  # one GPU, one branch process per GPU: all in one
    assert pack_size(ResourcesConfig(branches_per_process="auto", gpus_per_branch=0.25), 16, nodes((16, 1))) == 4
    assert pack_size(ResourcesConfig(branches_per_process=3), 16, nodes((2, 0))) == 3  # a number is taken as is
    assert pack_size(ResourcesConfig(branches_per_process="auto", workers_per_branch=2), 16, nodes((2, 0))) == 1


def test_the_run_summary_prints_the_packs():
    from orchestrator.launcher import TrainingOutcome
    from orchestrator.placement import plan_packs
    from orchestrator.summaries import training_lines

    packs = plan_packs([0, 1, 2, 3], 2, dict.fromkeys(range(4), 5), dict.fromkeys(range(4), True))
    plan = plan_placement(4, ResourcesConfig(branches_per_process=2), nodes((2, 0)), packs)
    outcome = TrainingOutcome({k: {"k": k} for k in range(4)}, [], plan)
    assert training_lines(outcome)[0].endswith("; 2 pack(s), one process each: [0,1] [2,3]")
    unpacked = TrainingOutcome({k: {"k": k} for k in range(4)}, [], plan_placement(4, ResourcesConfig(), nodes((2, 0))))
    assert "pack" not in training_lines(unpacked)[0]


def test_workers_per_branch_counts_k_times_m_workers_over_the_cluster():
    plan = plan_placement(4, ResourcesConfig(workers_per_branch=2, cpus_per_branch=0.5), nodes((2, 0)))
    assert (plan.workers, plan.concurrent, plan.waves) == (2, 2, 2)  # 4 workers of 0.5 CPU: two groups at once
    assert "4 branches x 2 workers" in plan.describe()
    # a group may span nodes: two 1-GPU nodes hold one 2-GPU group, four hold two
    plan = plan_placement(3, ResourcesConfig(workers_per_branch=2), nodes((8, 1), (8, 1), (8, 1), (8, 1)))
    assert (plan.gpus_per_branch, plan.concurrent, plan.waves) == (1, 2, 2)


def test_a_cluster_too_small_for_one_group_is_refused_with_the_numbers():
    with pytest.raises(PlacementError) as e:
        plan_placement(2, ResourcesConfig(workers_per_branch=4), nodes((2, 0), (1, 0)))
    message = str(e.value)
    assert "4 workers x (0 GPU, 1 CPU) = 0 GPU, 4 CPU" in message and "hold 3 such worker(s)" in message
    assert "resources.workers_per_branch" in message


def test_workers_per_branch_and_branches_per_process_exclude_each_other():
    from data_split.errors import ConfigError

    with pytest.raises(ConfigError, match="workers_per_branch.*branches_per_process"):
        ResourcesConfig(workers_per_branch=2, branches_per_process=2)
    assert ResourcesConfig(workers_per_branch=2).branches_per_process == 1


def test_the_run_summary_prints_the_groups():
    from orchestrator.launcher import TrainingOutcome
    from orchestrator.summaries import training_lines

    plan = plan_placement(4, ResourcesConfig(workers_per_branch=2), nodes((2, 0)))
    outcome = TrainingOutcome({k: {"k": k} for k in range(4)}, [], plan)
    assert training_lines(outcome)[0].endswith("; each a Ray Train group of 2 DDP workers, 1 group(s) at once")
