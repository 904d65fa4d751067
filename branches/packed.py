"""P branches with disjoint parameters as one network: one forward, one backward, one optimizer step.

``PackedNetwork(models)`` stacks the parameters and buffers of P copies of one architecture
(``torch.func.stack_module_state``: every tensor gains a leading ``(P, ...)`` axis) and runs the
architecture once on the *channel-merged* layout ``(N, P*C, h, w)``, member p's channels at
``p*C .. p*C+C-1``: a Conv2d is one convolution with ``P`` times its groups, a BatchNorm one
normalisation over ``P x C`` channels, a Linear one batched matmul over the members, and every other
known leaf (ReLU, pools, Flatten, Dropout) already acts channel by channel; each is exactly P
independent ones, so the math is that of P separate branches. Input ``(P, N, C, h, w)``, logits
``(P, N, classes)``. A model whose own forward mixes channels (a concatenation, a channel shuffle)
would mix members: given ``in_shape``, the pack checks its forward against each member's own and
refuses one that differs. (``torch.func.vmap`` of ``functional_call`` computes the same for any
forward, but its per-operation overhead made training steps 1.10-1.33x slower on one CPU thread, fc8 and
cnn8 at sub4 and sub16: ``scripts/packing_probe.py``, numbers in docs/how-it-works.md.)

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
from torch.func import stack_module_state

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
    """P copies of one architecture with disjoint parameters, evaluated in one pass on the channel-merged layout."""

    def __init__(self, models: Sequence[nn.Module], in_shape: Sequence[int] | None = None) -> None:
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
        self._param_index = {n: i for i, n in enumerate(self._param_names)}
        self._buffer_index = {n: i for i, n in enumerate(self._buffer_names)}
        for i, n in enumerate(self._param_names):
            self.register_parameter(f"p{i}", nn.Parameter(params[n].detach().clone()))
        for i, n in enumerate(self._buffer_names):
            self.register_buffer(f"b{i}", buffers[n].clone())
        base = copy.deepcopy(models[0]).to("meta")  # the architecture only; never trained, not a submodule
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_merged", _merged_tree(self))  # reads the stacked tensors; holds none
        if in_shape is not None:
            self._check_forward(models, tuple(in_shape))

    # -- forward --------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PackedNetwork:
        super().train(mode)
        self._base.train(mode)
        self._merged.train(mode)
        return self

    def _stacked(self, name: str) -> torch.Tensor:
        """The ``(P, ...)`` tensor of the architecture's parameter or buffer ``name`` (``"1.weight"``)."""
        if name in self._param_index:
            return getattr(self, f"p{self._param_index[name]}")
        return getattr(self, f"b{self._buffer_index[name]}")

    def _check_forward(self, models: Sequence[nn.Module], in_shape: tuple[int, ...]) -> None:
        """Refuse a model whose forward mixes channels (so members): the pack's eval logits must be the members'."""
        dtype = next(models[0].parameters()).dtype
        x = torch.randn(self.size, 2, *in_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        modes = [m.training for m in models]
        try:
            with torch.no_grad():
                want = torch.stack([m.eval()(x[p]) for p, m in enumerate(models)])
                got = self.eval()(x)
        finally:
            for m, mode in zip(models, modes):
                m.train(mode)
            self.train(modes[0])
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            raise PackError(
                f"{type(models[0]).__name__}: its forward mixes channels (a concatenation or a reshape across them), "
                "so packed members would mix; set resources.branches_per_process: 1"
            )

    def _tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {n: getattr(self, f"p{i}") for i, n in enumerate(self._param_names)}
        buffers = {n: getattr(self, f"b{i}") for i, n in enumerate(self._buffer_names)}
        return params, buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (P, N, C, h, w) -> logits (P, N, classes); branch p sees only x[p] and its own parameters."""
        if x.shape[0] != self.size:
            raise ValueError(f"a pack of {self.size} takes inputs (P={self.size}, N, ...), got {tuple(x.shape)}")
        size, n = x.shape[:2]
        merged = x.transpose(0, 1).reshape(n, size * x.shape[2], *x.shape[3:])  # (N, P*C, h, w)
        z = self._merged(merged)  # (N, P*classes): member p's logits at p*classes .. (p+1)*classes-1
        return z.reshape(n, size, -1).transpose(0, 1)

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


# -- the architecture on the channel-merged layout (N, P*C, ...): leaves that read the pack's stacked tensors --
class _OnMerged(nn.Module):
    """A Linear, Conv2d or BatchNorm of the pack on the merged layout. It owns no tensor: it reads the pack's
    ``(P, ...)`` ones by name at each call (``.to()`` replaces buffers, so no reference is kept)."""

    def __init__(self, pack: PackedNetwork, path: str, like: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_pack", pack)  # not a submodule: the pack holds this tree, not the other way
        self.path, self.size = path, pack.size
        object.__setattr__(self, "_like", like)  # the meta module: its hyper-parameters

    def t(self, attr: str) -> torch.Tensor | None:
        name = f"{self.path}.{attr}" if self.path else attr
        known = name in self._pack._param_index or name in self._pack._buffer_index
        return self._pack._stacked(name) if known else None


class _MergedLinear(_OnMerged):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., P*I) -> (..., P*O): one batched matmul
        w, b = self.t("weight"), self.t("bias")  # (P, O, I), (P, O)
        lead = x.shape[:-1]
        h = x.reshape(-1, self.size, w.shape[2]).transpose(0, 1)  # (P, M, I)
        wt = w.transpose(1, 2)
        y = torch.bmm(h, wt) if b is None else torch.baddbmm(b[:, None, :], h, wt)  # (P, M, O)
        return y.transpose(0, 1).reshape(*lead, self.size * w.shape[1])


class _MergedConv2d(_OnMerged):
    def __init__(self, pack: PackedNetwork, path: str, like: nn.Conv2d) -> None:
        if like.padding_mode != "zeros":
            raise PackError(f"Conv2d {path} with padding_mode {like.padding_mode!r} does not pack")
        super().__init__(pack, path, like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, P*C, h, w) -> (N, P*O, h', w'): one grouped conv
        m, w, b = self._like, self.t("weight"), self.t("bias")  # (P, O, C/g, kh, kw), (P, O)
        return F.conv2d(
            x,
            w.reshape(-1, *w.shape[2:]),
            None if b is None else b.reshape(-1),
            m.stride,
            m.padding,
            m.dilation,
            m.groups * self.size,
        )


class _MergedBatchNorm(_OnMerged):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, P*C, ...): P x C channels, each normalised alone
        m, w, b = self._like, self.t("weight"), self.t("bias")
        if self.training:
            self.t("num_batches_tracked").add_(1)  # as each member's own BatchNorm counts (momentum is not None)
        return F.batch_norm(
            x,
            self.t("running_mean").view(-1),  # views of the contiguous (P, C) buffers: updated in place
            self.t("running_var").view(-1),
            None if w is None else w.reshape(-1),
            None if b is None else b.reshape(-1),
            self.training,
            m.momentum,
            m.eps,
        )


def _merged_tree(pack: PackedNetwork) -> nn.Module:
    """The pack's architecture with its Linear, Conv2d and BatchNorm leaves on the merged layout; the other
    known leaves (``PACKABLE``) act channel by channel and stay as they are."""
    net = copy.deepcopy(pack._base)
    for path, m in list(net.named_modules()):
        if list(m.children()):
            continue
        if isinstance(m, nn.Linear):
            new = _MergedLinear(pack, path, m)
        elif isinstance(m, nn.Conv2d):
            new = _MergedConv2d(pack, path, m)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            new = _MergedBatchNorm(pack, path, m)
        elif isinstance(m, nn.Flatten) and m.start_dim != 1:
            raise PackError(f"Flatten {path} with start_dim {m.start_dim} does not pack (1 does)")
        else:
            continue
        parent, _, name = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, name, new)
    return net


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
        x = x.reshape(self.size, -1, x.shape[-1])
        w = self.weight.transpose(1, 2)
        y = torch.bmm(x, w) if self.bias is None else torch.baddbmm(self.bias[:, None, :], x, w)  # (P, N, O)
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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (eval mode, changed in place) with every BatchNorm that directly follows a Linear or Conv2d in an
    ``nn.Sequential`` folded into that layer's weights (``torch.nn.utils.fusion``) and replaced by an Identity:
    the same function, without the BatchNorm's pass over the activations (fc8, fc4 and cnn8 are such pairs)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            layer, bn = seq[i], seq[i + 1]
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
                continue
            if type(layer) is nn.Linear and type(bn) is nn.BatchNorm1d and bn.num_features == layer.out_features:
                seq[i], seq[i + 1] = fuse_linear_bn_eval(layer, bn), nn.Identity()
            elif type(layer) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.num_features == layer.out_channels:
                seq[i], seq[i + 1] = fuse_conv_bn_eval(layer, bn), nn.Identity()
    return model


def grouped_eval(models: Sequence[nn.Module]) -> nn.Module:
    """P members (eval mode) as one module ``(P, N, C, h, w) -> (P, N, classes)`` of grouped layers, for inference.

    Each member's BatchNorms that follow a Linear/Conv2d are folded into it (``fold_batchnorm``; the members
    themselves are left as they are). Every leaf of ``check_packable`` but Linear/Conv2d/BatchNorm acts row by
    row, so it runs unchanged on the merged ``(P*N, ...)`` batch; the three are replaced by their grouped
    forms. No vmap: ``torch.export`` keeps the batch dimension dynamic.
    """
    check_packable(models[0], type(models[0]).__name__)
    models = [fold_batchnorm(copy.deepcopy(m).eval()) for m in models]
    net = models[0]  # a copy already: its leaves become the grouped layers (each built before it replaces one)
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
