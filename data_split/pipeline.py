"""The Ray Data pipeline that writes K spectral sub-datasets and their manifest.

One pass over the source: ``from_items`` (one row per range of images) ->
``map_batches(read range)`` -> ``map_batches(spectral transform)`` ->
``map_batches(write the range's Parquet files)``. Ray fuses the three into one
task per range, so memory is bounded by ``split.images_per_task`` whatever the
dataset size; only the files' records come back, as tasks finish, which is
how the driver reports progress. What one task does, and how its files' records become the
manifest, is ``data_split.parts``. The driver writes ``manifest.json`` last:
a run without a manifest is incomplete and is redone from scratch.

Extra sources (``extra_sources``, ``data_split.extra_sources``) run one such
pipeline each, on the nodes that hold them, and add their train rows (``src``
= j) to the train split of the branches they feed.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from data_split import layout
from data_split.config import ExtraSourceConfig, SourceConfig, SplitConfig
from data_split.errors import ConfigError, SpectralError, user_error
from data_split.extra_sources import (
    ExtraPlan,
    check_resources,
    load_extra_range,
    plan_extra_ranges,
    plan_extra_sources,
    transform_lowres_batch,
)
from data_split.layout import MANIFEST
from data_split.manifest import Manifest, PartRecord, Skipped
from data_split.parts import build_manifest, config_hash, plan_ranges, read_range, transform_batch, write_parts
from data_split.quantize import affine_params
from data_split.sources import ImageSource, make_source
from data_split.storage import RunStorage
from data_split.transforms import split_matrix

log = logging.getLogger(__name__)


class SplitConflictError(SpectralError, RuntimeError):
    """The run URI holds sub-datasets of a different configuration."""


# -- Ray Data ----------------------------------------------------------------------------------------
CountFn = Callable[[int, int], None]  # progress as (images done, images in all): split's and predict's


def _run_ray_pipeline(
    ranges: list[dict],
    read: Callable[[dict], dict],
    transform: Callable[..., dict],
    transform_kwargs: dict,
    storage: RunStorage,
    dtype: str,
    codecs: list[dict],
    branches: Sequence[int] | None,
    resources: dict[str, float],
    on_done: Callable[[int], None],
) -> list[PartRecord | Skipped]:
    """ranges -> read -> transform -> write, every operator held to nodes with ``resources`` (so Ray fuses
    them into one task per range there: raw images never leave those nodes). Records name the reading node.

    The write is the last ``map_batches``: each task writes its range's files and returns only their records
    (one pickled list per range), which the driver streams back as tasks finish and counts (``on_done(images)``).
    """
    import ray

    held = {"resources": dict(resources)} if resources else {}  # the same on every operator, so they fuse

    def read_here(batch: dict) -> dict:
        out = read({name: v[0] for name, v in batch.items()})
        return {**out, "node": np.full(len(out["idx"]), ray.get_runtime_context().get_node_id())}

    def write(batch: dict) -> dict:
        records = write_parts(storage, batch, dtype, codecs, branches) if len(batch["idx"]) else []
        return {"records": np.array([pickle.dumps(records)], dtype=object), "images": np.array([len(batch["idx"])])}

    records: list[PartRecord | Skipped] = []
    with original_task_errors():
        stream = (
            ray.data.from_items(ranges, override_num_blocks=len(ranges))
            .map_batches(read_here, batch_size=1, batch_format="numpy", **held)
            .map_batches(transform, batch_size=None, batch_format="numpy", fn_kwargs=transform_kwargs, **held)
            .map_batches(write, batch_size=None, batch_format="numpy", **held)
        )
        for out in stream.iter_batches(batch_size=None, batch_format="numpy"):
            for pickled, images in zip(out["records"], out["images"]):
                records += pickle.loads(pickled)
                on_done(int(images))
    return records


@contextlib.contextmanager
def original_task_errors() -> Iterator[None]:
    """Ray Data re-raises a failed task's own exception inside the block (a ``StorageError``, a ``SourceError``).

    By default it wraps it in a UserCodeException that keeps only the traceback text; the original keeps our
    error in the cause chain, where ``data_split.errors.user_error`` finds it for the CLI's one line.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    raise_original, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True
    try:
        yield
    finally:
        ctx.raise_original_map_exception = raise_original


def _write_with_ray(
    source: ImageSource,
    split_cfg: SplitConfig,
    storage: RunStorage,
    extras: Sequence[ExtraPlan] = (),
    on_progress: CountFn | None = None,
) -> list[PartRecord | Skipped]:
    """All sources' sub-datasets: the main source's, then each extra source's on its own nodes."""
    matrix = split_matrix(split_cfg.transform, split_cfg.rows, split_cfg.cols)
    r, c, dtype, codecs = split_cfg.rows, split_cfg.cols, split_cfg.dtype, affine_params(matrix, source.channels)
    main_ranges = plan_ranges(source, split_cfg.images_per_task)
    extra_ranges = [plan_extra_ranges(plan, split_cfg.images_per_task) for plan in extras]
    total = sum(int(item["stop"]) - int(item["start"]) for item in main_ranges + sum(extra_ranges, []))
    done = 0

    def on_done(images: int) -> None:
        nonlocal done
        done += images
        if on_progress is not None:
            on_progress(done, total)

    records = _run_ray_pipeline(
        main_ranges,
        lambda item: read_range(source, split_cfg, item),
        transform_batch,
        {"r": r, "c": c, "matrix": matrix},
        storage,
        dtype,
        codecs,
        None,
        {},
        on_done,
    )
    for plan, ranges in zip(extras, extra_ranges):
        records += _run_ray_pipeline(
            ranges,
            lambda item, plan=plan: load_extra_range(plan, int(item["start"]), int(item["stop"]), split_cfg.seed),
            transform_lowres_batch,
            {"r": r, "c": c, "fr": plan.fr, "fc": plan.fc, "matrix": matrix},
            storage,
            dtype,
            codecs,
            plan.fed,
            plan.cfg.resources,
            on_done,
        )
    return records


def write_single_process(
    source: ImageSource, split_cfg: SplitConfig, storage: RunStorage
) -> list[PartRecord | Skipped]:
    """The same files without Ray: the reference the benchmark compares against."""
    matrix = split_matrix(split_cfg.transform, split_cfg.rows, split_cfg.cols)
    codecs, records = affine_params(matrix, source.channels), []
    for item in plan_ranges(source, split_cfg.images_per_task):
        batch = read_range(source, split_cfg, item)
        records += write_parts(
            storage, transform_batch(batch, split_cfg.rows, split_cfg.cols, matrix), split_cfg.dtype, codecs
        )
    return records


@dataclass
class SplitResult:
    manifest: Manifest
    up_to_date: bool  # True: an identical split was already there and nothing was written
    seconds: float = 0.0
    records: list[PartRecord] = field(default_factory=list)


def split_dataset(
    source_cfg: SourceConfig,
    split_cfg: SplitConfig,
    storage: RunStorage,
    *,
    overwrite: bool = False,
    extra_sources: Sequence[ExtraSourceConfig] = (),
    on_progress: CountFn | None = None,
) -> SplitResult:
    """Write the K spectral sub-datasets of ``source_cfg`` (and ``extra_sources``) under ``storage`` (idempotent).

    ``on_progress(images done, images in all)`` is called on the driver as each range's files are written.
    """
    source = make_source(source_cfg, storage)  # validates every source file before anything is written
    h, w = source.height, source.width
    if h % split_cfg.rows or w % split_cfg.cols:
        raise ConfigError(
            f"source {source.name!r} images are (H, W) = ({h}, {w}), not divisible by "
            f"split (rows, cols) = ({split_cfg.rows}, {split_cfg.cols})"
        )
    extras = plan_extra_sources(
        source,
        list(extra_sources),
        split_cfg,
        split_matrix(split_cfg.transform, split_cfg.rows, split_cfg.cols),
        storage,
    )
    if any(p.cfg.resources for p in extras):
        import ray

        check_resources(extras, ray.cluster_resources())  # fail now rather than hang on an infeasible task
    storage.check_writable()
    digest = config_hash(source_cfg, split_cfg, list(extra_sources))
    if storage.exists(MANIFEST):
        old_hash = layout.stored_config_hash(storage)
        if old_hash == digest:
            log.info("sub-datasets at %s are up to date (config hash %s)", storage.url(layout.DATA), digest[:12])
            return SplitResult(manifest=layout.load_manifest(storage), up_to_date=True)
        if not overwrite:
            raise SplitConflictError(
                f"{storage.url(layout.DATA)} holds sub-datasets of a different configuration "
                f"(config hash {(old_hash or '?')[:12]} != {digest[:12]}); "
                "use another --storage URI or pass --overwrite"
            )
        log.warning("overwriting sub-datasets at %s", storage.url(layout.DATA))
        storage.remove(layout.DATA)
    elif storage.ls(layout.DATA):
        log.warning(
            "%s has no manifest (an interrupted split): removing it and starting over", storage.url(layout.DATA)
        )
        storage.remove(layout.DATA)

    t0 = time.perf_counter()
    try:
        records = _write_with_ray(source, split_cfg, storage, extras, on_progress)
    except Exception as e:  # no manifest was written: the run stays incomplete
        err = user_error(e)  # a task's SourceError/StorageError, with its one-line message
        if err is None or err is e:
            raise
        raise err from e
    manifest = build_manifest(source, source_cfg, split_cfg, records, extras)
    layout.write_manifest(storage, manifest)  # last: its presence marks the split complete
    if skipped := manifest.source.skipped:
        log.warning(
            "skipped %d unreadable image(s) (source.skip_bad), e.g. %s; listed in %s under source.skipped",
            len(skipped),
            skipped[0].path,
            storage.url(MANIFEST),
        )
    return SplitResult(
        manifest=manifest,
        up_to_date=False,
        seconds=time.perf_counter() - t0,
        records=[r for r in records if isinstance(r, PartRecord)],
    )
