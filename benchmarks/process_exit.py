"""How long a Ray actor process that loaded torch takes to exit, with and without ``freeze_at_exit``.

    .venv/bin/python -m benchmarks.process_exit [--quick] [--out FILE]

An actor imports torch, builds a network and an AdamW optimizer (which imports ``torch._dynamo``), as a
branch actor does; its handle is then dropped, and the CPU its process uses from then until it is gone
is its exit. Alternating the two variants, ``--rounds`` of each, side by side in one Ray; the actor's own
CPU from ``/proc/<pid>/stat``. ``data_split/shutdown.py`` says what ``freeze_at_exit`` does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchmarks._common import RESULTS, begin, record, start_ray

DEFAULT_OUT = RESULTS / "process_exit.json"
HZ = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float | None:
    """The process's user + system CPU seconds; None once it is gone or a zombie."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else (int(fields[11]) + int(fields[12])) / HZ


class Trainer:
    """What a branch actor holds when it is done: torch, a network and its optimizer."""

    def __init__(self, freeze: bool) -> None:
        import torch

        from data_split.shutdown import freeze_at_exit

        net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(196, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
        self.optimizer = torch.optim.AdamW(net.parameters())
        if freeze:
            freeze_at_exit()

    def pid(self) -> int:
        return os.getpid()


def exit_cost(ray, freeze: bool, deadline_s: float = 60.0) -> dict:
    actor = ray.remote(num_cpus=1)(Trainer).remote(freeze)
    pid = ray.get(actor.pid.remote())
    before, t0 = cpu_s(pid), time.monotonic()
    last = before
    del actor  # out of scope: Ray asks the worker to exit, as when a branch actor's run ends
    while (now := cpu_s(pid)) is not None:
        last = now
        if time.monotonic() - t0 > deadline_s:
            raise RuntimeError(f"actor process {pid} still alive {deadline_s:.0f} s after its handle was dropped")
        time.sleep(0.005)
    return {"exit_cpu_s": round(last - before, 3), "exit_wall_s": round(time.monotonic() - t0, 3)}


def markdown(res: dict) -> str:
    rows = ["| variant | exit CPU s per actor process (median) | each round |", "|:---|---:|:---|"]
    for name, runs in res["runs"].items():
        each = ", ".join(f"{r['exit_cpu_s']:.2f}" for r in runs)
        rows.append(f"| {name} | {res[f'{name}_exit_cpu_s_median']:.2f} | {each} |")
    rows += [
        "",
        f"Saved per process: {res['saved_cpu_s_per_process']:.2f} CPU s ({res['rounds']} rounds, alternating).",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round of each: a smoke test")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT}; quick: none)")
    args = ap.parse_args(argv)
    begun = begin("process_exit", argv)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    rounds = 1 if args.quick else args.rounds
    import ray

    start_ray(num_cpus=1)
    try:
        runs = {"plain": [], "freeze_at_exit": []}
        for _ in range(rounds):
            for name in runs:
                runs[name].append(exit_cost(ray, name == "freeze_at_exit"))
    finally:
        ray.shutdown()
    res = {
        "rounds": rounds,
        "runs": runs,
        **{f"{name}_exit_cpu_s_median": statistics.median(r["exit_cpu_s"] for r in rs) for name, rs in runs.items()},
    }
    plain, frozen = res["plain_exit_cpu_s_median"], res["freeze_at_exit_exit_cpu_s_median"]
    res["saved_cpu_s_per_process"] = round(plain - frozen, 3)
    print(f"exit CPU per actor process (median of {rounds}): plain {plain:.2f} s, freeze_at_exit {frozen:.2f} s")
    record(begun, res, out)
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
