"""The model zoo: shapes, widths, parameter counts (the paper's 16x per-branch saving) and small inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from branches import MODELS, ModelConfig, build_model, count_parameters

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
