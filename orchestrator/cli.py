"""`spectral`: the command line. Parse, build the config, call the API, print what it returned.

    spectral split    --config configs/fashion_mnist.yaml [--storage URI] [--set KEY=VALUE ...] [--overwrite]
    spectral run      --config configs/fashion_mnist.yaml [--storage URI] [--set KEY=VALUE ...]
    spectral train | evaluate | baseline | tune-weights | sweep  (same options)
    spectral export   --storage URI --output FILE [--weights METHOD]
    spectral predict  --storage URI --input URI --output URI [--batch-size N] [--concurrency N] [--skip-bad]
    spectral serve    --storage URI [--host 127.0.0.1] [--port 8000]
    spectral config   [--show | --markdown]   every config key, its default and its meaning

Without ``--config`` the defaults apply: the embedded default run (``configs/fashion_mnist.yaml``);
``--config`` may be any fsspec URI (``s3://.../tune/best_config.yaml``). A ``SpectralError``
(docs/design.md, "Errors") prints as one line; anything else, and everything with ``-v``, prints its
traceback. ``-v`` (our debug lines, Ray's INFO output) and ``-vv`` (also botocore/s3fs/urllib3) go before
or after the command; credentials are masked in every line at any verbosity (``orchestrator._logging``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.markup import escape

from data_split import RunStorage, layout
from data_split.errors import user_error
from orchestrator import api
from orchestrator._logging import add_secrets, configure_logging, mask, quiet_ray
from orchestrator._ray import init_ray
from orchestrator.config import SpectralConfig, config_markdown, load_config, parse_set
from orchestrator.report_text import ensemble_table, paper_table
from orchestrator.summaries import (
    baseline_line,
    config_table,
    progress_table,
    sources_table,
    split_table,
    training_lines,
    tune_line,
)
from orchestrator.sweep_text import sweep_table

console = Console(soft_wrap=True)  # a printed path or message stays on one line (copyable); tables fit the width
log = logging.getLogger("spectral")


# -- commands ----------------------------------------------------------------------------------------
class _LiveProgress:
    """Live per-branch table while training; the final state stays on screen."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.live = Live(progress_table({}, epochs).rich(), console=console, refresh_per_second=2, transient=False)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)
        if not console.is_terminal:  # rich ends a live display with a newline only on a terminal
            console.line()

    def __call__(self, snapshot: dict[int, dict]) -> None:
        self.live.update(progress_table(snapshot, self.epochs).rich())


def print_split(cfg: SpectralConfig, result) -> None:
    """What `split` and `run` show of the split: bytes per branch, rows by source (if several), where it is."""
    console.print(split_table(result).rich())
    if len(result.manifest.sources) > 1:
        console.print(sources_table(result.manifest).rich())
    console.print(f"sub-datasets: {RunStorage.from_config(cfg.storage).url(layout.DATA)}")


def cmd_split(cfg: SpectralConfig, args) -> None:
    print_split(cfg, api.split(cfg, overwrite=args.overwrite))


def cmd_train(cfg: SpectralConfig, args) -> None:
    with _LiveProgress(cfg.train.epochs) as progress:
        outcome = api.train(cfg, on_progress=progress)
    print_training(outcome)


def print_training(outcome) -> None:
    for line in training_lines(outcome):
        console.print(line)


def cmd_evaluate(cfg: SpectralConfig, args) -> None:
    report = api.evaluate(cfg)
    console.print(paper_table(report).rich())
    console.print(f"report: {RunStorage.from_config(cfg.storage).url(layout.report('report.md'))}")


def cmd_run(cfg: SpectralConfig, args) -> None:
    t0 = time.perf_counter()
    with _LiveProgress(cfg.train.epochs) as progress:
        result = api.run(cfg, overwrite=args.overwrite, on_progress=progress)
    print_split(cfg, result.split)
    print_training(result.training)
    console.print(paper_table(result.report).rich())
    console.print(f"report: {result.paths['report_md']}")
    console.print(f"done in {time.perf_counter() - t0:.1f} s")


def cmd_baseline(cfg: SpectralConfig, args) -> None:
    if cfg.baseline.engine == "ddp":
        result = api.baseline(cfg)
    else:
        with _LiveProgress(cfg.train.epochs) as progress:
            result = api.baseline(cfg, on_progress=progress)
    console.print(baseline_line(result))
    storage = RunStorage.from_config(cfg.storage)
    if storage.exists(layout.report("report.json")):
        console.print(paper_table(storage.read_json(layout.report("report.json"))).rich())


def cmd_tune_weights(cfg: SpectralConfig, args) -> None:
    report = api.evaluate(cfg.replace(**{"ensemble.weights": "tuned"}))  # uniform, geometric, tuned (+ exact), report
    console.print(ensemble_table(report).rich())
    console.print(tune_line(next(e for e in report["ensembles"] if e["method"] == "tuned")))
    console.print(f"weights: {RunStorage.from_config(cfg.storage).url(layout.WEIGHTS)}")


def cmd_sweep(cfg: SpectralConfig, args) -> None:
    result = api.sweep(cfg, overwrite=args.overwrite)
    console.print(sweep_table(result).rich())
    console.print(f"table: {result.table_path}\nbest config: {result.best_config_path}")


def cmd_export(cfg: SpectralConfig, args) -> None:
    from inference import export_ensemble

    card = export_ensemble(RunStorage.from_config(cfg.storage), args.output, weights=args.weights)
    acc = "n/a" if card["test_acc"] is None else f"{card['test_acc']:.4f}"
    console.print(f"exported {args.output} (+ {args.output}.json): input {card['input_shape']}, "
                  f"{len(card['classes'])} classes, {card['weights_method']} weights, test accuracy {acc}")


def cmd_predict(cfg: SpectralConfig, args) -> None:
    from inference import predict_images

    overrides = {f"predict.{key}": v for key, v in (("batch_size", args.batch_size), ("concurrency", args.concurrency))
                 if v is not None}
    cfg = cfg.replace(**overrides) if overrides else cfg
    init_ray(cfg.ray, quiet=True)
    result = predict_images(RunStorage.from_config(cfg.storage), args.input, args.output, cfg.predict,
                            weights=args.weights, skip_bad=args.skip_bad, overwrite=args.overwrite)
    for path in result.skipped:
        console.print(f"[yellow]skipped unreadable image:[/yellow] {path}")
    console.print(f"classified {result.images:,} images in {result.seconds:.2f} s: {result.images_per_s:,.0f} images/s "
                  f"({cfg.predict.concurrency} actor(s), batch {cfg.predict.batch_size})")
    if result.accuracy is not None:
        console.print(f"accuracy {result.accuracy:.4f} over {result.labelled:,} images in folders named after classes")
    console.print(f"predictions: {result.output}")


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (``KeyboardInterrupt``)."""
    while True:
        time.sleep(1)


def cmd_serve(cfg: SpectralConfig, args) -> None:
    from inference import start_serving, stop_serving

    init_ray(cfg.ray)
    url = start_serving(RunStorage.from_config(cfg.storage), cfg.serve, host=args.host, port=args.port,
                        weights=args.weights)
    console.print(f"serving {cfg.storage.uri} at {url}: POST {url}/predict (image bytes), GET {url}/healthz, "
                  f"GET {url}/ (model card); Ctrl-C stops")
    try:
        wait_for_interrupt()
    finally:
        stop_serving()  # our application only: others on a shared cluster keep serving


def cmd_config(args) -> None:
    if args.markdown:
        sys.stdout.write(config_markdown())
        return
    console.print(config_table().rich(overflow="fold"))


COMMANDS = {
    "split": (cmd_split, "write the K spectral sub-datasets (Ray Data) and the manifest"),
    "run": (cmd_run, "split if needed, train every branch, ensemble, report"),
    "train": (cmd_train, "train every unfinished branch as an isolated Ray actor"),
    "evaluate": (cmd_evaluate, "ensemble the trained branches and write the report"),
    "baseline": (cmd_baseline, "train the same network on full-resolution images for comparison"),
    "tune-weights": (cmd_tune_weights, "search the ensemble weights with Ray Tune (and fit the exact reference)"),
    "sweep": (cmd_sweep, "Ray Tune search over branch-training hyperparameters (sweep.space); resumes if interrupted"),
    "export": (cmd_export, "write the run's ensemble as one torch.export program (FILE) plus FILE.json"),
    "predict": (cmd_predict, "classify every PNG/JPEG under --input with Ray Data; Parquet under --output"),
    "serve": (cmd_serve, "serve the run's ensemble over HTTP with Ray Serve (POST /predict, GET /healthz, GET /)"),
}
INFERENCE_COMMANDS = ("export", "predict", "serve")


def _add_inference_args(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="chosen",
                   help="ensemble weights: chosen (the run's ensemble/weights.json) or a method the run evaluated")
    if name == "export":
        p.add_argument("--output", required=True, help="the program's file (any fsspec URI); FILE.json beside it")
    elif name == "predict":
        p.add_argument("--input", required=True, help="folder or prefix of PNG/JPEG images, searched recursively")
        p.add_argument("--output", required=True, help="folder or prefix for the Parquet files, committed with "
                                                        "_SUCCESS and _manifest.json once complete")
        p.add_argument("--batch-size", type=int, help="images per actor call (sets predict.batch_size)")
        p.add_argument("--concurrency", type=int, help="actors, each holding the ensemble (sets predict.concurrency)")
        p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them")
        p.add_argument("--overwrite", action="store_true", help="replace a complete earlier output at --output")
    else:
        p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds (0.0.0.0: every interface)")
        p.add_argument("--port", type=int, default=8000, help="HTTP port")


VERBOSE_HELP = ("-v: our debug logging, tracebacks of every error, and Ray's own INFO output (Ray Data progress, "
                "Tune's experiment box); -vv: also the libraries' debug lines (botocore, s3fs, urllib3). "
                "Before or after the command; credentials are masked at any verbosity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectral", description="Communication-free spectral tensor networks on Ray")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-v", "--verbose", action="count", default=0, dest="verbose_after", help=VERBOSE_HELP)
        p.add_argument("--config", help="YAML config, a path or any fsspec URI such as s3://.../best_config.yaml "
                                        "(read with the endpoint and keys of --set storage.* or the environment); "
                                        "defaults apply to keys it leaves out; without it: the embedded default, "
                                        "configs/fashion_mnist.yaml")
        p.add_argument("--storage", help="the run's URI: a path, file://..., s3://bucket/prefix (sets storage.uri)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted config key")
        if name in INFERENCE_COMMANDS:
            _add_inference_args(name, p)
        else:
            p.add_argument("--overwrite", action="store_true", help="replace sub-datasets of a different configuration")
    p = sub.add_parser("config", help="print every config key, its default and its meaning")
    p.add_argument("-v", "--verbose", action="count", default=0, dest="verbose_after", help=VERBOSE_HELP)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true", help="as a table (the default)")
    what.add_argument("--markdown", action="store_true", help="as docs/cli.md's markdown table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbosity = args.verbose + args.verbose_after
    configure_logging(verbosity, RichHandler(console=console, show_path=False, rich_tracebacks=False))
    if args.command == "config":
        cmd_config(args)
        return 0
    quiet_ray(verbosity >= 1)
    try:
        overrides = parse_set(args.set)
        add_secrets(overrides.get("storage.access_key_id"), overrides.get("storage.secret_access_key"))
        if args.storage:
            overrides["storage.uri"] = args.storage
        cfg = load_config(args.config, overrides)
        add_secrets(*(cfg.storage.credentials or ()))
        COMMANDS[args.command][0](cfg, args)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    except Exception as e:  # the CLI owns the console: a user's error is one line; a bug shows its traceback
        err = user_error(e)
        if err is None or verbosity:
            console.print_exception()
        if err is not None:
            # One line, however long. Ray Data appends its retry hint to a failed task's error on further lines.
            message = str(err) if verbosity else str(err).split("\n", 1)[0]
            console.print(f"[red]error:[/red] {type(err).__name__}: {escape(mask(message))}", soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
