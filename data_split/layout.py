"""The storage layout of a run (docs/storage.md describes it): every path under the run URI as a function
or a constant here, named after what it holds (``result(k)`` is ``branches/<k>/result.json``,
``MANIFEST`` is ``data/manifest.json``), and one reader each for the manifest (``load_manifest``),
``metrics.jsonl`` (``read_metrics``) and ``result.json`` (``read_result``). Nothing else spells a run path.

Paths are relative to the run (``RunStorage`` resolves them); a run nested in another (the baseline, a
sweep trial) is ``storage.child(rel)``.
"""

from __future__ import annotations

import json
import logging
import re

from data_split.manifest import Manifest, ManifestError
from data_split.storage import RunStorage

log = logging.getLogger(__name__)

MANIFEST_VERSION = 3  # of manifest.json, what a split writes (3: x as fixed_size_binary; 2: compact storage)
READABLE_VERSIONS = (2, 3)  # what load_manifest and the readers accept (2: x as Arrow's fixed-shape tensor type)
REQUIRED_MANIFEST_FIELDS = ("version", "config_hash", "source", "split", "val_fraction", "seed", "branches")

DATA = "data"
MANIFEST = f"{DATA}/manifest.json"
BRANCHES = "branches"
ENSEMBLE = "ensemble"
WEIGHTS = f"{ENSEMBLE}/weights.json"  # the run's chosen ensemble
ENSEMBLE_EVENTS = f"{ENSEMBLE}/tensorboard/events.out.tfevents.0.spectral"  # the ensembles' results for TensorBoard
REPORT = "report"
BASELINE = "baseline"  # the full-resolution baseline: a run of its own (same layout, K = 1)
BASELINE_DDP = "baseline-ddp"  # the baseline trained with Ray Train DDP: a folder of its own
DDP_RESULT = "result.json"  # under BASELINE_DDP
BASELINE_DDP_RESULT = f"{BASELINE_DDP}/{DDP_RESULT}"
LEASE = "lease.json"  # the live driver: host, pid, started, heartbeat
RUN_CONFIG = "config.yaml"  # the resolved configuration the run ran with last, secrets removed
TUNE_WEIGHTS = "tune/weights"  # Ray Tune's experiment of the ensemble-weight search
SWEEP = "tune/sweep"  # a hyperparameter sweep: spec.json, Tune's experiment, trials/<id>/ (runs of their own)
SWEEP_SPEC = f"{SWEEP}/spec.json"
SWEEP_TRIALS = f"{SWEEP}/trials"
SWEEP_TABLE = "tune/sweep.md"
SWEEP_RESULTS = "tune/sweep.json"
BEST_CONFIG = "tune/best_config.yaml"
OUTPUT_SUCCESS = "_SUCCESS"  # a batch output: complete
OUTPUT_MANIFEST = "_manifest.json"  # a batch output: its parts (file, bytes) and rows
OUTPUT_TEMPORARY = "_temporary"  # a batch output: parts of attempts in progress (names with _ are skipped by readers)
OUTPUT_PART = re.compile(r"^part-\d{5}\.parquet$")


# -- paths -------------------------------------------------------------------------------------------
def shard(split: str, k: int, part: str) -> str:
    return f"{DATA}/{split}/branch={k}/{part}"


def branch_dir(k: int) -> str:
    return f"{BRANCHES}/{k}"


def checkpoints_dir(k: int) -> str:
    return f"{branch_dir(k)}/checkpoints"


def checkpoint(k: int, epoch: int) -> str:
    return f"{checkpoints_dir(k)}/epoch={epoch}.pt"


def metrics(k: int) -> str:
    return f"{branch_dir(k)}/metrics.jsonl"


EVENTS_FILE = "events.out.tfevents.0.spectral"  # TensorBoard's (orchestrator.tracking); any name with "tfevents"


def branch_events(k: int) -> str:
    """Branch ``k``'s TensorBoard event file: its per-epoch scalars (``tensorboard --logdir <run>``)."""
    return f"{branch_dir(k)}/tensorboard/{EVENTS_FILE}"


def epoch_logits(k: int, epoch: int) -> str:
    """Validation logits after ``epoch`` (``train.epoch_logits``): the ensemble's accuracy per epoch."""
    return f"{branch_dir(k)}/epochs/logits_val_{epoch}.npy"


def logits(k: int, split: str) -> str:
    return f"{branch_dir(k)}/logits_{split}.npy"


def rows(k: int, split: str) -> str:
    return f"{branch_dir(k)}/rows_{split}.npy"


def result(k: int) -> str:
    return f"{branch_dir(k)}/result.json"


def diverged(k: int) -> str:
    """Written instead of result.json by a branch that went non-finite under ``train.on_nonfinite: skip_branch``."""
    return f"{branch_dir(k)}/diverged.json"


def placement(k: int) -> str:
    return f"{branch_dir(k)}/placement.json"


def ensemble_record(method: str) -> str:
    return f"{ENSEMBLE}/{method}.json"


def report(name: str) -> str:
    return f"{REPORT}/{name}"


def output_part(i: int) -> str:
    return f"part-{i:05d}.parquet"


def sweep_trial(trial_id: str) -> str:
    return f"{SWEEP_TRIALS}/{trial_id}"


# -- readers ---------------------------------------------------------------------------------------------
def load_manifest(storage: RunStorage, *, fields: tuple[str, ...] = REQUIRED_MANIFEST_FIELDS) -> Manifest:
    """``data/manifest.json``, checked: present, ``fields`` there (default: all required), this code's version."""
    if not storage.exists(MANIFEST):
        raise ManifestError(
            f"{storage.url(MANIFEST)} does not exist: run `spectral split` first (or the split is incomplete)"
        )
    obj = storage.read_json(MANIFEST)
    missing = [f for f in ("version", *fields) if f not in obj]
    if missing:
        raise ManifestError(f"{storage.url(MANIFEST)} lacks field(s) {', '.join(missing)}")
    if obj["version"] == 1:
        raise ManifestError(
            f"{storage.url(MANIFEST)} is storage version 1 (float32 sub-datasets); this code reads version "
            f"{MANIFEST_VERSION} (compact uint8/float16 storage, `src` column). Re-split it: "
            f"`spectral split --config <your config> --storage {storage.url()} --overwrite` "
            "(branches trained on the old split must be retrained)"
        )
    if obj["version"] not in READABLE_VERSIONS:
        raise ManifestError(
            f"{storage.url(MANIFEST)} has version {obj['version']}, this code reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        return Manifest.from_json(obj)
    except ManifestError as e:
        raise ManifestError(f"{storage.url(MANIFEST)}: {e}") from None


def stored_config_hash(storage: RunStorage) -> str | None:
    """The ``config_hash`` of the manifest there, whatever its version (None: none, or it has none)."""
    return storage.read_json(MANIFEST).get("config_hash") if storage.exists(MANIFEST) else None


def write_manifest(storage: RunStorage, manifest: Manifest) -> None:
    """Write ``data/manifest.json`` (last of a split: its presence marks the split complete)."""
    storage.write_json(MANIFEST, manifest.to_json())


def read_diverged(storage: RunStorage, K: int) -> dict[int, dict]:
    """Branch -> its ``diverged.json`` (branch, epoch, step, error) for every branch of ``0..K-1`` that has one."""
    return {k: storage.read_json(diverged(k)) for k in range(K) if storage.exists(diverged(k))}


def read_metrics(storage: RunStorage, k: int) -> list[dict]:
    """Branch ``k``'s per-epoch metrics by epoch (empty when absent); a repeated epoch keeps its last line."""
    rel = metrics(k)
    if not storage.exists(rel):
        return []
    by_epoch: dict[int, dict] = {}
    for n, line in enumerate(storage.read_bytes(rel).decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            by_epoch[int(row["epoch"])] = row
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            log.warning("skipping line %d of %s: %r", n, storage.url(rel), e)
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_result(storage: RunStorage, k: int) -> dict | None:
    """Branch ``k``'s ``result.json`` (written last: the branch finished), or None."""
    rel = result(k)
    return storage.read_json(rel) if storage.exists(rel) else None
