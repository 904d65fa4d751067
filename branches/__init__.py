"""One branch of a spectral tensor network: its model zoo and its training loop (plain PyTorch, no Ray).

    from branches import ModelConfig, TrainConfig, train_branch
    result = train_branch(storage, k, ModelConfig(name="fc8"), TrainConfig(epochs=5))

Names load on first use (PEP 562): the configs and ``branches.finished`` are free of torch, so a driver
that parses a config or checks which branches are finished (the CLI, a job's driver) never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_split.lazy import lazy_exports

_EXPORTS = {
    "MODELS": "branches.config",
    "OPTIMIZERS": "branches.config",
    "SCHEDULES": "branches.config",
    "ModelConfig": "branches.config",
    "TrainConfig": "branches.config",
    "build_model": "branches.models",
    "count_parameters": "branches.models",
    "BranchConflictError": "branches.finished",
    "finished_result": "branches.finished",
    "NonFiniteError": "branches.train",
    "lr_factor": "branches.train",
    "train_branch": "branches.train",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from branches.config import MODELS, OPTIMIZERS, SCHEDULES, ModelConfig, TrainConfig
    from branches.finished import BranchConflictError, finished_result
    from branches.models import build_model, count_parameters
    from branches.train import NonFiniteError, lr_factor, train_branch


__getattr__ = lazy_exports(__name__, _EXPORTS)
