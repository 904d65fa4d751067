"""The model zoo: shapes, widths, parameter counts (the paper's 16x per-branch saving) and small inputs."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

from branches import MODELS, ModelConfig, build_model, count_parameters
from branches.models import ModelInputError
from branches.packed import PackError, check_packable
from data_split.errors import ConfigError

SHAPES = [(1, 4, 4), (1, 14, 14), (3, 16, 16)]
CLASSES = 7


def linear_widths(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_fc8_hidden_width_is_input_width_as_in_the_paper():
    full = build_model(ModelConfig(name="fc8"), (1, 28, 28), 10)
    sub4 = build_model(ModelConfig(name="fc8"), (1, 14, 14), 10)
    assert linear_widths(full) == [(784, 784)] * 7 + [(784, 10)]
    assert linear_widths(sub4) == [(196, 196)] * 7 + [(196, 10)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in full.modules()) == 7


def test_fc8_sub4_branch_has_at_most_a_twelfth_of_the_full_resolution_parameters():
    full = count_parameters(build_model(ModelConfig(name="fc8"), (1, 28, 28), 10))
    sub4 = count_parameters(build_model(ModelConfig(name="fc8"), (1, 14, 14), 10))
    assert sub4 * 12 <= full
    # The paper's table: FC-8L 16.54 MB, spectral sub4 1.06 MB per branch (float32, MiB).
    assert full * 4 / 2**20 == pytest.approx(16.5, abs=0.1)
    assert sub4 * 4 / 2**20 == pytest.approx(1.05, abs=0.02)


def test_fc4_has_four_linear_layers_and_width_override():
    model = build_model(ModelConfig(name="fc4"), (2, 4, 4), 3)
    assert linear_widths(model) == [(32, 32), (32, 32), (32, 32), (32, 3)]  # input C*h*w = 2*4*4 = 32
    wide = build_model(ModelConfig(name="fc4", width=100), (1, 4, 4), 3)
    assert linear_widths(wide) == [(16, 100), (100, 100), (100, 100), (100, 3)]


def test_cnn8_has_eight_convs_and_pools_only_while_the_map_allows():
    def count(model: nn.Module, kind: type) -> int:
        return sum(isinstance(m, kind) for m in model.modules())

    small = build_model(ModelConfig(name="cnn8"), (1, 4, 4), 10)
    big = build_model(ModelConfig(name="cnn8"), (3, 32, 32), 10)
    assert count(small, nn.Conv2d) == count(big, nn.Conv2d) == 8
    assert count(small, nn.MaxPool2d) == 2  # 4 -> 2 -> 1
    assert count(big, nn.MaxPool2d) == 3  # 32 -> 16 -> 8 -> 4
    convs = [m.out_channels for m in big.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [64, 64, 128, 128, 256, 256, 512, 512]
    narrow = build_model(ModelConfig(name="cnn8", width=8), (3, 32, 32), 10)
    assert [m.out_channels for m in narrow.modules() if isinstance(m, nn.Conv2d)][-1] == 64


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnet_has_a_small_input_stem(name):
    model = build_model(ModelConfig(name=name), (3, 16, 16), CLASSES)
    assert model.conv1.in_channels == 3 and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == CLASSES
    blocks = sum(len(getattr(model, f"layer{i}")) for i in range(1, 5))
    assert blocks == (8 if name == "resnet18" else 16)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS)
def test_every_model_runs_forward_and_backward_on_small_inputs(name, shape):
    torch.manual_seed(0)
    width = 8 if name == "cnn8" else None  # narrow cnn8: same code path, a fraction of the time
    model = build_model(ModelConfig(name=name, width=width), shape, CLASSES)
    x = torch.randn(2, *shape)
    model.train()
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, CLASSES) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_count_parameters_counts_trainable_parameters_only():
    model = build_model(ModelConfig(name="fc4"), (1, 2, 2), 2)
    n = count_parameters(model)
    # 3 x (Linear 4->4 with bias + BatchNorm weight/bias) + Linear 4->2 with bias
    assert n == 3 * (4 * 4 + 4 + 2 * 4) + (4 * 2 + 2)
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == n - 16


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="in_shape"):
        build_model(ModelConfig(name="fc8"), (4, 4), 10)
    with pytest.raises(ValueError, match="classes"):
        build_model(ModelConfig(name="fc8"), (1, 4, 4), 1)
    with pytest.raises(ValueError, match="model.width"):
        build_model(ModelConfig(name="resnet18", width=32), (1, 4, 4), 10)
    with pytest.raises(ValueError, match="model.name"):
        ModelConfig(name="vgg")


def test_torchvision_models_by_name_get_the_input_channels_and_the_stem_auto_picks():
    small = build_model(ModelConfig(name="torchvision:resnet18"), (1, 14, 14), CLASSES)  # auto: small below 64 px
    assert (small.conv1.in_channels, small.conv1.kernel_size, small.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(small.maxpool, nn.Identity) and small.fc.out_features == CLASSES
    big = build_model(ModelConfig(name="torchvision:resnet18"), (2, 64, 64), CLASSES)  # auto: the ImageNet stem
    assert (big.conv1.in_channels, big.conv1.kernel_size, big.conv1.stride) == (2, (7, 7), (2, 2))
    assert isinstance(big.maxpool, nn.MaxPool2d)
    alex = build_model(ModelConfig(name="torchvision:alexnet", stem="small"), (1, 16, 16), CLASSES)
    assert alex.features[0].kernel_size == (3, 3) and isinstance(alex.features[2], nn.Identity)  # its first pool
    assert alex(torch.zeros(2, 1, 16, 16)).shape == (2, CLASSES)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_registry_resnets_are_the_torchvision_models_with_the_small_stem(name):
    torch.manual_seed(5)
    alias = build_model(ModelConfig(name=name), (1, 14, 14), CLASSES).state_dict()
    torch.manual_seed(5)
    named = build_model(ModelConfig(name=f"torchvision:{name}", stem="small"), (1, 14, 14), CLASSES).state_dict()
    assert list(alias) == list(named) and all(torch.equal(alias[key], named[key]) for key in alias)


def test_a_model_too_small_for_the_input_is_refused_before_training_with_the_reason():
    with pytest.raises(ModelInputError, match=r"torchvision:vgg11 cannot take the branch's input \(1, 4, 4\).*small"):
        build_model(ModelConfig(name="torchvision:vgg11", stem="small"), (1, 4, 4), CLASSES)
    with pytest.raises(ModelInputError, match="not a torchvision classification model.*resnet18"):
        build_model(ModelConfig(name="torchvision:maskrcnn_resnet50_fpn"), (3, 32, 32), CLASSES)
    with pytest.raises(ConfigError, match="model.name must be one of .*torchvision:<name>"):
        ModelConfig(name="torchvision:")
    with pytest.raises(ConfigError, match="model.stem"):
        ModelConfig(name="torchvision:resnet18", stem="tiny")
    with pytest.raises(ModelInputError, match="model.pretrained needs a torchvision model"):
        build_model(ModelConfig(name="fc4", pretrained="DEFAULT"), (1, 4, 4), CLASSES)


def test_torchvision_models_pack_or_are_refused_with_the_reason():
    check_packable(build_model(ModelConfig(name="torchvision:resnet18"), (1, 8, 8), CLASSES))
    with pytest.raises(PackError, match=r"\(Hardswish\).*branches_per_process: 1"):
        check_packable(build_model(ModelConfig(name="torchvision:mobilenet_v3_small"), (1, 32, 32), CLASSES))


def test_timm_models_by_name_get_the_input_channels_the_stem_and_their_input_size():
    pytest.importorskip("timm")  # the test extra installs it
    small = build_model(ModelConfig(name="timm:resnet18"), (1, 14, 14), CLASSES)  # auto: small below 64 px
    assert (small.conv1.in_channels, small.conv1.kernel_size, small.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(small.maxpool, nn.Identity) and small(torch.zeros(2, 1, 14, 14)).shape == (2, CLASSES)
    big = build_model(ModelConfig(name="timm:resnet18"), (2, 64, 64), CLASSES)
    assert (big.conv1.in_channels, big.conv1.stride) == (2, (2, 2)) and isinstance(big.maxpool, nn.MaxPool2d)
    check_packable(small)
    vit = build_model(ModelConfig(name="timm:vit_tiny_patch16_224", stem="standard"), (3, 32, 32), CLASSES)
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, CLASSES)  # built for 32 px, not its default 224
    with pytest.raises(PackError, match=r"LayerNorm"):
        check_packable(vit)
    with pytest.raises(ModelInputError, match=r"timm:vit_tiny_patch16_224 cannot take the branch's input \(3, 8, 8\)"):
        build_model(ModelConfig(name="timm:vit_tiny_patch16_224", stem="standard"), (3, 8, 8), CLASSES)
    with pytest.raises(ModelInputError, match="timm:resnet19 is not a timm model; similar: .*resnet18"):
        build_model(ModelConfig(name="timm:resnet19"), (1, 14, 14), CLASSES)
    with pytest.raises(ModelInputError, match="model.pretrained: timm:resnet18 starts from random init"):
        build_model(ModelConfig(name="timm:resnet18", pretrained="DEFAULT"), (1, 14, 14), CLASSES)
    with pytest.raises(ConfigError, match="model.name must be one of .*timm:<name>"):
        ModelConfig(name="timm:")


def test_a_timm_model_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ModelInputError, match=r"timm:resnet18 needs timm: pip install .*\[timm\]"):
        build_model(ModelConfig(name="timm:resnet18"), (1, 14, 14), CLASSES)


def test_pretrained_weights_come_from_the_local_hub_cache_only(tmp_path, monkeypatch):
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = ModelConfig(name="torchvision:resnet18", pretrained="IMAGENET1K_V1", stem="standard")
    with pytest.raises(
        ModelInputError, match=rf"{tmp_path}/hub/checkpoints/resnet18-.*\.pth is missing.*load_state_dict_from_url"
    ):
        build_model(cfg, (1, 64, 64), CLASSES)
    torch.manual_seed(1)
    fake = tvm.resnet18(weights=None).state_dict()  # 3 input channels, 1000 classes: as the real file
    url = tvm.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(fake, tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    got = build_model(cfg, (1, 64, 64), CLASSES).state_dict()
    assert torch.equal(got["layer3.1.conv2.weight"], fake["layer3.1.conv2.weight"])
    assert torch.equal(got["conv1.weight"], fake["conv1.weight"].mean(1, keepdim=True))  # RGB -> grey filters
    assert got["fc.weight"].shape == (CLASSES, 512)  # the head for the branch's classes stays random
    long_name = ModelConfig(name="torchvision:resnet18", pretrained="ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(
        build_model(long_name, (1, 64, 64), CLASSES).state_dict()["layer1.0.bn1.weight"], fake["layer1.0.bn1.weight"]
    )
    with pytest.raises(ModelInputError, match="not a torchvision weights name of resnet18.*IMAGENET1K_V1"):
        build_model(ModelConfig(name="torchvision:resnet18", pretrained="NOPE"), (1, 64, 64), CLASSES)
