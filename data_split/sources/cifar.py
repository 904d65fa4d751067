"""CIFAR-10 in torchvision's on-disk format: the python pickles of ``cifar-10-batches-py``."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_split.sources.base import ImageSource, SourceError

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise SourceError(f"missing source file {path}") from None
    except Exception as e:
        raise SourceError(f"{path}: not a readable CIFAR-10 python pickle ({e!r}); truncated or corrupt?") from e
    try:
        data, labels = d[b"data"], d[b"labels"]
    except (KeyError, TypeError) as e:
        raise SourceError(f"{path}: missing field {e} (expected b'data' and b'labels')") from e
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise SourceError(f"{path}: field b'data' has shape {data.shape} dtype {data.dtype}, expected (N, 3072) uint8")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (data.shape[0],):
        raise SourceError(f"{path}: {len(y)} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), y


@dataclass
class CifarSource(ImageSource):
    root: Path
    limit: int | None = None
    name: str = "cifar10"
    channels: int = 3
    height: int = 32
    width: int = 32
    classes: int = 10
    _batches: dict = field(default_factory=dict, repr=False)  # split -> [(path, start, stop)]
    _labels: dict = field(default_factory=dict, repr=False)

    def validate(self) -> None:
        for split, names in CIFAR_FILES.items():
            spans, labels, offset = [], [], 0
            for name in names:
                path = self.root / CIFAR_FOLDER / name
                _, y = _load_cifar_batch(path)
                if len(y) and (y.min() < 0 or y.max() >= self.classes):
                    bad = int(np.argmax((y < 0) | (y >= self.classes)))
                    raise SourceError(f"{path}: label {y[bad]} at index {bad} is out of range [0, {self.classes})")
                spans.append((path, offset, offset + len(y)))
                labels.append(y)
                offset += len(y)
            n = offset if self.limit is None else min(offset, self.limit)
            self._batches[split] = spans
            self._labels[split] = np.concatenate(labels)[:n]

    def count(self, split: str) -> int:
        return len(self._labels[split])

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for path, lo, hi in self._batches[split]:
            if hi > start and lo < stop:
                x, _ = _load_cifar_batch(path)
                parts.append(x[max(start, lo) - lo : min(stop, hi) - lo])
        return np.concatenate(parts), self._labels[split][start:stop]
