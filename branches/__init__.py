"""One branch of a spectral tensor network: its model zoo and its training loop (plain PyTorch, no Ray).

    from branches import ModelConfig, TrainConfig, train_branch
    result = train_branch(storage, k, ModelConfig(name="fc8"), TrainConfig(epochs=5))
"""

from branches.config import MODELS, OPTIMIZERS, SCHEDULES, ModelConfig, TrainConfig
from branches.models import build_model, count_parameters
from branches._checkpoint import BranchConflictError
from branches.train import NonFiniteError, finished_result, lr_factor, train_branch

__all__ = [
    "MODELS", "OPTIMIZERS", "SCHEDULES", "BranchConflictError", "NonFiniteError", "ModelConfig", "TrainConfig", "build_model",
    "count_parameters", "finished_result", "lr_factor", "train_branch",
]
