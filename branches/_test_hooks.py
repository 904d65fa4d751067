"""Test-only hooks: kills and outages happen at a known point of training, never on a race.

With ``SPECTRAL_TEST_HOOKS=<dir>`` in a branch process's environment, once epoch ``e`` of branch ``k``
is on storage (checkpoint and metrics line), the branch writes its pid to ``<dir>/branch=<k>.epoch=<e>.written``;
if ``<dir>/branch=<k>.epoch=<e>.wait`` exists it then blocks until ``<dir>/branch=<k>.epoch=<e>.go``
appears. A test thus knows that epoch ``e`` is complete, and that nothing later has happened yet, when
it kills the process or the node, or stops the storage endpoint. Unset (always, outside tests): nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "SPECTRAL_TEST_HOOKS"
WAIT_LIMIT_S = 600  # a test that forgot its .go file fails instead of hanging forever
POLL_S = 0.05


def epoch_written(k: int, epoch: int) -> None:
    root = os.environ.get(ENV)
    if not root:
        return
    stem = f"branch={k}.epoch={epoch}"
    (Path(root) / f"{stem}.written").write_text(str(os.getpid()))  # which process to kill
    if not (Path(root) / f"{stem}.wait").exists():
        return
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not (Path(root) / f"{stem}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"test hook: {stem}.go did not appear within {WAIT_LIMIT_S} s")
        time.sleep(POLL_S)
