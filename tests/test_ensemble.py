"""Ensemble math and I/O on fake branch outputs (no Ray, no torch)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from data_split.storage import RunStorage
from orchestrator.ensemble import (
    EnsembleInputError,
    ensemble_logits,
    evaluate_ensemble,
    load_branch_outputs,
    score,
    weight_rule,
    write_weights,
)

K, CLASSES = 3, 5
N = {"val": 40, "test": 60}


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_fake_branches(
    storage: RunStorage, k_total: int = K, signal=(2.0, 1.0, 0.5), seed: int = 0, train_losses=(0.3, 0.1, 0.2)
) -> dict:
    """Noisy logits with a per-branch signal on the true class; returns {split: (logits (K,N,C), y, idx)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in N.items():
        idx = np.sort(rng.choice(10_000, size=n, replace=False)).astype(np.int64)
        y = rng.integers(0, CLASSES, size=n).astype(np.int64)
        logits = rng.normal(size=(k_total, n, CLASSES)).astype(np.float32)
        logits[:, np.arange(n), y] += np.asarray(signal[:k_total], dtype=np.float32)[:, None]
        for k in range(k_total):
            storage.write_bytes(f"branches/{k}/logits_{split}.npy", npy(logits[k]))
            storage.write_bytes(f"branches/{k}/rows_{split}.npy", npy(np.stack([idx, y], axis=1)))
        out[split] = (logits, y, idx)
    for k in range(k_total):
        storage.write_json(f"branches/{k}/result.json", {"k": k, "train_loss": train_losses[k]})
    return out


def direct_score(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    z = z.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float((z.argmax(1) == y).mean()), float(-np.log(p[np.arange(len(y)), y]).mean())


@pytest.fixture
def run(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    return storage, write_fake_branches(storage)


# -- weight rules ------------------------------------------------------------------------------------
def test_uniform_weights_are_one_over_k():
    np.testing.assert_allclose(weight_rule("uniform", [0.5, 0.1, 0.9, 0.2]), [0.25] * 4)


def test_geometric_weights_follow_the_loss_ranking():
    w = weight_rule("geometric", [0.3, 0.1, 0.2], p=0.3)  # ranks [2, 0, 1]
    expected = np.array([0.3 * 0.7**2, 0.3, 0.3 * 0.7])
    np.testing.assert_allclose(w, expected / expected.sum())
    assert w.sum() == pytest.approx(1.0)
    assert w[1] > w[2] > w[0]


def test_geometric_ties_break_by_branch_index_and_nan_ranks_last():
    w = weight_rule("geometric", [0.1, 0.1, 0.2], p=0.5)  # ranks [0, 1, 2]
    np.testing.assert_allclose(w, np.array([0.5, 0.25, 0.125]) / 0.875)
    w = weight_rule("geometric", [float("nan"), 0.2, 0.1], p=0.5)  # ranks [2, 1, 0]
    np.testing.assert_allclose(w, np.array([0.125, 0.25, 0.5]) / 0.875)


@pytest.mark.parametrize(
    "rule, losses, p, match",
    [
        ("tuned", [0.1, 0.2], 0.3, "Ray Tune"),
        ("best", [0.1, 0.2], 0.3, "unknown weight rule"),
        ("geometric", [0.1, 0.2], 1.0, "p must be in"),
        ("uniform", [], 0.3, "non-empty"),
    ],
)
def test_weight_rule_rejects_bad_input(rule, losses, p, match):
    with pytest.raises(ValueError, match=match):
        weight_rule(rule, losses, p)


# -- math ---------------------------------------------------------------------------------------------------
def test_uniform_ensemble_is_the_mean_of_branch_logits():
    logits = np.random.default_rng(1).normal(size=(4, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(ensemble_logits(np.full(4, 0.25), logits), logits.mean(0), rtol=1e-6, atol=1e-6)


def test_ensemble_logits_is_the_weighted_sum():
    logits = np.random.default_rng(2).normal(size=(3, 5, 4))
    w = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(ensemble_logits(w, logits), 0.5 * logits[0] - logits[1] + 2.0 * logits[2])
    with pytest.raises(ValueError, match="do not match"):
        ensemble_logits(w[:2], logits)


def test_score_matches_direct_numpy_and_is_stable():
    rng = np.random.default_rng(3)
    z, y = rng.normal(size=(50, 6)), rng.integers(0, 6, size=50)
    acc, nll = direct_score(z, y)
    s = score(z, y)
    assert s["acc"] == pytest.approx(acc) and s["nll"] == pytest.approx(nll) and s["n"] == 50
    big = score(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]))  # naive softmax overflows here
    assert big["acc"] == 0.5 and big["nll"] == pytest.approx(500.0)
    with pytest.raises(ValueError, match="labels must lie"):
        score(z, np.full(50, 6))


# -- loading ----------------------------------------------------------------------------------------------
def test_load_branch_outputs_stacks_branches(run):
    storage, fake = run
    out = load_branch_outputs(storage, K, "test")
    logits, y, idx = fake["test"]
    assert out.logits.shape == (K, N["test"], CLASSES) and out.logits.dtype == np.float32
    np.testing.assert_array_equal(out.logits, logits)
    np.testing.assert_array_equal(out.y, y)
    np.testing.assert_array_equal(out.idx, idx)


def test_missing_branch_file_names_branch_and_file(run):
    storage, _ = run
    storage.remove("branches/2/logits_test.npy")
    with pytest.raises(EnsembleInputError, match=r"branch 2: .*branches/2/logits_test\.npy is missing"):
        load_branch_outputs(storage, K, "test")
    load_branch_outputs(storage, K, "val")  # the other split is still fine


def test_idx_mismatch_is_an_error(run):
    storage, fake = run
    _, y, idx = fake["val"]
    swapped = idx.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    storage.write_bytes("branches/1/rows_val.npy", npy(np.stack([swapped, y], axis=1)))
    with pytest.raises(
        EnsembleInputError, match=r"branch 1: idx mismatch .*rows_val\.npy: 2 rows differ, first at row 3"
    ):
        load_branch_outputs(storage, K, "val")


def test_label_mismatch_is_an_error(run):
    storage, fake = run
    _, y, idx = fake["val"]
    storage.write_bytes("branches/2/rows_val.npy", npy(np.stack([idx, (y + 1) % CLASSES], axis=1)))
    with pytest.raises(EnsembleInputError, match=r"branch 2: label mismatch"):
        load_branch_outputs(storage, K, "val")


def test_shape_mismatch_is_an_error(run):
    storage, fake = run
    storage.write_bytes("branches/1/logits_val.npy", npy(fake["val"][0][1][:, :3]))
    with pytest.raises(EnsembleInputError, match=r"branch 1: shape mismatch"):
        load_branch_outputs(storage, K, "val")
    storage.write_bytes("branches/1/logits_val.npy", npy(fake["val"][0][1][:-1]))
    with pytest.raises(EnsembleInputError, match=r"branch 1: .*rows_val\.npy has shape"):
        load_branch_outputs(storage, K, "val")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_refused(run, bad):
    storage, fake = run
    logits = fake["test"][0][2].copy()
    logits[[1, 5], 0] = bad
    storage.write_bytes("branches/2/logits_test.npy", npy(logits))
    with pytest.raises(EnsembleInputError, match=r"branch 2: .*logits_test\.npy holds NaN/inf in 2 of \d+ rows"):
        load_branch_outputs(storage, K, "test")


# -- evaluation ----------------------------------------------------------------------------------------------
def test_evaluate_geometric_scores_and_writes_records(run):
    storage, fake = run
    result = evaluate_ensemble(storage, K, "geometric", p=0.3)
    w = weight_rule("geometric", [0.3, 0.1, 0.2], 0.3)
    np.testing.assert_allclose(result.weights, w)
    for split, part in (("val", result.val), ("test", result.test)):
        logits, y, _ = fake[split]
        acc, nll = direct_score(np.einsum("k,knc->nc", w, logits.astype(np.float64)), y)
        assert part["acc"] == pytest.approx(acc) and part["nll"] == pytest.approx(nll)

    write_weights(storage, result)
    record = storage.read_json("ensemble/weights.json")
    assert record["method"] == "geometric" and record["p"] == 0.3
    assert record["weights"] == pytest.approx(w.tolist())
    assert record["test_acc"] == pytest.approx(result.test["acc"]) and record["val_nll"] == pytest.approx(
        result.val["nll"]
    )
    assert storage.read_json("ensemble/geometric.json") == record

    uniform = evaluate_ensemble(storage, K, "uniform")
    write_weights(storage, uniform, chosen=False)
    assert storage.read_json("ensemble/weights.json")["method"] == "geometric"  # not replaced
    assert storage.read_json("ensemble/uniform.json")["weights"] == pytest.approx([1 / 3] * 3)


def test_averaging_beats_the_average_branch(run):
    storage, fake = run
    result = evaluate_ensemble(storage, K, "uniform")
    logits, y, _ = fake["test"]
    branch_accs = [direct_score(logits[k], y)[0] for k in range(K)]
    assert result.test["acc"] > np.mean(branch_accs)


def test_given_weights_are_evaluated_as_is(run):
    storage, fake = run
    result = evaluate_ensemble(storage, K, "tuned", weights=np.array([0.0, 1.0, 0.0]))
    logits, y, _ = fake["val"]
    assert result.val["acc"] == pytest.approx(direct_score(logits[1], y)[0])
    with pytest.raises(ValueError, match="3 finite numbers"):
        evaluate_ensemble(storage, K, "tuned", weights=np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="names a file"):
        evaluate_ensemble(storage, K, "../x", weights=np.ones(3))
