"""P branches with disjoint parameters as one network: one forward, one backward, one optimizer step.

``PackedNetwork(models)`` stacks the parameters and buffers of P copies of one architecture
(``torch.func.stack_module_state``: every tensor gains a leading ``(P, ...)`` axis) and evaluates
them with ``vmap(functional_call)``: input ``(P, N, C, h, w)``, logits ``(P, N, classes)``. The
batching rules turn a Conv2d into one grouped convolution, a Linear into one batched matmul and a
BatchNorm into one normalisation over ``P x C`` channels, each of which is exactly P independent ones,
so the math is that of P separate branches (chosen over hand-written grouped layers after measuring
both: ``scripts/packing_probe.py``, numbers in docs/how-it-works.md).

Disjoint parameters and a summed loss mean no gradient crosses branches, and Adam, AdamW and SGD with
momentum are elementwise, so one step of an optimizer over the stacked tensors is P separate steps
(tests/test_packed.py). ``branch_state(p)`` / ``load_branch_states`` convert to and from the state
dicts of one unpacked branch, so checkpoints are exactly an unpacked branch's.

    pack = PackedNetwork([build_model(cfg, shape, 10) for _ in range(4)])
    logits = pack(x)                           # x (4, N, C, h, w) -> (4, N, 10)
    sd = pack.branch_state(2)                  # branch 2's state_dict, loadable by build_model(...)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from data_split.errors import SpectralError

# Modules whose forward vmap batches with exactly per-branch semantics (checked recursively on a model)
PACKABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
            nn.AvgPool2d, nn.Flatten, nn.Identity, nn.Sequential, nn.Dropout)


class PackError(SpectralError, ValueError):
    """A model that cannot be trained packed (``resources.branches_per_process`` > 1); the message says why."""


def check_packable(model: nn.Module, name: str = "model") -> None:
    """Raise ``PackError`` naming the first leaf module that packing could change the math of.

    A container (``nn.Sequential``, torchvision's ResNet and its blocks) is fine when every leaf is
    known: its forward only composes them. A BatchNorm without running statistics, or one with a
    momentum of None (a cumulative average), is refused too: its batched form is not checked here.
    """
    for path, m in model.named_modules():
        if not list(m.children()) and not isinstance(m, PACKABLE):
            raise PackError(f"{name}: module {path or '<root>'} ({type(m).__name__}) is not known to pack exactly "
                            f"(known: {', '.join(t.__name__ for t in PACKABLE)}); "
                            "set resources.branches_per_process: 1")
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (not m.track_running_stats or m.momentum is None):
            raise PackError(f"{name}: BatchNorm {path} without running statistics or with momentum None does not "
                            "pack; set resources.branches_per_process: 1")


class PackedNetwork(nn.Module):
    """P copies of one architecture with disjoint parameters, evaluated in one vmapped pass."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise PackError("a pack needs at least one model")
        kinds = {type(m) for m in models}
        shapes = {tuple((n, tuple(t.shape)) for n, t in m.state_dict().items()) for m in models}
        if len(kinds) != 1 or len(shapes) != 1:
            raise PackError("a pack's models must be one architecture with equal shapes")
        check_packable(models[0], type(models[0]).__name__)
        self.size = len(models)
        params, buffers = stack_module_state(list(models))  # name -> (P, ...) leaves
        self._param_names = list(params)  # in models[0].named_parameters() order: the optimizer's order
        self._buffer_names = list(buffers)
        for i, n in enumerate(self._param_names):
            self.register_parameter(f"p{i}", nn.Parameter(params[n].detach().clone()))
        for i, n in enumerate(self._buffer_names):
            self.register_buffer(f"b{i}", buffers[n].clone())
        base = copy.deepcopy(models[0]).to("meta")  # the architecture only; never trained, not a submodule
        object.__setattr__(self, "_base", base)

    # -- forward --------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PackedNetwork:
        super().train(mode)
        self._base.train(mode)
        return self

    def _tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {n: getattr(self, f"p{i}") for i, n in enumerate(self._param_names)}
        buffers = {n: getattr(self, f"b{i}") for i, n in enumerate(self._buffer_names)}
        return params, buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (P, N, C, h, w) -> logits (P, N, classes); branch p sees only x[p] and its own parameters."""
        if x.shape[0] != self.size:
            raise ValueError(f"a pack of {self.size} takes inputs (P={self.size}, N, ...), got {tuple(x.shape)}")
        params, buffers = self._tensors()

        def one(p: dict, b: dict, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(self._base, (p, b), (xb,))

        # BatchNorm's in-place running-stat updates land in the stacked buffers (they are batched too)
        return vmap(one, randomness="different")(params, buffers, x)

    # -- one branch's state ------------------------------------------------------------------------------------
    def branch_state(self, p: int) -> dict[str, torch.Tensor]:
        """Member ``p``'s ``state_dict``, as the unpacked model's (same keys and shapes, cloned)."""
        params, buffers = self._tensors()
        out = {n: t[p].detach().clone() for n, t in {**params, **buffers}.items()}
        return {n: out[n] for n in self._base.state_dict()}  # the module's own key order

    def load_branch_states(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Load P unpacked state dicts (one per member, in order)."""
        if len(states) != self.size:
            raise ValueError(f"expected {self.size} branch states, got {len(states)}")
        params, buffers = self._tensors()
        with torch.no_grad():
            for n, t in {**params, **buffers}.items():
                t.copy_(torch.stack([s[n].to(t.device, t.dtype) for s in states]))

    def param_count(self) -> int:
        """Trainable parameters of one member."""
        return sum(p[0].numel() for p in self.parameters())


SHARED_OPTIMIZER_STATE = ("step",)  # per-parameter optimizer state that is a counter, equal for every member


def split_optimizer_state(state: dict, p: int) -> dict:
    """Member ``p``'s view of a packed optimizer's ``state_dict()``: what its unpacked optimizer would hold.

    Per-parameter tensors (Adam's moments, SGD's momentum buffer: ``(P, ...)``) are sliced; the step counter
    is shared.
    """
    def one(key: str, v):
        if not torch.is_tensor(v):
            return v
        return v.clone() if key in SHARED_OPTIMIZER_STATE else v[p].clone()

    return {"state": {i: {key: one(key, v) for key, v in st.items()} for i, st in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}


def stack_optimizer_states(states: Sequence[dict]) -> dict:
    """The packed optimizer's ``state_dict`` from P unpacked ones (all at the same step)."""
    def stacked(i, key: str, v):
        if not torch.is_tensor(v) or key in SHARED_OPTIMIZER_STATE:
            return v
        return torch.stack([s["state"][i][key] for s in states])

    first = states[0]
    return {"state": {i: {key: stacked(i, key, v) for key, v in st.items()} for i, st in first["state"].items()},
            "param_groups": copy.deepcopy(first["param_groups"])}
