"""Ensemble-weight search: the simplex parametrisation, the exact fit, the Ray Tune search (local, s3://), the CLI."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest

from conftest import tiny_config
from data_split.layout import MANIFEST, MANIFEST_VERSION
from data_split.storage import RunStorage
from orchestrator import cli
from orchestrator.ensemble import EnsembleInputError, ensemble_logits, evaluate_ensemble, score, weight_rule
from orchestrator.weights import NLL_TOLERANCE_PCT, tune_ensemble_weights
from tune import fit_exact_weights
from tune._simplex import dirichlet_around, local_search, score_candidates, simplex_from_unit, unit_from_simplex
from tune.exact import nll_and_grad

K, CLASSES, N_VAL, N_TEST = 4, 5, 300, 200
SIGNAL = (2.0, 1.2, 0.6, 0.1)  # branch 0 carries most of the class signal, branch 3 almost none
TRAIN_LOSSES = (0.9, 0.3, 0.5, 1.2)  # geometric ranks branch 1 first: a rule that is off on purpose


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def fake_logits(n: int, rng: np.random.Generator, signal=SIGNAL) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, CLASSES, size=n)
    z = rng.normal(size=(len(signal), n, CLASSES)).astype(np.float32)  # (K, N, C)
    z[:, np.arange(n), y] += np.asarray(signal, np.float32)[:, None]
    return z, y


def write_fake_run(storage: RunStorage, seed: int = 0) -> dict:
    """Branch outputs (logits, rows, result.json) and a minimal manifest, as a trained run leaves them."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("val", N_VAL), ("test", N_TEST)):
        z, y = fake_logits(n, rng)
        idx = np.sort(rng.choice(100_000, size=n, replace=False))
        for k in range(K):
            storage.write_bytes(f"branches/{k}/logits_{split}.npy", npy(z[k]))
            storage.write_bytes(f"branches/{k}/rows_{split}.npy", npy(np.stack([idx, y], axis=1).astype(np.int64)))
        out[split] = (z, y)
    for k in range(K):
        storage.write_json(f"branches/{k}/result.json", {"k": k, "train_loss": TRAIN_LOSSES[k], "test_acc": 0.5})
    storage.write_json(
        MANIFEST,
        {
            "version": MANIFEST_VERSION,
            "config_hash": "fake",
            "source": {"name": "fake"},
            "split": {"K": K, "r": 2, "c": 2, "transform": "dct"},
            "val_fraction": 0.1,
            "seed": 0,
            "branches": [],
        },
    )
    return out


# -- pure math ---------------------------------------------------------------------------------------------
def test_every_unit_sample_maps_onto_the_simplex():
    rng = np.random.default_rng(0)
    u = rng.random((5000, K))
    u[:3] = [[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]  # the corners of the cube
    w = simplex_from_unit(u)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w.mean(axis=0), 1.0 / K, atol=0.01)  # uniform u: the flat Dirichlet
    target = np.array([0.6, 0.3, 0.1, 0.0])
    np.testing.assert_allclose(simplex_from_unit(unit_from_simplex(target)), target, atol=1e-12)
    p = dirichlet_around(target, 100.0, 50, rng)
    assert p.shape == (50, K) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_local_search_improves_on_its_start_within_its_budget():
    rng = np.random.default_rng(4)
    z, y = fake_logits(N_VAL, rng)
    start = np.full(K, 1.0 / K)
    w, nll, acc, start_nll = local_search(start, 64, z.astype(np.float64), y, rng)
    assert start_nll == pytest.approx(score_candidates(start[None], z, y)[0][0])
    assert nll < start_nll and np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    assert (nll, acc) == pytest.approx(tuple(x[0] for x in score_candidates(w[None], z, y)))


def test_batched_candidate_scores_match_the_ensemble_score():
    rng = np.random.default_rng(1)
    z, y = fake_logits(120, rng)
    W = rng.dirichlet(np.ones(K), size=7)
    nll, acc = score_candidates(W, z, y)
    for i, w in enumerate(W):
        ref = score(ensemble_logits(w, z), y)
        assert nll[i] == pytest.approx(ref["nll"], rel=1e-9)
        assert acc[i] == pytest.approx(ref["acc"])


def test_exact_fit_minimises_validation_nll_over_the_simplex():
    rng = np.random.default_rng(2)
    z, y = fake_logits(N_VAL, rng)
    fit = fit_exact_weights(z, y)
    assert fit.converged and fit.gap < 1e-6
    assert np.all(fit.weights >= 0) and fit.weights.sum() == pytest.approx(1.0)
    # analytic gradient = finite differences
    w = rng.dirichlet(np.ones(K))
    _, g = nll_and_grad(w, z.astype(np.float64), y)
    eps = 1e-6
    num = [
        (nll_and_grad(w + eps * e, z.astype(np.float64), y)[0] - nll_and_grad(w - eps * e, z.astype(np.float64), y)[0])
        / (2 * eps)
        for e in np.eye(K)
    ]
    np.testing.assert_allclose(g, num, atol=1e-7)
    # no simplex point beats it: the rules, the corners, random points
    others = [
        weight_rule("uniform", TRAIN_LOSSES),
        weight_rule("geometric", TRAIN_LOSSES),
        *np.eye(K),
        *rng.dirichlet(np.ones(K), size=200),
    ]
    assert fit.nll <= score_candidates(np.array(others), z, y)[0].min() + 1e-12
    assert fit.weights[0] == fit.weights.max()  # the branch with the strongest signal weighs most


def test_exact_fit_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        fit_exact_weights(np.zeros((2, 5, 3)), np.zeros(4, np.int64))


# -- errors before any Ray work --------------------------------------------------------------------------------
def test_missing_logits_name_the_branch(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    write_fake_run(storage)
    storage.remove("branches/2/logits_val.npy")
    cfg = tiny_config(storage.uri, **{"ensemble.weights": "tuned"})
    with pytest.raises(EnsembleInputError, match=r"branch 2: .*logits_val\.npy is missing"):
        tune_ensemble_weights(cfg, storage)


def test_branches_with_different_validation_row_orders_are_refused(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    write_fake_run(storage)
    rows = np.load(io.BytesIO(storage.read_bytes("branches/3/rows_val.npy")))
    storage.write_bytes("branches/3/rows_val.npy", npy(rows[::-1].copy()))  # same rows, another order
    cfg = tiny_config(storage.uri)
    with pytest.raises(EnsembleInputError, match="branch 3: idx mismatch with branch 0"):
        tune_ensemble_weights(cfg, storage)


# -- the Tune search against a real Ray ----------------------------------------------------------------------
def check_tuned_against_references(storage: RunStorage, tuned, num_samples: int) -> None:
    w = np.asarray(tuned.weights)
    assert tuned.method == "tuned"
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    assert tuned.extra["trials"] == num_samples and tuned.extra["errored_trials"] == 0
    exact = storage.read_json("ensemble/exact.json")
    assert exact["method"] == "exact" and exact["converged"]
    assert tuned.val["nll"] >= exact["val_nll"] - 1e-9  # nothing on the simplex beats the exact fit
    assert tuned.val["nll"] <= exact["val_nll"] * (1 + NLL_TOLERANCE_PCT / 100)
    assert tuned.extra["val_nll_gap_pct"] == pytest.approx(100 * (tuned.val["nll"] / exact["val_nll"] - 1))
    # (0.2 accuracy points is under one row of this tiny validation split: not asserted here)
    assert tuned.extra["val_acc_gap_points"] == pytest.approx(100 * (tuned.val["acc"] - exact["val_acc"]))
    losses = np.array(TRAIN_LOSSES)
    for rule in ("uniform", "geometric"):
        ref = evaluate_ensemble(storage, K, rule, weight_rule(rule, losses))
        assert exact["val_nll"] <= ref.val["nll"]
        assert tuned.val["nll"] <= ref.val["nll"] + 1e-9  # the rules were the search's first trials


@pytest.mark.slow  # Ray Tune trials on the session's Ray
def test_tune_search_lands_near_the_exact_fit(ray_session, tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    write_fake_run(storage)
    cfg = tiny_config(storage.uri, **{"tune.num_samples": 8})
    tuned = tune_ensemble_weights(cfg, storage)
    check_tuned_against_references(storage, tuned, 8)
    experiment = storage.ls("tune/weights/experiment")
    assert sum(name.startswith("trial_") for name in experiment) == 8
    assert any(name.startswith("experiment_state") for name in experiment)


@pytest.mark.slow  # Ray Tune trials on the session's Ray
def test_tune_search_keeps_its_storage_on_s3(ray_session, s3_endpoint):
    storage = RunStorage(f"s3://test-bucket/{uuid.uuid4().hex}", endpoint_url=s3_endpoint)
    write_fake_run(storage, seed=3)
    cfg = tiny_config(storage.uri, **{"storage.endpoint_url": s3_endpoint, "tune.num_samples": 6})
    tuned = tune_ensemble_weights(cfg, storage)
    check_tuned_against_references(storage, tuned, 6)
    assert tuned.extra["experiment"].startswith("s3://test-bucket/")
    names = storage.ls("tune/weights/experiment")
    assert sum(name.startswith("trial_") for name in names) == 6
    assert any(name.startswith("experiment_state") for name in names)


TUNE_CHATTER = ("Configuration for experiment", "View detailed results here", "tensorboard --logdir")


@pytest.mark.slow  # Ray Tune trials on the session's Ray
def test_cli_tune_weights_needs_only_the_storage_uri(ray_session, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # Ray's default; the CLI changes it, monkeypatch restores it
    storage = RunStorage(str(tmp_path / "run"))
    write_fake_run(storage)
    capfd.readouterr()
    assert cli.main(["tune-weights", "--storage", storage.uri, "--set", "tune.num_samples=5"]) == 0
    out, err = capfd.readouterr()
    assert not [line for line in TUNE_CHATTER if line in out + err], out + err  # quiet by default: Tune's box, path
    assert "tuned" in out  # our own report table is there
    chosen = storage.read_json("ensemble/weights.json")
    assert chosen["method"] == "tuned" and len(chosen["weights"]) == K
    for key in ("val_acc", "val_nll", "test_acc", "test_nll"):
        assert np.isfinite(chosen[key])
    report = storage.read_json("report/report.json")
    assert [e["method"] for e in report["ensembles"]] == ["uniform", "geometric", "tuned", "exact"]
    assert report["chosen_ensemble"] == "tuned"
    md = storage.read_bytes("report/report.md").decode()
    assert "(tuned)" in md and "(exact)" in md
    assert cli.main(["-v", "tune-weights", "--storage", storage.uri, "--set", "tune.num_samples=1"]) == 0
    out, err = capfd.readouterr()
    assert all(line in out + err for line in TUNE_CHATTER), out + err  # -v: Tune's own output is back


@pytest.mark.slow
def test_spectral_run_with_tuned_weights(finished_job):
    cfg, result = finished_job  # api.run with ensemble.weights=tuned (tests/conftest.py)
    storage = RunStorage.from_config(cfg.storage)
    assert result.report["chosen_ensemble"] == "tuned"
    methods = {e["method"]: e for e in result.report["ensembles"]}
    assert set(methods) == {"uniform", "geometric", "tuned", "exact"}
    assert methods["exact"]["val_nll"] <= min(methods[m]["val_nll"] for m in ("uniform", "geometric", "tuned")) + 1e-9
    assert storage.read_json("ensemble/weights.json")["method"] == "tuned"
