"""Progress off a terminal (``orchestrator.summaries.ProgressLines``): a line per branch per epoch, a heartbeat."""

from __future__ import annotations

from orchestrator.summaries import ProgressLines, branch_line


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
