"""Epoch checkpoints of one branch: atomic save, newest-that-loads lookup, RNG capture.

A checkpoint is one ``torch.save`` blob written with ``RunStorage.write_bytes``
(atomic: a crash leaves the previous file set intact, never half a file). It
is loaded with ``weights_only=True``: storage may be shared, and a pickle
from it should not be able to run code. So everything in it is tensors,
numbers, strings and containers of them (numpy's RNG key array becomes a
tensor).

Layout: ``layout.checkpoint(k, e)`` = ``branches/<k>/checkpoints/epoch=<e>.pt``, ``e`` 1-based.
"""

from __future__ import annotations

import io
import logging
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data_split import layout
from data_split.storage import RunStorage, StorageError

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^epoch=(\d+)\.pt$")
REQUIRED_KEYS = ("epoch", "model", "optimizer", "scheduler", "rng", "model_config", "train_config", "history")


def list_epochs(storage: RunStorage, k: int) -> list[int]:
    """Epochs with a checkpoint file, ascending (hidden temporaries of a crashed writer are ignored)."""
    return sorted(int(m.group(1)) for name in storage.ls(layout.checkpoints_dir(k)) if (m := CHECKPOINT_RE.match(name)))


# -- RNG state ---------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, in weights_only-loadable types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- save / load -----------------------------------------------------------------------------------------
def save_checkpoint(storage: RunStorage, k: int, state: dict[str, Any]) -> str:
    """Write ``state`` (with ``state["epoch"]``) atomically; return its relative path."""
    buf = io.BytesIO()
    torch.save(state, buf)
    rel = layout.checkpoint(k, state["epoch"])
    storage.write_bytes(rel, buf.getvalue())
    return rel


def load_checkpoint(storage: RunStorage, rel: str) -> dict[str, Any]:
    """One checkpoint as a dict of CPU tensors; raises on anything truncated, garbage or incomplete."""
    ckpt = torch.load(io.BytesIO(storage.read_bytes(rel)), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"holds a {type(ckpt).__name__}, not a checkpoint dict")
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"lacks key(s) {', '.join(missing)}")
    return ckpt


@dataclass(frozen=True)
class Found:
    """The checkpoint to resume from, and the newer files that were skipped (corrupt or beyond the run)."""

    epoch: int
    checkpoint: dict[str, Any] | None  # None: no usable checkpoint, start at epoch 1
    skipped: tuple[int, ...]


def find_resume_point(storage: RunStorage, k: int, max_epoch: int) -> Found:
    """The newest checkpoint with ``epoch <= max_epoch`` that loads; corrupt newer ones are logged and skipped."""
    epochs = list_epochs(storage, k)
    skipped = [e for e in epochs if e > max_epoch]
    for e in sorted((e for e in epochs if e <= max_epoch), reverse=True):
        rel = layout.checkpoint(k, e)
        try:
            ckpt = load_checkpoint(storage, rel)
            if int(ckpt["epoch"]) != e:
                raise ValueError(f"says epoch {ckpt['epoch']}")
        except StorageError:
            raise  # storage unreachable is not a corrupt file: falling back would discard good epochs
        except Exception as err:  # truncated zip, garbage pickle, wrong content: all mean "not usable"
            log.warning(
                "branch %d: checkpoint %s is unreadable (%s: %s); falling back to an older one",
                k,
                storage.url(rel),
                type(err).__name__,
                err,
            )
            skipped.append(e)
            continue
        return Found(epoch=e, checkpoint=ckpt, skipped=tuple(sorted(skipped)))
    return Found(epoch=0, checkpoint=None, skipped=tuple(sorted(skipped)))


def prune_checkpoints(storage: RunStorage, k: int, *, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (``keep`` 0: keep all)."""
    if keep <= 0:
        return
    for e in list_epochs(storage, k)[:-keep]:
        storage.remove(layout.checkpoint(k, e))
