"""Where an API step runs: in this process holding the run's lease, or on the head node through Ray Client."""

from __future__ import annotations

import functools
import logging

from data_split.errors import SpectralError
from data_split.storage import RunStorage
from orchestrator._ray import init_ray
from orchestrator.lease import hold_lease

log = logging.getLogger(__name__)


PROGRESS_CALLBACKS = ("on_progress", "on_split_progress")  # the API's callbacks: they stay on the driver


def cluster_side(fn):
    """Decorator of the API steps: the step holds the run's lease (``orchestrator.lease``), and with a
    ``ray://`` address the whole call runs as a task on the head (which then holds the lease).

    Ray Data cannot execute a pipeline from a Ray Client process (2.60: its executor needs a core
    worker, which a client lacks), so the split, and with it ``run``, would fail there. Instead the
    call runs on the head node like a job's driver (the project must be installed on the nodes, as
    ``cluster.yaml`` does), with ``ray.address`` cleared so that inside it nothing is redirected again,
    and its result comes back. progress callbacks cannot cross: they are dropped (see the
    dashboard, or use ``ray job submit`` with the CLI's live table).
    """

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        if not (cfg.ray.address or "").startswith("ray://"):
            with hold_lease(RunStorage.from_config(cfg.storage), timeout_s=cfg.storage.lease_timeout_s):
                return fn(cfg, *args, **kwargs)
        import ray  # only for ray://: a local step may never need Ray (evaluate without tuned weights)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        init_ray(cfg.ray)
        dropped = [name for name in PROGRESS_CALLBACKS if kwargs.pop(name, None) is not None]
        if dropped:
            log.info("%s through Ray Client: progress is not streamed back", fn.__name__)
        head = next(
            (n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]), None
        )
        options = {"num_cpus": 0, "max_retries": 0}
        if head:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
        task = ray.remote(wrapper).options(**options)  # by reference: the module's decorated function
        try:
            return ray.get(task.remote(cfg.replace(**{"ray.address": None}), *args, **kwargs))
        except (
            ray.exceptions.RayTaskError
        ) as e:  # the caller gets our own error (BranchFailedError, ...), not Ray's wrapper
            if isinstance(e.cause, SpectralError):
                raise e.cause from None
            raise

    return wrapper
