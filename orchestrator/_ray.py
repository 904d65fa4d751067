"""Connecting to Ray: a local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os

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
