"""Test side of ``branches._faults``: pause a branch after epoch e's checkpoint (``Hold``), or make it exit there
(``Exit``), and wait until it got there.

``conftest`` points ``SPECTRAL_TEST_FAULTS_DIR`` at a private folder before any Ray starts, so every
training process (actors, Tune trials, Ray Train workers, CLI subprocesses) sees it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from branches._faults import ENV
from conftest import wait_until

REACHED_TIMEOUT_S = 240.0  # a loaded 2-core machine starts Ray, splits and trains a tiny epoch well within this


class Fault:
    """A request that loops under ``uri`` (branch or rank ``branch``, or any) act after epoch ``epoch``."""

    ACTION = ""

    def __init__(self, uri: str, epoch: int, branch: int | None = None) -> None:
        self.folder = Path(os.environ[ENV])
        self.name = uuid.uuid4().hex
        self.request = self.folder / f"{self.name}.fault"
        tmp = self.folder / f".{self.name}.tmp"
        tmp.write_text(json.dumps({"uri": uri, "epoch": epoch, "branch": branch, "action": self.ACTION}))
        tmp.replace(self.request)

    def markers(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob(f"{self.name}.reached.*"))]

    def wait_reached(self, count: int = 1, timeout_s: float = REACHED_TIMEOUT_S, alive=None) -> list[dict]:
        """The markers of the first ``count`` loops that got there; fails after ``timeout_s`` or once ``alive()``
        is False."""
        return wait_until(
            lambda: len(found := self.markers()) >= count and found,
            timeout_s=timeout_s,
            what=f"{count} branch(es) reached the {self.ACTION} request",
            alive=alive,
        )

    def release(self) -> None:
        self.request.unlink(missing_ok=True)

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Hold(Fault):
    """Matching loops wait after the epoch until ``release()`` (or the ``with`` block's end)."""

    ACTION = "hold"


class Exit(Fault):
    """The first matching loop exits after the epoch, as a killed process would (once: the request is taken)."""

    ACTION = "exit"
