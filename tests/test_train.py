"""Training one branch: learning, output files, determinism, resume and corrupt checkpoints, bad input.

The split is written once per module with Ray (the ``tiny_config`` data: 8x8
images, 4 classes, K=4 branches of shape (1, 4, 4)); each test trains on a
fresh copy of it, without Ray.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from branches import BranchConflictError, ModelConfig, NonFiniteError, TrainConfig, build_model, lr_factor, train_branch
from branches.checkpoint import load_checkpoint
from branches.controls import should_stop
from conftest import tiny_config
from data_split import ManifestError, RunStorage, load_manifest, read_branch, split_dataset
from data_split.layout import result as layout_result

FC4 = ModelConfig(name="fc4")
# 3 epochs of ~11 steps at lr 1e-2 take the tiny data from chance (0.25) to ~0.8 in a fraction of a second.
FAST = TrainConfig(epochs=3, batch_size=32, lr=1e-2)
METRIC_KEYS = {"epoch", "loss", "val_loss", "val_acc", "images_per_s", "seconds", "lr", "time"}
RESULT_KEYS = {
    "k",
    "model",
    "epochs",
    "params",
    "model_bytes",
    "train_loss",
    "val_acc",
    "val_nll",
    "test_acc",
    "test_nll",
    "train_seconds",
    "images_per_s",
    "peak_memory_bytes",
    "device",
    "in_shape",
    "classes",
    "started",
}


def with_epochs(cfg: TrainConfig, epochs: int, **more) -> TrainConfig:
    return dataclasses.replace(cfg, epochs=epochs, **more)


@pytest.fixture(scope="module")
def written_split(ray_session, tmp_path_factory):
    cfg = tiny_config(str(tmp_path_factory.mktemp("split") / "run"))
    storage = RunStorage(cfg.storage.uri)
    split_dataset(cfg.source, cfg.split, storage)
    return storage


@pytest.fixture
def make_run(written_split, tmp_path):
    """``make_run(name)``: a fresh run holding a copy of the written split."""

    def make(name: str = "run") -> RunStorage:
        shutil.copytree(written_split.path("data"), tmp_path / name / "data")
        return RunStorage(str(tmp_path / name))

    return make


def metric_lines(storage: RunStorage, k: int) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(f"branches/{k}/metrics.jsonl").decode().splitlines()]


def load_npy(storage: RunStorage, rel: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(rel)))


def test_every_branch_learns_well_above_chance(make_run):
    storage = make_run()
    for k in range(4):
        result = train_branch(storage, k, FC4, FAST)
        # chance is 0.25; these seeds reach 0.70-0.85 (val: 40 images, test: 100)
        assert result["val_acc"] > 0.6 and result["test_acc"] > 0.6, (k, result)
        losses = [m["loss"] for m in metric_lines(storage, k)]
        assert losses[-1] < losses[0]


def test_outputs_follow_the_storage_contract(make_run):
    storage = make_run()
    seen = []
    result = train_branch(storage, 2, FC4, FAST, on_epoch=seen.append)
    manifest = load_manifest(storage)

    assert set(result) >= RESULT_KEYS
    assert (result["k"], result["model"], result["epochs"], result["classes"]) == (2, "fc4", 3, 4)
    assert result["in_shape"] == [1, 4, 4] and result["device"] == "cpu"
    assert result["model_bytes"] == 4 * result["params"] == 4 * (3 * (16 * 16 + 16 + 32) + 16 * 4 + 4)
    assert result["peak_memory_bytes"] > 0
    assert storage.read_json("branches/2/result.json") == result

    lines = metric_lines(storage, 2)
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert all(set(m) == METRIC_KEYS for m in lines)
    assert [m["lr"] for m in lines] == pytest.approx([1e-2 * lr_factor(FAST, e) for e in range(3)])
    assert result["train_loss"] == lines[-1]["loss"]
    assert result["train_seconds"] == pytest.approx(sum(m["seconds"] for m in lines))
    assert seen == [{**m, "k": 2} for m in lines]
    assert result["started"] < lines[0]["time"] < lines[1]["time"] < lines[2]["time"]  # time-to-accuracy clock
    assert not storage.exists("branches/2/epochs")  # per-epoch logits are opt-in (train.epoch_logits)

    assert storage.ls("branches/2/checkpoints") == ["epoch=1.pt", "epoch=2.pt", "epoch=3.pt"]
    ckpt = load_checkpoint(storage, "branches/2/checkpoints/epoch=3.pt")
    assert ckpt["epoch"] == 3 and ckpt["train_config"]["epochs"] == 3 and ckpt["model_config"]["name"] == "fc4"

    for split in ("val", "test"):
        data = read_branch(storage, manifest, split, 2)
        logits = load_npy(storage, f"branches/2/logits_{split}.npy")
        rows = load_npy(storage, f"branches/2/rows_{split}.npy")
        assert logits.dtype == np.float32 and logits.shape == (len(data), 4)
        assert rows.dtype == np.int64 and rows.shape == (len(data), 2)
        assert np.all(np.diff(rows[:, 0]) > 0)  # ascending idx
        np.testing.assert_array_equal(rows[:, 0], data.idx)
        np.testing.assert_array_equal(rows[:, 1], data.y)
        acc = float((logits.argmax(1) == rows[:, 1]).mean())
        assert acc == pytest.approx(result[f"{split}_acc"])
    assert result["val_acc"] == pytest.approx(lines[-1]["val_acc"])


def test_same_config_gives_bitwise_identical_logits(make_run):
    a, b = make_run("a"), make_run("b")
    train_branch(a, 1, FC4, FAST)
    train_branch(b, 1, FC4, FAST)
    for split in ("val", "test"):
        np.testing.assert_array_equal(
            load_npy(a, f"branches/1/logits_{split}.npy"), load_npy(b, f"branches/1/logits_{split}.npy")
        )
    assert [m["loss"] for m in metric_lines(a, 1)] == [m["loss"] for m in metric_lines(b, 1)]
    other = make_run("c")
    train_branch(other, 1, FC4, with_epochs(FAST, 3, seed=1))
    assert not np.array_equal(load_npy(a, "branches/1/logits_val.npy"), load_npy(other, "branches/1/logits_val.npy"))


def test_resume_continues_and_matches_a_straight_run_bitwise(make_run):
    straight, resumed = make_run("straight"), make_run("resumed")
    train_branch(straight, 0, FC4, FAST)
    first = train_branch(resumed, 0, FC4, with_epochs(FAST, 1))
    assert first["epochs"] == 1 and [m["epoch"] for m in metric_lines(resumed, 0)] == [1]

    result = train_branch(resumed, 0, FC4, FAST)
    assert result["epochs"] == 3 and result["resumed_from_epoch"] == 1
    assert [m["epoch"] for m in metric_lines(resumed, 0)] == [1, 2, 3]
    # On CPU, with the closed-form schedule and per-epoch batch generators, the replay is exact.
    for split in ("val", "test"):
        np.testing.assert_array_equal(
            load_npy(straight, f"branches/0/logits_{split}.npy"), load_npy(resumed, f"branches/0/logits_{split}.npy")
        )
    assert [m["loss"] for m in metric_lines(straight, 0)] == [m["loss"] for m in metric_lines(resumed, 0)]


def test_compile_trains_through_the_compiled_module_and_checkpoints_the_plain_one(make_run, monkeypatch):
    calls = []

    class Spy(torch.nn.Module):  # stands in for torch.compile's wrapper (compiling takes ~20 s on 2 cores)
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            calls.append(len(x))
            return self.model(x)

    monkeypatch.setattr(torch, "compile", Spy)
    run = make_run()
    result = train_branch(run, 0, FC4, with_epochs(FAST, 1, compile=True))
    assert sum(calls) > len(load_npy(run, "branches/0/rows_val.npy"))  # the training batches and validation
    assert result["epochs_trained"] == 1
    ck = load_checkpoint(run, "branches/0/checkpoints/epoch=1.pt")
    assert not any(key.startswith("model.") for key in ck["model"])  # loadable by build_model as ever
    build_model(FC4, (1, 4, 4), 4).load_state_dict(ck["model"])


class Killed(Exception):
    pass


def test_a_run_killed_mid_way_resumes_bitwise_with_every_step_control(make_run):
    # Every train.* control is a function of (seed, epoch, step): a resumed run replays them exactly.
    cfg = dataclasses.replace(
        FAST,
        warmup_epochs=1.5,
        schedule_per_step=True,
        grad_clip=0.5,
        accumulate=2,
        mixup=0.4,
        label_smoothing=0.1,
        precision="fp16",  # autocast and GradScaler run on CPU too
        channels_last=True,
    )
    straight, resumed = make_run("straight"), make_run("resumed")
    train_branch(straight, 0, FC4, cfg)

    def kill_after_epoch_1(metrics: dict) -> None:
        if metrics["epoch"] == 1:
            raise Killed  # after epoch 1's checkpoint, as a killed process would leave it

    with pytest.raises(Killed):
        train_branch(resumed, 0, FC4, cfg, on_epoch=kill_after_epoch_1)
    scale = load_checkpoint(resumed, "branches/0/checkpoints/epoch=1.pt")["scaler"]["scale"]
    assert scale > 1  # the fp16 loss scale is checkpointed, and restored below
    result = train_branch(resumed, 0, FC4, cfg)
    assert result["resumed_from_epoch"] == 1
    for split in ("val", "test"):
        np.testing.assert_array_equal(
            load_npy(straight, f"branches/0/logits_{split}.npy"), load_npy(resumed, f"branches/0/logits_{split}.npy")
        )
    lines = metric_lines(straight, 0)
    assert [m["loss"] for m in lines] == [m["loss"] for m in metric_lines(resumed, 0)]
    assert 0 < lines[0]["lr"] < lines[1]["lr"] < cfg.lr  # warming up: each epoch's first step
    plain = make_run("plain")
    train_branch(plain, 0, FC4, FAST)
    assert not np.array_equal(
        load_npy(plain, "branches/0/logits_val.npy"), load_npy(straight, "branches/0/logits_val.npy")
    )


def test_early_stopping_ends_a_branch_whose_accuracy_stalls_and_a_rerun_keeps_it(make_run):
    run = make_run()
    # lr ~0: only BatchNorm's running statistics move, so val_acc settles within a few epochs
    stalled = with_epochs(FAST, 8, lr=1e-9, schedule="none", early_stopping_patience=1)
    result = train_branch(run, 0, FC4, stalled)
    lines, n = metric_lines(run, 0), result["epochs_trained"]
    assert n < 8 and [m["epoch"] for m in lines] == list(range(1, n + 1)) and result["epochs"] == 8
    assert lines[-1]["val_acc"] <= max(m["val_acc"] for m in lines[:-1])  # the last epoch did not improve
    assert not should_stop(lines[:-1], 1) and should_stop(lines, 1)
    run.remove(layout_result(0))  # killed before result.json: the re-run stops again without training
    again = train_branch(run, 0, FC4, stalled)
    assert again["epochs_trained"] == n and again["resumed_from_epoch"] == n


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(make_run, caplog, damage):
    straight, storage = make_run("straight"), make_run("damaged")
    train_branch(straight, 3, FC4, FAST)
    train_branch(storage, 3, FC4, with_epochs(FAST, 2))
    rel = "branches/3/checkpoints/epoch=2.pt"
    good = storage.read_bytes(rel)
    storage.write_bytes(rel, b"not a checkpoint" * 10 if damage == "garbage" else good[: len(good) // 2])

    with caplog.at_level(logging.WARNING, logger="branches"):
        result = train_branch(storage, 3, FC4, FAST)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "epoch=2.pt" in warnings[0].getMessage()
    assert result["resumed_from_epoch"] == 1
    assert [m["epoch"] for m in metric_lines(storage, 3)] == [1, 2, 3]  # line 2 of the first call was redone
    np.testing.assert_array_equal(
        load_npy(straight, "branches/3/logits_test.npy"), load_npy(storage, "branches/3/logits_test.npy")
    )


def test_lost_metric_line_is_restored_from_the_checkpoint(make_run):
    # A crash after writing checkpoint 2 but before appending metrics line 2.
    storage = make_run()
    train_branch(storage, 0, FC4, with_epochs(FAST, 2))
    lines = storage.read_bytes("branches/0/metrics.jsonl").decode().splitlines(keepends=True)
    storage.write_text("branches/0/metrics.jsonl", lines[0])
    storage.remove("branches/0/result.json")
    calls = []
    result = train_branch(storage, 0, FC4, with_epochs(FAST, 2), on_epoch=calls.append)
    assert calls == [] and result["resumed_from_epoch"] == 2
    assert storage.read_bytes("branches/0/metrics.jsonl").decode() == "".join(lines)


def test_finished_branch_is_returned_without_training(make_run):
    storage = make_run()
    first = train_branch(storage, 1, FC4, with_epochs(FAST, 1))
    calls = []
    again = train_branch(storage, 1, FC4, with_epochs(FAST, 1, threads=2), on_epoch=calls.append)
    assert again == first and calls == []


def test_old_checkpoints_are_pruned(make_run):
    storage = make_run()
    train_branch(storage, 0, FC4, with_epochs(FAST, 3, keep_checkpoints=2))
    assert storage.ls("branches/0/checkpoints") == ["epoch=2.pt", "epoch=3.pt"]


def test_different_configuration_in_the_same_branch_is_refused(make_run):
    storage = make_run()
    train_branch(storage, 0, FC4, with_epochs(FAST, 1))
    with pytest.raises(BranchConflictError, match=r"model.name: 'fc4' != 'fc8'"):
        train_branch(storage, 0, ModelConfig(name="fc8"), with_epochs(FAST, 1))
    storage.remove("branches/0/result.json")  # only checkpoints left: they are checked too
    with pytest.raises(BranchConflictError, match=r"train.lr"):
        train_branch(storage, 0, FC4, with_epochs(FAST, 2, lr=0.5))
    manifest = storage.read_json("data/manifest.json")
    storage.write_json("data/manifest.json", {**manifest, "config_hash": "0" * 64})
    with pytest.raises(BranchConflictError, match=r"split again"):
        train_branch(storage, 0, FC4, with_epochs(FAST, 2))


def test_other_models_and_optimizers_train(make_run):
    storage = make_run()
    for k, (model, train) in enumerate(
        [
            (ModelConfig(name="cnn8", width=4), with_epochs(FAST, 1, optimizer="sgd", schedule="step", step_size=1)),
            (ModelConfig(name="fc8"), with_epochs(FAST, 1, optimizer="adamw", weight_decay=0.01, label_smoothing=0.1)),
            (ModelConfig(name="torchvision:shufflenet_v2_x0_5"), with_epochs(FAST, 1)),  # by name, small stem
            (ModelConfig(name="timm:resnet10t"), with_epochs(FAST, 1)),  # timm by name (the test extra installs it)
        ]
    ):
        result = train_branch(storage, k, model, train)
        assert result["model"] == model.name and np.isfinite(result["val_nll"])


def test_k_out_of_range_names_k_and_K(make_run):
    storage = make_run()
    for k in (4, -1):
        with pytest.raises(ValueError, match=rf"k={k}.*K=4"):
            train_branch(storage, k, FC4, FAST)
    assert not storage.exists("branches")


def test_missing_manifest_raises_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json"):
        train_branch(RunStorage(str(tmp_path / "empty")), 0, FC4, FAST)


def test_lr_factor_matches_torch_schedulers():
    model = torch.nn.Linear(1, 1)
    for cfg, make in [
        (TrainConfig(epochs=7, schedule="cosine"), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7)),
        (
            TrainConfig(epochs=7, schedule="step", step_size=3, gamma=0.5),
            lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        ),
    ]:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        sched, lrs = make(opt), []
        for _ in range(cfg.epochs):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs == pytest.approx([cfg.lr * lr_factor(cfg, e) for e in range(cfg.epochs)])
    assert lr_factor(TrainConfig(schedule="none"), 5) == 1.0


def test_branches_import_neither_ray_nor_torch_distributed_process_groups():
    code = "import sys, branches, branches.train; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


def test_epoch_logits_are_each_epochs_validation_logits(make_run):
    storage = make_run()
    result = train_branch(storage, 0, FC4, dataclasses.replace(FAST, epoch_logits=True))
    assert storage.ls("branches/0/epochs") == [f"logits_val_{e}.npy" for e in (1, 2, 3)]
    last = load_npy(storage, "branches/0/epochs/logits_val_3.npy")
    np.testing.assert_array_equal(last, load_npy(storage, "branches/0/logits_val.npy"))  # the final model's
    y = load_npy(storage, "branches/0/rows_val.npy")[:, 1]
    for e, line in zip((1, 2, 3), metric_lines(storage, 0)):
        acc = (load_npy(storage, f"branches/0/epochs/logits_val_{e}.npy").argmax(1) == y).mean()
        assert acc == pytest.approx(line["val_acc"])  # the accuracy metrics.jsonl reported for that epoch
    assert result["epochs"] == 3


def test_a_diverging_branch_stops_at_once_and_writes_nothing_of_that_epoch(make_run):
    storage = make_run()
    wild = with_epochs(FAST, 3, optimizer="sgd", lr=1e4)  # `spectral run --set train.lr=10000`: NaN within steps
    with pytest.raises(
        NonFiniteError, match=r"branch 0 diverged at epoch 1: non-finite training loss \(nan\) at step \d+"
    ):
        train_branch(storage, 0, FC4, wild)
    assert not storage.exists("branches/0/checkpoints/epoch=1.pt") and not storage.exists("branches/0/metrics.jsonl")
    for split in ("val", "test"):
        assert not storage.exists(f"branches/0/logits_{split}.npy")
    assert not storage.exists("branches/0/result.json")


def test_skip_branch_records_the_divergence_and_a_rerun_keeps_it_settled(make_run):
    from branches import finished_result

    storage = make_run()
    wild = with_epochs(FAST, 3, optimizer="sgd", lr=1e4, on_nonfinite="skip_branch")
    record = train_branch(storage, 0, FC4, wild)  # no exception: the run goes on without this branch
    assert record["diverged"] is True and record["k"] == 0 and record["epoch"] == 1 and record["step"] >= 1
    assert f"at step {record['step']}" in record["error"]
    assert storage.read_json("branches/0/diverged.json") == record
    assert not storage.exists("branches/0/result.json") and not storage.exists("branches/0/logits_val.npy")
    assert finished_result(storage, 0, FC4, wild) == record  # settled: a rerun does not train it again
    fail = dataclasses.replace(wild, on_nonfinite="fail")  # the same run under the default: trained again, and fails
    with pytest.raises(NonFiniteError) as raised:
        train_branch(storage, 0, FC4, fail)
    assert (raised.value.k, raised.value.epoch, raised.value.step) == (0, 1, record["step"])
    assert not storage.exists("branches/0/diverged.json")


# -- packed branches (resources.branches_per_process; branches.train_pack) ---------------------------------------
def test_a_pack_trains_each_branch_as_its_own_unpacked_run_would(make_run):
    from branches.train_pack import train_pack

    packed, alone = make_run("packed"), make_run("alone")
    # SGD: Adam would turn the rounding noise in the (truly zero) gradient of a bias before a BatchNorm into
    # +-lr steps, which the eval-mode running means then follow with a lag: chaotic in either engine
    # with the warm-up and the per-step schedule, which a pack steps as each branch's own loop does
    cfg = with_epochs(FAST, 2, optimizer="sgd", lr=0.05, warmup_epochs=0.5, schedule_per_step=True)
    results = train_pack([packed] * 4, [0, 1, 2, 3], FC4, cfg)
    for k in range(4):
        want = train_branch(alone, k, FC4, cfg)
        got = results[k]
        assert got["packed_with"] == [0, 1, 2, 3] and packed.read_json(f"branches/{k}/result.json") == got
        assert set(got) == set(want) | {"packed_with"} and got["params"] == want["params"]
        assert got["epochs_trained"] == want["epochs_trained"] == 2
        for rel in (
            "checkpoints/epoch=1.pt",
            "checkpoints/epoch=2.pt",
            "metrics.jsonl",
            "logits_val.npy",
            "logits_test.npy",
            "rows_val.npy",
            "rows_test.npy",
        ):
            assert packed.exists(f"branches/{k}/{rel}"), rel
        assert [set(m) for m in metric_lines(packed, k)] == [METRIC_KEYS] * 2
        assert [m["lr"] for m in metric_lines(packed, k)] == [m["lr"] for m in metric_lines(alone, k)]
        # same seeds, same batches, same math: the logits agree to float32 rounding grown over 2 epochs
        np.testing.assert_allclose(
            load_npy(packed, f"branches/{k}/logits_test.npy"),
            load_npy(alone, f"branches/{k}/logits_test.npy"),
            rtol=1e-4,
            atol=1e-4,
        )
        assert got["test_acc"] == pytest.approx(want["test_acc"], abs=0.02)
        ck = load_checkpoint(packed, f"branches/{k}/checkpoints/epoch=2.pt")
        model = build_model(FC4, (1, 4, 4), 4)
        model.load_state_dict(ck["model"])  # an unpacked branch's checkpoint
        assert ck["optimizer"]["state"][0]["momentum_buffer"].shape == model[1].weight.shape


def test_packed_rows_are_each_members_own_batches_bitwise_and_members_leave_mid_epoch(make_run):
    from branches.data import InMemorySplit, PackedTrainRows

    run = make_run()
    manifest = load_manifest(run)
    own = {k: InMemorySplit(run, manifest, "train", k, torch.device("cpu")) for k in range(4)}
    rows = PackedTrainRows(
        [InMemorySplit(run, manifest, "train", k, torch.device("cpu")) for k in range(4)], [0, 1, 2, 3]
    )
    streams = {k: own[k].train_batches(7, k, 2, 32) for k in range(4)}
    left = [0, 1, 2, 3]
    steps = 0
    for step, (x, y) in enumerate(rows.epoch(7, 2, 32)):
        assert x.shape[0] == y.shape[0] == len(left)
        for i, k in enumerate(left):  # the member's own order, codec and normalisation: the very same batch
            want_x, want_y = next(streams[k])
            assert torch.equal(x[i], want_x) and torch.equal(y[i], want_y), (step, k)
        if step == 1:
            rows.drop([1])  # branch 1 leaves after step 1 (as a diverged member does): the others go on unchanged
            left = [0, 2, 3]
        steps += 1
    assert steps == len(list(own[0].train_batches(7, 0, 2, 32))) > 2
    assert all(next(streams[k], None) is None for k in left)


def test_an_augmented_pack_draws_each_members_augmentation_as_unpacked(make_run):
    from branches.train_pack import train_pack

    packed, alone = make_run("packed"), make_run("alone")
    cfg = with_epochs(FAST, 1, optimizer="sgd", lr=0.05, augment=["crop"], augment_pad=1)  # SGD: see above
    results = train_pack([packed] * 2, [0, 1], FC4, cfg)
    for k in (0, 1):
        want = train_branch(alone, k, FC4, cfg)
        np.testing.assert_allclose(
            load_npy(packed, f"branches/{k}/logits_test.npy"),
            load_npy(alone, f"branches/{k}/logits_test.npy"),
            rtol=1e-4,
            atol=1e-4,
        )
        assert results[k]["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)


def test_a_pack_resumes_each_branch_from_its_own_checkpoint(make_run):
    from branches.train_pack import train_pack

    straight, resumed = make_run("straight"), make_run("resumed")
    train_pack([straight] * 2, [0, 1], FC4, with_epochs(FAST, 3))
    train_pack([resumed] * 2, [0, 1], FC4, with_epochs(FAST, 2))
    resumed.remove("branches/1/checkpoints/epoch=2.pt")  # branch 1 is an epoch behind: the pack restarts at epoch 1
    results = train_pack([resumed] * 2, [0, 1], FC4, with_epochs(FAST, 3))
    assert [results[k]["resumed_from_epoch"] for k in (0, 1)] == [1, 1]
    for k in (0, 1):
        assert [m["epoch"] for m in metric_lines(resumed, k)] == [1, 2, 3]
        assert np.array_equal(
            load_npy(resumed, f"branches/{k}/logits_test.npy"), load_npy(straight, f"branches/{k}/logits_test.npy")
        )  # CPU: bitwise


def test_a_diverging_branch_leaves_the_pack_and_the_others_are_unaffected(make_run):
    from branches.train_pack import train_pack

    clean, broken = make_run("clean"), make_run("broken")
    manifest = broken.read_json("data/manifest.json")
    manifest["branches"][1]["std"] = [1e-30]  # branch 1's inputs overflow to inf: its loss is NaN at step 1
    manifest["branches"][1]["mean"] = [3e38]
    broken.write_json("data/manifest.json", manifest)
    skip = with_epochs(FAST, 2, optimizer="sgd", lr=0.05, on_nonfinite="skip_branch")  # SGD: see the test above
    want = train_pack([clean] * 3, [0, 1, 2], FC4, skip)
    got = train_pack([broken] * 3, [0, 1, 2], FC4, skip)
    assert got[1]["diverged"] is True and (got[1]["epoch"], got[1]["step"]) == (1, 1)
    assert broken.read_json("branches/1/diverged.json") == got[1] and not broken.exists("branches/1/result.json")
    for k in (0, 2):  # the rest of the pack trains exactly as without the diverged branch
        assert np.allclose(
            load_npy(broken, f"branches/{k}/logits_test.npy"),
            load_npy(clean, f"branches/{k}/logits_test.npy"),
            rtol=1e-5,
            atol=1e-5,
        )
        assert got[k]["test_acc"] == want[k]["test_acc"]
    other = make_run("fail")
    other.write_json("data/manifest.json", manifest)
    with pytest.raises(NonFiniteError, match=r"branch 1 diverged at epoch 1: non-finite training loss") as raised:
        train_pack([other] * 3, [0, 1, 2], FC4, with_epochs(FAST, 2))
    assert raised.value.k == 1
