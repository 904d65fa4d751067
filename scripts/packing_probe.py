"""Which packed form trains faster: torch.func's vmap or the grouped layers of ``branches.packed``? (issue 20)

One training step (forward, backward, Adam with ``foreach``) of P branches, batch 128 each, 1 torch thread, on
this CPU: ``loop`` (P unpacked models one after another, what one process without packing does), ``vmap``
(``vmap(functional_call)`` over the stacked tensors, which computes the same for any forward; the pack's
form until it was measured here) and ``grouped`` (``branches.packed.PackedNetwork``: the architecture once on
the channel-merged layout, Conv2d with P times its groups, BatchNorm over P x C channels, Linear as one
batched matmul). Steps alternate between the forms, ``--repeats`` times, and each form's median is printed.

    PYTHONPATH=. .venv/bin/python scripts/packing_probe.py [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from branches import ModelConfig, build_model
from branches.packed import PackedNetwork

BATCH = 128
SHAPES = {4: (1, 14, 14), 16: (1, 7, 7)}  # Fashion-MNIST sub4 / sub16 branch input, P = K
WIDTH = {"cnn8": 16}  # benchmarks/packing.py's cnn8


def time_steps(step, steps: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def forms(name: str, p: int):
    """name -> one training step of that form, on the same P initialisations and batches."""
    shape = SHAPES[p]
    torch.manual_seed(0)
    models = [build_model(ModelConfig(name=name, width=WIDTH.get(name)), shape, 10) for _ in range(p)]
    x = torch.randn(p, BATCH, *shape)  # (P, N, C, h, w)
    y = torch.randint(0, 10, (p, BATCH))

    def packed_step(forward, params):
        opt = torch.optim.Adam(params, foreach=True)

        def step() -> None:
            opt.zero_grad()
            logits = forward(x)  # (P, N, 10)
            F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(p, -1).mean(1).sum().backward()
            opt.step()

        return step

    loop_models = [copy.deepcopy(m).train() for m in models]
    opts = [torch.optim.Adam(m.parameters(), foreach=True) for m in loop_models]

    def loop() -> None:
        for i, (m, o) in enumerate(zip(loop_models, opts)):
            o.zero_grad()
            F.cross_entropy(m(x[i]), y[i]).backward()
            o.step()

    params, buffers = stack_module_state([copy.deepcopy(m).train() for m in models])
    params = {n: t.detach().requires_grad_() for n, t in params.items()}
    base = copy.deepcopy(models[0]).to("meta").train()

    def vmapped(xs: torch.Tensor) -> torch.Tensor:
        one = lambda pr, b, xb: functional_call(base, (pr, b), (xb,))  # noqa: E731
        return vmap(one, randomness="different")(params, buffers, xs)

    pack = PackedNetwork(models, shape).train()
    return {
        "loop": loop,
        "vmap": packed_step(vmapped, list(params.values())),
        "grouped": packed_step(pack, list(pack.parameters())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}; ms per training step of P branches (batch {BATCH} each)")
    print(f"{'model':6} {'P':>3} {'loop':>9} {'vmap':>9} {'grouped':>9}")
    for name in ("fc8", "cnn8"):
        for p in (4, 16):
            steps = forms(name, p)
            times: dict[str, list[float]] = {k: [] for k in steps}
            for _ in range(args.repeats):
                for k, step in steps.items():
                    times[k].append(time_steps(step, args.steps))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{name:6} {p:>3} " + " ".join(f"{1e3 * med[k]:9.2f}" for k in ("loop", "vmap", "grouped")))


if __name__ == "__main__":
    main()
