"""Where branches run: a pure decision from the config and the cluster's nodes.

Plan (documented in docs/clusters.md, "GPUs per branch"): every branch asks for ``gpus_per_branch``
GPUs and ``cpus_per_branch`` CPUs. Unset, ``gpus_per_branch`` is 1 on a
cluster with GPUs and 0 (CPU training) without. All K tasks are submitted at
once; when the cluster cannot hold them all, Ray queues the rest and starts
each as soon as a running branch frees its share, so fewer GPUs than branches
means waves, never a hang. To run K branches at once on fewer GPUs, ask for a
fraction (``gpus_per_branch: 0.25`` puts four branches on one GPU; they share
its memory without isolation). A request that no single node can satisfy
would wait forever, so it is an error here instead.

With ``resources.workers_per_branch: M`` > 1 a branch is a Ray Train group of M workers, each asking
``gpus_per_branch`` GPUs and ``cpus_per_branch`` CPUs; a group may span nodes, so K x M workers are
counted over the whole cluster, and a cluster that cannot hold even one group at once is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from data_split.errors import SpectralError
from orchestrator.config import PACK_AUTO, ResourcesConfig


class PlacementError(SpectralError, ValueError):
    """No node of the cluster can ever host one branch."""


@dataclass(frozen=True)
class NodeResources:
    node_id: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class PlacementPlan:
    branches: int  # tasks: one per branch, or one per pack (resources.branches_per_process > 1)
    gpus_per_branch: float  # per task
    cpus_per_branch: float  # per task
    concurrent: int  # tasks the cluster can run at the same time
    waves: int  # ceil(tasks / concurrent): 1 means all at once
    packs: tuple[tuple[int, ...], ...] | None = None  # the branches of each task, when packed
    workers: int = 1  # processes per branch (resources.workers_per_branch); >1: gpus/cpus are per worker

    def describe(self) -> str:
        device = f"{self.gpus_per_branch:g} GPU" if self.gpus_per_branch else "CPU only"
        what = "branches"
        if self.packs is not None:
            what = "packs " + " ".join("[" + ",".join(str(k) for k in p) + "]" for p in self.packs)
        if self.workers > 1:
            what += f" x {self.workers} workers"
        return (
            f"{self.branches} {what} x ({device}, {self.cpus_per_branch:g} CPU): "
            f"{self.concurrent} at once, {self.waves} wave(s)"
        )


def pack_size(cfg: ResourcesConfig, branches: int, nodes: list[NodeResources]) -> int:
    """Branches per process: ``resources.branches_per_process``, or for ``auto`` the fewest per process that start
    all ``branches`` in one wave on ``nodes`` (a cluster that runs S branch processes at once: ceil(branches / S);
    1 for groups, ``workers_per_branch`` > 1, which do not pack)."""
    if cfg.branches_per_process != PACK_AUTO:
        return int(cfg.branches_per_process)
    if cfg.workers_per_branch > 1:
        return 1
    slots = sum(_fits(n, default_gpus(cfg, nodes), cfg.cpus_per_branch) for n in nodes)
    return max(1, math.ceil(branches / slots)) if slots else 1


def plan_packs(ks: list[int], size: int, train_rows: dict[int, int], packable: dict[int, bool]) -> list[list[int]]:
    """Consecutive branches ``ks`` in packs of at most ``size``: a pack holds only branches of equal training row
    counts (their epochs then step together, batch for batch) and only packable ones (``packable[k]`` False,
    e.g. a streamed branch, trains alone)."""
    packs: list[list[int]] = []
    for k in ks:
        last = packs[-1] if packs else None
        if (
            last is not None
            and len(last) < size
            and packable[k]
            and packable[last[0]]
            and last[-1] == k - 1
            and train_rows[k] == train_rows[last[0]]
        ):
            last.append(k)
        else:
            packs.append([k])
    return packs


def _fits(node: NodeResources, gpus: float, cpus: float) -> int:
    """How many branches one node holds."""
    by_cpu = math.floor(node.cpus / cpus + 1e-9) if cpus else math.inf
    by_gpu = math.floor(node.gpus / gpus + 1e-9) if gpus else math.inf
    return int(min(by_cpu, by_gpu))


def default_gpus(cfg: ResourcesConfig, nodes: list[NodeResources]) -> float:
    """GPUs per branch: ``resources.gpus_per_branch``, or unset: 1 when the cluster has GPUs, else 0 (CPU)."""
    if cfg.gpus_per_branch is not None:
        return cfg.gpus_per_branch
    return 1.0 if sum(n.gpus for n in nodes) > 0 else 0.0


def plan_placement(
    branches: int, cfg: ResourcesConfig, nodes: list[NodeResources], packs: list[list[int]] | None = None
) -> PlacementPlan:
    """``branches`` tasks (``packs``: one per pack, ``branches`` ignored) on ``nodes``."""
    if packs is not None:
        branches = len(packs)
    if branches < 1:
        raise PlacementError(f"need at least one branch, got {branches}")
    gpus = default_gpus(cfg, nodes)
    cpus = cfg.cpus_per_branch
    per_node = [_fits(n, gpus, cpus) for n in nodes]
    workers = cfg.workers_per_branch
    if workers > 1:
        return _plan_groups(branches, workers, gpus, cpus, sum(per_node), len(nodes))
    concurrent = min(branches, sum(per_node))
    if concurrent == 0:
        largest = max(nodes, key=lambda n: (n.gpus, n.cpus), default=None)
        have = (
            f"the largest node has {largest.gpus:g} GPU, {largest.cpus:g} CPU"
            if largest
            else "the cluster has no nodes"
        )
        raise PlacementError(
            f"a branch asks for {gpus:g} GPU and {cpus:g} CPU (resources.gpus_per_branch, resources.cpus_per_branch) "
            f"but {have}: it could never start"
        )
    return PlacementPlan(
        branches,
        gpus,
        cpus,
        concurrent,
        math.ceil(branches / concurrent),
        None if packs is None else tuple(tuple(p) for p in packs),
    )


def _plan_groups(branches: int, workers: int, gpus: float, cpus: float, fit: int, n_nodes: int) -> PlacementPlan:
    """``branches`` groups of ``workers`` workers (``gpus``, ``cpus`` each) on a cluster that holds ``fit``."""
    if fit < workers:
        raise PlacementError(
            f"a branch's group asks for {workers} workers x ({gpus:g} GPU, {cpus:g} CPU) = {workers * gpus:g} GPU, "
            f"{workers * cpus:g} CPU (resources.workers_per_branch, resources.gpus_per_branch, "
            f"resources.cpus_per_branch) but the cluster's {n_nodes} node(s) hold {fit} such worker(s): "
            "it could never start"
        )
    concurrent = min(branches, fit // workers)
    return PlacementPlan(branches, gpus, cpus, concurrent, math.ceil(branches / concurrent), workers=workers)


def cluster_nodes() -> list[NodeResources]:
    """The live nodes of the connected Ray cluster."""
    import ray

    return [
        NodeResources(n["NodeID"], n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
        for n in ray.nodes()
        if n.get("Alive")
    ]
