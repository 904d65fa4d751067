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
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from data_split.errors import SpectralError

# Modules whose forward vmap batches with exactly per-branch semantics (checked recursively on a model)
PACKABLE = (
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Sequential,
    nn.Dropout,
)


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
            raise PackError(
                f"{name}: module {path or '<root>'} ({type(m).__name__}) is not known to pack exactly "
                f"(known: {', '.join(t.__name__ for t in PACKABLE)}); "
                "set resources.branches_per_process: 1"
            )
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (not m.track_running_stats or m.momentum is None):
            raise PackError(
                f"{name}: BatchNorm {path} without running statistics or with momentum None does not "
                "pack; set resources.branches_per_process: 1"
            )


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

    return {
        "state": {i: {key: one(key, v) for key, v in st.items()} for i, st in state["state"].items()},
        "param_groups": copy.deepcopy(state["param_groups"]),
    }


def stack_optimizer_states(states: Sequence[dict]) -> dict:
    """The packed optimizer's ``state_dict`` from P unpacked ones (all at the same step)."""

    def stacked(i, key: str, v):
        if not torch.is_tensor(v) or key in SHARED_OPTIMIZER_STATE:
            return v
        return torch.stack([s["state"][i][key] for s in states])

    first = states[0]
    return {
        "state": {i: {key: stacked(i, key, v) for key, v in st.items()} for i, st in first["state"].items()},
        "param_groups": copy.deepcopy(first["param_groups"]),
    }


# -- inference: the same pack as grouped layers (torch.export specialises vmap's batch size; these stay dynamic) --
class _Grouped(nn.Module):
    """A packed leaf on the merged layout ``(P*N, ...)``: rows ``p*N .. p*N+N-1`` belong to member ``p``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size


class _GroupedLinear(_Grouped):
    def __init__(self, ms: Sequence[nn.Linear]) -> None:
        super().__init__(len(ms))
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in ms]), requires_grad=False)  # (P, O, I)
        self.bias = (
            None
            if ms[0].bias is None
            else nn.Parameter(torch.stack([m.bias.detach() for m in ms]), requires_grad=False)
        )  # (P, O)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (P*N, I) -> (P*N, O): a batched matmul
        y = torch.matmul(x.reshape(self.size, -1, x.shape[-1]), self.weight.transpose(1, 2))  # (P, N, O)
        if self.bias is not None:
            y = y + self.bias[:, None, :]
        return y.reshape(-1, y.shape[-1])


class _GroupedConv2d(_Grouped):
    def __init__(self, ms: Sequence[nn.Conv2d]) -> None:
        super().__init__(len(ms))
        m = ms[0]
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise PackError(f"Conv2d with padding {m.padding!r} / padding_mode {m.padding_mode!r} does not pack")
        self.stride, self.padding, self.dilation, self.groups = m.stride, m.padding, m.dilation, m.groups
        self.weight = nn.Parameter(
            torch.cat([q.weight.detach() for q in ms]), requires_grad=False
        )  # (P*O, I/g, kh, kw)
        self.bias = (
            None if m.bias is None else nn.Parameter(torch.cat([q.bias.detach() for q in ms]), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (P*N, C, h, w) -> (P*N, O, h', w'): one grouped conv
        c, h, w = x.shape[1:]
        x = x.reshape(self.size, -1, c, h, w).transpose(0, 1).reshape(-1, self.size * c, h, w)  # (N, P*C, h, w)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups * self.size)
        o = y.shape[1] // self.size
        return y.reshape(-1, self.size, o, *y.shape[2:]).transpose(0, 1).reshape(-1, o, *y.shape[2:])


class _GroupedBatchNormEval(_Grouped):
    def __init__(self, ms: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
        super().__init__(len(ms))
        scale = torch.stack(
            [
                (m.weight if m.affine else torch.ones_like(m.running_var)).detach() / torch.sqrt(m.running_var + m.eps)
                for m in ms
            ]
        )  # (P, C)
        shift = torch.stack([(m.bias.detach() if m.affine else 0) - m.running_mean * s for m, s in zip(ms, scale)])
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # eval-mode BatchNorm: a per-member, per-channel affine map
        shape = (self.size, 1, x.shape[1]) + (1,) * (x.dim() - 2)
        y = x.reshape(self.size, -1, *x.shape[1:]) * self.scale.reshape(shape) + self.shift.reshape(shape)
        return y.reshape(x.shape)


def grouped_eval(models: Sequence[nn.Module]) -> nn.Module:
    """P members (eval mode) as one module ``(P, N, C, h, w) -> (P, N, classes)`` of grouped layers, for inference.

    Every leaf of ``check_packable`` but Linear/Conv2d/BatchNorm acts row by row, so it runs unchanged on the
    merged ``(P*N, ...)`` batch; the three are replaced by their grouped forms. No vmap: ``torch.export``
    keeps the batch dimension dynamic.
    """
    check_packable(models[0], type(models[0]).__name__)
    net = copy.deepcopy(models[0]).eval()
    for path, m in list(net.named_modules()):
        if list(m.children()):
            continue
        same = [dict(q.named_modules())[path] for q in models]
        if isinstance(m, nn.Linear):
            new = _GroupedLinear(same)
        elif isinstance(m, nn.Conv2d):
            new = _GroupedConv2d(same)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            new = _GroupedBatchNormEval(same)
        else:
            continue
        parent, _, name = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, name, new)
    return _MergedBatch(net, len(models))


class _MergedBatch(nn.Module):
    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (P, N, C, h, w) -> (P, N, classes)
        z = self.net(x.reshape(-1, *x.shape[2:]))  # (P*N, classes)
        return z.reshape(self.size, -1, z.shape[-1])
