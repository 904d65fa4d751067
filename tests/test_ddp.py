"""The DDP baseline (Ray Train): batch partition, the comm-hook meter, and a real 2-worker run with a killed worker."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from data_split import RunStorage, layout, load_manifest
from orchestrator import api
from orchestrator.ddp import AllReduceMeter, global_batches, train_ddp, union_seconds, worker_rows
from test_tracking import read_events, scalars


def test_workers_split_the_single_baselines_batches_like_distributed_sampler():
    from torch.utils.data import DistributedSampler

    from branches.data import batch_indices, epoch_generator

    n, batch, workers = 103, 16, 2
    single = batch_indices(n, batch, epoch_generator(0, 0, 1))
    ddp = global_batches(n, batch, workers, epoch_generator(0, 0, 1))
    assert [len(b) for b in ddp] == [16] * 6 + [7]  # a trailing 7 rows still give each worker 2 or more
    assert torch.equal(torch.cat(ddp), torch.cat(single))  # the same rows in the same order
    for b in ddp:  # each step: the workers' rows are disjoint and together the global batch
        parts = [worker_rows(b, r, workers) for r in range(workers)]
        assert sorted(torch.cat(parts).tolist()) == sorted(b.tolist())
    # over an epoch, worker r holds DistributedSampler's partition perm[r::N] of the same permutation
    perm = torch.cat(single)
    for r in range(workers):
        mine = torch.cat([worker_rows(b, r, workers) for b in ddp[:-1]])
        assert torch.equal(mine, perm[: 6 * batch][r::workers])
    sampler = DistributedSampler(range(8), num_replicas=2, rank=1, shuffle=False)
    assert list(sampler) == worker_rows(torch.arange(8), 1, 2).tolist()


def test_a_trailing_batch_too_small_for_every_worker_joins_the_previous_one():
    batches = global_batches(35, 16, 2, torch.Generator().manual_seed(0))  # 16, 16, 3 -> 3 < 2*2
    assert [len(b) for b in batches] == [16, 19]
    assert sorted(torch.cat(batches).tolist()) == list(range(35))


def test_union_seconds_counts_overlapping_buckets_once():
    assert union_seconds([]) == 0
    assert union_seconds([(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)]) == pytest.approx(3.0)
    assert union_seconds([(3.0, 4.0), (0.0, 10.0)]) == pytest.approx(10.0)


def test_meter_counts_the_bytes_ddp_hands_it(tmp_path):
    """One-process gloo group: the hook sees every gradient, once per step, and returns the mean."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from conftest import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        ref = torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        ref.load_state_dict(model.state_dict())
        ddp = DistributedDataParallel(model)
        meter = AllReduceMeter(1)
        ddp.register_comm_hook(None, meter.hook)
        x = torch.randn(5, 10)
        for _ in range(3):
            ddp(x).sum().backward()
        ref(x).sum().backward()
        params = sum(p.numel() for p in model.parameters())
        stats = meter.take()
        assert stats["bytes"] == 3 * params * 4 and stats["buckets"] >= 3 and stats["allreduce_s"] > 0
        assert meter.take()["bytes"] == 0
        for p, q in zip(model.parameters(), ref.parameters()):  # accumulated 3 identical steps through the hook
            assert torch.allclose(p.grad, 3 * q.grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_baseline_on_s3_checkpoints_through_ray_train_and_measures_its_traffic(ray_session, s3_endpoint):
    """Ray Train checkpoints to the run's S3 storage; the hook measures every all-reduce.

    (The CLI, `api.baseline` and `ray job submit` run it in tests/test_multinode.py; a killed worker and the
    group's resume, the same engine's, in tests/test_workers_per_branch.py.)
    """
    import uuid

    cfg = tiny_config(
        f"s3://test-bucket/ddp-{uuid.uuid4().hex[:8]}",
        **{
            "baseline.engine": "ddp",
            "baseline.workers": 2,
            "train.epochs": 2,
            "train.batch_size": 32,
            "storage.endpoint_url": s3_endpoint,
        },
    )
    data = RunStorage.from_config(cfg.storage).child(layout.BASELINE)
    api.split(cfg.replace(**{"split.rows": 1, "split.cols": 1, "split.transform": "identity", "storage.uri": data.uri}))
    out = RunStorage.from_config(cfg.storage).child(layout.BASELINE_DDP)
    result = train_ddp(cfg, data, out)

    stored = out.read_json("result.json")
    assert stored == result
    assert result["engine"] == "ddp" and result["workers"] == 2 and result["backend"] == "gloo"
    assert result["resumed_from_epoch"] == 0
    assert [h["epoch"] for h in result["epochs_history"]] == [1, 2]
    train_rows = load_manifest(data).branches[0].splits["train"].rows
    steps_per_epoch = len(global_batches(train_rows, 32, 2, torch.Generator()))
    assert result["steps"] == 2 * steps_per_epoch
    # measured by the hook: every step all-reduces every fp32 gradient, on each worker
    assert result["allreduce_bytes_by_worker"] == [result["steps"] * result["parameters"] * 4] * 2
    assert result["allreduce_bytes_per_worker"] == result["allreduce_bytes_by_worker"][0]
    assert all(0 < f < 1 for f in result["allreduce_fraction_by_worker"])
    assert 0 <= result["test_acc"] <= 1 and result["seconds"] > 0
    curve = result["val_curve"]
    assert [c["epoch"] for c in curve] == [1, 2] and 0 < curve[0]["elapsed_s"] < curve[1]["elapsed_s"] <= result[
        "seconds"
    ]
    # TensorBoard: the epochs rank 0 wrote to metrics.jsonl, beside the branches' runs (baseline-ddp/branches/0)
    events = scalars(read_events(out.read_bytes(layout.branch_events(0))))
    assert [step for step, _ in events["val_acc"]] == [1, 2]
    assert [v for _, v in events["val_acc"]] == pytest.approx([h["val_acc"] for h in result["epochs_history"]])
    # checkpoints went through Ray Train to the run's storage
    assert any(name.startswith("checkpoint") for name in out.ls("ray_train"))
    # a finished result is not trained again
    assert train_ddp(cfg, data, out) == result
