"""One sweep trial, run inside a Tune actor: train the branches with the trial's overrides, report per epoch.

A trial's storage is a view of the run (``TrialStorage``): its ``branches/`` live under
``<run>/tune/sweep/trials/<trial_id>/`` while ``data/`` reads resolve to the run's shards, so
``branches.train_branch`` runs unchanged (and resumes from its own epoch checkpoints when Tune
restarts the trial). Each epoch goes to Tune with a small checkpoint naming that folder.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import queue
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from branches.config import ModelConfig, TrainConfig
from data_split import layout
from data_split.storage import RunStorage

log = logging.getLogger(__name__)


# -- a trial's storage: its own branches/, the run's data/ -------------------------------------------
@dataclass(frozen=True)
class TrialStorage(RunStorage):
    """RunStorage rooted at a trial's folder whose ``data/`` paths resolve to the run's shards (read-only).

    ``TrialStorage.of(run, trial_id)``: the run's store and settings, rooted at the trial's folder.
    """

    data_root: str = ""  # the run's root (an ``fs`` path), where ``data/`` lives

    @classmethod
    def of(cls, run: RunStorage, trial_id: str) -> TrialStorage:
        return cls.like(run, uri=run.child(layout.sweep_trial(trial_id)).uri, data_root=run.root)

    def path(self, *parts: str) -> str:
        rel = posixpath.join(*parts) if parts else ""
        if rel == layout.DATA or rel.startswith(f"{layout.DATA}/"):
            return posixpath.join(self.data_root, rel)
        return super().path(*parts)

    def write_bytes(self, rel: str, data: bytes) -> None:
        if rel == layout.DATA or rel.startswith(f"{layout.DATA}/"):
            raise PermissionError(f"a sweep trial must not write the run's data ({rel})")
        super().write_bytes(rel, data)


# -- the trial (runs in a Tune actor) --------------------------------------------------------------------
def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _train_lockstep(
    storage: RunStorage, branches: list[int], model_cfg, train_cfg, report: Callable[[int, list[dict]], None]
) -> None:
    """Train ``branches`` side by side (one thread each); report epoch e once every branch has finished it."""
    from branches.train import train_branch

    events: queue.Queue = queue.Queue()

    def work(k: int) -> None:
        try:
            train_branch(storage, k, model_cfg, train_cfg, on_epoch=lambda m: events.put(("epoch", k, m)))
            events.put(("done", k, None))
        except BaseException as e:  # handed to the reporting thread, which raises it
            events.put(("error", k, e))

    if len(branches) == 1:  # the common case: no threads
        train_branch(storage, branches[0], model_cfg, train_cfg, on_epoch=lambda m: report(m["epoch"], [m]))
        return
    for k in branches:
        threading.Thread(target=work, args=(k,), name=f"branch-{k}", daemon=True).start()
    latest = {k: 0.0 for k in branches}
    by_epoch: dict[int, dict[int, dict]] = defaultdict(dict)
    reported = 0
    while any(v != math.inf for v in latest.values()):
        kind, k, payload = events.get()
        if kind == "error":
            raise payload
        if kind == "done":
            latest[k] = math.inf
        else:
            by_epoch[payload["epoch"]][k] = payload
            latest[k] = payload["epoch"]
        ready = min(latest.values())
        for e in sorted(e for e in by_epoch if reported < e <= ready):
            report(e, list(by_epoch.pop(e).values()))
            reported = e


def _sweep_trial(config: dict, *, run: RunStorage, base: dict, branches: list[int]) -> None:
    """One Tune trial: train the branches with ``config``'s overrides, report validation metrics per epoch."""
    from ray import tune

    model_cfg, train_cfg = trial_configs(base, config)
    trial_id = tune.get_context().get_trial_id()
    storage = TrialStorage.of(run, trial_id)
    done = 0  # last epoch Tune knows of
    resumed = tune.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            done = int(json.loads((Path(d) / "state.json").read_text())["epoch"])
        log.info("trial %s: resuming after epoch %d (branch checkpoints in %s)", trial_id, done, storage.url())

    def report(epoch: int, rows: list[dict]) -> None:
        nonlocal done
        if epoch <= done:  # already reported (a branch redoing an epoch after a corrupt checkpoint)
            return
        metrics = {"epoch": epoch, **{key: _mean(rows, key) for key in ("val_acc", "val_loss", "loss")}}
        if len(rows) > 1:
            metrics |= {f"val_acc_b{r['k']}": r.get("val_acc") for r in rows}
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch, "trial_storage": storage.url()}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        done = epoch

    # Epochs the branches finished after Tune's last snapshot (the driver died in between) would never
    # reach Tune, since train_branch resumes past them: report them from the branches' metrics first.
    stored = {k: _stored_metrics(storage, k) for k in branches}
    for e in sorted(set.intersection(*(set(m) for m in stored.values()))):
        report(e, [stored[k][e] for k in branches])
    _train_lockstep(storage, branches, model_cfg, train_cfg, report)


def trial_configs(base: dict, overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """``base`` (``{"model": {...}, "train": {...}}``) with the trial's dotted overrides (``train.lr``, ...)."""
    sections = {"model": dict(base["model"]), "train": dict(base["train"])}
    for dotted, value in overrides.items():
        section, name = dotted.split(".", 1)
        sections[section][name] = value.item() if hasattr(value, "item") else value  # numpy scalars from samplers
    return ModelConfig(**sections["model"]), TrainConfig(**sections["train"])


def _stored_metrics(storage: RunStorage, k: int) -> dict[int, dict]:
    """Epoch -> metrics line of branch ``k``'s metrics.jsonl in the trial's folder (empty when absent)."""
    return {int(r["epoch"]): {**r, "k": k} for r in layout.read_metrics(storage, k)}
