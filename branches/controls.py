"""The training controls of ``train.*`` as pure pieces: learning rate per step, mixup draws, early stopping.

Each is a function of the configuration and of (epoch, step) alone, never of state carried between
steps, so a run resumed from an epoch checkpoint replays exactly what an uninterrupted one does.
``StepControls`` bundles what ``train_one_epoch`` needs per step; ``branches.train`` builds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from branches.config import TrainConfig
from data_split.errors import ConfigError

if TYPE_CHECKING:
    import torch


def lr_factor(cfg: TrainConfig, epoch_index: float, steps_per_epoch: int = 1) -> float:
    """Multiplier of ``cfg.lr`` at ``epoch_index`` epochs into training (0-based; fractional between steps).

    The schedule (``cosine``: to 0 at the last epoch, ``step``: times gamma every ``step_size`` epochs)
    reads the whole epoch unless ``train.schedule_per_step``; the linear warm-up is per optimizer step,
    rising to 1 at ``warmup_epochs`` (``steps_per_epoch``: the optimizer steps of an epoch, so that the first
    step does not run at lr 0). A function of the position alone, so resumable.
    """
    t = epoch_index if cfg.schedule_per_step else math.floor(epoch_index)
    if cfg.schedule == "cosine":  # CosineAnnealingLR(T_max=epochs, eta_min=0) in closed form
        decay = 0.5 * (1.0 + math.cos(math.pi * t / cfg.epochs))
    elif cfg.schedule == "step":
        decay = cfg.gamma ** (math.floor(t) // cfg.step_size)
    else:
        decay = 1.0
    if cfg.warmup_epochs > 0:
        decay *= min(1.0, (epoch_index + 1.0 / steps_per_epoch) / cfg.warmup_epochs)
    return decay


def set_step_lr(optimizer, base_lrs: list[float], cfg: TrainConfig, epoch: int, step: int, spe: int) -> None:
    """Set every group's rate for 0-based optimizer ``step`` of 1-based ``epoch`` (``spe`` steps an epoch)."""
    factor = lr_factor(cfg, epoch - 1 + step / spe, spe)
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor


def per_step_lr(cfg: TrainConfig) -> bool:
    """Whether the rate changes within an epoch (a per-step schedule or a warm-up)."""
    return cfg.schedule_per_step or cfg.warmup_epochs > 0


def steps_per_epoch(rows: int, batch_size: int, accumulate: int) -> int:
    """Optimizer steps of an epoch of ``rows``: batches (a trailing batch of 1 joins the one before, as
    ``branches.data.batch_indices``), one step per ``accumulate`` of them."""
    batches = max(1, math.ceil(rows / batch_size) - (1 if rows > batch_size and rows % batch_size == 1 else 0))
    return math.ceil(batches / accumulate)


def mixup_draw(alpha: float, seed: int, epoch: int, step: int, batch: int) -> tuple[float, torch.Tensor]:
    """(lambda ~ Beta(alpha, alpha), a permutation of the batch's rows) for (seed, epoch, step).

    The same for every branch (k is not an input): the split is linear, so mixing the sub-images of
    branch k with one lambda and permutation is the sub-image of the mixed full images, in every branch.
    """
    import torch

    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, step]))
    lam = float(rng.beta(alpha, alpha))
    return lam, torch.from_numpy(rng.permutation(batch))


def should_stop(history: list[dict], patience: int | None) -> bool:
    """Early stopping: the best validation accuracy is more than ``patience`` epochs old (None: never)."""
    accs = [m["val_acc"] for m in history if m.get("val_acc") is not None]
    if patience is None or not accs:
        return False
    best = int(np.argmax(accs))  # the first epoch that reached the best accuracy
    return len(accs) - 1 - best >= patience


@dataclass
class StepControls:
    """What ``train_one_epoch`` does around each batch beyond forward, backward and step (defaults: nothing)."""

    accumulate: int = 1  # batches per optimizer step (the last group of an epoch may be smaller)
    grad_clip: float | None = None  # largest L2 norm of the whole gradient; None: no clipping
    mixup_alpha: float = 0.0  # 0: no mixup
    seed: int = 0  # mixup draws come from (seed, epoch, step)
    epoch: int = 1
    before_step: Callable[[int], None] | None = None  # called with the 0-based optimizer step of the epoch
    channels_last: bool = False  # inputs in channels-last memory order (the model converted by the caller)
    scaler: torch.amp.GradScaler | None = None  # fp16: loss scaling


PACK_UNSUPPORTED = (
    "grad_clip",
    "accumulate",
    "mixup",
    "early_stopping_patience",
    "precision",
    "channels_last",
    "compile",
)


def pack_refusals(cfg: TrainConfig) -> list[str]:
    """The set controls a pack cannot train exactly per branch, each with the reason (empty: it can)."""
    why = {
        "grad_clip": "one norm over the stacked gradients would couple the branches",
        "accumulate": "not implemented for packs",
        "mixup": "not implemented for packs",
        "early_stopping_patience": "branches of a pack stop together",
        "precision": "a pack autocasts as train.amp says (bf16 on CUDA); fp16's loss scale would be shared",
        "channels_last": "vmap over the stacked weights keeps their layout",
        "compile": "not tried on vmap",
    }
    default = TrainConfig()
    return [f"train.{name} ({why[name]})" for name in PACK_UNSUPPORTED if getattr(cfg, name) != getattr(default, name)]


def check_pack_controls(cfg: TrainConfig) -> None:
    """Raise ``ConfigError`` naming every set ``train.*`` control a pack cannot train exactly, with the reason."""
    if refused := pack_refusals(cfg):
        raise ConfigError(
            f"packed training does not support {'; '.join(refused)}: set resources.branches_per_process: 1 "
            "or leave these at their defaults"
        )


def check_ddp_controls(cfg: TrainConfig) -> None:
    """Raise ``ConfigError`` naming the set ``train.*`` controls the DDP engine does not apply (yet): the baseline's
    (``baseline.engine: ddp``) and a branch's of ``resources.workers_per_branch`` > 1 workers."""
    default = TrainConfig()
    names = ("warmup_epochs", "schedule_per_step", *PACK_UNSUPPORTED)
    if refused := [f"train.{n}" for n in names if getattr(cfg, n) != getattr(default, n)]:
        raise ConfigError(
            f"the DDP baseline (baseline.engine: ddp) and branches of resources.workers_per_branch > 1 workers "
            f"(one DDP loop) do not apply {', '.join(refused)} (no step controls yet); use baseline.engine: single "
            "and resources.workers_per_branch: 1, or leave these at their defaults"
        )
