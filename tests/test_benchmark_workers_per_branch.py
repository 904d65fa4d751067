"""benchmarks/workers_per_branch.py's pure pieces: the arm order, the all-reduce bytes check, the isolation claims
and the summary, on made-up results (no Ray, no training)."""

from __future__ import annotations

import pytest

from benchmarks import workers_per_branch as wpb


def group_result(rows: int, batch: int, epochs: int, params: int, *, extra_steps: int = 0) -> dict:
    steps = epochs * -(-rows // batch) + extra_steps  # rows a multiple of 4 workers' 2 rows: no merged tail
    return {
        "workers": 2,
        "steps": steps,
        "params": params,
        "allreduce_bytes_by_worker": [steps * params * 4] * 2,
    }


def test_arms_alternate_abba_so_both_modes_see_the_same_drift():
    assert wpb.arm_order(1) == [(1, 0), (2, 0)]
    assert wpb.arm_order(3) == [(1, 0), (2, 0), (2, 1), (1, 1), (1, 2), (2, 2)]


def test_allreduce_check_recounts_the_steps_and_wants_every_byte():
    ok = wpb.allreduce_check(group_result(1000, 128, 2, 5000), 1000, 128, 2)
    assert ok["exact"] and ok["steps"] == 16 and ok["expected_bytes_per_worker"] == 16 * 5000 * 4
    # a step more than the partition gives (recorded and counted alike) is still caught by the recount
    assert not wpb.allreduce_check(group_result(1000, 128, 2, 5000, extra_steps=1), 1000, 128, 2)["exact"]
    short = group_result(1000, 128, 2, 5000)
    short["allreduce_bytes_by_worker"] = [short["allreduce_bytes_by_worker"][0], 4]  # one worker's bytes off
    assert not wpb.allreduce_check(short, 1000, 128, 2)["exact"]


def branch(k: int, acc: float, *, sent: int = 0, group: list[int] | None = None, exact: bool = True) -> dict:
    row = {
        "k": k,
        "test_acc": acc,
        "epoch_s": [2.0, 2.0],
        "train_seconds": 4.0,
        "epoch_train_s": [1.5, 1.5],
        "bytes_between_branches": sent,
        "files_written_for_other_branches": [],
    }
    if group is not None:
        row |= {
            "group_branches": group,
            "process_group": {"world_size": len(group)},
            "allreduce_fraction_by_worker": [0.25, 0.35],
            "allreduce": {
                "exact": exact,
                "steps": 4,
                "steps_recorded": 4,
                "params": 10,
                "expected_bytes_per_worker": 160,
                "measured_bytes_by_worker": [160, 160 if exact else 8],
            },
        }
    return row


def test_isolation_violations_fail_the_benchmark_naming_the_numbers():
    wpb.check_isolation(branch(0, 0.8), 1)
    wpb.check_isolation(branch(1, 0.8, group=[1, 1]), 2)
    with pytest.raises(AssertionError, match="branch 0 at M = 1 sent 12 bytes"):
        wpb.check_isolation(branch(0, 0.8, sent=12), 1)
    with pytest.raises(AssertionError, match="holds \\[1, 0\\]"):
        wpb.check_isolation(branch(1, 0.8, group=[1, 0]), 2)
    with pytest.raises(AssertionError, match="\\[160, 8\\] != steps 4 .* = 160"):
        wpb.check_isolation(branch(1, 0.8, group=[1, 1], exact=False), 2)


def test_summary_compares_modes_and_seeds():
    def arm(m: int, seed: int, wall: float, accs: list[float]) -> dict:
        group = (lambda k: [k, k]) if m == 2 else (lambda k: None)
        return {
            "workers": m,
            "seed": seed,
            "train_wall_s": wall,
            "branches": [branch(k, a, group=group(k)) for k, a in enumerate(accs)],
        }

    arms = [
        arm(1, 0, 10, [0.80, 0.70]),
        arm(2, 0, 16, [0.81, 0.70]),
        arm(2, 1, 14, [0.79, 0.72]),
        arm(1, 1, 10, [0.8, 0.73]),
    ]
    s = wpb.summary(arms)
    assert s["time"]["M2_vs_M1_train_wall_s"] == 1.5 and s["time"]["M2_vs_M1_epoch_s"] == 1.0
    assert s["max_abs_test_acc_M2_minus_M1"] == 0.01 and s["max_abs_test_acc_between_seeds"] == 0.03
    assert s["allreduce_exact"] and s["bytes_between_branches"] == 0 and s["M2_allreduce_fraction_of_training"] == 0.3
    assert wpb.summary(arms[:2])["max_abs_test_acc_between_seeds"] is None
