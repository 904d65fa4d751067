"""Configuration of batch prediction (``predict.*``) and serving (``serve.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from data_split.fields import Section, option


@dataclass(kw_only=True, frozen=True)
class PredictConfig(Section):
    SECTION = "predict"

    batch_size: int = option(256, "images per map_batches call (one forward pass of an actor)", ge=1)
    concurrency: int = option(1, "actors in the pool, each holding the ensemble", ge=1)
    # Leave CPUs for the read tasks: actors that hold every CPU starve the reads and the pipeline stalls.
    cpus_per_actor: float = option(
        1.0, "CPUs per actor, also its torch threads (at least 1); leave some for the read tasks", gt=0
    )
    gpus_per_actor: float | None = option(
        None, "GPUs per actor; unset: 1 when the cluster has GPUs, else 0 (CPU)", ge=0
    )


@dataclass(kw_only=True, frozen=True)
class ServeConfig(Section):
    SECTION = "serve"

    replicas: int = option(1, "Ray Serve replicas, each holding the ensemble", ge=1)
    batching: bool = option(True, "@serve.batch: concurrent requests share one forward pass")
    max_batch_size: int = option(32, "largest dynamic batch", ge=1)
    max_images_per_request: int = option(
        64, "most images one request may carry (a JSON array or several multipart files); more: HTTP 413", ge=1
    )
    max_request_bytes: int = option(
        16 * 2**20, "largest request body in bytes; larger: HTTP 413, refused before it is read whole", ge=1
    )
    batch_wait_timeout_s: float = option(0.005, "seconds a dynamic batch waits to fill up", ge=0)
    cpus_per_replica: float = option(1.0, "CPUs per Serve replica", ge=0)
    gpus_per_replica: float | None = option(None, "GPUs per replica; unset: 1 when the cluster has GPUs, else 0", ge=0)
