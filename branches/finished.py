"""What a branch has settled on storage, without torch: its ``result.json`` (or ``diverged.json``), and
whether a stored branch came from this run's configuration.

The driver asks this before it starts any actor (``orchestrator.launcher``), so it stays free of torch:
the CLI and a job's driver never import it.
"""

from __future__ import annotations

from dataclasses import asdict

from branches.config import ModelConfig, TrainConfig
from data_split import layout
from data_split.errors import SpectralError
from data_split.layout import load_manifest
from data_split.manifest import Manifest
from data_split.storage import RunStorage

RESUMABLE_CHANGES = (
    "epochs",
    "threads",
    "keep_checkpoints",
    "epoch_logits",
    "on_nonfinite",
)  # train fields that may differ from a stored run's


class BranchConflictError(SpectralError, RuntimeError):
    """``branches/<k>`` holds a branch trained with a different configuration."""


def stored_configs(model_cfg: ModelConfig, train_cfg: TrainConfig, manifest: Manifest) -> dict:
    """What a stored branch must match to be resumed or reused; the split's hash catches a re-split with other data."""
    return {
        "model_config": asdict(model_cfg),
        "train_config": asdict(train_cfg),
        "split_config_hash": manifest.config_hash,
    }


def _differences(old: dict, new: dict, prefix: str, defaults: dict) -> list[str]:
    """Keys whose values differ; a key ``old`` lacks (stored before the key existed) counts as its default."""
    was = {**defaults, **old}
    return [
        f"{prefix}.{key}: {was.get(key)!r} != {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if was.get(key) != new.get(key)
    ]


def check_same_run(storage: RunStorage, k: int, stored: dict, configs: dict) -> None:
    """Raise ``BranchConflictError`` unless ``stored`` (a checkpoint or result.json) came from ``configs``.

    Only ``RESUMABLE_CHANGES`` may differ: more epochs extend a run, fewer
    shorten it; anything else would silently mix two experiments.
    """

    def comparable(train: dict) -> dict:
        return {key: v for key, v in train.items() if key not in RESUMABLE_CHANGES}

    diffs = _differences(stored.get("model_config", {}), configs["model_config"], "model", asdict(ModelConfig()))
    diffs += _differences(
        comparable(stored.get("train_config", {})), comparable(configs["train_config"]), "train", asdict(TrainConfig())
    )
    if stored.get("split_config_hash") != configs["split_config_hash"]:
        diffs.append("the sub-datasets were split again with another configuration (manifest config_hash changed)")
    if diffs:
        raise BranchConflictError(
            f"{storage.url(layout.branch_dir(k))} holds branch {k} trained with a different configuration "
            f"({'; '.join(diffs)}); use another --storage URI or remove {layout.branch_dir(k)}"
        )


def finished_result(
    storage: RunStorage, k: int, model_cfg: ModelConfig, train_cfg: TrainConfig, manifest: Manifest | None = None
) -> dict | None:
    """Branch ``k``'s result.json when it already finished exactly this training, else None.

    Under ``train.on_nonfinite: skip_branch``, a branch that diverged within these epochs is settled
    too: its ``diverged.json`` (``"diverged": true``) is returned, and the same seeds would diverge again.
    Raises ``BranchConflictError`` when the stored branch came from another
    configuration; removes a result of the same run with another epoch count
    (the run is being extended or shortened), and a divergence record that no longer applies.
    """
    done = layout.read_result(storage, k)
    rel = layout.result(k)
    if done is None and storage.exists(layout.diverged(k)):
        done, rel = storage.read_json(layout.diverged(k)), layout.diverged(k)
    if done is None:
        return None
    manifest = manifest or load_manifest(storage)
    check_same_run(storage, k, done, stored_configs(model_cfg, train_cfg, manifest))
    if done.get("diverged"):
        if train_cfg.on_nonfinite == "skip_branch" and done["epoch"] <= train_cfg.epochs:
            return done
    elif done.get("epochs") == train_cfg.epochs:
        return done
    storage.remove(rel)
    return None
