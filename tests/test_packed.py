"""A pack of P branches is P unpacked branches: same logits, same optimizer steps, same BatchNorm statistics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from branches import MODELS, ModelConfig, TrainConfig, build_model
from branches.packed import PackedNetwork, PackError, check_packable, split_optimizer_state, stack_optimizer_states
from branches.train import make_optimizer

P, N, SHAPE, CLASSES = 3, 8, (1, 4, 4), 5
WIDTH = {"cnn8": 4}  # a narrow cnn8 keeps the test fast; the registry's other models have fixed widths
OPTIMIZERS = [
    TrainConfig(optimizer="adam"),
    TrainConfig(optimizer="adamw", weight_decay=0.1),
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
]


def members(name: str) -> list[nn.Module]:
    out = []
    for p in range(P):
        torch.manual_seed(100 + p)  # disjoint, different initialisations
        out.append(build_model(ModelConfig(name=name, width=WIDTH.get(name)), SHAPE, CLASSES))
    return out


def assert_states_equal(got: dict, want: dict, what: str) -> None:
    assert list(got) == list(want), what
    for key in want:
        assert torch.allclose(got[key].float(), want[key].float(), rtol=1e-5, atol=1e-6), f"{what}: {key}"


# every optimizer on the small models, Adam on the rest (the optimizer's step does not depend on the model)
CASES = [(name, cfg) for name in MODELS for cfg in (OPTIMIZERS if name in ("fc8", "cnn8") else OPTIMIZERS[:1])]


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=[f"{n}-{c.optimizer}" for n, c in CASES])
def test_two_packed_steps_equal_the_unpacked_steps(name, cfg):
    """Forward and backward of the pack give each member its own gradients (to 1e-4 of their scale), and one step
    of the optimizer over the stacked tensors is the members' own steps.

    The two are compared apart, the step on the same gradients: a Linear's bias before a BatchNorm has a true
    gradient of 0, so its gradient is rounding noise that Adam turns into +-lr steps of either sign.
    """
    # float64: float32 rounding over resnet34's depth differed by 1.3e-4 of the gradient's scale between the two
    # paths on one CPU (and less on others); the math under test does not depend on the precision
    models = [m.double() for m in members(name)]
    alone = [copy.deepcopy(m).train() for m in models]
    pack = PackedNetwork(models).train()
    opt_pack = make_optimizer(pack, cfg)
    opts = [make_optimizer(m, cfg) for m in alone]
    gen = torch.Generator().manual_seed(0)
    for step in range(2):  # two steps: the second uses Adam's moments and SGD's momentum buffer
        x = torch.randn(P, N, *SHAPE, generator=gen, dtype=torch.float64)  # (P, N, C, h, w): a batch per member
        y = torch.randint(0, CLASSES, (P, N), generator=gen)
        logits = pack(x)  # (P, N, classes)
        per_branch = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(P, N).mean(1)
        opt_pack.zero_grad()
        per_branch.sum().backward()  # disjoint parameters: each gets only its own branch's gradient
        for i, (m, o) in enumerate(zip(alone, opts)):
            o.zero_grad()
            F.cross_entropy(m(x[i]), y[i]).backward()
        for j, (q, *own) in enumerate(zip(pack.parameters(), *(m.parameters() for m in alone))):
            want = torch.stack([o.grad for o in own])  # (P, ...)
            err = (q.grad - want).abs().max().item()  # sums over a deep net: relative to the gradient's scale
            assert err <= 1e-4 * want.abs().max().item() + 1e-5, f"{name} step {step}: gradient of parameter {j}: {err}"
            q.grad = want.clone()
        opt_pack.step()
        for o in opts:
            o.step()
    for i, m in enumerate(alone):
        assert_states_equal(pack.branch_state(i), m.state_dict(), f"{name} member {i}")  # weights and BN statistics
        got = split_optimizer_state(opt_pack.state_dict(), i)
        for j, st in opts[i].state_dict()["state"].items():
            assert_states_equal(got["state"][j], st, f"{name} member {i} optimizer state of parameter {j}")
    # and in eval mode (running statistics), the pack's logits are the members' own
    x = torch.randn(P, N, *SHAPE, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        packed = pack.eval()(x)
        for i, m in enumerate(alone):
            assert torch.allclose(packed[i], m.eval()(x[i]), rtol=1e-4, atol=1e-5)


def test_states_round_trip_into_a_new_pack():
    models = members("fc4")
    pack = PackedNetwork(models).train()
    opt = make_optimizer(pack, TrainConfig())
    F.cross_entropy(pack(torch.randn(P, N, *SHAPE)).flatten(0, 1), torch.zeros(P * N, dtype=torch.long)).backward()
    opt.step()
    fresh = PackedNetwork(members("fc4"))
    fresh.load_branch_states([pack.branch_state(i) for i in range(P)])
    opt2 = make_optimizer(fresh, TrainConfig())
    opt2.load_state_dict(stack_optimizer_states([split_optimizer_state(opt.state_dict(), i) for i in range(P)]))
    for a, b in zip(pack.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_model_that_cannot_pack_is_refused_with_the_reason():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(PackError, match=r"module 2 \(LayerNorm\).*branches_per_process: 1"):
        check_packable(model)
    bn = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16, track_running_stats=False))
    with pytest.raises(PackError, match="BatchNorm 1"):
        PackedNetwork([bn, copy.deepcopy(bn)])
    with pytest.raises(PackError, match="one architecture"):
        PackedNetwork([build_model(ModelConfig(name="fc4"), SHAPE, 3), build_model(ModelConfig(name="fc8"), SHAPE, 3)])

    class Concatenating(nn.Module):  # known leaves, but its forward joins two outputs along the channels
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 4), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flatten(1)
            return torch.cat([self.a(x), self.b(x)], 1)

    check_packable(Concatenating())
    with pytest.raises(PackError, match=r"Concatenating: its forward mixes channels.*branches_per_process: 1"):
        PackedNetwork([Concatenating() for _ in range(P)], SHAPE)
    PackedNetwork(members("resnet18"), SHAPE)  # a residual forward keeps members apart: accepted
    pack = PackedNetwork(members("fc4"))
    with pytest.raises(ValueError, match=r"\(P=3, N, \.\.\.\)"):
        pack(torch.randn(2, N, *SHAPE))


@pytest.mark.parametrize("name", MODELS)
def test_grouped_eval_equals_the_members_and_exports_with_a_dynamic_batch(name):
    from branches.packed import grouped_eval

    models = [m.eval() for m in members(name)]
    for m in models:  # running statistics that are not the identity
        for bn in (q for q in m.modules() if isinstance(q, nn.modules.batchnorm._BatchNorm)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    net = grouped_eval(models)
    x = torch.randn(P, N, *SHAPE)
    with torch.no_grad():
        got = net(x)
        for i, m in enumerate(models):
            assert torch.allclose(got[i], m(x[i]), rtol=1e-4, atol=1e-5)
    if name == "cnn8":
        program = torch.export.export(net, (x,), dynamic_shapes={"x": {1: torch.export.Dim("n", min=1)}})
        y = torch.randn(P, 3, *SHAPE)
        assert torch.allclose(program.module()(y), net(y), atol=1e-6)
