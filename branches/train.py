"""Training one branch: plain PyTorch on one device, no Ray and no process group.

``train_branch(storage, k, model_cfg, train_cfg)`` reads only branch ``k``'s shards, trains, and writes
its outputs under ``<run>/branches/<k>/`` (docs/storage.md: checkpoints every epoch, ``metrics.jsonl``,
the val/test logits and their rows, ``result.json`` last as the "branch finished" marker, or
``diverged.json`` under ``train.on_nonfinite: skip_branch``; paths: ``data_split.layout``).

Reproducibility: the model is initialised after ``torch.manual_seed(seed + k)``,
the batch order of epoch ``e`` comes from its own generator seeded by
``(seed + k, e)`` and the learning rate is a closed-form function of the epoch,
so a run resumed from a checkpoint replays the same steps as an uninterrupted
one. On CPU that is bitwise (tested); on CUDA kernels may reorder sums.

    from branches import ModelConfig, TrainConfig, train_branch
    from data_split import RunStorage
    train_branch(RunStorage("runs/demo"), 0, ModelConfig(name="fc8"), TrainConfig(epochs=5))
"""

from __future__ import annotations

import io
import json
import logging
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from branches import _faults
from branches import checkpoint as ckpt_io
from branches._stream import StreamingSplit
from branches.config import ModelConfig, TrainConfig
from branches.controls import (
    StepControls,
    lr_factor,
    mixup_draw,
    per_step_lr,
    set_step_lr,
    should_stop,
    steps_per_epoch,
)
from branches.data import Augmenter, InMemorySplit, choose_mode
from branches.finished import check_same_run, finished_result, stored_configs
from branches.models import build_model, count_parameters
from data_split import layout
from data_split.augment import check_augment
from data_split.errors import ConfigError, SpectralError
from data_split.layout import load_manifest
from data_split.manifest import Manifest
from data_split.storage import RunStorage

log = logging.getLogger(__name__)


# -- pure pieces -----------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # foreach: one multi-tensor kernel per update instead of a Python loop over the parameters, which PyTorch
    # picks only on CUDA by default (a pack's small steps spent 20% of their time in that loop on CPU)
    params, wd = model.parameters(), cfg.weight_decay
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd, foreach=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd, foreach=True)


# -- the steps ---------------------------------------------------------------------------------------------
class NonFiniteError(SpectralError, RuntimeError):
    """A branch's training loss or logits became NaN or infinite: it stops, and nothing of that epoch is written.

    ``k``, ``epoch`` and ``step`` (1-based; None for logits checked after an epoch) say where, when known.
    """

    def __init__(
        self, message: str, *, k: int | None = None, epoch: int | None = None, step: int | None = None
    ) -> None:
        super().__init__(message)
        self.k, self.epoch, self.step = k, epoch, step  # pickled with the message (BaseException keeps __dict__)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    amp: bool | torch.dtype,
    controls: StepControls | None = None,
) -> float:
    """One pass over ``batches`` of (x (B, C, h, w), y (B,)) on ``device``; the mean training loss.

    ``controls`` (default: none): gradient accumulation, clipping, mixup and a per-step hook (the learning
    rate), fp16 loss scaling, see ``branches.controls``. ``amp``: True (bfloat16), False or the autocast
    dtype. Raises ``NonFiniteError`` naming the (1-based) batch at the first NaN/inf loss, before that batch
    updates the weights. The check waits for the device once per batch: the price of stopping at once.
    """
    c = controls or StepControls()
    model.train()
    total, n, pending, opt_step = torch.zeros((), device=device), 0, 0, 0
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> None:
        nonlocal pending, opt_step
        if c.scaler is not None:
            c.scaler.unscale_(optimizer)  # clip and rescale the true gradient
        if pending < c.accumulate:  # the epoch's last, smaller group: the mean over its own batches
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(c.accumulate / pending)
        if c.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        if c.before_step is not None:
            c.before_step(opt_step)
        if c.scaler is not None:
            c.scaler.step(optimizer)  # skipped when the fp16 gradient overflowed; the scale then backs off
            c.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        pending, opt_step = 0, opt_step + 1

    optimizer.zero_grad(set_to_none=True)
    for i, (xb, yb) in enumerate(batches, 1):
        if c.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype(amp), enabled=bool(amp)):
            if c.mixup_alpha > 0:  # lambda and permutation from (seed, epoch, batch): equal in every branch
                lam, perm = mixup_draw(c.mixup_alpha, c.seed, c.epoch, i, len(yb))
                perm = perm.to(xb.device)
                out = model(lam * xb + (1 - lam) * xb[perm])
                loss = lam * loss_fn(out, yb) + (1 - lam) * loss_fn(out, yb[perm])
            else:
                loss = loss_fn(model(xb), yb)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"non-finite training loss ({loss.item()}) at step {i}", step=i)
        scaled = loss / c.accumulate if c.accumulate > 1 else loss
        (c.scaler.scale(scaled) if c.scaler is not None else scaled).backward()
        pending += 1
        if pending == c.accumulate:
            step()
        total += loss.detach().float() * len(yb)
        n += len(yb)
    if pending:
        step()
    return total.item() / max(n, 1)  # .item() waits for the device, so the caller's timing is honest


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device, *, amp: bool | torch.dtype
) -> torch.Tensor:
    """Logits (N, classes) float32 of the model in eval mode over input ``batches`` (at least one, maybe empty)."""
    model.eval()
    out = []
    for xb in batches:
        with torch.autocast(device_type=device.type, dtype=autocast_dtype(amp), enabled=bool(amp)):
            out.append(model(xb).float())
    return torch.cat(out)


def autocast_dtype(amp: bool | torch.dtype) -> torch.dtype:
    """The autocast dtype of ``amp`` (True: bfloat16, the default when enabled)."""
    return amp if isinstance(amp, torch.dtype) else torch.bfloat16


def check_finite(logits: torch.Tensor, what: str) -> torch.Tensor:
    """``logits`` unchanged, or ``NonFiniteError`` naming ``what`` and how many rows hold NaN/inf."""
    bad = int((~torch.isfinite(logits)).any(dim=1).sum()) if logits.numel() else 0
    if bad:
        raise NonFiniteError(f"non-finite {what} in {bad} of {len(logits)} rows")
    return logits


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float | None, float | None]:
    """(mean NLL, accuracy) of a branch's ``logits`` against labels; (None, None) for an empty split, which
    metrics.jsonl and result.json record as null. (The ensemble's NumPy counterpart, with NaN for an empty
    split, is ``tune.scoring.score``.)"""
    if len(y) == 0:
        return None, None
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# -- the loop -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BranchJob:
    """One branch's training, as ``train_branch`` resolved it before the loop (no tensors)."""

    storage: RunStorage
    k: int
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    manifest: Manifest
    device: torch.device
    started: float  # unix seconds: when the engine that runs this branch began (kept in result.json)
    out: RunStorage | None = None  # where _finish writes the outputs of branch k; None: ``storage``, the split's run

    @property
    def in_shape(self) -> tuple[int, int, int]:  # (C, h, w) of one spectral sub-image
        return self.manifest.split.shape

    @property
    def classes(self) -> int:
        return int(self.manifest.source.classes)

    @property
    def precision(self) -> str:  # train.precision resolved: fp32, bf16 or fp16
        if self.train_cfg.precision == "auto":
            return "bf16" if self.train_cfg.amp and self.device.type == "cuda" else "fp32"
        return self.train_cfg.precision

    @property
    def amp(self) -> bool | torch.dtype:  # the autocast dtype, False for fp32
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, False)

    @property
    def configs(self) -> dict:  # stored in every checkpoint and in result.json (the same-run check)
        return stored_configs(self.model_cfg, self.train_cfg, self.manifest)


def train_branch(
    storage: RunStorage,
    k: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    device: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    started: float | None = None,
) -> dict:
    """Train branch ``k`` of the split at ``storage`` (resuming from its newest good checkpoint); return result.json.

    ``started`` (unix seconds, default now) is when the engine that runs this branch began; it is kept in
    result.json so that wall time to an accuracy can be measured from the epochs' ``time``.
    """
    started = time.time() if started is None else started
    manifest = load_manifest(storage)
    n_branches = manifest.K
    if not 0 <= k < n_branches:
        raise ConfigError(
            f"branch k={k} is out of range: the split at {storage.url(layout.DATA)} has K={n_branches} "
            f"branches (k = 0..{n_branches - 1})"
        )
    sp = manifest.split
    check_augment(list(train_cfg.augment), np.asarray(sp.matrix), sp.r, sp.c, sp.transform, sp.shape)
    if (done := finished_result(storage, k, model_cfg, train_cfg, manifest)) is not None:
        log.info(
            "branch %d: %s already finished %d epochs; not training again",
            k,
            storage.url(layout.branch_dir(k)),
            done["epochs"],
        )
        return done
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    job = BranchJob(
        storage=storage, k=k, model_cfg=model_cfg, train_cfg=train_cfg, manifest=manifest, device=dev, started=started
    )

    threads_before = torch.get_num_threads()
    torch.set_num_threads(train_cfg.threads)
    try:
        return _train(job, on_epoch)
    except NonFiniteError as e:
        if train_cfg.on_nonfinite != "skip_branch":
            raise
        return _record_divergence(job, e)
    finally:
        torch.set_num_threads(threads_before)


def _record_divergence(job: BranchJob, error: NonFiniteError) -> dict:
    """``train.on_nonfinite: skip_branch``: write ``diverged.json`` (in place of result.json) and return it."""
    record = {
        "k": job.k,
        "diverged": True,
        "epoch": error.epoch,
        "step": error.step,
        "error": str(error),
        "epochs": job.train_cfg.epochs,
        "started": job.started,
        **job.configs,
    }
    job.storage.write_json(layout.diverged(job.k), record)
    log.warning("branch %d skipped (train.on_nonfinite: skip_branch): %s", job.k, error)
    return record


def _train(job: BranchJob, on_epoch: Callable[[dict], None] | None) -> dict:
    storage, k, model_cfg, train_cfg, dev, manifest = (
        job.storage,
        job.k,
        job.model_cfg,
        job.train_cfg,
        job.device,
        job.manifest,
    )
    in_shape, classes, configs, amp = job.in_shape, job.classes, job.configs, job.amp
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    torch.manual_seed(train_cfg.seed + k)
    model = build_model(model_cfg, in_shape, classes).to(dev)
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(train_cfg, e))
    # fp16 overflows where bf16 does not: its loss is scaled, and the scale (state) is checkpointed
    scaler = torch.amp.GradScaler(dev.type) if job.precision == "fp16" else None
    net = torch.compile(model) if train_cfg.compile else model  # shares model's parameters; model is saved

    found = ckpt_io.find_resume_point(storage, k, train_cfg.epochs)
    history: list[dict] = []
    if found.checkpoint is not None:
        ck = found.checkpoint
        check_same_run(storage, k, ck, configs)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler") is not None:
            scaler.load_state_dict(ck["scaler"])
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):  # this run's schedule, e.g. new T_max
            group["lr"] = base_lr * lr_factor(train_cfg, scheduler.last_epoch)
        ckpt_io.restore_rng(ck["rng"])
        history = list(ck["history"])[: found.epoch]
    settle_resume(storage, k, found, history)

    mode = choose_mode(train_cfg.data, manifest, k, train_cfg.memory_limit_mb)
    log.info(
        "branch %d: data mode %s (train.data=%s, memory_limit_mb=%d)",
        k,
        mode,
        train_cfg.data,
        train_cfg.memory_limit_mb,
    )
    train = _open_split(storage, manifest, "train", k, dev, train_cfg, mode)
    if len(train) == 0:
        raise ConfigError(f"branch {k} of {storage.url(layout.DATA)} has no training rows")
    if train_cfg.augment:
        train.augment = Augmenter(list(train_cfg.augment), manifest, k, train_cfg.augment_pad)
    val = _open_split(storage, manifest, "val", k, dev, train_cfg, mode)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing)

    spe = steps_per_epoch(len(train), train_cfg.batch_size, train_cfg.accumulate)
    per_step = per_step_lr(train_cfg)
    for epoch in range(found.epoch + 1, train_cfg.epochs + 1):
        if should_stop(history, train_cfg.early_stopping_patience):  # before the epoch: a resumed run stops too
            log.info(
                "branch %d: early stop after epoch %d (best val_acc %d epochs old)",
                k,
                epoch - 1,
                train_cfg.early_stopping_patience,
            )
            break
        t0 = time.perf_counter()
        controls = step_controls(train_cfg, epoch, optimizer, scheduler.base_lrs, spe if per_step else None)
        controls.scaler = scaler
        if per_step:
            controls.before_step(0)
        lr = optimizer.param_groups[0]["lr"]
        batches = train.train_batches(train_cfg.seed, k, epoch, train_cfg.batch_size)
        try:  # a diverged branch stops here: nothing of this epoch (checkpoint, metrics, logits) is written
            train_loss = train_one_epoch(net, optimizer, loss_fn, batches, dev, amp=amp, controls=controls)
            train_s = time.perf_counter() - t0
            val_logits = check_finite(
                predict(net, val.eval_batches(), dev, amp=amp), "validation logits"
            )  # (N_val, classes)
        except NonFiniteError as e:
            raise NonFiniteError(
                f"branch {k} diverged at epoch {epoch}: {e} (lr {lr:g}: lower train.lr)", k=k, epoch=epoch, step=e.step
            ) from None
        val_loss, val_acc = loss_and_accuracy(val_logits, val.y)
        if train_cfg.epoch_logits:  # rows in ascending (src, idx), as logits_val.npy (streamed val is in file order)
            in_order = val_logits.cpu().numpy()[np.lexsort((val.idx, val.src))]
            storage.write_bytes(layout.epoch_logits(k, epoch), _npy(in_order.astype(np.float32)))
        scheduler.step()
        metrics = {
            "epoch": epoch,
            "loss": train_loss,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "images_per_s": len(train) / train_s,
            "seconds": time.perf_counter() - t0,
            "lr": lr,
            "time": time.time(),
        }
        history.append(metrics)
        ckpt_io.save_checkpoint(
            storage,
            k,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": ckpt_io.capture_rng(),
                "history": history,
                "in_shape": list(in_shape),
                "classes": classes,
                **configs,
            },
        )
        storage.append_line(layout.metrics(k), json.dumps(metrics))  # after the checkpoint: see _rewrite_metrics
        ckpt_io.prune_checkpoints(storage, k, keep=train_cfg.keep_checkpoints)
        log.debug(  # a run's driver shows each epoch from the progress board (a caller: on_epoch, metrics.jsonl)
            "branch %d epoch %d/%d: loss %.4f val_acc %s (%.0f img/s, %.2f s)",
            k,
            epoch,
            train_cfg.epochs,
            train_loss,
            "n/a" if val_acc is None else f"{val_acc:.4f}",
            metrics["images_per_s"],
            metrics["seconds"],
        )
        if on_epoch is not None:
            on_epoch({**metrics, "k": k})
        _faults.after_epoch(storage.uri, k, epoch)  # test-only: a no-op outside the tests

    return _finish(job, model, history, val, found.epoch, mode, {"epochs_trained": len(history)})


def step_controls(
    cfg: TrainConfig, epoch: int, optimizer: torch.optim.Optimizer, base_lrs: list[float], spe: int | None
) -> StepControls:
    """The controls of epoch ``epoch`` (1-based); ``spe`` (steps per epoch) set: the lr is set before every step."""

    def set_lr(i: int) -> None:  # closed form in (epoch, step): a resumed run sets the same rates
        set_step_lr(optimizer, base_lrs, cfg, epoch, i, spe)

    return StepControls(
        accumulate=cfg.accumulate,
        grad_clip=cfg.grad_clip,
        mixup_alpha=cfg.mixup,
        seed=cfg.seed,
        epoch=epoch,
        before_step=set_lr if spe is not None else None,
        channels_last=cfg.channels_last,
    )


def settle_resume(storage: RunStorage, k: int, found: ckpt_io.Found, metrics: list[dict]) -> None:
    """What resuming from ``found`` leaves on storage: the checkpoints it skipped (corrupt, or from a longer run
    whose later epochs are being redone) removed, and ``metrics.jsonl`` holding exactly ``metrics``."""
    if found.checkpoint is not None:
        log.info(
            "branch %d: resuming after epoch %d from %s", k, found.epoch, storage.url(layout.checkpoint(k, found.epoch))
        )
    for e in found.skipped:
        storage.remove(layout.checkpoint(k, e))
    _rewrite_metrics(storage, layout.metrics(k), metrics)


def _rewrite_metrics(storage: RunStorage, rel: str, history: list[dict]) -> None:
    """Make metrics.jsonl hold exactly the resumed checkpoint's epochs (1..e), atomically.

    The checkpoint carries its own history, so a crash between writing
    checkpoint e and appending line e, or a fallback past a corrupt
    checkpoint, still ends with every epoch exactly once.
    """
    text = "".join(json.dumps(m) + "\n" for m in history)
    if not history:
        storage.remove(rel)
    elif not storage.exists(rel) or storage.read_bytes(rel).decode() != text:
        storage.write_text(rel, text)


def _open_split(storage, manifest, split, k, dev, train_cfg, mode):
    if mode == "stream":
        return StreamingSplit(storage, manifest, split, k, dev, shuffle_buffer=train_cfg.shuffle_buffer)
    return InMemorySplit(storage, manifest, split, k, dev)


def _finish(
    job: BranchJob, model: nn.Module, history: list[dict], val, resumed_from: int, mode: str, extra: dict | None = None
) -> dict:
    """Write logits and rows of val/test, then result.json (last: it marks the branch finished) with ``extra``."""
    storage, k, train_cfg, dev, amp, classes = job.storage, job.k, job.train_cfg, job.device, job.amp, job.classes
    in_shape, configs, manifest, started = job.in_shape, job.configs, job.manifest, job.started
    out = job.out if job.out is not None else storage
    test = _open_split(storage, manifest, "test", k, dev, train_cfg, mode)
    summary, outputs = {}, {}
    for split, data in (("val", val), ("test", test)):  # every check before the first write
        order = np.lexsort((data.idx, data.src))  # rows in ascending (src, idx): the identity in memory mode
        try:
            logits = predict(model, data.eval_batches(), dev, amp=amp)[torch.from_numpy(order).to(dev)]  # (N, classes)
            outputs[split] = (order, check_finite(logits, f"{split} logits"))
        except NonFiniteError as e:
            raise NonFiniteError(
                f"branch {k} diverged after its last epoch ({len(history)}): {e}", k=k, epoch=len(history)
            ) from None
    for split, data in (("val", val), ("test", test)):
        order, logits = outputs[split]
        idx, y = data.idx[order], data.y_np[order]
        nll, acc = loss_and_accuracy(logits, torch.from_numpy(y).to(dev))
        out.write_bytes(layout.logits(k, split), _npy(logits.cpu().numpy().astype(np.float32).reshape(-1, classes)))
        out.write_bytes(layout.rows(k, split), _npy(np.stack([idx, y], axis=1).astype(np.int64).reshape(-1, 2)))
        summary[split] = (acc, nll)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    params = count_parameters(model)
    result = {
        "k": k,
        "model": configs["model_config"]["name"],
        "epochs": train_cfg.epochs,
        "params": params,
        "model_bytes": 4 * params,
        "train_loss": history[-1]["loss"],
        "val_acc": summary["val"][0],
        "val_nll": summary["val"][1],
        "test_acc": summary["test"][0],
        "test_nll": summary["test"][1],
        "train_seconds": sum(m["seconds"] for m in history),
        "images_per_s": sum(m["images_per_s"] for m in history) / len(history),
        "peak_memory_bytes": int(peak),
        "device": str(dev),
        "data_mode": mode,
        "in_shape": list(in_shape),
        "classes": classes,
        "resumed_from_epoch": resumed_from,
        "started": started,
        **configs,
        **(extra or {}),
    }
    out.write_json(layout.result(k), result)
    log.info("branch %d finished: val_acc %s test_acc %s, %d params", k, result["val_acc"], result["test_acc"], params)
    return result
