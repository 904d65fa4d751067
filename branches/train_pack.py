"""Training P branches as one batched network in one process (``resources.branches_per_process: P``).

``train_pack(storages, ks, model_cfg, train_cfg)`` trains branches ``ks`` (consecutive k) as one
``branches.packed.PackedNetwork``, with the math of P ``train_branch`` calls: member ``k`` is initialised
after ``torch.manual_seed(seed + k)``, draws its batches and augmentation from its own ``(seed, k, epoch)``
generators, is normalised with its own statistics, and its loss is summed with the others' (disjoint
parameters: no gradient crosses members). Each member writes exactly what an unpacked branch writes,
through its own ``storages[i]`` (so each branch's isolation record is its own), with ``packed_with`` in
``result.json``; its checkpoints are an unpacked branch's, so resume, export and the rest never ask.

Decisions:
- Members must have equal training row counts (then their epochs have equal batch sizes, step by step):
  the launcher never packs branches of different row counts (``orchestrator.packs.plan_packs``).
- ``train.data: stream`` does not pack (its batch sizes follow row groups); the launcher runs such a
  branch alone.
- Resume: the pack restarts from the newest epoch every member has a checkpoint of.
- ``train.on_nonfinite: skip_branch``: a member whose loss goes NaN/inf is recorded as diverged before that
  step updates it (as unpacked), leaves the pack, and the step is redone for the others.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from branches import _faults
from branches import checkpoint as ckpt_io
from branches.config import ModelConfig, TrainConfig
from branches.controls import check_pack_controls, per_step_lr, set_step_lr, steps_per_epoch
from branches.data import Augmenter, PackedTrainRows, choose_mode
from branches.finished import check_same_run, finished_result
from branches.models import build_model
from branches.packed import PackedNetwork, split_optimizer_state, stack_optimizer_states
from branches.train import (
    BranchJob,
    NonFiniteError,
    _finish,
    _npy,
    _open_split,
    _record_divergence,
    _rewrite_metrics,
    loss_and_accuracy,
    lr_factor,
    make_optimizer,
)
from data_split import layout
from data_split.augment import check_augment
from data_split.errors import ConfigError
from data_split.layout import load_manifest
from data_split.storage import RunStorage

log = logging.getLogger(__name__)


class _Member:
    """One branch of the pack: its job, data and history (the weights live in the pack)."""

    def __init__(self, job: BranchJob) -> None:
        self.job, self.k = job, job.k
        self.history: list[dict] = []
        self.train = self.val = None
        self.ckpt: dict | None = None  # the checkpoint resumed from


def train_pack(
    storages: Sequence[RunStorage],
    ks: Sequence[int],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    device: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    started: float | None = None,
) -> dict[int, dict]:
    """Train branches ``ks`` packed; ``storages[i]`` is branch ``ks[i]``'s view of the run. Returns k -> result.json
    (or diverged.json)."""
    started = time.time() if started is None else started
    check_pack_controls(train_cfg)
    manifest = load_manifest(storages[0])
    sp = manifest.split
    check_augment(list(train_cfg.augment), np.asarray(sp.matrix), sp.r, sp.c, sp.transform, sp.shape)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results: dict[int, dict] = {}
    members = []
    for storage, k in zip(storages, ks):
        if not 0 <= k < manifest.K:
            raise ConfigError(f"branch k={k} is out of range: the split has K={manifest.K} branches")
        if (done := finished_result(storage, k, model_cfg, train_cfg, manifest)) is not None:
            results[k] = done
            continue
        members.append(
            _Member(
                BranchJob(
                    storage=storage,
                    k=k,
                    model_cfg=model_cfg,
                    train_cfg=train_cfg,
                    manifest=manifest,
                    device=dev,
                    started=started,
                )
            )
        )
    if not members:
        return results
    threads_before = torch.get_num_threads()
    torch.set_num_threads(train_cfg.threads)
    try:
        results.update(_train(members, list(ks), on_epoch))
    finally:
        torch.set_num_threads(threads_before)
    return results


def _resume_epoch(members: list[_Member], epochs: int) -> int:
    """The newest epoch every member has a good checkpoint of (0: start afresh); loads those checkpoints."""
    e = epochs
    while True:
        found = [ckpt_io.find_resume_point(m.job.storage, m.k, e) for m in members]
        common = min(f.epoch for f in found)
        if common == e or all(f.epoch == common for f in found):
            for m, f in zip(members, found):
                m.ckpt = f.checkpoint if common else None
                for stale in (*f.skipped, *ckpt_io.list_epochs(m.job.storage, m.k)):
                    if stale > common:
                        m.job.storage.remove(layout.checkpoint(m.k, stale))
            return common
        e = common


class _Pack:
    """The members still training, their packed network, its optimizer and learning-rate schedule."""

    def __init__(self, members: list[_Member], states=None, opt_states=None, sched_state=None) -> None:
        job = members[0].job
        self.members, self.cfg, self.dev = members, job.train_cfg, job.device
        models = []
        for m in members:
            torch.manual_seed(self.cfg.seed + m.k)  # the unpacked branch's initialisation
            models.append(build_model(job.model_cfg, job.in_shape, job.classes))
        self.net = PackedNetwork(models, job.in_shape).to(self.dev)  # in_shape: its forward is checked
        self.rows: PackedTrainRows | None = None  # the members' training rows, stacked (without train.augment)
        if states is not None:
            self.net.load_branch_states(states)
        self.opt = make_optimizer(self.net, self.cfg)
        if opt_states is not None:
            self.opt.load_state_dict(stack_optimizer_states(opt_states))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: lr_factor(self.cfg, e))
        if sched_state is not None:
            self.sched.load_state_dict(sched_state)
            for group, base_lr in zip(self.opt.param_groups, self.sched.base_lrs):  # this run's schedule
                group["lr"] = base_lr * lr_factor(self.cfg, self.sched.last_epoch)

    @property
    def ks(self) -> list[int]:
        return [m.k for m in self.members]

    def drop(self, errors: dict[int, NonFiniteError], results: dict) -> None:
        """Record members ``errors`` (by index) as diverged (or raise under ``fail``); go on without them."""
        for i, err in sorted(errors.items()):
            results[self.members[i].k] = _diverge(self.members[i], err)
        if self.rows is not None:
            self.rows.drop(sorted(errors))
        keep = [i for i in range(len(self.members)) if i not in errors]
        if keep:
            opt_state = self.opt.state_dict()
            rest = _Pack(
                [self.members[i] for i in keep],
                [self.net.branch_state(i) for i in keep],
                [split_optimizer_state(opt_state, i) for i in keep],
                self.sched.state_dict(),
            )
            self.net, self.opt, self.sched = rest.net, rest.opt, rest.sched
        self.members = [self.members[i] for i in keep]


def _train(members: list[_Member], packed_with: list[int], on_epoch) -> dict[int, dict]:
    job0 = members[0].job
    cfg, dev, manifest = job0.train_cfg, job0.device, job0.manifest
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    results: dict[int, dict] = {}
    start = _resume_epoch(members, cfg.epochs)
    if start:
        for m in members:
            check_same_run(m.job.storage, m.k, m.ckpt, m.job.configs)
        pk = _Pack(
            members,
            [m.ckpt["model"] for m in members],
            [m.ckpt["optimizer"] for m in members],
            members[0].ckpt["scheduler"],
        )
        ckpt_io.restore_rng(members[0].ckpt["rng"])
        log.info("pack %s: resuming after epoch %d", pk.ks, start)
    else:
        pk = _Pack(members)
    for m in members:
        m.history = list(m.ckpt["history"])[:start] if start else []
        _rewrite_metrics(m.job.storage, layout.metrics(m.k), m.history)
        mode = choose_mode(cfg.data, manifest, m.k, cfg.memory_limit_mb)
        if mode != "memory":
            raise ConfigError(
                f"branch {m.k}: train.data resolves to {mode!r}, which does not pack; "
                "set resources.branches_per_process: 1 (or train.data: memory)"
            )
        m.train = _open_split(m.job.storage, manifest, "train", m.k, dev, cfg, mode)
        if cfg.augment:
            m.train.augment = Augmenter(list(cfg.augment), manifest, m.k, cfg.augment_pad)
        m.val = _open_split(m.job.storage, manifest, "val", m.k, dev, cfg, mode)
    rows = {m.k: len(m.train) for m in members}
    if len(set(rows.values())) != 1 or 0 in rows.values():
        raise ConfigError(
            f"branches {sorted(rows)} have training rows {rows}: a pack needs equal, non-zero counts "
            "(the launcher packs only such branches)"
        )
    if not cfg.augment:  # augmentation draws per member: then each member's own batches, stacked per step
        pk.rows = PackedTrainRows([m.train for m in members], pk.ks)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="none")

    spe = steps_per_epoch(next(iter(rows.values())), cfg.batch_size, 1)
    for epoch in range(start + 1, cfg.epochs + 1):
        if per_step_lr(cfg):  # the same closed-form rate as each branch's own loop, step by step
            set_step_lr(pk.opt, pk.sched.base_lrs, cfg, epoch, 0, spe)
        lr = pk.opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        losses = _epoch(pk, loss_fn, epoch, lr, results, spe)
        train_s = time.perf_counter() - t0
        val_logits = _val_logits(pk, epoch, lr, results) if pk.members else []
        if not pk.members:
            break
        pk.sched.step()
        seconds = time.perf_counter() - t0
        opt_state, sched_state = pk.opt.state_dict(), pk.sched.state_dict()
        for i, m in enumerate(pk.members):
            storage, k = m.job.storage, m.k
            val_loss, val_acc = loss_and_accuracy(val_logits[i], m.val.y)
            if cfg.epoch_logits:
                in_order = val_logits[i].cpu().numpy()[np.lexsort((m.val.idx, m.val.src))]
                storage.write_bytes(layout.epoch_logits(k, epoch), _npy(in_order.astype(np.float32)))
            metrics = {
                "epoch": epoch,
                "loss": losses[i],
                "val_loss": val_loss,
                "val_acc": val_acc,
                "images_per_s": len(m.train) / train_s,
                "seconds": seconds,
                "lr": lr,
                "time": time.time(),
            }
            m.history.append(metrics)
            ckpt_io.save_checkpoint(
                storage,
                k,
                {
                    "epoch": epoch,
                    "model": pk.net.branch_state(i),
                    "optimizer": split_optimizer_state(opt_state, i),
                    "scheduler": sched_state,
                    "rng": ckpt_io.capture_rng(),
                    "history": m.history,
                    "in_shape": list(m.job.in_shape),
                    "classes": m.job.classes,
                    **m.job.configs,
                },
            )
            storage.append_line(layout.metrics(k), json.dumps(metrics))  # after the checkpoint: see _rewrite_metrics
            ckpt_io.prune_checkpoints(storage, k, keep=cfg.keep_checkpoints)
            log.debug(  # as a branch's: the driver shows each epoch from the progress board
                "branch %d epoch %d/%d (pack %s): loss %.4f val_acc %s",
                k,
                epoch,
                cfg.epochs,
                pk.ks,
                losses[i],
                "n/a" if val_acc is None else f"{val_acc:.4f}",
            )
            if on_epoch is not None:
                on_epoch({**metrics, "k": k})
        for m in pk.members:
            _faults.after_epoch(m.job.storage.uri, m.k, epoch)  # test-only: a no-op outside the tests

    for i, m in enumerate(list(pk.members)):
        model = build_model(m.job.model_cfg, m.job.in_shape, m.job.classes).to(dev)
        model.load_state_dict(pk.net.branch_state(i))
        try:
            results[m.k] = _finish(
                m.job,
                model,
                m.history,
                m.val,
                start,
                "memory",
                extra={"packed_with": packed_with, "epochs_trained": len(m.history)},
            )
        except NonFiniteError as e:
            results[m.k] = _diverge(m, e)
    return results


def _diverge(m: _Member, error: NonFiniteError) -> dict:
    if m.job.train_cfg.on_nonfinite != "skip_branch":
        raise error
    return _record_divergence(m.job, error)


def _epoch(pk: _Pack, loss_fn: nn.Module, epoch: int, lr: float, results: dict, spe: int) -> list[float]:
    """One epoch of the pack (members may leave it); the mean training loss of each member left."""
    cfg, dev, amp = pk.cfg, pk.dev, pk.members[0].job.amp
    totals = [0.0] * len(pk.members)
    n = 0
    pk.net.train()
    for step, (x, y) in enumerate(_step_batches(pk, epoch), 1):  # x (P, B, C, h, w), y (P, B)
        # the step may be redone without a diverged member: keep the BatchNorm statistics it is about to update
        saved = [b.detach().clone() for b in pk.net.buffers()] if cfg.on_nonfinite == "skip_branch" else None
        while True:
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(amp)):
                logits = pk.net(x)  # (P, B, classes)
            per = loss_fn(logits.flatten(0, 1).float(), y.flatten()).view(len(pk.members), -1).mean(1)  # (P,)
            values = per.tolist()  # waits for the device once per step, as the unpacked check does
            bad = [i for i, v in enumerate(values) if not np.isfinite(v)]
            if not bad:
                break
            if saved is not None:
                with torch.no_grad():
                    for b, before in zip(pk.net.buffers(), saved):
                        b.copy_(before)
            pk.drop(
                {
                    i: NonFiniteError(
                        f"branch {pk.members[i].k} diverged at epoch {epoch}: non-finite training loss "
                        f"({values[i]}) at step {step} (lr {lr:g}: lower train.lr)",
                        k=pk.members[i].k,
                        epoch=epoch,
                        step=step,
                    )
                    for i in bad
                },
                results,
            )
            if not pk.members:
                return []
            keep = [i for i in range(len(values)) if i not in bad]  # the step again, without them
            x, y, totals = x[keep], y[keep], [totals[i] for i in keep]
            saved = [b.detach().clone() for b in pk.net.buffers()] if saved is not None else None
        pk.opt.zero_grad(set_to_none=True)
        per.sum().backward()  # disjoint parameters: member p's gradient is that of its own loss
        if per_step_lr(cfg):
            set_step_lr(pk.opt, pk.sched.base_lrs, cfg, epoch, step - 1, spe)
        pk.opt.step()
        for i, v in enumerate(values):
            totals[i] += v * y.shape[1]
        n += y.shape[1]
    return [t / max(n, 1) for t in totals]


def _step_batches(pk: _Pack, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each step's stacked ``(x, y)`` of the members still training (read at every step: members may leave)."""
    cfg = pk.cfg
    if pk.rows is not None:
        yield from pk.rows.epoch(cfg.seed, epoch, cfg.batch_size)
        return
    streams = {m.k: m.train.train_batches(cfg.seed, m.k, epoch, cfg.batch_size) for m in pk.members}
    while True:
        batches = [next(streams[m.k], None) for m in pk.members]
        if any(b is None for b in batches):  # equal row counts: every stream ends at the same step
            return
        yield torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])


def _val_logits(pk: _Pack, epoch: int, lr: float, results: dict) -> list[torch.Tensor]:
    """Each member's validation logits (N_val, classes); a member with NaN/inf ones leaves the pack."""
    logits = packed_predict(pk.net, [m.val for m in pk.members], pk.dev, amp=pk.members[0].job.amp)
    bad = [i for i, z in enumerate(logits) if z.numel() and not torch.isfinite(z).all()]
    if bad:
        pk.drop(
            {
                i: NonFiniteError(
                    f"branch {pk.members[i].k} diverged at epoch {epoch}: non-finite validation "
                    f"logits (lr {lr:g}: lower train.lr)",
                    k=pk.members[i].k,
                    epoch=epoch,
                )
                for i in bad
            },
            results,
        )
        logits = [z for i, z in enumerate(logits) if i not in bad]
    return logits


@torch.no_grad()
def packed_predict(pack: PackedNetwork, splits: Sequence, device: torch.device, *, amp: bool) -> list[torch.Tensor]:
    """Logits (N_p, classes) float32 per member, in eval mode, over each split's ``eval_batches()``."""
    pack.eval()
    lengths = {len(s) for s in splits}
    if len(lengths) != 1:
        raise ConfigError(f"members' evaluation splits differ in length ({sorted(lengths)}); a pack needs equal ones")
    out = []
    for batches in zip(*(s.eval_batches() for s in splits)):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(amp)):
            out.append(pack(torch.stack(batches)).float())  # (P, B, classes)
    z = torch.cat(out, dim=1)
    return list(z.unbind(0))
