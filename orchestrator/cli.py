"""`spectral`: the command line. Parse, build the config, call the API, print what it returned.

    spectral split    --config configs/fashion_mnist.yaml [--storage URI] [--set KEY=VALUE ...] [--overwrite]
    spectral run      --config configs/fashion_mnist.yaml [--storage URI] [--set KEY=VALUE ...]
    spectral train | evaluate | baseline | tune-weights | sweep  (same options)
    spectral export   --storage URI --output FILE [--weights METHOD]
    spectral predict  --storage URI --input URI --output URI [--batch-size N] [--concurrency N] [--skip-bad]
    spectral serve    --storage URI [--host 127.0.0.1] [--port 8000]
    spectral config   [--show | --markdown]   every config key, its default and its meaning

Without ``--config`` the defaults apply: the embedded default run (``configs/fashion_mnist.yaml``).
A ``SpectralError`` (docs/design.md, "Errors") prints as one line; anything else, and everything
with ``-v``, prints its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler

from data_split import layout
from data_split.errors import user_error
from orchestrator import api
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
    console.print(f"sub-datasets: {api.run_storage(cfg).url(layout.DATA)}")


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
    console.print(f"report: {api.run_storage(cfg).url(layout.report('report.md'))}")


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
    storage = api.run_storage(cfg)
    if storage.exists(layout.report("report.json")):
        console.print(paper_table(storage.read_json(layout.report("report.json"))).rich())


def cmd_tune_weights(cfg: SpectralConfig, args) -> None:
    report = api.evaluate(cfg.replace(**{"ensemble.weights": "tuned"}))  # uniform, geometric, tuned (+ exact), report
    console.print(ensemble_table(report).rich())
    console.print(tune_line(next(e for e in report["ensembles"] if e["method"] == "tuned")))
    console.print(f"weights: {api.run_storage(cfg).url(layout.WEIGHTS)}")


def cmd_sweep(cfg: SpectralConfig, args) -> None:
    result = api.sweep(cfg, overwrite=args.overwrite)
    console.print(sweep_table(result).rich())
    console.print(f"table: {result.table_path}\nbest config: {result.best_config_path}")


def cmd_export(cfg: SpectralConfig, args) -> None:
    from inference import export_ensemble

    card = export_ensemble(cfg.storage.uri, args.output, weights=args.weights, endpoint_url=cfg.storage.endpoint_url)
    acc = "n/a" if card["test_acc"] is None else f"{card['test_acc']:.4f}"
    console.print(f"exported {args.output} (+ {args.output}.json): input {card['input_shape']}, "
                  f"{len(card['classes'])} classes, {card['weights_method']} weights, test accuracy {acc}")


def cmd_predict(cfg: SpectralConfig, args) -> None:
    from inference import predict_images

    overrides = {f"predict.{key}": v for key, v in (("batch_size", args.batch_size), ("concurrency", args.concurrency))
                 if v is not None}
    cfg = cfg.replace(**overrides) if overrides else cfg
    init_ray(cfg.ray, quiet=True)
    result = predict_images(cfg.storage.uri, args.input, args.output, cfg.predict, weights=args.weights,
                            skip_bad=args.skip_bad, endpoint_url=cfg.storage.endpoint_url)
    for path in result.skipped:
        console.print(f"[yellow]skipped unreadable image:[/yellow] {path}")
    console.print(f"classified {result.images:,} images in {result.seconds:.2f} s: {result.images_per_s:,.0f} images/s "
                  f"({cfg.predict.concurrency} actor(s), batch {cfg.predict.batch_size})")
    if result.accuracy is not None:
        console.print(f"accuracy {result.accuracy:.4f} over {result.labelled:,} images in folders named after classes")
    console.print(f"predictions: {result.output}")


def cmd_serve(cfg: SpectralConfig, args) -> None:
    from ray import serve

    from inference import start_serving

    init_ray(cfg.ray)
    url = start_serving(cfg.storage.uri, cfg.serve, host=args.host, port=args.port, weights=args.weights,
                        endpoint_url=cfg.storage.endpoint_url)
    console.print(f"serving {cfg.storage.uri} at {url}: POST {url}/predict (image bytes), GET {url}/healthz, "
                  f"GET {url}/ (model card); Ctrl-C stops")
    try:
        while True:
            time.sleep(1)
    finally:
        serve.shutdown()


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
        p.add_argument("--output", required=True, help="folder or prefix for the Parquet files (must not exist)")
        p.add_argument("--batch-size", type=int, help="images per actor call (sets predict.batch_size)")
        p.add_argument("--concurrency", type=int, help="actors, each holding the ensemble (sets predict.concurrency)")
        p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them")
    else:
        p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds (0.0.0.0: every interface)")
        p.add_argument("--port", type=int, default=8000, help="HTTP port")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectral", description="Communication-free spectral tensor networks on Ray")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, tracebacks of every error, and Ray's own INFO output (Ray Data progress, "
                             "Tune's experiment box)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="YAML config (defaults apply to keys it leaves out; "
                                        "without it: the embedded default, configs/fashion_mnist.yaml)")
        p.add_argument("--storage", help="the run's URI: a path, file://..., s3://bucket/prefix (sets storage.uri)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted config key")
        if name in INFERENCE_COMMANDS:
            _add_inference_args(name, p)
        else:
            p.add_argument("--overwrite", action="store_true", help="replace sub-datasets of a different configuration")
    p = sub.add_parser("config", help="print every config key, its default and its meaning")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true", help="as a table (the default)")
    what.add_argument("--markdown", action="store_true", help="as docs/cli.md's markdown table")
    return parser


RAY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "ray.serve")  # Ray Data and Tune set their own levels
TUNE_NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"  # "0": Tune's legacy reporter, silent at verbose=0


def quiet_ray(verbose: bool) -> None:
    """By default the console shows our own progress and only Ray's warnings and errors; ``-v`` shows all.

    Hidden unless ``-v``: Ray's INFO lines (Ray Data's progress, "Started a local Ray instance", Tune's
    "Wrote the latest version..."), and Tune's experiment box, "View detailed results here" and
    TensorBoard hint. Tune's new output engine print()s those even at ``RunConfig(verbose=0)`` (its
    ``experiment_started`` ignores the verbosity); ``RAY_AIR_NEW_OUTPUT=0``, Ray's documented switch
    back to the legacy reporter, prints nothing at ``verbose=0``. Tune reads it when a search starts,
    in this (the driver's) process. ``init_ray`` keeps the level set here on the "ray" logger, which
    ``ray.init`` would reset.
    """
    import ray.data  # configures its loggers on import: set levels after that
    from ray.util.debug import log_once

    os.environ[TUNE_NEW_OUTPUT_ENV] = "1" if verbose else "0"
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False
        log_once("ray_data_progress_manager_disabled")  # spend Ray Data's one "progress bars disabled" warning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    if args.command == "config":
        cmd_config(args)
        return 0
    quiet_ray(args.verbose)
    try:
        overrides = parse_set(args.set)
        if args.storage:
            overrides["storage.uri"] = args.storage
        cfg = load_config(args.config, overrides)
        COMMANDS[args.command][0](cfg, args)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    except Exception as e:  # the CLI owns the console: a user's error is one line; a bug shows its traceback
        err = user_error(e)
        if err is None or args.verbose:
            console.print_exception()
        if err is not None:
            console.print(f"[red]error:[/red] {type(err).__name__}: {err}", soft_wrap=True)  # one line, however long
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
