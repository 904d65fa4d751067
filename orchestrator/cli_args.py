"""The command line's grammar: every subcommand, the options that do something there, and examples.

``orchestrator.cli`` runs what this parses. Conventions (docs/cli.md, "Behaviour"): ``-v``/``-vv`` before or
after the subcommand; ``--storage`` required where no default makes sense (``status``, ``resume``; for
``export``, ``predict``, ``serve`` a ``storage.uri`` of ``--config``/``--set`` does too); ``--overwrite`` only
where something can be overwritten; each subcommand's ``--help`` ends with examples.
"""

from __future__ import annotations

import argparse
from importlib import metadata

from tune.scoring import WEIGHT_RULES

PACKAGE = "spectral-tensor-orchestrator"  # pyproject.toml's [project] name
CHOSEN = "chosen"  # inference.model.CHOSEN: the run's ensemble/weights.json
WEIGHT_CHOICES = (CHOSEN, *WEIGHT_RULES, "exact")  # "exact": the reference fit that tune-weights writes beside "tuned"

RUN_COMMANDS = {
    "split": "write the K spectral sub-datasets (Ray Data) and the manifest",
    "run": "split if needed, train every branch, ensemble, report",
    "resume": "continue the run at --storage with the configuration it keeps (<run>/config.yaml)",
    "train": "train every unfinished branch as an isolated Ray actor",
    "evaluate": "ensemble the trained branches and write the report",
    "baseline": "train the same network on full-resolution images for comparison",
    "tune-weights": "search the ensemble weights with Ray Tune (and fit the exact reference)",
    "sweep": "Ray Tune search over branch-training hyperparameters (sweep.space); resumes if interrupted",
}
INFERENCE_COMMANDS = {
    "export": "write the run's ensemble as one torch.export program (FILE) plus FILE.json",
    "predict": "classify every PNG/JPEG under --input with Ray Data; Parquet under --output",
    "serve": "serve the run's ensemble over HTTP with Ray Serve (POST /predict, GET /docs, GET /healthz, GET /)",
}
STORAGE_COMMANDS = {
    "status": "what a run is doing or where it stopped, read from its storage alone (no Ray)",
}
OVERWRITING = ("split", "run", "sweep")  # the commands that can replace what is stored

EXAMPLES = {
    "split": [
        "spectral split --config configs/fashion_mnist.yaml --storage runs/fm",
        "spectral split --storage runs/fm --set split.rows=4 --set split.cols=4 --overwrite",
    ],
    "run": [
        "spectral run --config configs/fashion_mnist.yaml --storage runs/fm",
        "spectral run --storage s3://bucket/fm --set train.epochs=20 -v",
        "spectral run --storage runs/fm          (an existing run: continues with its config.yaml)",
    ],
    "resume": [
        "spectral resume --storage runs/fm",
        "spectral resume --storage s3://bucket/fm --set train.epochs=30   (more epochs; a split key is refused)",
    ],
    "train": ["spectral train --storage runs/fm --set resources.gpus_per_branch=0.5"],
    "evaluate": ["spectral evaluate --storage runs/fm --set ensemble.weights=geometric"],
    "baseline": ["spectral baseline --storage runs/fm --set baseline.engine=ddp --set baseline.workers=2"],
    "tune-weights": ["spectral tune-weights --storage runs/fm --set tune.num_samples=50"],
    "sweep": ["spectral sweep --config configs/sweep.yaml --storage runs/sweep"],
    "export": [
        "spectral export --storage runs/fm --output fm.pt2",
        "spectral export --storage runs/fm --output fm-uniform.pt2 --weights uniform",
    ],
    "predict": [
        "spectral predict --storage runs/fm --input photos/ --output preds/",
        "spectral predict --storage s3://bucket/fm --input s3://bucket/in --output s3://bucket/out --skip-bad",
    ],
    "serve": [
        "spectral serve --storage runs/fm --port 8000",
        "curl -F file=@shoe.png http://127.0.0.1:8000/predict     (open http://127.0.0.1:8000/docs)",
    ],
    "status": [
        "spectral status --storage runs/fm",
        "spectral status --storage s3://bucket/fm --watch",
        "spectral status --storage runs/fm --json | jq .branches",
    ],
    "config": [
        "spectral config --show",
        "spectral config --config configs/fashion_mnist.yaml --set train.epochs=3",
        "spectral config --markdown > table.md",
    ],
}

VERBOSE_HELP = (
    "-v: our debug logging, tracebacks of every error, and Ray's own INFO output (Ray Data progress, "
    "Tune's experiment box); -vv: also the libraries' debug lines (botocore, s3fs, urllib3). "
    "Before or after the command; credentials are masked at any verbosity"
)
CONFIG_HELP = (
    "YAML config, a path or any fsspec URI such as s3://.../best_config.yaml (read with the endpoint "
    "and keys of --set storage.* or the environment); defaults apply to keys it leaves out; without it: "
    "the run's own config.yaml where --storage holds a run, else the embedded default "
    "(configs/fashion_mnist.yaml)"
)
STORAGE_HELP = "the run's URI: a path, file://..., s3://bucket/prefix (sets storage.uri)"


def version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _epilog(name: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.get(name, []))


def _add_common(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=_epilog(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="count", default=0, dest="verbose_after", help=VERBOSE_HELP)
    return p


def _add_config_args(p: argparse.ArgumentParser, *, config: bool = True, storage_required: bool = False) -> None:
    if config:
        p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--storage", required=storage_required, help=STORAGE_HELP)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted config key")


def _add_inference_args(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default=CHOSEN,
        choices=WEIGHT_CHOICES,
        help="ensemble weights: chosen (the run's ensemble/weights.json) or a method the run evaluated (%(choices)s)",
    )
    if name == "export":
        p.add_argument("--output", required=True, help="the program's file (any fsspec URI); FILE.json beside it")
    elif name == "predict":
        p.add_argument("--input", required=True, help="folder or prefix of PNG/JPEG images, searched recursively")
        p.add_argument(
            "--output",
            required=True,
            help="folder or prefix for the Parquet files, committed with _SUCCESS and _manifest.json once complete",
        )
        p.add_argument("--batch-size", type=int, help="images per actor call (sets predict.batch_size)")
        p.add_argument("--concurrency", type=int, help="actors, each holding the ensemble (sets predict.concurrency)")
        p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them")
        p.add_argument("--overwrite", action="store_true", help="replace a complete earlier output at --output")
    else:
        p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds (0.0.0.0: every interface)")
        p.add_argument("--port", type=int, default=8000, help="HTTP port")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectral", description="Communication-free spectral tensor networks on Ray")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in RUN_COMMANDS.items():
        p = _add_common(sub, name, help_text)
        _add_config_args(p, config=name != "resume", storage_required=name == "resume")
        if name in OVERWRITING:
            p.add_argument("--overwrite", action="store_true", help="replace sub-datasets of a different configuration")
    for name, help_text in INFERENCE_COMMANDS.items():
        p = _add_common(sub, name, help_text)
        _add_config_args(p)  # --storage, or storage.uri in --config/--set: checked in cli.resolve_config
        _add_inference_args(name, p)
    p = _add_common(sub, "status", STORAGE_COMMANDS["status"])
    p.add_argument("--storage", required=True, help=STORAGE_HELP)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="storage.* keys to reach it (endpoint_url, credentials)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    p = _add_common(
        sub,
        "config",
        "print every config key, its default and its meaning; with --config or --set: "
        "the resolved configuration as commented YAML",
    )
    _add_config_args(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true", help="every key as a table (the default without --config/--set)")
    what.add_argument("--markdown", action="store_true", help="as docs/cli.md's markdown table")
    return parser
