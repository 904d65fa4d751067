"""The model zoo of one branch: FC-8L/FC-4L, CNN-8L and small-input ResNets.

Every builder takes the branch's input shape ``(C, h, w)`` (the spectral
sub-image, e.g. ``(1, 14, 14)`` for an MNIST sub4 branch) and returns a plain
``nn.Module`` mapping ``(N, C, h, w)`` to logits ``(N, classes)``.

FC nets keep the hidden width equal to the input width, as in the paper: a
full-resolution 28x28 FC-8L has 784-wide layers, a sub4 branch 196-wide ones,
so each branch holds about 1/16 of the parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from branches.config import MODELS, ModelConfig

CNN8_BASE_WIDTH = 64  # cnn8 channels of the first layer when ModelConfig.width is None
CNN8_WIDTH_MULTIPLIERS = (1, 1, 2, 2, 4, 4, 8, 8)  # channels of the 8 conv layers, times the base width
CNN8_POOL_AFTER = (1, 3, 5)  # 0-based conv layers followed by a 2x2 max-pool (while the map is >= 2x2)
RESNET_STEM_CHANNELS = 64  # torchvision's resnet18/34 stem width, kept so layer1 fits unchanged


def fc_net(in_shape: tuple[int, int, int], classes: int, *, depth: int, width: int | None = None) -> nn.Sequential:
    """``depth`` Linear layers: (depth - 1) x [Linear -> BatchNorm1d -> ReLU], then Linear -> classes."""
    c, h, w = in_shape
    width = width or c * h * w
    layers: list[nn.Module] = [nn.Flatten()]  # (N, C, h, w) -> (N, C*h*w)
    prev = c * h * w
    for _ in range(depth - 1):
        layers += [nn.Linear(prev, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        prev = width
    layers.append(nn.Linear(prev, classes))
    return nn.Sequential(*layers)


def cnn8(in_shape: tuple[int, int, int], classes: int, *, width: int | None = None) -> nn.Sequential:
    """8 x [Conv3x3 -> BatchNorm2d -> ReLU], max-pools where the map still allows, global average pool, Linear."""
    c, h, w = in_shape
    base = width or CNN8_BASE_WIDTH
    layers: list[nn.Module] = []
    prev, size = c, min(h, w)
    for i, mult in enumerate(CNN8_WIDTH_MULTIPLIERS):
        out = base * mult
        layers += [nn.Conv2d(prev, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        prev = out
        if i in CNN8_POOL_AFTER and size >= 2:  # 4x4 input: 4 -> 2 -> 1, the third pool is skipped
            layers.append(nn.MaxPool2d(2))
            size //= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, classes)]  # (N, 8*base, s, s) -> (N, classes)
    return nn.Sequential(*layers)


def small_input_resnet(name: str, in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """torchvision resnet18/34 (random init, never downloaded) with a 3x3 stride-1 stem and no max-pool.

    The ImageNet stem (7x7 stride 2 plus max-pool) would shrink a 14x14 branch
    to 4x4 before the first block; the CIFAR-style stem keeps the resolution.
    """
    import torchvision.models as tvm

    model = getattr(tvm, name)(weights=None, num_classes=classes)
    model.conv1 = nn.Conv2d(in_shape[0], RESNET_STEM_CHANNELS, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _resnet(name: str) -> Callable[..., nn.Module]:
    def build(in_shape: tuple[int, int, int], classes: int, *, width: int | None = None) -> nn.Module:
        if width is not None:
            raise ValueError(f"model.width is not used by {name} (torchvision's widths are fixed); leave it unset")
        return small_input_resnet(name, in_shape, classes)

    return build


# model.name -> builder(in_shape, classes, *, width), for every name that ModelConfig accepts (MODELS)
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fc8": lambda in_shape, classes, *, width=None: fc_net(in_shape, classes, depth=8, width=width),
    "fc4": lambda in_shape, classes, *, width=None: fc_net(in_shape, classes, depth=4, width=width),
    "cnn8": cnn8,
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
}


def build_model(cfg: ModelConfig, in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """The network ``cfg.name`` for inputs ``(N, *in_shape)`` and ``classes`` outputs."""
    in_shape = tuple(int(d) for d in in_shape)
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (C, h, w) with positive sizes, got {in_shape}")
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    if cfg.name not in MODELS:  # ModelConfig validates; kept for direct callers
        raise ValueError(f"model.name: unknown model {cfg.name!r}; expected one of {', '.join(MODELS)}")
    return BUILDERS[cfg.name](in_shape, classes, width=cfg.width)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
