"""Which packed form trains faster: torch.func (vmap) or hand-written grouped layers? (issue 20, step 1)

One training step (forward, backward, Adam) of P branches, batch 128 each, 1 torch thread, on this CPU:
``loop`` (P unpacked models one after another, what one process without packing does), ``vmap``
(``branches.packed.PackedNetwork``) and ``grouped`` (Conv2d groups=P on the channel-concatenated input,
BatchNorm over P*C channels, block-diagonal Linear as a batched einsum; this file, fc8/cnn8 only).

    PYTHONPATH=. .venv/bin/python scripts/packing_probe.py [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from branches import ModelConfig, build_model
from branches.packed import PackedNetwork

BATCH = 128
SHAPES = {4: (1, 14, 14), 16: (1, 7, 7)}  # Fashion-MNIST sub4 / sub16 branch input, P = K


class PackedLinear(nn.Module):
    """P block-diagonal Linear layers on (N, P*F_in) -> (N, P*F_out)."""

    def __init__(self, ms: list[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in ms]))  # (P, out, in)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in ms]))  # (P, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, o, i = self.weight.shape
        y = torch.baddbmm(self.bias[:, None, :], x.view(len(x), p, i).transpose(0, 1), self.weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(len(x), p * o)  # (N, P*out)


def grouped(models: list[nn.Sequential]) -> nn.Sequential:
    """The grouped-layer pack of P Sequential fc8/cnn8 models (input (N, P*C, h, w), output (N, P*classes))."""
    out = []
    for layers in zip(*models):
        m = layers[0]
        if isinstance(m, nn.Linear):
            out.append(PackedLinear(list(layers)))
        elif isinstance(m, nn.Conv2d):
            c = nn.Conv2d(
                m.in_channels * len(layers),
                m.out_channels * len(layers),
                m.kernel_size,
                m.stride,
                m.padding,
                groups=len(layers),
                bias=False,
            )
            c.weight.data.copy_(torch.cat([q.weight.detach() for q in layers]))
            out.append(c)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            out.append(type(m)(m.num_features * len(layers)))
        else:
            out.append(m)
    return nn.Sequential(*out)


def time_steps(step, steps: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def probe(name: str, p: int, steps: int) -> dict[str, float]:
    shape = SHAPES[p]
    torch.manual_seed(0)
    models = [build_model(ModelConfig(name=name), shape, 10) for _ in range(p)]
    x = torch.randn(p, BATCH, *shape)  # (P, N, C, h, w)
    y = torch.randint(0, 10, (p, BATCH))

    opts = [torch.optim.Adam(m.parameters()) for m in models]

    def loop() -> None:
        for i, (m, o) in enumerate(zip(models, opts)):
            o.zero_grad()
            F.cross_entropy(m(x[i]), y[i]).backward()
            o.step()

    pack = PackedNetwork(models).train()
    opt_v = torch.optim.Adam(pack.parameters())

    def vm() -> None:
        opt_v.zero_grad()
        logits = pack(x)  # (P, N, 10)
        F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(p, -1).mean(1).sum().backward()
        opt_v.step()

    gp = grouped(models).train()
    opt_g = torch.optim.Adam(gp.parameters())
    xg = x.transpose(0, 1).reshape(BATCH, p * shape[0], *shape[1:])  # (N, P*C, h, w)

    def gr() -> None:
        opt_g.zero_grad()
        logits = gp(xg).view(BATCH, p, 10).transpose(0, 1)  # (P, N, 10)
        F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(p, -1).mean(1).sum().backward()
        opt_g.step()

    return {"loop": time_steps(loop, steps), "vmap": time_steps(vm, steps), "grouped": time_steps(gr, steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}; ms per training step of P branches (batch {BATCH} each)")
    print(f"{'model':6} {'P':>3} {'loop':>9} {'vmap':>9} {'grouped':>9}")
    for name in ("fc8", "cnn8"):
        for p in (4, 16):
            t = probe(name, p, args.steps)
            print(f"{name:6} {p:>3} " + " ".join(f"{1e3 * t[k]:9.2f}" for k in ("loop", "vmap", "grouped")))


if __name__ == "__main__":
    main()
