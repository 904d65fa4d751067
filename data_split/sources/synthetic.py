"""Synthetic images for tests and benchmarks: class prototypes plus Gaussian noise, any size, random access."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_split.config import SyntheticConfig
from data_split.sources.base import SOURCE_SPLITS, ImageSource

SYNTHETIC_CHUNK = 1024  # images generated per seeded chunk: random access without per-image RNGs


@dataclass
class SyntheticSource(ImageSource):
    """Class prototypes plus Gaussian noise; image i of a split is a pure function of the seed."""

    cfg: SyntheticConfig
    limit: int | None = None
    name: str = "synthetic"

    def __post_init__(self) -> None:
        self.channels, self.height, self.width = self.cfg.channels, self.cfg.height, self.cfg.width
        self.classes = self.cfg.classes

    def validate(self) -> None:
        pass

    def count(self, split: str) -> int:
        n = getattr(self.cfg, split)
        return n if self.limit is None else min(n, self.limit)

    def _prototypes(self) -> np.ndarray:
        rng = np.random.default_rng([self.cfg.seed, 7])
        return rng.uniform(0.0, 1.0, (self.classes, self.channels, self.height, self.width))

    def _chunk(self, split: str, j: int, protos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.cfg.seed, SOURCE_SPLITS.index(split), j])
        y = rng.integers(0, self.classes, SYNTHETIC_CHUNK)
        noise = rng.standard_normal((SYNTHETIC_CHUNK, self.channels, self.height, self.width), dtype=np.float32)
        x = np.clip(protos[y] + self.cfg.noise * noise, 0.0, 1.0)
        return (x * 255.0 + 0.5).astype(np.uint8), y.astype(np.int64)

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        protos = self._prototypes()
        first, last = start // SYNTHETIC_CHUNK, (stop - 1) // SYNTHETIC_CHUNK
        xs, ys = zip(*(self._chunk(split, j, protos) for j in range(first, last + 1)))
        lo = start - first * SYNTHETIC_CHUNK
        return np.concatenate(xs)[lo : lo + stop - start], np.concatenate(ys)[lo : lo + stop - start]
