"""The CLI's logging: what each verbosity shows, and a filter that masks credentials in every line.

    (none)  our INFO lines, Ray's warnings and errors; Ray Data's report of a failed task and Ray's
            "Token authentication is enabled" notice are left out (the CLI prints the error as one line)
    -v      our DEBUG lines and Ray's INFO output (Ray Data progress, Tune's experiment box)
    -vv     also the libraries' DEBUG lines (botocore, s3fs, urllib3, ...), which include request signing

At every level ``SecretMask`` (on every handler of the root and ``ray`` loggers) replaces the access key id
and secret of the environment and of the config, and any ``Credential=<key id>/`` of a signed request,
with ``***``; ``mask`` does the same for text the CLI prints itself.
"""

from __future__ import annotations

import logging
import os
import re

OUR_LOGGERS = ("spectral", "data_split", "branches", "orchestrator", "tune", "inference")
LIBRARY_LOGGERS = (
    "botocore",
    "boto3",
    "aiobotocore",
    "s3fs",
    "fsspec",
    "urllib3",
    "aiohttp",
    "filelock",
    "asyncio",
    "PIL",
    "matplotlib",
    "numba",
    "optuna",
)  # their DEBUG only with -vv
RAY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "ray.serve")  # Ray Data and Tune set their own levels
# Shown with -v only: Ray Data's traceback of a failed task (the error reaches the CLI, which prints it as one
# line) and the token-auth notice that every local ray.init prints (auth stays on).
RAY_NOISE_LOGGERS = (
    "ray.data._internal.execution.streaming_executor_state",
    "ray.data.exceptions",
    "ray._private.authentication.authentication_token_setup",
)
TUNE_NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"  # "0": Tune's legacy reporter, silent at verbose=0
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SIGNED_CREDENTIAL = re.compile(r"(Credential=)[^/\s,]+/")  # botocore's Authorization header and presigned URLs
MASK = "***"

_secrets: set[str] = set()
_handler: logging.Handler | None = None  # the console handler configure_logging added


def add_secrets(*values: str | None) -> None:
    """Mask these values (a key id, a secret) from now on, in every log line and in ``mask``."""
    _secrets.update(v for v in values if v and len(v) >= 4)  # a 1-3 character "secret" would mask ordinary text


def mask(text: str) -> str:
    """``text`` with every known secret and signed-request key id replaced by ``***``."""
    for value in sorted(_secrets, key=len, reverse=True):
        text = text.replace(value, MASK)
    return SIGNED_CREDENTIAL.sub(rf"\g<1>{MASK}/", text)


class SecretMask(logging.Filter):
    """Rewrites a record's message (and its traceback text) with ``mask``; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


def _mask_handlers(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        if not any(isinstance(f, SecretMask) for f in handler.filters):
            handler.addFilter(SecretMask())


def configure_logging(verbosity: int, handler: logging.Handler) -> None:
    """Root logging for the CLI: ``handler`` (the console), levels by ``verbosity`` (0, 1, 2+), secrets masked.

    Called once per command; a later call replaces the handler an earlier one added and nothing else (other
    handlers, e.g. a test's log capture, stay).
    """
    global _handler
    add_secrets(*(os.environ.get(name) for name in CREDENTIAL_ENV))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    _handler = handler
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    _mask_handlers(root)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= 2 else logging.WARNING)


WORKER_HANDLER = "spectral-worker"  # the name of the handler worker_logging adds (once per process)


def worker_logging(credentials: tuple[str, str] | None = None) -> None:
    """In a Ray worker that trains (a branch task, a pack, a DDP group's worker): our INFO lines to stderr,
    which Ray forwards to the driver's console (``log_to_driver``, prefixed with the task or actor and its pid), so a
    driver shows what its branches say (data mode, resuming, early stop, finished) and not only their
    warnings; credentials of the environment and ``credentials`` (the run's storage keys) masked as on the
    driver. Without it a worker's root logger has no handler and Python prints only WARNING and above.
    Idempotent: a second branch in the same process (a reused worker) adds nothing."""
    add_secrets(*(os.environ.get(name) for name in CREDENTIAL_ENV), *(credentials or ()))
    root = logging.getLogger()
    if any(h.get_name() == WORKER_HANDLER for h in root.handlers):
        return
    handler = logging.StreamHandler()  # stderr
    handler.set_name(WORKER_HANDLER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(SecretMask())
    root.addHandler(handler)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


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
        _mask_handlers(logging.getLogger(name))
    for name in RAY_NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.CRITICAL)
    if not verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False
        log_once("ray_data_progress_manager_disabled")  # spend Ray Data's one "progress bars disabled" warning
