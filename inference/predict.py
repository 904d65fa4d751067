"""`spectral predict`: classify every PNG/JPEG under a folder or prefix with Ray Data.

    list the images (recursive, any fsspec URI)  ->  from_items(paths), one block per batch
      -> map_batches(Classifier) on an ActorPoolStrategy: each actor loads the ensemble once
         (on a GPU when the cluster has them), reads its batch's files (``fs.cat``, concurrent on
         object stores), decodes them as the run's source did
         (``data_split.decode_image``: grey/RGB, resized and cropped as the run's source was), runs it
         and writes the block's readable rows as one Parquet file under output/_temporary/<attempt>: path (string),
         pred (int64), class_name (string), prob (list<float32>); (path, pred, error) stream to the driver
      -> check: an unreadable image is an error naming it (or, with ``skip_bad``, left out and listed)
      -> commit: part-NNNNN.parquet, _manifest.json, and _SUCCESS last

Nothing is committed before every image has been classified, so a bad image never leaves half an output
(the attempt's parts are removed); an interrupted run leaves nothing that looks complete
(``inference._output``), and a re-run completes it. A complete output is replaced only with ``overwrite``.
Every read (the listing, the images, the run's model) retries through an outage within
``storage.retry_budget_s``; past it the run fails naming the endpoint. When an image's folder is named after
one of the run's classes (or its index) it counts as labelled, and the accuracy over labelled images is reported.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data_split import IMAGE_SUFFIXES, RunStorage, SourceError, decode_image
from data_split.errors import SpectralError
from data_split.pipeline import CountFn, original_task_errors
from data_split.shutdown import freeze_at_exit
from inference import _output
from inference.config import PredictConfig
from inference.model import CHOSEN, load_ensemble

log = logging.getLogger(__name__)

MAX_NAMED_BAD = 20  # unreadable images named in an error message (all of them are in PredictResult.skipped)


class PredictError(SpectralError, ValueError):
    """No images, or unreadable images; the message names them (an unusable output: ``_output.OutputError``)."""


@dataclass
class PredictResult:
    output: str
    images: int  # classified and written
    seconds: float  # listing to written Parquet, Ray start-up excluded
    labelled: int  # images under a folder named after a class of the run
    accuracy: float | None  # over the labelled images; None when there are none
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (skip_bad)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def folder_labels(class_names: list[str]) -> dict[str, int]:
    """Folder names that label their images: a class's name (``/`` may be written ``-`` or ``_``) or its index."""
    labels = {str(i): i for i in range(len(class_names))}
    for i, name in enumerate(class_names):
        labels.update({name: i, name.replace("/", "-"): i, name.replace("/", "_"): i})
    return labels


def list_images(fs, root: str) -> list[str]:
    """Every PNG/JPEG under ``root`` (recursive), sorted; ``root`` may also be one image."""
    if fs.isfile(root):
        found = [root]
    else:
        found = fs.find(root)
    return sorted(p for p in found if p.lower().endswith(IMAGE_SUFFIXES) and not posixpath.basename(p).startswith("."))


class Classifier:
    """A Ray Data actor holding the ensemble: a batch of paths -> path, pred, error (the summary the driver counts).

    ``run``: the run's storage; ``images``: the input's (same store settings), both as the driver built them.
    Each batch's readable images are written by the actor itself as one Parquet file under ``parts``
    (path as ``prefix`` + path, pred, class_name, prob): no second operator, no probabilities through the object store.
    """

    def __init__(
        self,
        run: RunStorage,
        images: RunStorage,
        weights: str | Sequence[float],
        use_gpu: bool,
        threads: int,
        parts: RunStorage,
        prefix: str = "",
    ) -> None:
        freeze_at_exit()
        torch.set_num_threads(threads)
        self.images, self.parts, self.prefix = images, parts, prefix
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = load_ensemble(run, weights).to(self.device)
        self.info = self.model.info

    def __call__(self, batch: dict) -> pa.Table:
        info, n = self.info, len(batch["path"])
        x = np.zeros((n, info.channels, info.height, info.width), np.uint8)
        errors: list[str | None] = [None] * n
        paths = [str(p) for p in batch["path"]]
        contents = self.images.read_paths(paths)  # bytes or the error; concurrent on object stores, outages retried
        for i, (path, data) in enumerate(zip(paths, contents)):
            try:
                if not isinstance(data, bytes):
                    raise SourceError(f"{path}: cannot read ({data!r})")
                x[i] = decode_image(data, info.channels, info.decode_size, name=path)
            except SourceError as e:
                errors[i] = str(e)
        pixels = torch.from_numpy(x.astype(np.float32) * np.float32(1 / 255)).to(self.device)
        with torch.no_grad():
            prob = torch.softmax(self.model(pixels), dim=1).cpu().numpy().astype(np.float32)  # (n, classes)
        pred = prob.argmax(1).astype(np.int64)
        good = np.array([e is None for e in errors])
        if good.any():
            kept = [self.prefix + p for p, ok in zip(paths, good) if ok]
            part = pa.table(
                {
                    "path": pa.array(kept, pa.string()),
                    "pred": pa.array(pred[good], pa.int64()),
                    "class_name": pa.array([info.class_names[p] for p in pred[good]], pa.string()),
                    "prob": pa.array(list(prob[good]), pa.list_(pa.float32())),
                }
            )
            buf = pa.BufferOutputStream()
            pq.write_table(part, buf)
            # named by its images: a retried batch rewrites its own file instead of adding a second copy of its rows
            name = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:32]
            self.parts.write_bytes(f"{name}.parquet", buf.getvalue().to_pybytes())
        return pa.table(
            {
                "path": pa.array(paths, pa.string()),
                "pred": pa.array(pred, pa.int64()),
                "error": pa.array(errors, pa.string()),
            }
        )


def predict_images(
    storage: RunStorage,
    input_uri: str,
    output_uri: str,
    cfg: PredictConfig = PredictConfig(),
    *,
    weights: str | Sequence[float] = CHOSEN,
    skip_bad: bool = False,
    overwrite: bool = False,
    on_progress: CountFn | None = None,
) -> PredictResult:
    """Classify every image under ``input_uri`` with the run at ``storage``; commit Parquet under ``output_uri``.

    ``on_progress(images classified, images in all)`` is called on the driver as batches come out.

    Input and output are read and written with the run's store settings (endpoint, credentials, retry budget).
    """
    import ray

    t0 = time.perf_counter()
    src, out = storage.at(input_uri), storage.at(output_uri)
    attempt = _output.prepare(out, overwrite=overwrite)
    try:
        paths = src.retrying(f"list the images under {src.url()}", lambda: list_images(src.fs, src.root))
    except FileNotFoundError:
        raise PredictError(f"input {input_uri} does not exist") from None
    if not paths:
        raise PredictError(
            f"no PNG/JPEG images under {input_uri} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)"
        )
    model = load_ensemble(storage, weights)  # fail here, once, if the run is unusable
    info, prefix = model.info, "" if src.protocol == "file" else f"{src.protocol}://"
    gpus = cfg.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    log.info(
        "predict: %d images under %s, %d actor(s) x batch %d, %g CPU and %g GPU per actor",
        len(paths),
        input_uri,
        cfg.concurrency,
        cfg.batch_size,
        cfg.cpus_per_actor,
        gpus,
    )

    # The actors read the files themselves: Ray Data's file reader makes a task per few files and a row per file,
    # which for small images costs more than decoding them (benchmarks/inference.py). One block per actor batch;
    # each actor writes its batch's readable rows as one Parquet file under the attempt, and only (path, pred, error)
    # come back to the driver, which counts them (progress) and commits at the end.
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=-(-len(paths) // cfg.batch_size))

    summaries, done = [], 0
    with original_task_errors():  # a StorageError of an actor reaches the caller as itself
        stream = ds.map_batches(
            Classifier,
            fn_constructor_kwargs={
                "run": storage,
                "images": src,
                "weights": weights,
                "use_gpu": gpus > 0,
                "threads": max(1, round(cfg.cpus_per_actor)),
                "parts": attempt,
                "prefix": prefix,
            },
            batch_size=None,  # a block is a batch (at most cfg.batch_size images): no re-batching between blocks
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=gpus,
        )
        for table in stream.iter_batches(batch_size=None, batch_format="pyarrow"):
            summaries.append(table)
            done += table.num_rows
            if on_progress is not None:
                on_progress(done, len(paths))
    summary = pa.concat_tables(summaries).to_pandas()
    bad = summary[summary["error"].notna()]
    skipped = [prefix + p for p in bad["path"]]
    if len(bad) and (not skip_bad or len(bad) == len(summary)):
        _output.discard(out)  # the parts of this attempt: nothing of it stays
        if not skip_bad:
            named = "; ".join(bad["error"].head(MAX_NAMED_BAD))
            more = f" (and {len(bad) - MAX_NAMED_BAD} more)" if len(bad) > MAX_NAMED_BAD else ""
            raise PredictError(
                f"{len(bad)} unreadable image(s), nothing written: {named}{more}; pass --skip-bad to leave them out"
            )
        raise PredictError(f"none of the {len(summary)} images under {input_uri} could be read; nothing written")
    good = summary[summary["error"].isna()]
    parts = _output.commit(out, attempt, rows=len(good), columns=["path", "pred", "class_name", "prob"])
    seconds = time.perf_counter() - t0

    labels = folder_labels(info.class_names)
    folder = good["path"].map(lambda p: posixpath.basename(posixpath.dirname(p)))
    known = folder.isin(list(labels))
    accuracy = float((good["pred"][known] == folder[known].map(labels)).mean()) if known.any() else None
    result = PredictResult(
        output=out.url(),
        images=len(good),
        seconds=seconds,
        labelled=int(known.sum()),
        accuracy=accuracy,
        skipped=skipped,
    )
    log.info(
        "predict: %d images in %.2f s (%.0f images/s), %d part(s) committed%s",
        result.images,
        seconds,
        result.images_per_s,
        len(parts),
        "" if accuracy is None else f", accuracy {accuracy:.4f} over {result.labelled} labelled",
    )
    return result
