"""Progress off a terminal (``orchestrator.summaries``): a line per branch per epoch, a heartbeat; a count's lines."""

from __future__ import annotations

from orchestrator.summaries import CountLines, ProgressLines, branch_line, count_line


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_one_line_per_branch_per_epoch_and_a_heartbeat_when_nothing_moves():
    clock = Clock()
    progress = ProgressLines(3, heartbeat_s=30, clock=clock)
    training = {"state": "training", "epoch": 1, "loss": 0.5, "val_acc": 0.8, "images_per_s": 1234.0, "ip": "10.0.0.7"}
    assert progress.lines({0: {"state": "starting"}, 1: {"state": "starting"}}) == [
        "branch 0: starting, epoch 0/3",
        "branch 1: starting, epoch 0/3",
    ]
    clock.t = 5
    assert progress.lines({0: training, 1: {"state": "starting"}}) == [
        "branch 0: training, epoch 1/3, loss 0.5000, val acc 0.8000, 1,234 images/s (node 10.0.0.7)"
    ]
    clock.t = 20
    assert progress.lines({0: training, 1: {"state": "starting"}}) == []  # nothing new, heartbeat not due
    clock.t = 35.5  # 30.5 s since the last line
    assert progress.lines({0: training, 1: {"state": "training"}}) == ["branch 1: training, epoch 0/3"]
    clock.t = 65
    assert progress.lines({0: training, 1: {"state": "training"}}) == []
    clock.t = 66
    assert progress.lines({0: training, 1: {"state": "training"}}) == [
        "still working after 66 s: 2 training (0@1/3, 1@0/3)"
    ]
    assert progress.lines({0: {**training, "epoch": 2}, 1: {"state": "training"}})[0].startswith(
        "branch 0: training, epoch 2/3"
    )
    assert branch_line(2, {"state": "done", "epoch": 3, "val_acc": None}, 3) == "branch 2: done, epoch 3/3"


def test_a_count_prints_its_first_update_one_line_per_heartbeat_and_its_last():
    clock = Clock()
    progress = CountLines("split", heartbeat_s=30, clock=clock)
    clock.t = 2
    assert progress.lines(1_000, 70_000) == ["split: 1,000 / 70,000 images (1%), 500 images/s"]
    clock.t = 20
    assert progress.lines(9_000, 70_000) == []  # heartbeat not due
    clock.t = 32
    assert progress.lines(16_000, 70_000) == ["split: 16,000 / 70,000 images (23%), 500 images/s"]
    clock.t = 40
    assert progress.lines(70_000, 70_000) == ["split: 70,000 / 70,000 images (100%), 1,750 images/s"]  # the last
    assert count_line("predict", 0, 0, 0.0) == "predict: 0 / 0 images (0%)"
