"""Connecting to Ray: a local instance by default, or an existing cluster."""

from __future__ import annotations

import functools
import logging
import os

from data_split.errors import SpectralError
from orchestrator.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig, *, quiet: bool = False) -> None:
    """Start or join Ray once per process.

    - ``cfg.address`` set ("auto", "ray://host:10001", "host:6379"): join that cluster.
    - inside ``ray job submit`` (``RAY_ADDRESS`` is set): join the job's cluster.
    - otherwise: a private local instance. ``address="local"`` so that a stale
      ``/tmp/ray/ray_current_cluster`` left by a killed head is never joined.
    """
    import ray

    if ray.is_initialized():
        return
    # ray.init resets the "ray" logger to INFO unless told otherwise: keep the level the caller chose (the CLI's -v)
    kwargs = {"log_to_driver": not quiet, "logging_level": logging.getLogger("ray").level or logging.INFO}
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, **kwargs)
    resources = ray.cluster_resources()
    log.info(
        "Ray: %d node(s), %g CPU, %g GPU",
        len([n for n in ray.nodes() if n.get("Alive")]),
        resources.get("CPU", 0),
        resources.get("GPU", 0),
    )


def cluster_side(fn):
    """Decorator of the API steps: the step holds the run's lease (``orchestrator.lease``), and with a
    ``ray://`` address the whole call runs as a task on the head (which then holds the lease).

    Ray Data cannot execute a pipeline from a Ray Client process (2.60: its executor needs a core
    worker, which a client lacks), so the split, and with it ``run``, would fail there. Instead the
    call runs on the head node like a job's driver (the project must be installed on the nodes, as
    ``cluster.yaml`` does), with ``ray.address`` cleared so that inside it nothing is redirected again,
    and its result comes back. ``on_progress`` callbacks cannot cross: they are dropped (see the
    dashboard, or use ``ray job submit`` with the CLI's live table).
    """

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        if not (cfg.ray.address or "").startswith("ray://"):
            from data_split.storage import RunStorage
            from orchestrator.lease import hold_lease  # here: the lease module imports the config's secrets

            with hold_lease(RunStorage.from_config(cfg.storage), timeout_s=cfg.storage.lease_timeout_s):
                return fn(cfg, *args, **kwargs)
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        init_ray(cfg.ray)
        if kwargs.pop("on_progress", None) is not None:
            log.info("%s through Ray Client: progress is not streamed back", fn.__name__)
        head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]), None)
        options = {"num_cpus": 0, "max_retries": 0}
        if head:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
        task = ray.remote(wrapper).options(**options)  # by reference: the module's decorated function
        try:
            return ray.get(task.remote(cfg.replace(**{"ray.address": None}), *args, **kwargs))
        except ray.exceptions.RayTaskError as e:  # the caller gets our own error (BranchFailedError, ...), not Ray's wrapper
            if isinstance(e.cause, SpectralError):
                raise e.cause from None
            raise

    return wrapper
