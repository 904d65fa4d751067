"""Test-only fault injection: where a test pauses a training loop, or makes it die, at a known point.

Nothing here acts in a real run: ``after_epoch`` costs one environment lookup per epoch and does nothing
unless ``SPECTRAL_TEST_FAULTS_DIR`` names a directory (``tests/conftest.py`` sets it; ``tests/holds.py``
writes the requests). Every engine calls it once per epoch, after that epoch's checkpoint: the branch loop
(``branches.train``) and each Ray Train DDP worker (``orchestrator.group_worker``: ``k`` = its rank, ``uri`` its
group's folder, ``<run>/branches/<k>`` or ``<run>/baseline-ddp``).

A request is ``<dir>/<name>.fault``, JSON ``{"uri": ..., "epoch": e, "branch": k | null, "action": ...}``.
A loop whose storage URI starts with ``uri``, as branch (or rank) ``k`` after epoch ``e``, writes
``<dir>/<name>.reached.<pid>-<k>`` (JSON: pid, k, epoch, uri) and then:

- ``hold``: waits while the request exists (the test acts, e.g. kills ``pid``, then deletes it), at most
  ``HOLD_MAX_S``, so that a test that dies without cleaning up cannot hang a branch for ever;
- ``exit``: takes the request (one process, once: a restarted worker finds none) and exits at once, as a
  killed process would (``os._exit``, no clean-up), after ``before_exit`` (e.g. waiting until the
  checkpoint it just reported is committed).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "SPECTRAL_TEST_FAULTS_DIR"
ACTIONS = ("hold", "exit")
HOLD_MAX_S = 600.0
POLL_S = 0.05


def after_epoch(uri: str, k: int, epoch: int, *, before_exit: Callable[[], object] | None = None) -> None:
    """Act on a test's matching request (no-op without ``SPECTRAL_TEST_FAULTS_DIR``)."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    for request in sorted(Path(folder).glob("*.fault")):
        try:
            want = json.loads(request.read_text())
        except (OSError, ValueError):  # removed or being written: not ours to act on
            continue
        if want["epoch"] != epoch or want.get("branch") not in (None, k) or not uri.startswith(want["uri"]):
            continue
        marker = request.with_name(f"{request.stem}.reached.{os.getpid()}-{k}")
        tmp = marker.with_name("." + marker.name)
        tmp.write_text(json.dumps({"pid": os.getpid(), "k": k, "epoch": epoch, "uri": uri, "time": time.time()}))
        tmp.replace(marker)  # atomic: the test never reads half a marker
        if want["action"] == "exit":
            try:
                request.unlink()  # taken: whoever unlinks it first is the one that exits
            except FileNotFoundError:
                continue
            if before_exit is not None:
                before_exit()
            log.warning("%d: exits after epoch %d by test request %s", k, epoch, request)
            os._exit(1)
        log.warning("%d: held after epoch %d by test request %s", k, epoch, request)
        deadline = time.monotonic() + HOLD_MAX_S
        while request.exists() and time.monotonic() < deadline:
            time.sleep(POLL_S)
