"""What every image source is: ``(N, C, H, W)`` uint8 images with int64 labels, read by range.

A source is a small picklable object: ``validate()`` runs once on the driver
and checks everything that can be checked cheaply (files present, magic
numbers, sizes, labels in range), so bad input fails before any output is
written. ``read(split, start, stop)`` then runs inside Ray Data tasks and
returns one contiguous range of a source split, so memory per task is bounded
by the range, never by the dataset.

Source splits are ``train`` and ``test``; the validation split is carved from
``train`` later (``data_split.pipeline``).
"""

from __future__ import annotations

import numpy as np

from data_split.errors import SpectralError

SOURCE_SPLITS = ("train", "test")


class SourceError(SpectralError, ValueError):
    """A source file is missing, truncated or malformed; the message names the file."""


KNOWN_CLASS_NAMES = {
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "mnist": [str(i) for i in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


class ImageSource:
    """Base: ``(N, C, H, W)`` uint8 images with int64 labels in ``[0, classes)``."""

    name: str
    channels: int
    height: int
    width: int
    classes: int

    def validate(self) -> None:
        raise NotImplementedError

    def count(self, split: str) -> int:
        raise NotImplementedError

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def pop_skipped(self) -> dict[int, tuple[str, str]]:
        """Images of the last ``read`` left out with ``source.skip_bad`` (label -1): index -> (URI, reason)."""
        return {}

    def names_of_classes(self) -> list[str]:
        """Label i's name: the dataset's own names, an image folder's class folders, else "0", "1", ..."""
        names = getattr(self, "class_names", None) or KNOWN_CLASS_NAMES.get(self.name)
        return list(names) if names and len(names) == self.classes else [str(i) for i in range(self.classes)]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "resolution": [self.height, self.width],
            "channels": self.channels,
            "classes": self.classes,
            "class_names": self.names_of_classes(),
            "counts": {s: self.count(s) for s in SOURCE_SPLITS},
        }
