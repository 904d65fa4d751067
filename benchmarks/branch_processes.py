"""What starting branch processes costs: ``api.train`` of K = 4 tiny branches, again and again, in one Ray.

    .venv/bin/python -m benchmarks.branch_processes [--rounds 4] [--tree DIR ...] [--out FILE]

One local Ray of 2 CPUs per tree (the driver's process, as a user's ``api`` session or a test suite's); in it
one split (synthetic 8x8 images, sub4, fc4: training takes well under a second, so a round's time is the
processes' start and stop) and ``--rounds`` calls of ``api.train`` (2 epochs, 1 CPU per branch: 2 waves of 2)
on fresh storage holding hard links to it. Per round: the wall time, the CPU the whole machine used over it
(``/proc/stat``: Ray's workers are not this process's children) and the processes the branches trained in.

``--tree DIR`` (repeatable) runs the same rounds against another checkout's code (``PYTHONPATH=DIR``, which the
Ray it starts passes to its workers), alternating the trees round by round, so that a drifting load hits
them alike: ``--tree /tmp/base --tree .`` compares a base commit's branch processes with this tree's.
Results: ``benchmarks/results/branch_processes.json``.

Result (2026-12-03, 2-core Intel Xeon VM, quiet; ``--tree /tmp/base --tree .``, base 7b36be1: an actor process per
branch and a progress-board actor per training): a later round took 13.85 s wall and 26.9 machine CPU s at the
base, 0.30 s and 0.54 s with branch tasks in reused workers and one board per driver; 16 branch processes per
Ray for its 16 branches at the base, 2 now (the first round starts them: 12.6 against 7.9 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# first: sets Ray's environment (a child imports the tree under test: its working directory, PYTHONPATH)
from benchmarks._common import REPO, begin, record, start_ray

DEFAULT_OUT = REPO / "benchmarks" / "results" / "branch_processes.json"
ROOT = Path("/tmp/spectral-bench-branch-processes")
RAY_CPUS = 2
CONFIG = {
    "source.name": "synthetic",
    "source.synthetic": {"train": 400, "test": 100, "height": 8, "width": 8, "classes": 4, "noise": 0.5},
    "split.rows": 2,
    "split.cols": 2,  # K = 4
    "model.name": "fc4",
    "train.epochs": 2,
    "train.batch_size": 64,
    "resources.cpus_per_branch": 1,  # 2 at once on 2 CPUs: 2 waves
    "ensemble.weights": "uniform",
    "ray.num_cpus": RAY_CPUS,
}


def machine_busy_s() -> float:
    """Busy CPU seconds of all cores since boot (``/proc/stat``'s first line, less idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def rounds_here(rounds: int, root: Path) -> list[dict]:
    """``rounds`` trainings in one Ray of this process (the code on ``sys.path``)."""
    from orchestrator import api, load_config

    start_ray(num_cpus=RAY_CPUS)
    shutil.rmtree(root, ignore_errors=True)
    split_cfg = load_config(None, {**CONFIG, "storage.uri": str(root / "split")})
    api.split(split_cfg)
    out = []
    for r in range(rounds):
        run = root / f"round{r}"
        shutil.copytree(root / "split" / "data", run / "data", copy_function=os.link)
        cfg = load_config(None, {**CONFIG, "storage.uri": str(run)})
        busy0, t0 = machine_busy_s(), time.perf_counter()
        outcome = api.train(cfg)
        wall, busy = time.perf_counter() - t0, machine_busy_s() - busy0
        pids = sorted({res["placement"]["pid"] for res in outcome.results.values()})
        out.append({"wall_s": round(wall, 2), "machine_cpu_s": round(busy, 2), "pids": pids})
    return out


def child(tree: Path, root: Path, rounds: int) -> list[dict]:
    """``rounds_here`` in a new process importing ``tree``'s code; its rounds as JSON on the last line."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    run_me = f"import runpy; runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"  # not its folder
    cmd = [sys.executable, "-c", run_me, "--child", str(root), "--rounds", str(rounds)]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _commit(tree: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None


def summary(runs: list[dict]) -> dict:
    later = [r for run in runs for r in run["rounds"][1:]]  # the first round of a Ray also starts its pool
    pids = [len({p for r in run["rounds"] for p in r["pids"]}) for run in runs]
    return {
        "later_round_wall_s_median": statistics.median(r["wall_s"] for r in later),
        "later_round_machine_cpu_s_median": statistics.median(r["machine_cpu_s"] for r in later),
        "branch_processes_per_ray": pids,
        "branches_per_ray": len(runs[0]["rounds"]) * 4,
    }


def markdown(res: dict) -> str:
    rows = [
        "| tree | first round: wall s, machine CPU s | later rounds (median): wall s, machine CPU s "
        "| branch processes per Ray |",
        "|:---|---:|---:|:---|",
    ]
    for tree, runs in res["runs"].items():
        s = res["summary"][tree]
        first = runs[0]["rounds"][0]
        rows.append(
            f"| `{tree}` at {res['commits'][tree] or '?'} | {first['wall_s']:.1f}, {first['machine_cpu_s']:.1f} "
            f"| {s['later_round_wall_s_median']:.2f}, {s['later_round_machine_cpu_s_median']:.2f} "
            f"| {', '.join(map(str, s['branch_processes_per_ray']))} for {s['branches_per_ray']} branches each |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="api.train calls per Ray")
    ap.add_argument("--repeats", type=int, default=2, help="Rays per tree (alternating trees)")
    ap.add_argument("--tree", type=Path, action="append", help="a checkout to measure (default: this one)")
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT})")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(rounds_here(args.rounds, args.child)))
        return
    begun = begin("branch_processes", argv)
    trees = args.tree or [REPO]
    runs: dict[str, list[dict]] = {str(t): [] for t in trees}
    for i in range(args.repeats):
        for tree in trees:
            rounds = child(tree, ROOT, args.rounds)
            runs[str(tree)].append({"repeat": i, "rounds": rounds})
            print(tree, json.dumps(rounds), flush=True)
    shutil.rmtree(ROOT, ignore_errors=True)
    commits = {str(t): _commit(t) for t in trees}
    res = {
        "config": CONFIG,
        "rounds": args.rounds,
        "commits": commits,
        "runs": runs,
        "summary": {t: summary(r) for t, r in runs.items()},
    }
    for tree, s in res["summary"].items():
        print(
            f"{tree}: a later round {s['later_round_wall_s_median']:.1f} s wall, "
            f"{s['later_round_machine_cpu_s_median']:.1f} machine CPU s; branch processes per Ray "
            f"{s['branch_processes_per_ray']} for {s['branches_per_ray']} branches"
        )
    record(begun, res, args.out or DEFAULT_OUT)


if __name__ == "__main__":
    main()
