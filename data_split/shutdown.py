"""A faster interpreter exit for the processes that load torch: branch actors, Ray Train workers, predict
and Serve workers, the CLI.

At exit Python collects every object still alive. With torch loaded (and ``torch._dynamo``, which any
optimizer imports) that collection is most of the exit: a Ray actor process took 1.6-1.7 CPU s to exit,
0.3-0.4 s after ``gc.freeze()`` (``python -m benchmarks.process_exit``, results/process_exit.json), on
a machine where the whole test suite starts a few hundred such processes. ``gc.freeze`` at exit moves the
survivors out of the collector's reach; the OS takes the memory back either way. What it costs: an object
still in a reference cycle at exit does not get its ``__del__``, which Python never promises at exit; our
outputs are closed explicitly (``RunStorage`` writes are atomic), never by a finalizer.
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def freeze_at_exit() -> None:
    """From now on, this process skips the collection of what is alive at exit (idempotent)."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
