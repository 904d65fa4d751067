"""Configuration of batch prediction (``predict.*``) and serving (``serve.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from data_split.fields import option


@dataclass(kw_only=True, frozen=True)
class PredictConfig:
    batch_size: int = option(256, 'images per map_batches call (one forward pass of an actor)')
    concurrency: int = option(1, 'actors in the pool, each holding the ensemble')
    # Leave CPUs for the read tasks: actors that hold every CPU starve the reads and the pipeline stalls.
    cpus_per_actor: float = option(1.0, "CPUs per actor, also its torch threads (at least 1); leave some for the read tasks")
    gpus_per_actor: float | None = option(None, 'GPUs per actor; unset: 1 when the cluster has GPUs, else 0 (CPU)')

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"predict.batch_size must be >= 1, got {self.batch_size}")
        if self.concurrency < 1:
            raise ValueError(f"predict.concurrency must be >= 1, got {self.concurrency}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"predict.cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError(f"predict.gpus_per_actor must be >= 0, got {self.gpus_per_actor}")


@dataclass(kw_only=True, frozen=True)
class ServeConfig:
    replicas: int = option(1, 'Ray Serve replicas, each holding the ensemble')
    batching: bool = option(True, '@serve.batch: concurrent requests share one forward pass')
    max_batch_size: int = option(32, 'largest dynamic batch')
    batch_wait_timeout_s: float = option(0.005, 'seconds a dynamic batch waits to fill up')
    cpus_per_replica: float = option(1.0, 'CPUs per Serve replica')
    gpus_per_replica: float | None = option(None, 'GPUs per replica; unset: 1 when the cluster has GPUs, else 0')

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"serve.replicas must be >= 1, got {self.replicas}")
        if self.max_batch_size < 1:
            raise ValueError(f"serve.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"serve.batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.cpus_per_replica < 0:
            raise ValueError(f"serve.cpus_per_replica must be >= 0, got {self.cpus_per_replica}")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise ValueError(f"serve.gpus_per_replica must be >= 0, got {self.gpus_per_replica}")
