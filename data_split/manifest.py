"""The manifest of a split (``<run>/data/manifest.json``, docs/storage.md) as typed records.

``Manifest.from_json`` reads the file's object and ``to_json`` gives it back with the same fields in
the same order, so what is on disk is unchanged (``tests/test_manifest.py``). A field that is None
is left out of the JSON, except where a record marks it nullable (``root``, ``limit``: null means
"unset" there). Hand-made and older manifests may lack fields: those read as None (or empty), and
``layout.load_manifest`` checks the ones a caller needs. ``source`` keeps the keys its source adds
(an image folder's ``image_size`` and ``folders``) in ``SourceInfo.details``; other undeclared keys
are not read. ``PartRecord`` and ``Skipped`` are what the split's tasks return, one per file or
skipped image; ``data_split.parts.build_manifest`` sums them into a ``Manifest``.

    {"version", "config_hash", "created",
     "source": SourceInfo, "sources": [SourceEntry], "split": SplitInfo,
     "val_fraction", "seed", "counts", "raw_bytes",
     "branches": [BranchInfo {"k", "mean", "std", "offset", "scale", "splits": {split: SplitFiles}}]}
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from data_split.errors import SpectralError

NULLABLE = "nullable"  # metadata: written as null when None (others are left out)
OTHER_KEYS = "other_keys"  # metadata: a dict of the object's undeclared keys, written in this field's place


class ManifestError(SpectralError, ValueError):
    """``manifest.json`` is missing or lacks a field; the message names it."""


def _nullable() -> Any:
    return field(default=None, metadata={NULLABLE: True})


class Record:
    """Base of the manifest's records: JSON in and out, fields in declaration order."""

    @classmethod
    def from_json(cls, obj: dict) -> Any:
        """The record of a parsed JSON object; a field of the wrong shape is a ``ManifestError`` naming it."""
        return _read(cls, obj, "")

    def to_json(self) -> dict:
        """The JSON object to write: ``cls.from_json(r.to_json()) == r``, and ``to_json`` gives back what it read."""
        return _write(self)


@dataclass(kw_only=True, frozen=True)
class Skipped(Record):
    """An image the source could not read or decode (``source.skip_bad``): in no split, listed in ``source.skipped``."""

    path: str
    error: str
    split: str


@dataclass(kw_only=True, frozen=True)
class PartRecord(Record):
    """One Parquet file a split task wrote: one (split, branch) of one range of one source."""

    split: str
    branch: int
    src: int
    node: str | None  # the Ray node that read the range (None outside Ray)
    file: str  # relative to the run
    rows: int
    bytes: int
    raw_bytes: int  # the range's raw uint8 images as one zstd column, on its first branch's record only
    seconds: float  # serialising and writing this file
    sum: list[float]  # per channel, of the decoded values
    sumsq: list[float]


@dataclass(kw_only=True, frozen=True)
class SourceInfo(Record):
    """``source``: the main source as the split read it."""

    name: str | None = None
    resolution: list[int] | None = None  # [H, W]
    channels: int | None = None
    classes: int | None = None
    class_names: list[str] | None = None
    counts: dict[str, int] | None = None  # images used per source split (train includes val)
    details: dict[str, Any] = field(
        default_factory=dict, metadata={OTHER_KEYS: True}
    )  # the source's own: imagefolder's image_size, folders
    skipped: list[Skipped] | None = None
    root: str | None = _nullable()
    limit: int | None = _nullable()

    @property
    def image_size(self) -> int | list[int] | None:
        """``source.image_size`` of an image folder (S: shorter side to S, centre crop; [H, W]: stretched)."""
        return self.details.get("image_size")


@dataclass(kw_only=True, frozen=True)
class SourceEntry(Record):
    """One of ``sources``, in ``src`` order: the main source (0), then each of ``extra_sources``."""

    src: int
    name: str | None = None
    root: str | None = _nullable()
    limit: int | None = _nullable()
    resolution: list[int] | None = None
    factors: list[int] | None = None  # [fr, fc]: its pixels are fr x fc box averages of the main source's
    counts: dict[str, int] | None = None
    branches: list[int] = field(default_factory=list)  # the branches it feeds
    resources: dict[str, float] = field(default_factory=dict)
    nodes: list[str] | None = None  # the nodes whose tasks read it


@dataclass(kw_only=True, frozen=True)
class SplitInfo(Record):
    """``split``: r x c polyphase split under the K x K orthonormal ``matrix``."""

    r: int
    c: int
    K: int
    transform: str
    dtype: str | None = None
    matrix: list[list[float]] | None = None
    branch_shape: list[int] | None = None  # [C, H/r, W/c]

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, h, w)``: one spectral sub-image, a branch's input."""
        return tuple(int(d) for d in self.branch_shape)


@dataclass(kw_only=True, frozen=True)
class SplitFiles(Record):
    """``branches[k].splits[split]``: the files of one branch and split."""

    rows: int
    rows_by_source: dict[str, int] | None = None  # str(src) -> rows
    bytes: int | None = None
    files: list[str] = field(default_factory=list)


@dataclass(kw_only=True, frozen=True)
class BranchInfo(Record):
    """``branches[k]``: per-channel statistics of the train split, the uint8 codec, the files."""

    k: int
    mean: list[float] | None = None
    std: list[float] | None = None
    offset: list[float] | None = None  # uint8 only: value = offset + scale * code
    scale: list[float] | None = None
    splits: dict[str, SplitFiles] = field(default_factory=dict)


@dataclass(kw_only=True, frozen=True)
class Manifest(Record):
    version: int
    config_hash: str | None = None  # of everything that changes the written data
    created: str | None = None
    source: SourceInfo = field(default_factory=SourceInfo)
    sources: list[SourceEntry] = field(default_factory=list)
    split: SplitInfo | None = None
    val_fraction: float | None = None
    seed: int | None = None
    counts: dict[str, int] | None = None  # rows per split (train, val, test) of the main source
    raw_bytes: dict[str, int] | None = None  # the same images as raw uint8: the yardstick of the stored bytes
    branches: list[BranchInfo] = field(default_factory=list)

    @property
    def K(self) -> int:
        return int(self.split.K)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _read(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as the annotation ``tp``: records from objects, recursively."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None or tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _read(next(a for a in args if a is not type(None)), value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ManifestError(f"{where or 'manifest'}: expected a list, got {value!r}")
        return [_read(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where or 'manifest'}: expected an object, got {value!r}")
        return {k: _read(args[1], v, _key(where, k)) for k, v in value.items()}
    if not dataclasses.is_dataclass(tp):
        return value
    if not isinstance(value, dict):
        raise ManifestError(f"{where or 'manifest'}: expected an object, got {value!r}")
    declared = {f.name: f for f in dataclasses.fields(tp)}
    kwargs = {name: _read(_hints(tp)[name], value[name], _key(where, name)) for name in declared if name in value}
    rest = next((f.name for f in declared.values() if f.metadata.get(OTHER_KEYS)), None)
    if rest:
        kwargs[rest] = {k: v for k, v in value.items() if k not in declared}
    missing = [
        _key(where, f.name)
        for f in declared.values()
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ManifestError(f"lacks field(s) {', '.join(missing)}")
    return tp(**kwargs)


def _write(value: Any) -> Any:
    """The JSON value of a record (fields in declaration order), list or dict."""
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get(OTHER_KEYS):
                out.update(v)
            elif v is not None or f.metadata.get(NULLABLE):
                out[f.name] = _write(v)
        return out
    if isinstance(value, list):
        return [_write(v) for v in value]
    if isinstance(value, dict):
        return {k: _write(v) for k, v in value.items()}
    return value
