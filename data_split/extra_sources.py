"""Extra (lower-resolution, possibly remote) sources: their plan, their rows, where they may be read.

``extra_sources[j-1]`` is source ``src = j``. Its images are ``fr x fc`` box
averages of the main source's resolution; it feeds the branches that
``data_split.multires`` reads off the split matrix, with all of its train split
(no validation carve: the main source alone gives validation and test data).

Data locality: a source's ``resources`` (Ray custom resources, e.g.
``{site_b: 1}``) go into the ``ray_remote_args`` of every operator of its Ray
Data pipeline (read, transform, write are then fused into one task), so its raw
images are read, transformed and written as sub-datasets on the nodes that hold
that resource, and never travel. A resource that no node has would leave the
tasks pending forever: ``check_resources`` fails fast instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_split.config import ExtraSourceConfig, SplitConfig
from data_split.errors import ConfigError
from data_split.manifest import Manifest, SourceEntry
from data_split.multires import lowres_components, plan_extra_source
from data_split.parquet import row_order
from data_split.sources import ImageSource, make_source
from data_split.storage import RunStorage

MAIN_SRC = 0  # the `src` of the configured `source`; extra_sources[j-1] is src j


@dataclass
class ExtraPlan:
    """One extra source, validated against the main source and the split."""

    src: int  # 1, 2, ...
    cfg: ExtraSourceConfig
    source: ImageSource
    fr: int  # rows of full-resolution pixels averaged into one low-resolution pixel
    fc: int
    fed: list[int]  # the branches it determines, ascending

    @property
    def what(self) -> str:
        return describe_extra(self.src, self.cfg)

    def describe(self) -> SourceEntry:
        """Its entry in the manifest's ``sources`` (without the nodes that read it: the split's tasks know those)."""
        return SourceEntry(
            src=self.src,
            name=self.source.name,
            root=self.cfg.root,
            limit=self.cfg.limit,
            resolution=[self.source.height, self.source.width],
            factors=[self.fr, self.fc],
            counts={"train": self.source.count("train")},
            branches=self.fed,
            resources=dict(self.cfg.resources),
        )


def describe_extra(src: int, cfg: ExtraSourceConfig) -> str:
    """How errors name extra source ``src``: ``extra_sources[0] (mnist at /data/b)``."""
    return f"extra_sources[{src - 1}] ({cfg.name}{' at ' + cfg.root if cfg.root else ''})"


def plan_extra_sources(
    main: ImageSource,
    extra: list[ExtraSourceConfig],
    split_cfg: SplitConfig,
    matrix: np.ndarray,
    storage: RunStorage | None = None,
) -> list[ExtraPlan]:
    """Open and check every extra source (``ValueError`` naming the source when it cannot be used);
    ``storage`` (the run's) lends an image folder on ``s3://`` its endpoint and credentials."""
    plans = []
    for j, cfg in enumerate(extra, start=1):
        source = make_source(cfg, storage)
        what = describe_extra(j, cfg)
        for attr in ("channels", "classes"):
            if getattr(source, attr) != getattr(main, attr):
                raise ConfigError(f"{what} has {getattr(source, attr)} {attr}, the main source {getattr(main, attr)}")
        fr, fc, fed = plan_extra_source(
            matrix,
            split_cfg.rows,
            split_cfg.cols,
            (main.height, main.width),
            (source.height, source.width),
            what,
            split_cfg.transform,
        )
        plans.append(ExtraPlan(src=j, cfg=cfg, source=source, fr=fr, fc=fc, fed=fed))
    return plans


def check_resources(plans: list[ExtraPlan], cluster: dict[str, float]) -> None:
    """Raise when a source needs a custom resource that no node of the cluster offers (it would hang)."""
    for plan in plans:
        missing = {name: amount for name, amount in plan.cfg.resources.items() if cluster.get(name, 0) < amount}
        if missing:
            offered = sorted(
                k
                for k in cluster
                if k not in ("CPU", "GPU", "memory", "object_store_memory")
                and not k.startswith("node:")
                and not k.startswith("accelerator_type:")
            )
            raise ConfigError(
                f"{plan.what} must be read on nodes with resources {missing}, but the cluster offers "
                f"{ {k: cluster.get(k, 0) for k in missing} } of them (custom resources of the cluster: "
                f"{', '.join(offered) or 'none'}); start the node that holds it with "
                f"`ray start --resources='{{\"{next(iter(missing))}\": 1}}'`"
            )


def plan_extra_ranges(plan: ExtraPlan, images_per_task: int) -> list[dict]:
    """One item per task: a contiguous range of the source's train split."""
    n = plan.source.count("train")
    return [{"start": s, "stop": min(s + images_per_task, n)} for s in range(0, n, images_per_task)]


def load_extra_range(plan: ExtraPlan, start: int, stop: int, seed: int) -> dict:
    """Raw low-resolution train images of one range, all for training, in a seeded random row order."""
    x, y = plan.source.read("train", start, stop)
    order = row_order(stop - start, [seed, 100 + plan.src, start])
    return {
        "idx": np.arange(start, stop, dtype=np.int64)[order],
        "src": np.full(stop - start, plan.src, np.int16),
        "y": y[order],
        "split": np.full(stop - start, "train"),
        "x": x[order],
    }


def transform_lowres_batch(batch: dict, r: int, c: int, fr: int, fc: int, matrix: np.ndarray) -> dict:
    """Adds ``s`` float32 (n, n_fed, C, H/r, W/c): the fed branches, from ``x`` uint8 (n, C, H/fr, W/fc)."""
    x = np.asarray(batch["x"], dtype=np.float32) * np.float32(1 / 255)
    _, s = lowres_components(x, r, c, fr, fc, matrix)
    return {**batch, "s": np.ascontiguousarray(s)}


def sources_by_branches(manifest: Manifest) -> list[dict]:
    """One row per source (``src`` order): its label, resolution, nodes and train rows per branch (None: not fed)."""
    out = []
    for source in manifest.sources:
        rows = [(b.splits["train"].rows_by_source or {}).get(str(source.src)) for b in manifest.branches]
        out.append(
            {
                "src": source.src,
                "name": source.name,
                "resolution": source.resolution,
                "nodes": source.nodes or [],
                "train_rows": rows,
            }
        )
    return out
