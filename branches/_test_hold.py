"""A test-only pause point, so that tests kill a branch at a known place instead of racing it.

Off (one environment lookup per epoch) unless ``SPECTRAL_TEST_HOLD_DIR`` names a directory. A test
asks for a hold by writing ``<dir>/<name>.hold``, JSON ``{"uri": ..., "epoch": e, "branch": k | null}``.
A branch whose storage URI starts with ``uri`` and that has just checkpointed epoch ``e`` (and appended
its metrics line) writes ``<dir>/<name>.reached.<pid>-<k>`` (JSON: pid, k, epoch, uri), then waits while
the ``.hold`` file exists. The test waits for the marker with a deadline, acts (kills ``pid``, counts
who is running), and deletes the ``.hold`` file to let everything go on. A hold never outlives
``HOLD_MAX_S``: a test that dies without cleaning up cannot hang a branch for ever.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "SPECTRAL_TEST_HOLD_DIR"
HOLD_MAX_S = 600.0
POLL_S = 0.05


def hold_after_epoch(uri: str, k: int, epoch: int) -> None:
    """Pause here while a test's matching ``.hold`` request exists (no-op without ``SPECTRAL_TEST_HOLD_DIR``)."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    for request in sorted(Path(folder).glob("*.hold")):
        try:
            want = json.loads(request.read_text())
        except (OSError, ValueError):  # removed or being written: not ours to wait on
            continue
        if want["epoch"] != epoch or want.get("branch") not in (None, k) or not uri.startswith(want["uri"]):
            continue
        marker = request.with_name(f"{request.stem}.reached.{os.getpid()}-{k}")
        tmp = marker.with_name("." + marker.name)
        tmp.write_text(json.dumps({"pid": os.getpid(), "k": k, "epoch": epoch, "uri": uri, "time": time.time()}))
        tmp.replace(marker)  # atomic: the test never reads half a marker
        log.warning("branch %d: held after epoch %d by test request %s", k, epoch, request)
        deadline = time.monotonic() + HOLD_MAX_S
        while request.exists() and time.monotonic() < deadline:
            time.sleep(POLL_S)
