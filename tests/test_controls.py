"""The training controls of ``train.*`` (branches/controls.py) on the single-branch step loop, without Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from branches import TrainConfig
from branches.controls import (
    StepControls,
    check_ddp_controls,
    check_pack_controls,
    lr_factor,
    mixup_draw,
    should_stop,
    steps_per_epoch,
)
from branches.train import train_one_epoch
from data_split.errors import ConfigError
from data_split.transforms import spectral_split

CPU = torch.device("cpu")


def linear_and_batches(seed: int = 0, batches: int = 4, rows: int = 8):
    torch.manual_seed(seed)
    model = nn.Linear(6, 3)
    data = [(torch.randn(rows, 6), torch.randint(0, 3, (rows,))) for _ in range(batches)]
    return model, data


def test_warmup_rises_linearly_per_step_and_the_schedule_can_step_per_step():
    cfg = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=2, schedule_per_step=True)
    spe = 4
    ramp = [lr_factor(cfg, i / spe, spe) for i in range(2 * spe)]  # the first two epochs, step by step
    cosine = [0.5 * (1 + math.cos(math.pi * (i / spe) / 10)) for i in range(2 * spe)]
    assert ramp == pytest.approx([(i + 1) / (2 * spe) * c for i, c in zip(range(2 * spe), cosine)])
    assert lr_factor(cfg, 5.25, spe) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5.25 / 10)))  # warm
    per_epoch = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(per_epoch, 5.75, spe) == lr_factor(per_epoch, 5, spe)  # one rate per epoch, as before
    assert steps_per_epoch(65, 32, 1) == 2 and steps_per_epoch(66, 32, 1) == 3  # a trailing batch of 1 joins
    assert steps_per_epoch(100, 10, 3) == 4


def test_accumulating_two_batches_is_one_step_on_their_union():
    model, data = linear_and_batches()
    twin = nn.Linear(6, 3)
    twin.load_state_dict(model.state_dict())
    loss = nn.CrossEntropyLoss()
    steps: list[int] = []
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_one_epoch(
        model, opt, loss, data, CPU, amp=False, controls=StepControls(accumulate=2, before_step=steps.append)
    )
    assert steps == [0, 1]  # 4 batches, 2 optimizer steps
    union = [(torch.cat([data[i][0], data[i + 1][0]]), torch.cat([data[i][1], data[i + 1][1]])) for i in (0, 2)]
    train_one_epoch(twin, torch.optim.SGD(twin.parameters(), lr=0.5), loss, union, CPU, amp=False)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_a_last_smaller_group_is_the_mean_over_its_own_batches():
    model, data = linear_and_batches(batches=3)
    twin = nn.Linear(6, 3)
    twin.load_state_dict(model.state_dict())
    loss = nn.CrossEntropyLoss()
    train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.5), loss, data, CPU, amp=False,
                    controls=StepControls(accumulate=2))  # fmt: skip
    union = [(torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]])), data[2]]
    train_one_epoch(twin, torch.optim.SGD(twin.parameters(), lr=0.5), loss, union, CPU, amp=False)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_grad_clip_bounds_the_step_of_plain_sgd():
    model, data = linear_and_batches(batches=1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is minus the (clipped) gradient
    train_one_epoch(model, opt, nn.CrossEntropyLoss(), data, CPU, amp=False, controls=StepControls(grad_clip=1e-3))
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert moved.item() == pytest.approx(1e-3, rel=1e-4)  # the raw gradient of a fresh model is far larger


def test_mixup_draws_depend_on_seed_epoch_and_step_only():
    lam, perm = mixup_draw(0.4, 3, 2, 5, 16)
    again_lam, again_perm = mixup_draw(0.4, 3, 2, 5, 16)
    assert lam == again_lam and torch.equal(perm, again_perm)
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(16))
    assert mixup_draw(0.4, 3, 2, 6, 16)[0] != lam  # another step, another lambda


@pytest.mark.parametrize("transform", ["dct", "dft", "haar2"])
def test_the_mix_of_sub_images_is_the_sub_image_of_the_mix(transform):
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 8, 8))  # (N, C, H, W) full images
    lam, perm = mixup_draw(0.2, 0, 1, 1, 8)
    perm = perm.numpy()
    mixed_then_split = spectral_split(lam * x + (1 - lam) * x[perm], 2, 2, transform)  # (N, C, h, w, K)
    s = spectral_split(x, 2, 2, transform)
    split_then_mixed = lam * s + (1 - lam) * s[perm]  # every branch k = s[..., k] mixed with the same draw
    np.testing.assert_allclose(mixed_then_split, split_then_mixed, atol=1e-12)


def test_mixup_trains_on_the_mixed_batch_with_the_mixed_targets():
    model, data = linear_and_batches(batches=1)
    twin = nn.Linear(6, 3)
    twin.load_state_dict(model.state_dict())
    loss = nn.CrossEntropyLoss()
    controls = StepControls(mixup_alpha=0.3, seed=7, epoch=2)
    train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.5), loss, data, CPU, amp=False, controls=controls)
    lam, perm = mixup_draw(0.3, 7, 2, 1, 8)
    (x, y), opt = data[0], torch.optim.SGD(twin.parameters(), lr=0.5)
    out = twin(lam * x + (1 - lam) * x[perm])
    (lam * loss(out, y) + (1 - lam) * loss(out, y[perm])).backward()
    opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_early_stopping_waits_patience_epochs_after_the_best():
    hist = [{"val_acc": a} for a in (0.5, 0.7, 0.7, 0.6)]
    assert not should_stop(hist[:2], 2) and not should_stop(hist[:3], 2)
    assert should_stop(hist, 2)  # best at epoch 2, two epochs without a better one
    assert not should_stop(hist, None) and not should_stop([{"val_acc": None}], 1)


def test_a_pack_refuses_the_controls_it_cannot_train_exactly_naming_them():
    check_pack_controls(TrainConfig(label_smoothing=0.1))  # supported: a pack takes it per branch
    with pytest.raises(ConfigError, match=r"train.grad_clip \(one norm.*train.mixup.*branches_per_process: 1"):
        check_pack_controls(TrainConfig(grad_clip=1.0, mixup=0.2))
    check_ddp_controls(TrainConfig(label_smoothing=0.1))
    with pytest.raises(ConfigError, match=r"DDP baseline .* train.accumulate, train.precision.*engine: single"):
        check_ddp_controls(TrainConfig(accumulate=2, precision="bf16"))


def test_fp16_overflow_skips_the_step_and_backs_the_scale_off():
    model, data = linear_and_batches(batches=1)
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # the scaled fp16 gradient overflows
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    controls = StepControls(scaler=scaler)
    train_one_epoch(model, opt, nn.CrossEntropyLoss(), data, CPU, amp=torch.float16, controls=controls)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # skipped, not corrupted
    assert scaler.get_scale() == 2.0**119
    scaler = torch.amp.GradScaler("cpu")  # a sane scale: the step is taken
    train_one_epoch(
        model, opt, nn.CrossEntropyLoss(), data, CPU, amp=torch.float16, controls=StepControls(scaler=scaler)
    )
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_precision_resolves_per_device():
    from branches.train import BranchJob

    def job(device: str, **train) -> BranchJob:
        return BranchJob(storage=None, k=0, model_cfg=None, train_cfg=TrainConfig(**train), manifest=None,
                         device=torch.device(device), started=0.0)  # fmt: skip

    assert job("cpu").amp is False and job("cuda").amp is torch.bfloat16  # auto: today's train.amp
    assert job("cuda", amp=False).amp is False and job("cpu", precision="bf16").amp is torch.bfloat16
    assert job("cuda", precision="fp16").amp is torch.float16


def test_a_branch_stored_before_these_keys_existed_still_resumes(tmp_path):
    from dataclasses import asdict

    from branches import BranchConflictError, ModelConfig
    from branches.finished import check_same_run
    from data_split import RunStorage

    configs = {"model_config": asdict(ModelConfig()), "train_config": asdict(TrainConfig()), "split_config_hash": "h"}
    new_keys = ("warmup_epochs", "grad_clip", "accumulate", "mixup", "precision", "compile")
    old = {
        "model_config": {k: v for k, v in configs["model_config"].items() if k not in ("stem", "pretrained")},
        "train_config": {k: v for k, v in configs["train_config"].items() if k not in new_keys},
        "split_config_hash": "h",
    }
    check_same_run(RunStorage(str(tmp_path)), 0, old, configs)  # missing keys read as their defaults
    changed = {**configs, "train_config": {**configs["train_config"], "grad_clip": 1.0}}
    with pytest.raises(BranchConflictError, match=r"train.grad_clip: None != 1.0"):
        check_same_run(RunStorage(str(tmp_path)), 0, old, changed)
