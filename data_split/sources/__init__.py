"""Image sources: Fashion-MNIST/MNIST (IDX), CIFAR-10 (python pickles), synthetic; image folders in ``imagefolder``.

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

import gzip
import logging
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from data_split.errors import SpectralError

if TYPE_CHECKING:  # data_split.config validates source.name against SOURCES below
    from data_split.config import SourceConfig, SyntheticConfig
    from data_split.storage import RunStorage

log = logging.getLogger(__name__)

SOURCE_SPLITS = ("train", "test")
FASHION_MNIST_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"


class SourceError(SpectralError, ValueError):
    """A source file is missing, truncated or malformed; the message names the file."""


KNOWN_CLASS_NAMES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
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


# -- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------
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
        raise SourceError(f"{path}: IDX payload has {len(payload)} bytes, header shape {shape} needs {expected} (truncated?)")
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


# -- CIFAR-10 (torchvision's python pickles) ----------------------------------------------------
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


# -- synthetic ------------------------------------------------------------------------------------
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


# -- factory --------------------------------------------------------------------------------------
def _download(cfg: SourceConfig, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[cfg.name]
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _image_folder(cfg: SourceConfig, root: Path, storage: RunStorage | None) -> ImageSource:
    from data_split.sources.imagefolder import image_folder  # imports this module

    return image_folder(cfg, storage)


# source.name -> factory(cfg, root, run storage): the registry SourceConfig validates against
SOURCES: dict[str, Callable[[SourceConfig, Path, "RunStorage | None"], ImageSource]] = {
    "fashion-mnist": lambda cfg, root, _: IdxSource(name=cfg.name, root=root, torchvision_folder="FashionMNIST",
                                                 limit=cfg.limit),
    "mnist": lambda cfg, root, _: IdxSource(name=cfg.name, root=root, torchvision_folder="MNIST", limit=cfg.limit),
    "cifar10": lambda cfg, root, _: CifarSource(root=root, limit=cfg.limit),
    "imagefolder": _image_folder,
    "synthetic": lambda cfg, root, _: SyntheticSource(cfg=cfg.synthetic, limit=cfg.limit),
}


def make_source(cfg: SourceConfig, storage: RunStorage | None = None) -> ImageSource:
    """The source named by ``cfg``, validated (raises ``SourceError`` naming the bad file).

    ``storage``: the run's; an image folder on an object store (``s3://``) uses its endpoint and credentials.
    """
    default_roots = {"fashion-mnist": FASHION_MNIST_DEBIAN_ROOT, "mnist": "./data/mnist", "cifar10": "./data/cifar10"}
    if cfg.download:  # the Debian folder is read-only: downloads go under ./data like the others
        default_roots["fashion-mnist"] = "./data/fashion-mnist"
    root = Path(os.path.expanduser(cfg.root or default_roots.get(cfg.name, ".")))
    if cfg.download and cfg.name in default_roots:
        _download(cfg, root)
    source = SOURCES[cfg.name](cfg, root, storage)
    source.validate()
    return source
