"""MNIST and Fashion-MNIST in the IDX format: Debian's folder or torchvision's ``<root>/<Folder>/raw``."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_split.sources.base import ImageSource, SourceError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_idx_header(f, path: Path, magic: int) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) < 4:
        raise SourceError(f"{path}: truncated IDX file (no header)")
    found = int.from_bytes(head, "big")
    if found != magic:
        raise SourceError(f"{path}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise SourceError(f"{path}: truncated IDX header")
    return tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))


def _read_idx_payload(path: Path, magic: int) -> tuple[tuple[int, ...], bytes]:
    """Whole file, header checked and payload length checked against it."""
    try:
        with _open_maybe_gz(path) as f:
            shape = _read_idx_header(f, path, magic)
            payload = f.read()
    except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as e:  # zlib.error: a damaged deflate stream
        raise SourceError(f"{path}: cannot read ({e}); the file is truncated or corrupt") from e
    expected = int(np.prod(shape))
    if len(payload) != expected:
        raise SourceError(
            f"{path}: IDX payload has {len(payload)} bytes, header shape {shape} needs {expected} (truncated?)"
        )
    return shape, payload


def find_idx_file(roots: list[Path], stem: str) -> Path:
    for root in roots:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
    where = ", ".join(str(r) for r in roots)
    raise SourceError(f"missing source file {stem}[.gz]; looked in {where}")


@dataclass
class IdxSource(ImageSource):
    """MNIST-format files: in ``root`` itself (Debian) or torchvision's ``root/<Folder>/raw``."""

    name: str
    root: Path
    torchvision_folder: str  # "MNIST" or "FashionMNIST"
    limit: int | None = None
    channels: int = 1
    height: int = 28
    width: int = 28
    classes: int = 10
    _files: dict = field(default_factory=dict, repr=False)
    _labels: dict = field(default_factory=dict, repr=False)

    def validate(self) -> None:
        roots = [self.root, self.root / self.torchvision_folder / "raw"]
        for split, (img_stem, lbl_stem) in IDX_FILES.items():
            img_path, lbl_path = find_idx_file(roots, img_stem), find_idx_file(roots, lbl_stem)
            shape, _ = _read_idx_payload(img_path, IDX_IMAGES_MAGIC)
            (n_labels,), labels = _read_idx_payload(lbl_path, IDX_LABELS_MAGIC)
            if shape[0] != n_labels:
                raise SourceError(f"{img_path} has {shape[0]} images but {lbl_path} has {n_labels} labels")
            if split == "train":
                self.height, self.width = shape[1], shape[2]
            elif (shape[1], shape[2]) != (self.height, self.width):
                raise SourceError(f"{img_path}: images are {shape[1:]}, train images are {(self.height, self.width)}")
            y = np.frombuffer(labels, dtype=np.uint8).astype(np.int64)
            if len(y) and y.max() >= self.classes:
                bad = int(np.argmax(y >= self.classes))
                raise SourceError(f"{lbl_path}: label {y[bad]} at index {bad} is out of range [0, {self.classes})")
            n = n_labels if self.limit is None else min(n_labels, self.limit)
            self._files[split] = img_path
            self._labels[split] = y[:n]

    def count(self, split: str) -> int:
        return len(self._labels[split])

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        path, pixels = self._files[split], self.height * self.width
        with _open_maybe_gz(path) as f:
            f.seek(16 + start * pixels)  # gzip seeks by decompressing forward: cheap at these sizes
            data = f.read((stop - start) * pixels)
        if len(data) != (stop - start) * pixels:
            raise SourceError(f"{path}: truncated while reading images [{start}, {stop})")
        x = np.frombuffer(data, dtype=np.uint8).reshape(stop - start, 1, self.height, self.width)
        return x, self._labels[split][start:stop]
