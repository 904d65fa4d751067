"""Test side of ``branches._test_hold``: pause a branch after epoch e's checkpoint, wait for it, release it.

``conftest`` points ``SPECTRAL_TEST_HOLD_DIR`` at a private folder before any Ray starts, so every
branch process (actors, Tune trials, CLI subprocesses) sees it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from branches._test_hold import ENV
from conftest import wait_until

REACHED_TIMEOUT_S = 240.0  # a loaded 2-core machine starts Ray, splits and trains a tiny epoch well within this


class Hold:
    """A request that branches under ``uri`` (branch ``branch``, or any) pause after epoch ``epoch``."""

    def __init__(self, uri: str, epoch: int, branch: int | None = None) -> None:
        self.folder = Path(os.environ[ENV])
        self.name = uuid.uuid4().hex
        self.request = self.folder / f"{self.name}.hold"
        tmp = self.folder / f".{self.name}.tmp"
        tmp.write_text(json.dumps({"uri": uri, "epoch": epoch, "branch": branch}))
        tmp.replace(self.request)

    def markers(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob(f"{self.name}.reached.*"))]

    def wait_reached(self, count: int = 1, timeout_s: float = REACHED_TIMEOUT_S, alive=None) -> list[dict]:
        """The markers of the first ``count`` held branches; fails after ``timeout_s`` or once ``alive()`` is False."""
        return wait_until(lambda: len(found := self.markers()) >= count and found, timeout_s=timeout_s,
                          what=f"{count} branch(es) reached the hold", alive=alive)

    def release(self) -> None:
        self.request.unlink(missing_ok=True)

    def __enter__(self) -> "Hold":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
