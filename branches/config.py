"""Configuration of one branch: which network, and how it is trained."""

from __future__ import annotations

from dataclasses import dataclass

from data_split.errors import ConfigError
from data_split.fields import Section, option

MODELS = (
    "fc8",
    "fc4",
    "cnn8",
    "resnet18",
    "resnet34",
)  # model.name; branches.models builds each (torch is not imported here)
TORCHVISION_PREFIX = "torchvision:"  # model.name "torchvision:<name>": any torchvision classification model
TIMM_PREFIX = "timm:"  # model.name "timm:<name>": any timm model (the optional extra `timm`)
BY_NAME = (TORCHVISION_PREFIX, TIMM_PREFIX)
STEMS = ("auto", "standard", "small")
SMALL_STEM_BELOW_PX = 64  # model.stem auto: the small stem for sub-images smaller than this (either side)
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
DATA_MODES = ("auto", "memory", "stream")
ON_NONFINITE = ("fail", "skip_branch")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(kw_only=True, frozen=True)
class ModelConfig(Section):
    SECTION = "model"

    RULES = (lambda self, key: _check_model_name(self.name, key("name")),)

    name: str = option(
        "fc8",
        f"the network of every branch: one of {', '.join(MODELS)}, `torchvision:<name>` "
        "(any torchvision classification model, random init unless `model.pretrained`) or `timm:<name>` "
        "(any timm model, random init; needs the `timm` extra)",
    )
    width: int | None = option(
        None, "`fc*`: hidden width (unset: the input width, as in the paper); `cnn8`: base channels (unset: 64)", ge=1
    )
    stem: str = option(
        "auto",
        "`torchvision:*`, `timm:*`, `resnet*`: `standard` keeps the model's first conv, `small` makes it 3x3 "
        "stride 1 and drops the max-pool after it (the reference's small-input ResNet); "
        f"`auto`: small below {SMALL_STEM_BELOW_PX} px (`resnet18`/`resnet34`: always small)",
        choices=STEMS,
    )
    pretrained: str | None = option(
        None,
        "`torchvision:*`: torchvision weights to start from (`IMAGENET1K_V1`, `DEFAULT` or "
        "`ResNet18_Weights.IMAGENET1K_V1`), read from the local torch hub cache only (never downloaded); "
        "layers whose shape the branch changed (the head, an adapted stem) keep their random init",
    )


def _check_model_name(name: str, key: str) -> None:
    if name in MODELS or any(name.startswith(p) and len(name) > len(p) for p in BY_NAME):
        return
    raise ConfigError(f"{key} must be one of {', '.join(MODELS)}, torchvision:<name> or timm:<name>, got {name!r}")


@dataclass(kw_only=True, frozen=True)
class TrainConfig(Section):
    SECTION = "train"

    epochs: int = option(3, "training epochs of every branch (more epochs extend a finished run)", ge=1)
    batch_size: int = option(128, "training batch size", ge=1)
    optimizer: str = option("adam", "the optimizer", choices=OPTIMIZERS)
    lr: float = option(1e-3, "learning rate at epoch 1", gt=0)
    weight_decay: float = option(0.0, "weight decay of the optimizer")
    momentum: float = option(0.9, "`sgd` only: momentum")
    schedule: str = option(
        "cosine",
        "learning-rate schedule, stepped once per epoch: `none`, `cosine` (to 0 at the last epoch), `step`",
        choices=SCHEDULES,
    )
    schedule_per_step: bool = option(
        False, "evaluate the schedule at every optimizer step (fractional epochs) instead of once per epoch"
    )
    warmup_epochs: float = option(
        0.0, "linear learning-rate warm-up over this many epochs, per optimizer step (0: none)", ge=0
    )
    step_size: int = option(10, "`step` schedule: epochs between decays")
    gamma: float = option(0.1, "`step` schedule: decay factor")
    grad_clip: float | None = option(
        None, "clip the gradient's L2 norm (over all parameters) to this before each step; unset: no clipping", gt=0
    )
    accumulate: int = option(
        1, "batches whose gradients are summed per optimizer step (the effective batch is batch_size x this)", ge=1
    )
    mixup: float = option(
        0.0,
        "mixup alpha (0: off): each batch mixed with a permutation of itself by lambda ~ Beta(alpha, alpha), "
        "drawn from (seed, epoch, step) and so the same in every branch (exact: the split is linear)",
        ge=0,
    )
    early_stopping_patience: int | None = option(
        None, "stop a branch once its best validation accuracy is this many epochs old; unset: never", ge=1
    )
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss", ge=0, lt=1)
    amp: bool = option(True, "`precision: auto`: bfloat16 autocast on CUDA (false: fp32); ignored on CPU")
    precision: str = option(
        "auto",
        "`auto` (as train.amp says), `fp32`, `bf16` (autocast; on CPU too) or `fp16` (autocast with a "
        "GradScaler, for GPUs without bf16 such as the V100; its scale is checkpointed)",
        choices=PRECISIONS,
    )
    channels_last: bool = option(False, "the model and its input batches in channels-last memory order")
    compile: bool = option(False, "train through torch.compile(model) (the uncompiled model is checkpointed)")
    seed: int = option(0, "seed of initialisation and batch order; branch k uses seed + k")
    threads: int = option(1, "torch CPU threads per branch (match `resources.cpus_per_branch`)", ge=1)
    # A ResNet-34 checkpoint (weights + Adam moments) is ~250 MB, so keeping one per epoch of a 100-epoch
    # run is 25 GB per branch. Older ones are removed after each save;
    # 2 or more lets a corrupt newest checkpoint fall back to the one before it.
    keep_checkpoints: int = option(3, "newest epoch checkpoints kept per branch; 0 = keep all", ge=0)
    # The ensemble's time to accuracy (its validation accuracy after every epoch) needs every branch's
    # validation logits of that epoch (branches/<k>/epochs/logits_val_<e>.npy; 240 KB per epoch for
    # Fashion-MNIST, 200 MB for ImageNet's 50k x 1000), so it is opt-in.
    epoch_logits: bool = option(
        False, "also write each epoch's validation logits (for the ensemble's time to accuracy)"
    )
    # "auto" streams when the branch's stored values (train + val + test, decompressed) exceed memory_limit_mb.
    data: str = option(
        "auto",
        "where a branch's data lives while it trains: memory (whole split on the device), "
        "stream (Parquet row groups through a shuffle buffer) or auto (stream above memory_limit_mb)",
        choices=DATA_MODES,
    )
    memory_limit_mb: int = option(
        4096, "train.data=auto streams a branch whose decompressed values exceed this (MB)", ge=0
    )
    shuffle_buffer: int = option(
        8192, "stream: rows mixed at a time (more = closer to a full shuffle, more memory)", ge=1
    )
    # Exact spectral augmentation: "crop" is the CIFAR crop at the branch's resolution; a flip the split's
    # transform does not make exact is an error.
    augment: list[str] = option(
        help="exact spectral augmentations of the training batches: crop, hflip, vflip, "
        "rot180, transpose, rot90, rot270",
        factory=list,
    )
    augment_pad: int = option(2, "crop: largest random shift in sub-pixels (zero-padded)", ge=0)
    on_nonfinite: str = option(
        "fail",
        "a branch whose loss or logits go NaN/inf: `fail` the run, or `skip_branch` "
        "(the ensemble, report and export use the other branches; the report names it)",
        choices=ON_NONFINITE,
    )
