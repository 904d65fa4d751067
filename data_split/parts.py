"""One range of images in, its part files out, and the manifest summed from the parts' records.

No Ray here: the Ray Data pipeline (``data_split.pipeline``) runs ``read_range`` -> ``transform_batch``
-> ``write_parts`` as one task per range, and ``write_single_process`` runs the same functions in a loop.
Each task writes, atomically, one Parquet file per (split, branch) it holds, with a name derived from its
range (a retried task overwrites its own files), and returns the files' records: row counts, sizes and
per-channel sums. ``build_manifest`` checks that every source image arrived in every branch and sums the
records into the manifest (storage version 3: values as ``split.dtype``, zstd Parquet, rows in a seeded
random order of blocks of images, the same in every branch: ``data_split.quantize``, ``data_split.parquet``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from data_split import layout
from data_split.config import ExtraSourceConfig, SourceConfig, SplitConfig
from data_split.extra_sources import MAIN_SRC, ExtraPlan
from data_split.layout import MANIFEST_VERSION
from data_split.manifest import (
    BranchInfo,
    Manifest,
    PartRecord,
    Skipped,
    SourceEntry,
    SourceInfo,
    SplitFiles,
    SplitInfo,
)
from data_split.parquet import raw_bytes, row_order, shard_bytes
from data_split.quantize import affine_params, decode, encode
from data_split.sources import ImageSource
from data_split.storage import RunStorage
from data_split.transforms import spectral_components, split_matrix

SPLITS = ("train", "val", "test")
# The storage version in the config hash: 2 for versions 2 and 3, which hold the same values (3 only encodes x
# as fixed_size_binary) and both read, so that a version-2 run stays up to date instead of conflicting.
HASHED_VERSION = 2


def config_hash(source: SourceConfig, split: SplitConfig, extra: Sequence[ExtraSourceConfig] = ()) -> str:
    """Content hash of everything that changes the written data (not of where it goes)."""
    cfg = {"manifest_version": HASHED_VERSION, "source": asdict(source), "split": asdict(split)}
    cfg["split"].pop("images_per_task")  # changes file boundaries, not content
    cfg["source"].pop("download")  # fetching the files first does not change them
    if not cfg["source"]["skip_bad"]:  # absent unless set: a key that changes nothing must not change the hash
        cfg["source"].pop("skip_bad")
    if extra:  # absent when there are none, so that existing runs keep their hash
        cfg["extra_sources"] = [asdict(e) for e in extra]
        for e in cfg["extra_sources"]:
            e.pop("download")
            e.pop("skip_bad")  # always False for extra sources
            e.pop("resources")  # where a source is read, not what it holds
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def val_mask(n_train: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean ``(n_train,)``: True where a source-train image goes to the validation split."""
    mask = np.zeros(n_train, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n_train)[: round(fraction * n_train)]] = True
    return mask


def plan_ranges(source: ImageSource, images_per_task: int) -> list[dict]:
    """One item per task: a contiguous range of one source split."""
    return [
        {"source_split": split, "start": start, "stop": min(start + images_per_task, source.count(split))}
        for split in ("train", "test")
        for start in range(0, source.count(split), images_per_task)
    ]


# -- the per-range work (used by the Ray pipeline and by the single-process reference) ----------
def load_range(source: ImageSource, split_cfg: SplitConfig, source_split: str, start: int, stop: int) -> dict:
    """Raw images of one range with their target split: x uint8 (n, C, H, W)."""
    x, y = source.read(source_split, start, stop)
    if source_split == "train":
        is_val = val_mask(source.count("train"), split_cfg.val_fraction, split_cfg.seed)[start:stop]
        target = np.where(is_val, "val", "train")
    else:
        target = np.full(stop - start, "test")
    order = row_order(stop - start, [split_cfg.seed, ("train", "test").index(source_split), start])
    return {
        "idx": np.arange(start, stop, dtype=np.int64)[order],
        "src": np.full(stop - start, MAIN_SRC, np.int16),
        "y": y[order],
        "split": target[order],
        "x": x[order],
    }


def read_range(source: ImageSource, split_cfg: SplitConfig, item: dict) -> dict:
    """``load_range`` of one planned range, plus what the source left out (``source.skip_bad``): those rows carry
    their URI and reason in ``bad_path``/``bad_error`` ("" for the others); ``write_parts`` drops and lists them."""
    batch = load_range(source, split_cfg, str(item["source_split"]), int(item["start"]), int(item["stop"]))
    skipped = source.pop_skipped()  # index -> (URI, reason), of the read just done
    bad = [skipped.get(int(i), ("", "")) for i in batch["idx"]] if skipped else [("", "")] * len(batch["idx"])
    return {**batch, "bad_path": np.array([p for p, _ in bad]), "bad_error": np.array([e for _, e in bad])}


def transform_batch(batch: dict, r: int, c: int, matrix: np.ndarray) -> dict:
    """Adds ``s`` float32 (n, K, C, H/r, W/c) of ``x`` uint8 (n, C, H, W), pixels scaled to [0, 1]."""
    x = np.asarray(batch["x"], dtype=np.float32) * np.float32(1 / 255)
    s = spectral_components(x, r, c, matrix.astype(np.float32))
    return {**batch, "s": np.ascontiguousarray(s)}


def write_parts(
    storage: RunStorage, batch: dict, dtype: str, codecs: list[dict], branches: Sequence[int] | None = None
) -> list[PartRecord | Skipped]:
    """Write every (split, branch) of one transformed range; return one record per file.

    ``codecs[k]``: branch k's uint8 ``offset``/``scale`` (ignored for float dtypes). The per-channel sums
    are of the decoded values, so the manifest's mean/std describe exactly what training sees.
    ``batch["s"][:, i]`` is branch ``branches[i]`` (default ``i``: an extra source holds only the
    branches it feeds). Records name the ``src`` and the node that read the range (when known).
    Rows with a ``bad_error`` (images the source skipped) are written nowhere: each becomes a
    ``Skipped`` record for the manifest.
    """
    records: list[PartRecord | Skipped] = []
    src_id = int(batch["src"][0])
    part = f"part-{'' if src_id == MAIN_SRC else f'src{src_id}-'}{int(batch['idx'].min()):09d}.parquet"
    if "bad_error" in batch and (bad := batch["bad_error"] != "").any():
        records = [
            Skipped(path=str(p), error=str(e), split=str(s))
            for s, p, e in zip(batch["split"][bad], batch["bad_path"][bad], batch["bad_error"][bad])
        ]
        batch = {name: v[~bad] for name, v in batch.items()}
    node = str(batch["node"][0]) if "node" in batch else None
    for split in SPLITS:
        rows = batch["split"] == split
        if not rows.any():
            continue
        idx, src, y, s = (
            batch["idx"][rows],
            batch["src"][rows],
            batch["y"][rows],
            batch["s"][rows],
        )  # s: (n, K, C, h, w)
        raw = raw_bytes(batch["x"][rows])
        for i in range(s.shape[1]):
            k = i if branches is None else branches[i]
            t0 = time.perf_counter()
            stored = encode(s[:, i], dtype, codecs[k]["offset"], codecs[k]["scale"])
            data = shard_bytes(idx, src, y, stored)
            rel = layout.shard(split, k, part)
            storage.write_bytes(rel, data)
            xk = decode(stored, dtype, codecs[k]["offset"], codecs[k]["scale"]).astype(np.float64)
            records.append(
                PartRecord(
                    split=split,
                    branch=k,
                    src=src_id,
                    node=node,
                    file=rel,
                    rows=int(rows.sum()),
                    bytes=len(data),
                    raw_bytes=raw if i == 0 else 0,
                    seconds=time.perf_counter() - t0,
                    sum=xk.sum(axis=(0, 2, 3)).tolist(),
                    sumsq=np.square(xk).sum(axis=(0, 2, 3)).tolist(),
                )
            )
    return records


# -- the manifest ------------------------------------------------------------------------------------------
def build_manifest(
    source: ImageSource,
    source_cfg: SourceConfig,
    split_cfg: SplitConfig,
    records: list[PartRecord | Skipped],
    extras: Sequence[ExtraPlan] = (),
) -> Manifest:
    """Sum the file records into the manifest; raise if any image is missing from any branch.

    Images the source skipped (``source.skip_bad``; ``Skipped`` records) are rows nowhere: the counts
    exclude them, and ``source.skipped`` lists them.
    """
    skipped = sorted((r for r in records if isinstance(r, Skipped)), key=lambda r: r.path)
    parts = [r for r in records if isinstance(r, PartRecord)]
    lost = {split: sum(r.split == split for r in skipped) for split in SPLITS}
    k, n_train = split_cfg.k, source.count("train")
    n_val = round(split_cfg.val_fraction * n_train)
    counts = {
        "train": n_train - n_val - lost["train"],
        "val": n_val - lost["val"],
        "test": source.count("test") - lost["test"],
    }
    # expected[split][branch][src]: the main source everywhere, each extra source's train in the branches it feeds
    expected = {split: [{str(MAIN_SRC): counts[split]} for _ in range(k)] for split in SPLITS}
    for plan in extras:
        for b in plan.fed:
            expected["train"][b][str(plan.src)] = plan.source.count("train")
    c, h, w = source.channels, source.height // split_cfg.rows, source.width // split_cfg.cols
    matrix = split_matrix(split_cfg.transform, split_cfg.rows, split_cfg.cols)
    codecs = affine_params(matrix, c)
    branches = []
    for b in range(k):
        mine = sorted((r for r in parts if r.branch == b), key=lambda r: r.file)
        splits = {}
        for split in SPLITS:
            rs = [r for r in mine if r.split == split]
            by_source = {src: sum(r.rows for r in rs if str(r.src) == src) for src in expected[split][b]}
            if by_source != expected[split][b] or sum(by_source.values()) != sum(r.rows for r in rs):
                raise RuntimeError(
                    f"branch {b} split {split}: wrote rows by source {by_source}, expected {expected[split][b]}"
                )
            splits[split] = SplitFiles(
                rows=sum(by_source.values()),
                rows_by_source=by_source,
                bytes=sum(r.bytes for r in rs),
                files=[r.file for r in rs],
            )
        train = [r for r in mine if r.split == "train"]
        n_pix = max(splits["train"].rows * h * w, 1)
        mean = np.sum([r.sum for r in train], axis=0) / n_pix if train else np.zeros(c)
        mean_sq = np.sum([r.sumsq for r in train], axis=0) / n_pix if train else np.zeros(c)
        codec = codecs[b] if split_cfg.dtype == "uint8" else {}
        branches.append(
            BranchInfo(
                k=b,
                mean=mean.tolist(),
                std=np.sqrt(np.maximum(mean_sq - mean**2, 0.0)).tolist(),
                offset=codec.get("offset"),
                scale=codec.get("scale"),
                splits=splits,
            )
        )
    nodes = {src: sorted({r.node for r in parts if r.src == src and r.node}) for src in range(len(extras) + 1)}
    used = {"train": counts["train"] + counts["val"], "test": counts["test"]}  # images used per source split
    described = SourceInfo.from_json(source.describe() | {"counts": used})  # a source's own keys go to details
    main = SourceEntry(
        src=MAIN_SRC,
        name=described.name,
        root=source_cfg.root,
        limit=source_cfg.limit,
        resolution=described.resolution,
        factors=[1, 1],
        counts=used,
        branches=list(range(k)),
        resources={},
        nodes=nodes[MAIN_SRC],
    )
    return Manifest(
        version=MANIFEST_VERSION,
        config_hash=config_hash(source_cfg, split_cfg, [p.cfg for p in extras]),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        source=dataclasses.replace(described, skipped=skipped or None, root=source_cfg.root, limit=source_cfg.limit),
        # every source in src order: resolution, counts, the branches it feeds, the nodes whose tasks read it
        sources=[main, *(dataclasses.replace(p.describe(), nodes=nodes[p.src]) for p in extras)],
        split=SplitInfo(
            r=split_cfg.rows,
            c=split_cfg.cols,
            K=k,
            transform=split_cfg.transform,
            dtype=split_cfg.dtype,
            matrix=matrix.tolist(),
            branch_shape=[c, h, w],
        ),
        val_fraction=split_cfg.val_fraction,
        seed=split_cfg.seed,
        counts=counts,
        # the same images as raw uint8, one zstd Parquet column per range file: the yardstick of `bytes`
        raw_bytes={split: sum(r.raw_bytes for r in parts if r.split == split) for split in SPLITS},
        branches=branches,
    )
