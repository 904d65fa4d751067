"""SpectralEnsemble / load_ensemble and `spectral export`: the trained run as one module, and as one file."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from branches import ModelConfig, build_model
from data_split import RunStorage, load_manifest, make_source, read_branch, spectral_components, transform_matrix
from data_split.quantize import affine_params, decode, encode
from inference import EnsembleLoadError, SpectralEnsemble, load_ensemble
from inference.predict import folder_labels
from orchestrator.cli import main

PROJECT_PACKAGES = ("inference", "data_split", "branches", "orchestrator", "tune")


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
def test_forward_is_split_then_storage_then_normalise_then_weighted_branches(dtype):
    """By hand on random data: T (haar, 2x2), the dtype's round trip, (s - mean) / std, linear branches, weights."""
    torch.manual_seed(0)
    t = transform_matrix("haar", 4)
    mean, std = np.random.default_rng(0).uniform(0.1, 0.5, (2, 4, 3)).astype(np.float32)  # (K, C) each, C=3
    codec = affine_params(t, 3)
    offset, scale = (np.asarray([c[f] for c in codec], np.float32) for f in ("offset", "scale"))
    branches = [nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 3, 5)) for _ in range(4)]
    w = [0.1, 0.2, 0.3, 0.4]
    model = SpectralEnsemble(
        rows=2,
        cols=2,
        matrix=t,
        dtype=dtype,
        mean=mean,
        std=std,
        branches=branches,
        weights=w,
        offset=offset,
        scale=scale,
    )
    x = torch.rand(6, 3, 4, 6)  # (N, C, H, W)
    s = spectral_components(x.numpy(), 2, 2, t.astype(np.float32))  # (N, K, C, 2, 3), numpy: the split's own path
    expected = 0
    for k in range(4):
        if dtype == "uint8":
            v = decode(encode(s[:, k], "uint8", offset[k], scale[k]), "uint8", offset[k], scale[k])
        else:
            v = s[:, k].astype(dtype).astype(np.float32)
        v = (v - mean[k].reshape(-1, 1, 1)) / std[k].reshape(-1, 1, 1)
        with torch.no_grad():
            expected = expected + w[k] * branches[k](torch.from_numpy(v)).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), expected, rtol=0, atol=1e-4)


def test_packed_ensemble_equals_the_branches_one_by_one():
    torch.manual_seed(0)
    t = transform_matrix("dct", 4)
    mean, std = np.zeros((4, 1), np.float32), np.ones((4, 1), np.float32)
    branches = [build_model(ModelConfig(name="fc8"), (1, 2, 2), 3).eval() for _ in range(4)]
    for b in branches:  # running statistics that are not the identity
        for m in b.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    common = dict(rows=2, cols=2, matrix=t, dtype="float32", mean=mean, std=std, weights=[0.1, 0.2, 0.3, 0.4])
    packed = SpectralEnsemble(**common, branches=branches)
    alone = SpectralEnsemble(**common, branches=branches, packed=False)
    assert packed.packed is not None and alone.packed is None
    x = torch.rand(9, 1, 4, 4)
    with torch.no_grad():
        np.testing.assert_allclose(packed.branch_logits(x).numpy(), alone.branch_logits(x).numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(packed(x).numpy(), alone(x).numpy(), rtol=0, atol=1e-5)


def test_folder_names_that_label_images():
    labels = folder_labels(["T-shirt/top", "Trouser"])
    assert labels["T-shirt/top"] == labels["T-shirt-top"] == labels["T-shirt_top"] == labels["0"] == 0
    assert labels["Trouser"] == labels["1"] == 1 and "trouser" not in labels


def test_a_branch_trained_from_pretrained_weights_loads_without_the_weights_file(tmp_path, monkeypatch):
    from dataclasses import asdict

    from branches.checkpoint import save_checkpoint
    from inference.model import _final_branch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no weights file anywhere
    cfg = ModelConfig(name="resnet18", pretrained="IMAGENET1K_V1")
    trained = build_model(ModelConfig(name="resnet18"), (1, 4, 4), 3)
    storage = RunStorage(str(tmp_path / "run"))
    rest = {"optimizer": {}, "scheduler": {}, "rng": {}, "train_config": {}, "history": []}  # unused here
    save_checkpoint(storage, 0, {"epoch": 1, "model": trained.state_dict(), "model_config": asdict(cfg), **rest})
    storage.write_json("branches/0/result.json", {"epochs": 1})
    model, name = _final_branch(storage, 0, (1, 4, 4), 3)
    assert name == "resnet18" and torch.equal(model.conv1.weight, trained.conv1.weight)


def raw_test_split(cfg) -> tuple[torch.Tensor, np.ndarray]:
    """The run's test split straight from the source: pixels (N, C, H, W) in [0, 1] as the split scaled them."""
    source = make_source(cfg.source)
    x, y = source.read("test", 0, source.count("test"))  # uint8 (N, C, H, W); idx order = the logits' row order
    return torch.from_numpy(x.astype(np.float32) * np.float32(1 / 255)), y


def stored_logits(storage: RunStorage, k: int) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(f"branches/{k}/logits_test.npy")))


@pytest.mark.slow
def test_ensemble_quantises_exactly_as_the_split_stored(trained_tiny_run):
    cfg = trained_tiny_run
    storage = RunStorage(cfg.storage.uri)
    manifest = load_manifest(storage)
    model = load_ensemble(RunStorage.from_config(cfg.storage))
    assert model.info.dtype == manifest.split.dtype == "uint8"  # the default storage: codes, not floats
    x, _ = raw_test_split(cfg)
    s = spectral_components(x, 2, 2, model.matrix)  # (N, K, C, h, w)
    for k in range(4):
        stored = read_branch(storage, manifest, "test", k).x.astype(np.int64)  # codes, rows in idx order
        codes = encode(s[:, k], "uint8", model.offset[k], model.scale[k]).numpy().astype(np.int64)
        diff = np.abs(codes - stored)
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3  # equal but for a float32 rounding tie, if any


@pytest.mark.slow
def test_ensemble_reproduces_the_runs_test_logits_and_accuracy(trained_tiny_run):
    cfg = trained_tiny_run
    storage = RunStorage(cfg.storage.uri)
    chosen = storage.read_json("ensemble/weights.json")
    model = load_ensemble(RunStorage.from_config(cfg.storage))
    x, y = raw_test_split(cfg)
    with torch.no_grad():
        per_branch = model.branch_logits(x).numpy()  # (K, N, classes)
        z = model(x).numpy()
    assert per_branch.shape == (4, len(y), 4)
    for k in range(4):  # each branch sees exactly what training fed it
        np.testing.assert_allclose(per_branch[k], stored_logits(storage, k), rtol=0, atol=1e-5)
    expected = np.tensordot(np.asarray(chosen["weights"]), np.stack([stored_logits(storage, k) for k in range(4)]), 1)
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-5)
    assert (z.argmax(1) == y).mean() == pytest.approx(chosen["test_acc"], abs=1e-12)
    assert model.info.method == chosen["method"] and model.info.test_acc == chosen["test_acc"]

    uniform = load_ensemble(RunStorage.from_config(cfg.storage), weights="uniform")
    assert uniform.info.weights == [0.25] * 4
    with torch.no_grad():
        np.testing.assert_allclose(uniform(x).numpy(), per_branch.mean(0), rtol=0, atol=1e-5)


def test_loading_and_running_the_ensemble_never_imports_dynamo(trained_tiny_run):
    """What a predict worker or a Serve replica does on start, in a fresh process: torch._dynamo (imported by a
    meta-device forward or an optimizer, seconds of CPU) stays out of it."""
    import os
    from pathlib import Path

    code = (
        "import sys, torch; from data_split import RunStorage; from inference import load_ensemble; "
        f"m = load_ensemble(RunStorage({trained_tiny_run.storage.uri!r})); "
        "i = m.info; z = m(torch.zeros(2, i.channels, i.height, i.width)); "
        "print(tuple(z.shape), 'torch._dynamo' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["(2,", "4)", "False"]


@pytest.mark.slow
def test_load_ensemble_names_what_is_missing(trained_tiny_run, tmp_path):
    with pytest.raises(EnsembleLoadError, match="nonesuch.json.*methods of this run: geometric, uniform"):
        load_ensemble(RunStorage.from_config(trained_tiny_run.storage), weights="nonesuch")
    with pytest.raises(EnsembleLoadError, match="expected 4 finite ensemble weights"):
        load_ensemble(RunStorage.from_config(trained_tiny_run.storage), weights=[1.0, 0.0])


# Runs in a fresh interpreter with -I (no PYTHONPATH, no user site), from a folder outside the repository,
# with every project package denied at import: the program must need torch only.
LOADER = textwrap.dedent("""
    import importlib.abc, json, sys
    class Deny(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {packages!r}:
                raise ImportError("project package " + name + " is denied here")
    sys.meta_path.insert(0, Deny())
    import numpy as np, torch
    model = torch.export.load(sys.argv[1]).module()
    x = torch.from_numpy(np.load(sys.argv[2]))
    out = {{}}
    for n in (1, 7, 1000):
        xb = x[torch.arange(n) % len(x)]
        out[n] = model(xb).tolist()
    leaked = [m for m in sys.modules if m.split(".")[0] in {packages!r}]
    print(json.dumps({{"logits": out, "leaked": leaked}}))
""").format(packages=PROJECT_PACKAGES)


@pytest.mark.slow
def test_export_loads_without_the_project_for_any_batch(trained_tiny_run, tmp_path, capsys):
    cfg = trained_tiny_run
    out = tmp_path / "models" / "model.pt2"
    assert main(["export", "--storage", cfg.storage.uri, "--output", str(out)]) == 0
    assert "model.pt2" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "models" / "model.pt2.json").read_text())
    chosen = RunStorage(cfg.storage.uri).read_json("ensemble/weights.json")
    assert sidecar["classes"] == ["0", "1", "2", "3"] and sidecar["input_shape"] == ["N", 1, 8, 8]
    assert sidecar["run"] == cfg.storage.uri and sidecar["test_acc"] == chosen["test_acc"]

    x, _ = raw_test_split(cfg)
    np.save(tmp_path / "x.npy", x.numpy())
    (tmp_path / "loader.py").write_text(LOADER)
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "loader.py"), str(out), str(tmp_path / "x.npy")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["leaked"] == []
    model = load_ensemble(RunStorage.from_config(cfg.storage))
    for n in (1, 7, 1000):
        got = np.asarray(result["logits"][str(n)], dtype=np.float32)
        assert got.shape == (n, 4)
        with torch.no_grad():
            want = model(x[torch.arange(n) % len(x)]).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_export_of_an_untrained_run_fails_and_writes_nothing(tiny_split, tmp_path, capsys):
    cfg, _ = tiny_split
    out = tmp_path / "model.pt2"
    assert main(["export", "--storage", cfg.storage.uri, "--output", str(out)]) == 1
    assert "branch 0 has not finished" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "model.pt2.json").exists()
