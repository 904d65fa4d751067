"""A Ray-free GPU check: the baseline against 4 sub4 branches sharing one GPU, cnn8 and resnet18, export on CUDA.

    .venv/bin/python -m benchmarks.gpu_branches --prepare DIR                 # here, with Ray: the splits (< 60 MiB)
    python -m benchmarks.gpu_branches --data DIR --out benchmarks/results/gpu_branches.json   # where the GPU is
    python -m benchmarks.gpu_branches --cpu-smoke                             # seconds, CPU, written nowhere
    benchmarks/gpu_branches.sh DIR                                            # the GPU run, with its checks

For a GPU machine without Ray (its wheel does not fit what can be carried there): this module and what it
imports (``data_split``'s readers, ``branches``, ``inference``) never import ``ray``
(``tests/test_gpu_branches.py`` blocks it), and nothing here needs torch newer than 2.11.

``--prepare DIR`` (needs Ray) splits Fashion-MNIST (``source.limit`` images of each source split) into
``DIR/sub4`` (2x2 ``dct``, K = 4) and ``DIR/baseline`` (1x1, K = 1, the full-resolution images), uint8.
``--data DIR`` then measures, for each model (cnn8, resnet18), the same epochs and batch size:

- ``baseline``: the K = 1 branch, one process;
- ``sub4``: the 4 branches as 4 concurrent processes sharing the GPU (images/s: all their training images
  over the group's wall time; peak memory: the largest process's ``torch.cuda.max_memory_allocated``);
- ``packed``: the 4 branches in one process, once ``resources.branches_per_process`` exists (skipped
  with a note until then);
- accuracy: the baseline's test accuracy, and the uniform ensemble's from the branches' test logits;
- ``export``: the sub4 ensemble as one ``torch.export`` program (``inference.export_ensemble``), loaded
  back, moved to the device and run on the test images (the baseline split's pixels): its accuracy must
  match the ensemble's;
- ``stream``: branch 0 of cnn8 again with ``train.data: stream``, so the pinned-memory, ``non_blocking``
  host-to-device path runs (``branches._stream.to_device``).

bf16 autocast (``train.amp``) is on for every CUDA run. Every training runs in a fresh process
(``--worker``), so its peak memory and its CUDA context are its own. One JSON with the GPU's name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "gpu_branches.json"
MODELS = ("cnn8", "resnet18")
FASHION = "/usr/share/datasets/fashion-mnist"
PREPARE_LIMIT = 30_000  # images of each source split in --prepare (Fashion-MNIST test has 10k): < 60 MiB in all
PACKED_NOTE = "skipped: resources.branches_per_process (packed branches, issue 20) is not on this branch yet"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data -------------------------------------------------------------------------------------------------
def prepare(out: Path, limit: int = PREPARE_LIMIT) -> dict:
    """Fashion-MNIST sub4 and the K = 1 baseline under ``out``, split with Ray (run where Ray is)."""
    import ray

    from data_split import RunStorage, SourceConfig, SplitConfig, split_dataset

    src = SourceConfig(name="fashion-mnist", root=FASHION, limit=limit)
    sizes = {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name, rc in (("sub4", 2), ("baseline", 1)):
            split_dataset(src, SplitConfig(rows=rc, cols=rc), RunStorage(str(out / name)), overwrite=True)
            sizes[name] = sum(p.stat().st_size for p in (out / name).rglob("*") if p.is_file())
    finally:
        ray.shutdown()
    say(f"prepared {out}: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
    return sizes


def prepare_synthetic(out: Path) -> None:
    """A tiny synthetic sub4 + baseline pair without Ray (``--cpu-smoke``)."""
    from data_split import RunStorage, SourceConfig, SplitConfig, SyntheticConfig, make_source
    from data_split.layout import write_manifest
    from data_split.parts import build_manifest
    from data_split.pipeline import write_single_process

    src = SourceConfig(name="synthetic", synthetic=SyntheticConfig(train=192, test=64, height=8, width=8, classes=4))
    for name, rc in (("sub4", 2), ("baseline", 1)):
        split, storage = SplitConfig(rows=rc, cols=rc), RunStorage(str(out / name))
        source = make_source(src)
        write_manifest(storage, build_manifest(source, src, split, write_single_process(source, split, storage)))


def fresh_run(data: Path, work: Path) -> Path:
    """A run folder for one measurement: the split's ``data`` linked in, no branches yet."""
    work.mkdir(parents=True)
    (work / "data").symlink_to((data / "data").resolve(), target_is_directory=True)
    return work


# -- one training, in its own process ---------------------------------------------------------------------
def worker(run: str, k: int, model: str, width: int, epochs: int, batch: int, device: str, mode: str) -> None:
    """Train branch ``k`` of ``run``; print its result (with the process's peak GPU memory) as one JSON line."""
    print("RESULT " + json.dumps(train(run, k, model, width, epochs, batch, device, mode)), flush=True)


def train(run: str, k: int, model: str, width: int, epochs: int, batch: int, device: str, mode: str) -> dict:
    import torch

    from branches import ModelConfig, TrainConfig, train_branch
    from data_split import RunStorage

    r = train_branch(
        RunStorage(run),
        k,
        ModelConfig(name=model, width=width or None),
        TrainConfig(epochs=epochs, batch_size=batch, data=mode, schedule="none", amp=True, threads=1),
        device=device,
    )
    r["peak_gpu_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return r


def launch(
    run: Path, ks: list[int], args: argparse.Namespace, model: str, mode: str = "memory"
) -> tuple[list[dict], float]:
    """Branches ``ks`` of ``run`` as concurrent processes; their results and the group's wall seconds.

    ``--cpu-smoke`` trains them one after the other in this process instead (the start-up of 6 interpreters
    importing torch would be most of its seconds).
    """
    if args.cpu_smoke:
        t0 = time.perf_counter()
        rs = [train(str(run), k, model, args.width, args.epochs, args.batch, args.device, mode) for k in ks]
        return rs, time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.gpu_branches",
                "--worker",
                str(run),
                str(k),
                model,
                str(args.width),
                str(args.epochs),
                str(args.batch),
                args.device,
                mode,
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in ks
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    for k, p in zip(ks, procs):
        if p.returncode:
            raise RuntimeError(f"branch {k} of {run} ({model}) failed with exit status {p.returncode}")
    return [json.loads(next(ln for ln in o.splitlines() if ln.startswith("RESULT "))[7:]) for o in outs], wall


def train_rows(run: Path) -> int:
    from data_split import RunStorage, load_manifest

    return int(load_manifest(RunStorage(str(run))).branches[0].splits["train"].rows)


def summary(results: list[dict], wall: float, rows: int) -> dict:
    """The group's figures: ``images_per_s`` is every process's training images over the group's wall time
    (process start-up included); ``images_per_s_each`` each branch's own training throughput."""
    images = rows * sum(int(r["epochs"]) for r in results)
    return {
        "processes": len(results),
        "wall_s": round(wall, 2),
        "images_per_s": round(images / wall),
        "images_per_s_each": [round(r["images_per_s"]) for r in results],
        "peak_gpu_bytes": max(r["peak_gpu_bytes"] for r in results),
        "peak_memory_bytes": max(int(r.get("peak_memory_bytes") or 0) for r in results),
        "test_acc_each": [r["test_acc"] for r in results],
        "train_seconds_each": [r["train_seconds"] for r in results],
    }


# -- accuracy and export ------------------------------------------------------------------------------------
def ensemble_accuracy(run: Path, K: int) -> float:
    """The uniform ensemble's test accuracy from the branches' logits (rows in the same idx order)."""
    import numpy as np

    from data_split import RunStorage, layout

    storage = RunStorage(str(run))
    load = lambda rel: np.load(storage.path(rel))  # noqa: E731
    logits = np.mean([load(layout.logits(k, "test")) for k in range(K)], axis=0)  # (N, classes)
    y = load(layout.rows(0, "test"))[:, 1]
    return float((logits.argmax(1) == y).mean())


def exported_accuracy(run: Path, baseline: Path, K: int, device: str) -> dict:
    """Export the uniform ensemble, load the program, run it on ``device`` on the test pixels: its accuracy."""
    import numpy as np
    import torch

    from data_split import RunStorage, load_manifest, read_branch
    from inference import export_ensemble

    out = run / "export" / "ensemble.pt2"
    t0 = time.perf_counter()
    card = export_ensemble(RunStorage(str(run)), str(out), weights=[1.0 / K] * K)
    export_s = time.perf_counter() - t0
    base = RunStorage(str(baseline))
    test = read_branch(base, load_manifest(base), "test", 0)  # K = 1: the pixels, as uint8 codes of x / 255
    pixels = torch.from_numpy(np.ascontiguousarray(test.values()))  # (N, C, H, W) in [0, 1]
    program = torch.export.load(str(out)).module().to(device)
    preds = []
    with torch.no_grad():
        for x in pixels.split(1024):
            preds.append(
                program(x.pin_memory().to(device, non_blocking=True) if device == "cuda" else x).argmax(1).cpu()
            )
    acc = float((torch.cat(preds).numpy() == test.y).mean())
    return {
        "test_acc": acc,
        "export_s": round(export_s, 2),
        "bytes": out.stat().st_size,
        "device": device,
        "card_test_acc": card.get("test_acc"),
    }


# -- the whole check ---------------------------------------------------------------------------------------
def measure(data: Path, args: argparse.Namespace) -> dict:
    res: dict = {
        "epochs": args.epochs,
        "batch": args.batch,
        "device": args.device,
        "amp": "bf16 autocast on CUDA",
        "packed": PACKED_NOTE,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-branches-") as tmp:
        for model in args.models:
            t0 = time.perf_counter()
            base = fresh_run(data / "baseline", Path(tmp) / model / "baseline")
            sub4 = fresh_run(data / "sub4", Path(tmp) / model / "sub4")
            b, b_wall = launch(base, [0], args, model)
            say(f"{model} baseline: {b[0]['images_per_s']:.0f} img/s, test acc {b[0]['test_acc']:.4f}")
            s, s_wall = launch(sub4, [0, 1, 2, 3], args, model)
            ens = ensemble_accuracy(sub4, 4)
            say(f"{model} sub4 x 4 processes: {s_wall:.1f} s, ensemble test acc {ens:.4f}")
            row = {
                "baseline": summary(b, b_wall, train_rows(base)),
                "sub4": {**summary(s, s_wall, train_rows(sub4)), "ensemble_test_acc": ens},
                "packed": PACKED_NOTE,
            }
            try:
                row["export"] = exported_accuracy(sub4, data / "baseline", 4, args.device)
                row["export"]["matches_ensemble"] = abs(row["export"]["test_acc"] - ens) <= 0.005
                say(f"{model} exported on {args.device}: test acc {row['export']['test_acc']:.4f}")
            except Exception as e:  # recorded, so that one run shows every failure on CUDA
                row["export"] = {"error": f"{type(e).__name__}: {e}"}
                say(f"{model} export failed: {e}")
            if model == args.models[0]:
                st = fresh_run(data / "sub4", Path(tmp) / model / "stream")
                r, wall = launch(st, [0], args, model, mode="stream")
                row["stream_branch0"] = {**summary(r, wall, train_rows(st)), "data_mode": r[0]["data_mode"]}
                say(f"{model} branch 0 streamed: {r[0]['images_per_s']:.0f} img/s")
            row["seconds"] = round(time.perf_counter() - t0, 1)
            res["models"][model] = row
    return res


def machine() -> dict:
    import numpy
    import pyarrow
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": numpy.__version__,
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"),
    }
    if torch.cuda.is_available():
        info.update(gpus=torch.cuda.device_count(), gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", type=Path, help="write the splits here (needs Ray) and stop")
    ap.add_argument("--data", type=Path, help="the folder --prepare wrote")
    ap.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default with --data: {OUT.relative_to(REPO)})"
    )
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny synthetic data, CPU, cnn8, 1 epoch: seconds")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=0, help="cnn8 base channels (0: the model's default)")
    ap.add_argument("--device", default=None, help="default: cuda where available, else cpu")
    ap.add_argument("--worker", nargs=8, metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run, k, model, width, epochs, batch, device, mode = args.worker
        return worker(run, int(k), model, int(width), int(epochs), int(batch), device, mode)
    if args.prepare:
        prepare(args.prepare)
        return None
    import torch

    from benchmarks._common import begin, record

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    begun = begin("gpu_branches", argv)
    if args.cpu_smoke:
        args.device, args.models, args.epochs, args.batch, args.width = "cpu", ["cnn8"], 1, 64, 4
        with tempfile.TemporaryDirectory(prefix="gpu-branches-smoke-") as tmp:
            prepare_synthetic(Path(tmp))
            res = measure(Path(tmp), args)
        out = args.out
    else:
        if args.data is None:
            ap.error("one of --data, --prepare or --cpu-smoke is needed")
        res = measure(args.data, args)
        out = args.out or OUT
    doc = record(begun, res, out, machine=machine())
    print(json.dumps(doc["results"], indent=2))
    return None


def markdown(res: dict) -> str:
    """Per model: the baseline, the 4 concurrent branches, their ensemble and its exported program."""
    lines = ["| model | run | images/s | peak GPU memory | test accuracy |", "| --- | --- | ---: | ---: | ---: |"]
    for model, row in res["models"].items():
        b, s, e = row["baseline"], row["sub4"], row.get("export", {})
        lines.append(
            f"| {model} | baseline (1 process) | {b['images_per_s']:,} | {b['peak_gpu_bytes'] / 2**20:,.0f} MiB | "
            f"{b['test_acc_each'][0]:.4f} |"
        )
        lines.append(
            f"| {model} | sub4, 4 processes | {s['images_per_s']:,} | "
            f"{s['peak_gpu_bytes'] / 2**20:,.0f} MiB each (max) | "
            f"{s['ensemble_test_acc']:.4f} (uniform ensemble) |"
        )
        lines.append(
            f"| {model} | exported ensemble on {e.get('device', '?')} | | | {e['test_acc']:.4f} |"
            if "test_acc" in e
            else f"| {model} | export | | | failed: {e.get('error')} |"
        )
    lines += ["", f"{res['epochs']} epochs, batch {res['batch']}, {res['amp']}; {res['packed']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
