"""Image folders (``source.name: imagefolder``) and the one image decoder, for training and inference.

Layout (any fsspec URI: a path, ``file://``, ``s3://bucket/prefix``)::

    <root>/train/<class>/**/*.{jpg,jpeg,png}     classes: train's folders, sorted (torchvision's ImageFolder)
    <root>/val/<class>/...  or  <root>/test/<class>/...    the held-out test split (both: an error)

The driver lists the files once (``validate``); the listing travels to the Ray Data tasks as two
compact arrays (relative paths as one Arrow string array, labels as int64), so shipping the source
to a task costs a memcpy, not a pickle of a million strings. ``read(split, start, stop)`` then
fetches its range in chunks (``fs.cat``: concurrent GETs on object stores) and decodes it.

Sizes follow torchvision: ``image_size: S`` is ``Resize(S)`` + ``CenterCrop(S)`` (shorter side to
S, then the centre S x S); ``image_size: [H, W]`` is ``Resize([H, W])`` (stretched to H x W, and
the crop keeps it all). Without ``image_size`` every image must have one size (read from the
headers on the driver, no pixels decoded), which becomes the resolution.
"""

from __future__ import annotations

import io
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from data_split.sources.base import SOURCE_SPLITS, ImageSource, SourceError
from data_split.storage import RunStorage

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared lower-cased
HELD_OUT_FOLDERS = ("val", "test")  # whichever exists is the source's test split
READ_CHUNK = 64  # files fetched per fs.cat call: bounds a task's undecoded bytes, keeps GETs concurrent
HEADER_BYTES = 64 * 1024  # read-ahead of a header probe (a JPEG's size marker may follow up to 64 KiB of EXIF)
HEADER_THREADS = 16  # concurrent header probes (object stores: one GET each)

Size = int | tuple[int, int]  # torchvision's convention: S (shorter side, then a centre crop) or (H, W)


def output_shape(size: Size) -> tuple[int, int]:
    """(H, W) of an image decoded with ``size``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resized_size(width: int, height: int, size: Size) -> tuple[int, int]:
    """(W, H) after torchvision's ``Resize(size)`` of a ``width x height`` image (``int()`` truncation as there)."""
    if not isinstance(size, int):
        return int(size[1]), int(size[0])
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def decode_image(image: str | bytes, channels: int, size: Size, *, name: str | None = None) -> np.ndarray:
    """A PNG/JPEG (a local path or its bytes) as uint8 ``(channels, H, W)``: converted to grey (1) or RGB (3),
    then torchvision's ``Resize(size)`` + ``CenterCrop(size)`` (bilinear, as PIL resizes: antialiased).
    The one way images are read, for training and for inference; errors name ``name`` (a path or URI)."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    name = name or (image if isinstance(image, str) else "image")
    if isinstance(image, bytes) and not image:
        raise SourceError(f"{name}: empty (0 bytes), not an image")
    try:
        im = Image.open(image if isinstance(image, str) else io.BytesIO(image))
    except UnidentifiedImageError:
        raise SourceError(f"{name}: cannot decode image (not a format PIL knows; PNG or JPEG expected)") from None
    except Exception as e:
        raise SourceError(f"{name}: cannot decode image ({e})") from e
    out_h, out_w = output_shape(size)
    try:
        with im:
            im = im.convert(mode)  # loads every pixel: a truncated file fails here
            new_w, new_h = resized_size(im.width, im.height, size)
            if (new_w, new_h) != im.size:
                im = im.resize((new_w, new_h), Image.BILINEAR)
            if (new_w, new_h) != (out_w, out_h):  # torchvision's centre: round((extent - crop) / 2)
                top, left = int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0))
                im = im.crop((left, top, left + out_w, top + out_h))
            a = np.asarray(im)
    except Exception as e:  # PIL raises many types: truncated, unconvertible mode, decompression bomb
        raise SourceError(f"{name}: cannot decode image ({e})") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)


@dataclass
class ImageFolderSource(ImageSource):
    """``<root>/train/<class>/...`` plus ``val/`` or ``test/``; labels index train's sorted class folders."""

    storage: RunStorage  # the folder root, with the run's endpoint and credentials
    image_size: int | list[int] | None = None  # source.image_size as configured (None: the images' common size)
    channels: int = 3
    limit: int | None = None
    skip_bad: bool = False  # an undecodable image is left out (and listed) instead of failing the split
    name: str = "imagefolder"
    height: int = 0
    width: int = 0
    classes: int = 0
    class_names: list = field(default_factory=list)
    folders: dict = field(default_factory=dict)  # source split -> folder name ("train"; "val" or "test")
    _paths: dict = field(default_factory=dict, repr=False)  # source split -> pa.StringArray of paths under its folder
    _labels: dict = field(default_factory=dict, repr=False)  # source split -> int64 labels
    _skipped: dict = field(default_factory=dict, repr=False)  # index -> (uri, reason) of the last read()

    # -- listing (driver) --------------------------------------------------------------------------
    def _dirs(self, folder: str) -> list[str]:
        entries = self.storage.retrying(
            f"list {self.storage.url(folder)}", lambda: self.storage.fs.ls(self.storage.path(folder), detail=True)
        )
        return sorted(
            posixpath.basename(e["name"].rstrip("/"))
            for e in entries
            if e["type"] == "directory" and not posixpath.basename(e["name"].rstrip("/")).startswith(".")
        )

    def _list(self, folder: str) -> tuple[list[str], list[int]]:
        """Image paths under ``folder`` relative to it (``<class>/...``), sorted by (class, path), and labels."""
        unknown = sorted(set(self._dirs(folder)) - set(self.class_names))
        if unknown:
            raise SourceError(
                f"imagefolder: class folder {self.storage.url(folder, unknown[0])} does not exist "
                f"under {self.storage.url('train')}"
            )
        base = self.storage.path(folder)
        found = [
            p[len(base) + 1 :]
            for p in self.storage.retrying(f"list {self.storage.url(folder)}", lambda: self.storage.fs.find(base))
        ]
        rows, outside, label_of = [], 0, {name: i for i, name in enumerate(self.class_names)}
        for rel in found:
            parts = rel.split("/")
            if any(p.startswith(".") for p in parts) or not rel.lower().endswith(IMAGE_SUFFIXES):
                continue
            if len(parts) < 2:
                outside += 1
                continue
            if parts[0] not in label_of:
                raise SourceError(
                    f"imagefolder: class folder {self.storage.url(folder, parts[0])} does not exist "
                    f"under {self.storage.url('train')}"
                )
            rows.append((label_of[parts[0]], rel))
        if outside:
            log.warning(
                "imagefolder: ignored %d image(s) directly in %s (not in a class folder)",
                outside,
                self.storage.url(folder),
            )
        rows.sort()
        return [rel for _, rel in rows], [label for label, _ in rows]

    def validate(self) -> None:
        import pyarrow as pa

        def isdir(folder: str) -> bool:
            return self.storage.retrying(
                f"look up {self.storage.url(folder)}", lambda: self.storage.fs.isdir(self.storage.path(folder))
            )

        if not isdir("train"):
            raise SourceError(
                f"imagefolder: missing folder {self.storage.url('train')} "
                f"(expected {self.storage.uri}/train/<class>/<image>)"
            )
        self.class_names = self._dirs("train")
        if len(self.class_names) < 2:
            raise SourceError(
                f"imagefolder: {self.storage.url('train')} needs at least two class folders, found {self.class_names}"
            )
        self.classes = len(self.class_names)
        held_out = [f for f in HELD_OUT_FOLDERS if isdir(f)]
        if len(held_out) > 1:
            raise SourceError(
                f"imagefolder: both {self.storage.url('val')} and {self.storage.url('test')} exist; "
                "keep one of them (it becomes the held-out test split)"
            )
        if not held_out:
            log.warning("imagefolder: no val/ or test/ folder under %s; the test split is empty", self.storage.uri)
        self.folders = {"train": "train", "test": held_out[0] if held_out else None}
        for split in SOURCE_SPLITS:
            paths, labels = self._list(self.folders[split]) if self.folders[split] else ([], [])
            if split == "train":
                empty = sorted(set(self.class_names) - {self.class_names[i] for i in labels})
                if empty:
                    raise SourceError(
                        f"imagefolder: class folder {self.storage.url('train', empty[0])} holds no "
                        f"PNG/JPEG images ({', '.join(IMAGE_SUFFIXES)})"
                    )
            n = len(paths) if self.limit is None else min(len(paths), self.limit)
            self._paths[split] = pa.array(paths[:n], pa.string())
            self._labels[split] = np.asarray(labels[:n], dtype=np.int64)
        if self.image_size is None:
            self.height, self.width = self._common_size()
        else:
            self.height, self.width = output_shape(self.size)
        log.info(
            "imagefolder %s: %d classes, %d train and %d test images, %d x %d",
            self.storage.uri,
            self.classes,
            self.count("train"),
            self.count("test"),
            self.height,
            self.width,
        )

    def _common_size(self) -> tuple[int, int]:
        """The (H, W) every image has, from the headers (PIL's lazy open reads no pixels)."""
        from PIL import Image

        def size_of(path: str) -> tuple[int, int]:
            with self.storage.fs.open(path, "rb", block_size=HEADER_BYTES) as f, Image.open(f) as im:
                return im.size

        def probe(uri_path: tuple[str, str]) -> tuple[str, tuple[int, int] | None, str | None]:
            uri, path = uri_path
            try:
                return uri, self.storage.retrying(f"read the header of {uri}", lambda: size_of(path)), None
            except Exception as e:  # a StorageError past the budget names the endpoint
                return uri, None, str(e)

        files = [(self.uri_of(s, i), self._path_of(s, i)) for s in SOURCE_SPLITS for i in range(self.count(s))]
        first: tuple[str, tuple[int, int]] | None = None
        with ThreadPoolExecutor(HEADER_THREADS) as pool:
            for uri, size, error in pool.map(probe, files):
                if size is None:
                    if not self.skip_bad:
                        raise SourceError(f"{uri}: cannot read the image header ({error})")
                    continue  # read() skips and lists it
                if first is None:
                    first = (uri, size)
                elif size != first[1]:
                    (w0, h0), (w1, h1) = first[1], size
                    raise SourceError(
                        f"imagefolder: images differ in size ({first[0]} is {w0}x{h0}, {uri} is {w1}x{h1}, W x H) "
                        "and source.image_size is unset: set it (S: shorter side to S, then the centre S x S; "
                        "[H, W]: stretched to H x W)"
                    )
        if first is None:
            raise SourceError(f"imagefolder: no readable image under {self.storage.uri}")
        return first[1][1], first[1][0]

    # -- reading (Ray Data tasks) ----------------------------------------------------------------------
    @property
    def size(self) -> Size:
        """The decoder's ``size``: S, or (H, W) (configured, or the images' common size)."""
        if isinstance(self.image_size, int):
            return self.image_size
        return (self.height, self.width) if self.image_size is None else tuple(self.image_size)

    def count(self, split: str) -> int:
        return len(self._labels[split])

    def _path_of(self, split: str, i: int) -> str:
        return self.storage.path(self.folders[split], self._paths[split][i].as_py())

    def uri_of(self, split: str, i: int) -> str:
        """Image ``i`` of a source split, as a URI a user can paste."""
        return self.storage.url(self.folders[split], self._paths[split][i].as_py())

    def _fetch(self, split: str, rels: list[str]) -> list[bytes | Exception]:
        """Bytes of ``rels`` (concurrent on object stores); transient failures retried, then ``StorageError``."""
        base = self.storage.path(self.folders[split])
        return self.storage.read_paths([f"{base}/{r}" for r in rels])  # cat_ranges: no globbing of the names

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[start, stop)`` of a source split. With ``skip_bad`` an undecodable image gets label -1 and
        zero pixels, and ``pop_skipped()`` names it; otherwise it raises ``SourceError`` naming its URI."""
        x = np.zeros((stop - start, self.channels, self.height, self.width), dtype=np.uint8)
        y = self._labels[split][start:stop].copy()
        base_uri, self._skipped = self.storage.url(self.folders[split]), {}
        for lo in range(start, stop, READ_CHUNK):
            rels = self._paths[split][lo : min(lo + READ_CHUNK, stop)].to_pylist()
            for i, (rel, data) in enumerate(zip(rels, self._fetch(split, rels)), start=lo):
                uri = f"{base_uri}/{rel}"
                try:
                    if not isinstance(data, bytes):
                        raise SourceError(f"{uri}: cannot read ({data!r})")
                    x[i - start] = decode_image(data, self.channels, self.size, name=uri)
                except SourceError as e:
                    if not self.skip_bad:
                        raise
                    y[i - start] = -1
                    self._skipped[i] = (uri, str(e).removeprefix(f"{uri}: "))
        return x, y

    def pop_skipped(self) -> dict[int, tuple[str, str]]:
        skipped, self._skipped = self._skipped, {}
        return skipped

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size, "folders": self.folders}


def image_folder(cfg, storage: RunStorage | None) -> ImageFolderSource:
    """The ``imagefolder`` source of ``cfg``; ``storage`` (the run's) lends an ``s3://`` root its endpoint and keys."""
    root = cfg.root if "://" in cfg.root else posixpath.expanduser(cfg.root)
    return ImageFolderSource(
        storage=storage.at(root) if storage else RunStorage(root),
        image_size=cfg.image_size,
        channels=cfg.channels,
        limit=cfg.limit,
        skip_bad=cfg.skip_bad,
    )
