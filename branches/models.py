"""The model zoo of one branch: FC-8L/FC-4L, CNN-8L, and any torchvision model adapted to small inputs.

Every builder takes the branch's input shape ``(C, h, w)`` (the spectral
sub-image, e.g. ``(1, 14, 14)`` for an MNIST sub4 branch) and returns a plain
``nn.Module`` mapping ``(N, C, h, w)`` to logits ``(N, classes)``.

FC nets keep the hidden width equal to the input width, as in the paper: a
full-resolution 28x28 FC-8L has 784-wide layers, a sub4 branch 196-wide ones,
so each branch holds about 1/16 of the parameters.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from branches.config import BY_NAME, MODELS, SMALL_STEM_BELOW_PX, TIMM_PREFIX, TORCHVISION_PREFIX, ModelConfig
from data_split.errors import SpectralError

log = logging.getLogger(__name__)

CNN8_BASE_WIDTH = 64  # cnn8 channels of the first layer when ModelConfig.width is None
CNN8_WIDTH_MULTIPLIERS = (1, 1, 2, 2, 4, 4, 8, 8)  # channels of the 8 conv layers, times the base width
CNN8_POOL_AFTER = (1, 3, 5)  # 0-based conv layers followed by a 2x2 max-pool (while the map is >= 2x2)


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


class ModelInputError(SpectralError, ValueError):
    """A model that cannot be built for, or cannot take, the branch's input; the message says why."""


def _first(model: nn.Module, kind: type) -> tuple[str, nn.Module] | None:
    return next(((path, m) for path, m in model.named_modules() if isinstance(m, kind)), None)


def adapt_stem(model: nn.Module, in_channels: int, stem: str) -> nn.Module:
    """``model`` with its first conv taking ``in_channels``; ``stem == "small"``: that conv 3x3 stride 1 and the
    max-pool between it and the next conv dropped (torchvision's modules register in forward order).

    The ImageNet stem (ResNet: 7x7 stride 2 plus max-pool) would shrink a 14x14 branch to 4x4 before the
    first block; the CIFAR-style stem keeps the resolution. A conv that already fits is kept (its init too).
    """
    found = _first(model, nn.Conv2d)
    if found is None:
        return model
    path, conv = found
    small = stem == "small"
    if conv.in_channels != in_channels or (small and (conv.kernel_size, conv.stride) != ((3, 3), (1, 1))):
        kernel, stride, padding = (3, 1, 1) if small else (conv.kernel_size, conv.stride, conv.padding)
        new = nn.Conv2d(
            in_channels, conv.out_channels, kernel, stride=stride, padding=padding, bias=conv.bias is not None
        )
        model.set_submodule(path, new)
    if small:
        after = False
        for sub_path, m in list(model.named_modules()):
            if sub_path == path:
                after = True
            elif after and isinstance(m, nn.Conv2d):
                break
            elif after and isinstance(m, nn.MaxPool2d):
                model.set_submodule(sub_path, nn.Identity())
                break
    return model


def torchvision_model(
    name: str, in_shape: tuple[int, int, int], classes: int, *, stem: str = "auto", pretrained: str | None = None
) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=classes)`` adapted to ``(C, h, w)`` inputs.

    ``stem``: ``standard``, ``small`` (see ``adapt_stem``) or ``auto`` (small when h or w is below
    SMALL_STEM_BELOW_PX). ``pretrained``: weights read from the torch hub cache (``load_pretrained``).
    """
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):  # classification models only (not detection/segmentation/video)
        raise ModelInputError(
            f"model.name: torchvision:{name} is not a torchvision classification model; "
            f"known: {', '.join(tvm.list_models(module=tvm))}"
        )
    if stem == "auto":
        stem = "small" if min(in_shape[1:]) < SMALL_STEM_BELOW_PX else "standard"
    model = tvm.get_model(name, weights=None, num_classes=classes)
    model = adapt_stem(model, in_shape[0], stem)
    if pretrained is not None:
        load_pretrained(model, name, pretrained)
    return model


def timm_model(
    name: str, in_shape: tuple[int, int, int], classes: int, *, stem: str = "auto", pretrained: str | None = None
) -> nn.Module:
    """``timm.create_model(name, num_classes=classes, in_chans=C)``, its stem adapted as ``torchvision_model``'s.

    Random init only: timm's weights come from the Hugging Face Hub, which a branch never downloads from.
    """
    try:
        import timm
    except ImportError:
        raise ModelInputError(
            f"model.name: timm:{name} needs timm: pip install 'spectral-tensor-orchestrator[timm]' (or timm)"
        ) from None
    if pretrained is not None:
        raise ModelInputError(
            f"model.pretrained: timm:{name} starts from random init (timm's weights are on the Hugging Face Hub, "
            "never downloaded here); leave model.pretrained unset, or use torchvision:<name> with its weights"
        )
    if not timm.is_model(name):
        like = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ModelInputError(
            f"model.name: timm:{name} is not a timm model"
            + (f"; similar: {', '.join(like)}" if like else " (timm.list_models() lists them)")
        )
    if stem == "auto":
        stem = "small" if min(in_shape[1:]) < SMALL_STEM_BELOW_PX else "standard"

    def create(**size) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=classes, in_chans=in_shape[0], **size)

    try:  # a model with a fixed input size (ViT: its position embeddings) is built for the branch's
        model = create(img_size=tuple(in_shape[1:]))
    except TypeError:  # a model without one (ResNet, ConvNeXt) takes no img_size
        model = create()
    return adapt_stem(model, in_shape[0], stem)


def pretrained_file(model_name: str, weights: str) -> tuple[Path, str]:
    """(the torch hub cache file of torchvision's ``weights`` for ``model_name``, its download URL)."""
    import torch.hub
    import torchvision.models as tvm

    try:
        w = tvm.get_weight(weights) if "." in weights else tvm.get_model_weights(model_name)[weights]
    except (KeyError, ValueError, AttributeError) as e:
        known = ", ".join(w.name for w in tvm.get_model_weights(model_name))
        raise ModelInputError(
            f"model.pretrained: {weights!r} is not a torchvision weights name of {model_name} (known: {known})"
        ) from e
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url), w.url


def load_pretrained(model: nn.Module, model_name: str, weights: str) -> list[str]:
    """Load torchvision ``weights`` from the local hub cache into ``model``; return the keys left at random init.

    Nothing is downloaded: a missing file is a ``ModelInputError`` naming the path and the command that
    fetches it. Tensors whose shape the branch changed (a head for other classes, an adapted stem) are
    skipped, except a first conv on other input channels with the same kernel, whose RGB filters are
    averaged (the usual grey-scale adaptation). The skipped keys are logged.
    """
    import torch

    path, url = pretrained_file(model_name, weights)
    if not path.is_file():
        raise ModelInputError(
            f"model.pretrained: {path} is missing (weights are never downloaded while training); fetch it with "
            f"python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\""
        )
    stored = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    usable, skipped = {}, []
    for key, tensor in own.items():
        src = stored.get(key)
        if src is not None and src.shape == tensor.shape:
            usable[key] = src
        elif (
            src is not None and src.dim() == 4 and src.shape[0] == tensor.shape[0] and src.shape[2:] == tensor.shape[2:]
        ):
            usable[key] = src.mean(dim=1, keepdim=True).expand_as(tensor).clone()  # (O, 3, k, k) -> (O, C, k, k)
        else:
            skipped.append(key)
    model.load_state_dict({**own, **usable})
    log.info(
        "model.pretrained %s from %s: %d tensors loaded, kept at random init: %s",
        weights,
        path,
        len(usable),
        ", ".join(skipped) or "none",
    )
    return skipped


def probe_input(model: nn.Module, name: str, in_shape: tuple[int, int, int], classes: int) -> None:
    """Refuse a ``model`` that cannot map ``(N, *in_shape)`` to ``(N, classes)``, before any training.

    The forward runs on a meta-device copy (shapes only, no arithmetic), so a ResNet-50 costs milliseconds.
    """
    import torch

    probe = copy.deepcopy(model).to("meta").eval()
    try:
        with torch.no_grad():
            out = probe(torch.zeros((2, *in_shape), device="meta"))
    except (RuntimeError, ValueError, IndexError, AssertionError) as e:  # timm asserts input sizes
        raise ModelInputError(
            f"model.name {name} cannot take the branch's input {tuple(in_shape)} (C, h, w): {str(e).splitlines()[0]} "
            "(too small for its downsampling? try model.stem: small or a larger sub-image)"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelInputError(f"model.name {name} maps inputs {tuple(in_shape)} to {shape}, not (N, {classes}) logits")


def _resnet(name: str) -> Callable[..., nn.Module]:
    """The registry's ``resnet18``/``resnet34``: ``torchvision:<name>`` with the small stem unless stem=standard."""

    def build(
        in_shape: tuple[int, int, int],
        classes: int,
        *,
        width: int | None = None,
        stem: str = "auto",
        pretrained: str | None = None,
    ) -> nn.Module:
        stem = "small" if stem == "auto" else stem
        return torchvision_model(name, in_shape, classes, stem=stem, pretrained=pretrained)

    return build


def _plain(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A builder without a stem or weights: model.stem is irrelevant, model.pretrained an error."""

    def wrapped(in_shape, classes, *, width=None, stem="auto", pretrained=None):
        if pretrained is not None:
            raise ModelInputError("model.pretrained needs a torchvision model (torchvision:<name>, resnet18, resnet34)")
        return build(in_shape, classes, width=width)

    return wrapped


# model.name -> builder(in_shape, classes, *, width, stem, pretrained), for every name in MODELS
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fc8": _plain(lambda in_shape, classes, *, width=None: fc_net(in_shape, classes, depth=8, width=width)),
    "fc4": _plain(lambda in_shape, classes, *, width=None: fc_net(in_shape, classes, depth=4, width=width)),
    "cnn8": _plain(cnn8),
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
}


def build_model(cfg: ModelConfig, in_shape: tuple[int, int, int], classes: int, *, probe: bool = True) -> nn.Module:
    """The network ``cfg.name`` for inputs ``(N, *in_shape)`` and ``classes`` outputs.

    Raises ``ModelInputError`` naming the reason when the model cannot take the input (probed on meta; ``probe=False``
    for a network about to load a checkpoint trained on that input: the meta forward imports ``torch._dynamo``,
    seconds of CPU in a process that serves or predicts and would never need it).
    """
    in_shape = tuple(int(d) for d in in_shape)
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (C, h, w) with positive sizes, got {in_shape}")
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    by_name = cfg.name.startswith(BY_NAME)
    if cfg.name not in MODELS and not by_name:  # ModelConfig validates; kept for direct callers
        raise ValueError(f"model.name: unknown model {cfg.name!r}; expected one of {', '.join(MODELS)}")
    if cfg.width is not None and (by_name or cfg.name.startswith("resnet")):
        raise ValueError(f"model.width is not used by {cfg.name} (its library fixes the widths); leave it unset")
    if cfg.name.startswith(TORCHVISION_PREFIX):
        name = cfg.name[len(TORCHVISION_PREFIX) :]
        model = torchvision_model(name, in_shape, classes, stem=cfg.stem, pretrained=cfg.pretrained)
    elif by_name:
        model = timm_model(cfg.name[len(TIMM_PREFIX) :], in_shape, classes, stem=cfg.stem, pretrained=cfg.pretrained)
    else:
        model = BUILDERS[cfg.name](in_shape, classes, width=cfg.width, stem=cfg.stem, pretrained=cfg.pretrained)
    if probe:
        probe_input(model, cfg.name, in_shape, classes)
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
