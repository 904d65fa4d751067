"""Writers for tiny source files in the exact on-disk formats the real datasets use.

- IDX (MNIST, Fashion-MNIST): big-endian magic ``0x00000803`` (uint8, 3 dims)
  for images, ``0x00000801`` (uint8, 1 dim) for labels, then one big-endian
  uint32 per dimension, then the raw bytes; optionally gzip'ed.
  torchvision keeps them in ``<root>/<ClassName>/raw/``; Debian's
  ``dataset-fashion-mnist`` keeps the ``.gz`` files directly in its folder.
- CIFAR-10 python version: ``<root>/cifar-10-batches-py/data_batch_1..5`` and
  ``test_batch``, each a pickled dict with bytes keys; ``b'data'`` is
  ``(N, 3072)`` uint8 (1024 R, then G, then B, each row-major 32x32) and
  ``b'labels'`` a list of ints; ``batches.meta`` holds the label names.
- An image folder: ``<root>/<split>/<class>/<name>.png``.

Every writer returns the arrays it wrote, so tests can check exact round trips.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a uint8 array (magic derived from its rank unless given)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> Path:
    """Write ``array`` as IDX at ``path`` (gzip'ed when the name ends in ``.gz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array, magic)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def mnist_arrays(n_train: int = 12, n_test: int = 5, size: tuple[int, int] = (8, 8), seed: int = 0) -> dict:
    """Random uint8 images ``(N, H, W)`` and labels in [0, 10) per source split."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, *size), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        out[split] = (x, y)
    return out


def write_mnist_files(folder: Path, arrays: dict, *, gz: bool = True) -> dict[str, Path]:
    """The four IDX files directly in ``folder``; returns ``{stem: path}``."""
    paths = {}
    for split, (img_stem, lbl_stem) in IDX_STEMS.items():
        x, y = arrays[split]
        suffix = ".gz" if gz else ""
        paths[img_stem] = write_idx(folder / (img_stem + suffix), x)
        paths[lbl_stem] = write_idx(folder / (lbl_stem + suffix), y)
    return paths


def torchvision_raw_folder(root: Path, name: str) -> Path:
    """torchvision's ``<root>/<ClassName>/raw`` for ``mnist`` / ``fashion-mnist``."""
    return root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name] / "raw"


# -- CIFAR-10 ------------------------------------------------------------------------------------
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar_batch_dict(x: np.ndarray, y: np.ndarray, name: str) -> dict:
    """One batch as CIFAR's pickle holds it: ``x`` (N, 3, 32, 32) uint8."""
    return {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in y],
        b"data": np.ascontiguousarray(x, dtype=np.uint8).reshape(len(x), 3 * 32 * 32),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(x))],
    }


def write_pickle(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the original files are Python 2 pickles
    return path


def write_cifar(root: Path, per_batch: tuple[int, ...] = (3, 2, 4, 1, 2), n_test: int = 3, seed: int = 0) -> dict:
    """``<root>/cifar-10-batches-py`` with five train batches of ``per_batch`` images and a test batch.

    Returns ``{"train": (x, y), "test": (x, y)}`` with the train batches concatenated in order.
    """
    rng = np.random.default_rng(seed)
    folder = root / CIFAR_FOLDER
    xs, ys = [], []
    for i, n in enumerate(per_batch, start=1):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        write_pickle(folder / f"data_batch_{i}", cifar_batch_dict(x, y, f"training batch {i} of 5"))
        xs.append(x)
        ys.append(y)
    xt = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    yt = rng.integers(0, 10, n_test)
    write_pickle(folder / "test_batch", cifar_batch_dict(xt, yt, "testing batch 1 of 1"))
    write_pickle(
        folder / "batches.meta",
        {b"num_cases_per_batch": max(per_batch), b"label_names": CIFAR_LABEL_NAMES, b"num_vis": 3072},
    )
    return {"train": (np.concatenate(xs), np.concatenate(ys)), "test": (xt, yt)}


# -- image folder ----------------------------------------------------------------------------------
def write_imagefolder(
    root: Path,
    classes: tuple[str, ...] = ("ant", "bee", "cat"),
    per_class: dict[str, int] | None = None,
    size: tuple[int, int] = (8, 8),
    mode: str = "RGB",
    seed: int = 0,
) -> dict:
    """PNG files ``root/<split>/<class>/img_<i>.png``; returns ``{split: [(path, class_index, array)]}``.

    Arrays are ``(H, W, 3)`` for RGB and ``(H, W)`` for L, exactly what was encoded. Files are listed
    in the order a sorted walk visits them (class folder, then file name).
    """
    from PIL import Image

    per_class = per_class or {"train": 3, "test": 2}
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for split, n in per_class.items():
        rows = []
        for label, cls in enumerate(sorted(classes)):
            for i in range(n):
                shape = (*size, 3) if mode == "RGB" else size
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                path = root / split / cls / f"img_{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(path)
                rows.append((path, label, a))
        out[split] = rows
    return out
