"""`spectral`: the command line. Parse, build the config, call the API, print what it returned.

    spectral split    --config configs/fashion_mnist.yaml [--storage URI] [--set KEY=VALUE ...] [--overwrite]
    spectral run      --config configs/fashion_mnist.yaml [--storage URI] [--set KEY=VALUE ...] [--overwrite]
    spectral resume   --storage URI [--set KEY=VALUE ...]       continue with the run's own config.yaml
    spectral train | evaluate | baseline | tune-weights | sweep  (same options)
    spectral export   --storage URI --output FILE [--weights METHOD]
    spectral predict  --storage URI --input URI --output URI [--batch-size N] [--concurrency N] [--skip-bad]
    spectral serve    --storage URI [--host 127.0.0.1] [--port 8000]
    spectral status   --storage URI [--json] [--watch [SECONDS]]   from storage alone, no Ray
    spectral config   [--show | --markdown | --config F --set ...]  every key, or the resolved config as YAML
    spectral completion bash | zsh | tcsh                          the shell's completion script (shtab)
    spectral --version

Streams: tables and results on stdout (``out``); logs, progress and errors on stderr (``err``), so
``spectral status --json | jq`` and ``2>/dev/null`` work as with any Unix tool. The config is read and checked
before Ray is imported: a bad key or a missing file fails in about a second. Without ``--config`` a command on
an existing run continues with the run's ``config.yaml`` (``orchestrator.run_config``), else the embedded
default (``configs/fashion_mnist.yaml``); ``--config`` may be any fsspec URI. A ``SpectralError``
(docs/design.md, "Errors") prints as one line; anything else, and everything with ``-v``, prints its
traceback. ``-v`` (our debug lines, Ray's INFO output) and ``-vv`` (also botocore/s3fs/urllib3) go before
or after the command; credentials are masked in every line at any verbosity (``orchestrator._logging``).
"""

from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from data_split import RunStorage, layout
from data_split.config import StorageConfig
from data_split.errors import ConfigError, user_error
from data_split.shutdown import freeze_at_exit
from orchestrator._logging import add_secrets, configure_logging, mask, quiet_ray
from orchestrator._ray import init_ray
from orchestrator.cli_args import INFERENCE_COMMANDS, RUN_COMMANDS, build_parser, completion_script
from orchestrator.config import SpectralConfig, config_markdown, load_config, parse_set
from orchestrator.report_text import ensemble_table, paper_table
from orchestrator.run_config import config_yaml, has_stored_config, resume_config, stored_config_uri
from orchestrator.summaries import (
    CountLines,
    ProgressLines,
    baseline_line,
    config_table,
    progress_table,
    sources_table,
    split_table,
    training_lines,
    tune_line,
)
from orchestrator.sweep_text import sweep_table

# soft_wrap: a printed path or message stays on one line (copyable); tables fit the width
out = Console(soft_wrap=True)  # stdout: tables, results, --json
err = Console(stderr=True, soft_wrap=True)  # stderr: logs, live progress, errors
log = logging.getLogger("spectral")
# Commands that, given --storage of an existing run and no --config, continue with the run's config.yaml.
CONTINUING = ("run", "train", "evaluate", "baseline", "tune-weights", "export", "predict", "serve")


# -- commands ----------------------------------------------------------------------------------------
class _LiveProgress:
    """Progress while training, on stderr: a live per-branch table on a terminal (its final state stays on
    screen); elsewhere (``ray job logs``, a file) one line per branch per epoch plus a heartbeat (``ProgressLines``)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.live = None
        self.lines = None if err.is_terminal else ProgressLines(epochs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()

    def __call__(self, snapshot: dict[int, dict]) -> None:
        if self.lines is None:
            table = progress_table(snapshot, self.epochs).rich()
            if self.live is None:  # from the first poll: in `run`, after the split's bar
                self.live = Live(table, console=err, refresh_per_second=2, transient=False)
                self.live.start()
            self.live.update(table)
            return
        for line in self.lines.lines(snapshot):
            err.print(escape(line), highlight=False)


class _CountProgress:
    """A count's progress on stderr (split's images written, predict's images classified): a bar on a terminal,
    elsewhere a line at most every 30 s and at the end (``CountLines``). Called as ``(done, total)``.

    The bar shows from the first count to the last only: ``run`` shows the training table after it (rich
    allows one live display at a time), and an up-to-date split, which counts nothing, shows nothing.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.bar = self.task = None
        self.lines = None if err.is_terminal else CountLines(what)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stop()

    def _stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.lines is not None:
            for line in self.lines.lines(done, total):
                err.print(escape(line), highlight=False)
            return
        if self.task is None:
            columns = (TextColumn(self.what), BarColumn(), MofNCompleteColumn(), TextColumn("images"))
            self.bar = Progress(*columns, TimeRemainingColumn(), console=err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=total)
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
            if done >= total:
                self._stop()


def print_split(cfg: SpectralConfig, result) -> None:
    """What `split` and `run` show of the split: bytes per branch, rows by source (if several), where it is."""
    out.print(split_table(result).rich())
    if len(result.manifest.sources) > 1:
        out.print(sources_table(result.manifest).rich())
    out.print(f"sub-datasets: {RunStorage.from_config(cfg.storage).url(layout.DATA)}")


def cmd_split(cfg: SpectralConfig, args) -> None:
    from orchestrator import api

    with _CountProgress("split") as progress:
        result = api.split(cfg, overwrite=args.overwrite, on_progress=progress)
    print_split(cfg, result)


def cmd_train(cfg: SpectralConfig, args) -> None:
    from orchestrator import api

    with _LiveProgress(cfg.train.epochs) as progress:
        outcome = api.train(cfg, on_progress=progress)
    print_training(outcome)


def print_training(outcome) -> None:
    for line in training_lines(outcome):
        out.print(line)


def cmd_evaluate(cfg: SpectralConfig, args) -> None:
    from orchestrator import api

    report = api.evaluate(cfg)
    out.print(paper_table(report).rich())
    out.print(f"report: {RunStorage.from_config(cfg.storage).url(layout.report('report.md'))}")


def cmd_run(cfg: SpectralConfig, args) -> None:
    from orchestrator import api

    t0 = time.perf_counter()
    with _CountProgress("split") as split_progress, _LiveProgress(cfg.train.epochs) as progress:
        result = api.run(
            cfg, overwrite=getattr(args, "overwrite", False), on_progress=progress, on_split_progress=split_progress
        )
    print_split(cfg, result.split)
    print_training(result.training)
    out.print(paper_table(result.report).rich())
    out.print(f"report: {result.paths['report_md']}")
    out.print(f"done in {time.perf_counter() - t0:.1f} s")


def cmd_baseline(cfg: SpectralConfig, args) -> None:
    from orchestrator import api

    if cfg.baseline.engine == "ddp":
        result = api.baseline(cfg)
    else:
        with _LiveProgress(cfg.train.epochs) as progress:
            result = api.baseline(cfg, on_progress=progress)
    out.print(baseline_line(result))
    storage = RunStorage.from_config(cfg.storage)
    if storage.exists(layout.report("report.json")):
        out.print(paper_table(storage.read_json(layout.report("report.json"))).rich())


def cmd_tune_weights(cfg: SpectralConfig, args) -> None:
    from orchestrator import api

    report = api.evaluate(cfg.replace(**{"ensemble.weights": "tuned"}))  # uniform, geometric, tuned (+ exact), report
    out.print(ensemble_table(report).rich())
    out.print(tune_line(next(e for e in report["ensembles"] if e["method"] == "tuned")))
    out.print(f"weights: {RunStorage.from_config(cfg.storage).url(layout.WEIGHTS)}")


def cmd_sweep(cfg: SpectralConfig, args) -> None:
    from orchestrator import api

    result = api.sweep(cfg, overwrite=args.overwrite)
    out.print(sweep_table(result).rich())
    out.print(f"table: {result.table_path}\nbest config: {result.best_config_path}")


def cmd_export(cfg: SpectralConfig, args) -> None:
    from inference import export_ensemble

    card = export_ensemble(RunStorage.from_config(cfg.storage), args.output, weights=args.weights)
    acc = "n/a" if card["test_acc"] is None else f"{card['test_acc']:.4f}"
    out.print(
        f"exported {args.output} (+ {args.output}.json): input {card['input_shape']}, "
        f"{len(card['classes'])} classes, {card['weights_method']} weights, test accuracy {acc}"
    )


def cmd_predict(cfg: SpectralConfig, args) -> None:
    from inference import predict_images

    overrides = {
        f"predict.{key}": v
        for key, v in (("batch_size", args.batch_size), ("concurrency", args.concurrency))
        if v is not None
    }
    cfg = cfg.replace(**overrides) if overrides else cfg
    init_ray(cfg.ray, quiet=True)
    with _CountProgress("predict") as progress:
        result = predict_images(
            RunStorage.from_config(cfg.storage),
            args.input,
            args.output,
            cfg.predict,
            weights=args.weights,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
            on_progress=progress,
        )
    for path in result.skipped:
        out.print(f"[yellow]skipped unreadable image:[/yellow] {path}")
    out.print(
        f"classified {result.images:,} images in {result.seconds:.2f} s: {result.images_per_s:,.0f} images/s "
        f"({cfg.predict.concurrency} actor(s), batch {cfg.predict.batch_size})"
    )
    if result.accuracy is not None:
        out.print(f"accuracy {result.accuracy:.4f} over {result.labelled:,} images in folders named after classes")
    out.print(f"predictions: {result.output}")


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (``KeyboardInterrupt``)."""
    while True:
        time.sleep(1)


def cmd_serve(cfg: SpectralConfig, args) -> None:
    from inference import start_serving, stop_serving

    init_ray(cfg.ray)
    url = start_serving(
        RunStorage.from_config(cfg.storage), cfg.serve, host=args.host, port=args.port, weights=args.weights
    )
    out.print(
        f"serving {cfg.storage.uri} at {url}: POST {url}/predict (an image: multipart upload, raw bytes or "
        f"base64 JSON), GET {url}/docs (OpenAPI), GET {url}/healthz, GET {url}/ (model card); Ctrl-C stops"
    )
    try:
        wait_for_interrupt()
    finally:
        stop_serving()  # our application only: others on a shared cluster keep serving


def cmd_config(args) -> None:
    if args.markdown:
        sys.stdout.write(config_markdown())
    elif args.show or not (args.config or args.set or args.storage):
        out.print(config_table().rich(overflow="fold"))
    else:  # the resolved configuration, as a run keeps it (secrets removed)
        sys.stdout.write(
            config_yaml(resolve_config(args), header="spectral config: the resolved configuration (secrets removed)")
        )


COMMANDS = {
    "split": cmd_split,
    "run": cmd_run,
    "resume": cmd_run,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "baseline": cmd_baseline,
    "tune-weights": cmd_tune_weights,
    "sweep": cmd_sweep,
    "export": cmd_export,
    "predict": cmd_predict,
    "serve": cmd_serve,
}
assert set(COMMANDS) == set(RUN_COMMANDS) | set(INFERENCE_COMMANDS)


def resolve_config(args) -> SpectralConfig:
    """The command's config: ``--config`` (or the embedded default), or the run's own ``config.yaml`` for
    ``resume`` and for a command on an existing run without ``--config``; ``--set`` and ``--storage`` on top."""
    overrides = parse_set(args.set)
    add_secrets(overrides.get("storage.access_key_id"), overrides.get("storage.secret_access_key"))
    if args.storage:
        overrides["storage.uri"] = args.storage
    config = getattr(args, "config", None)
    stored = args.command == "resume" or (
        config is None and args.storage and args.command in CONTINUING and has_stored_config(args.storage, overrides)
    )
    if stored:
        log.info("continuing with %s", stored_config_uri(args.storage))
        cfg = resume_config(args.storage, overrides, allow_split_change=getattr(args, "overwrite", False))
    else:
        cfg = load_config(config, overrides)
        if args.command in INFERENCE_COMMANDS and not args.storage and cfg.storage.uri == StorageConfig().uri:
            raise ConfigError(
                f"{args.command} needs the trained run: --storage URI (or storage.uri in --config or "
                f"--set); the default {cfg.storage.uri} is never assumed"
            )
    add_secrets(*(cfg.storage.credentials or ()))
    return cfg


def print_error(e: BaseException, verbosity: int) -> None:
    """A user's error as one line on stderr; a bug (or anything with -v) with its traceback."""
    error = user_error(e)
    if error is None or verbosity:
        err.print_exception()
    if error is not None:
        # One line, however long. Ray Data appends its retry hint to a failed task's error on further lines.
        message = str(error) if verbosity else str(error).split("\n", 1)[0]
        err.print(f"[red]error:[/red] {type(error).__name__}: {escape(mask(message))}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    freeze_at_exit()
    verbosity = args.verbose + args.verbose_after
    configure_logging(verbosity, RichHandler(console=err, show_path=False, rich_tracebacks=False))
    try:
        if args.command == "config":
            cmd_config(args)
            return 0
        if args.command == "completion":
            sys.stdout.write(completion_script(args.shell))
            return 0
        if args.command == "status":
            from orchestrator.status_cli import cmd_status

            return cmd_status(args, out)
        cfg = resolve_config(args)  # every config error before Ray is imported
        quiet_ray(verbosity >= 1)
        COMMANDS[args.command](cfg, args)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        return 130
    except Exception as e:  # the CLI owns the console: a user's error is one line; a bug shows its traceback
        print_error(e, verbosity)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
