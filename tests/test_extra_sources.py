"""extra_sources through the real pipeline (local Ray): rows, src column, values, manifest, errors.

Site A: 8x8 IDX images (the main source). Site B: other images that exist only as 2x2 box averages
rounded to uint8 (4x4 IDX files), kept here at full resolution too so that values can be checked
against the truth. Split haar2 4x4: site B feeds the coarse pyramid level, branches 0, 1, 4, 5.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from data_split import (
    ExtraSourceConfig,
    RunStorage,
    SourceConfig,
    SplitConfig,
    load_manifest,
    read_branch,
    split_dataset,
)
from data_split.multires import fed_branches
from data_split.pipeline import MANIFEST
from data_split.transforms import spectral_components, split_matrix
from fixtures_formats import write_mnist_files

N_A, N_A_TEST, N_B = 60, 20, 40
FED = [0, 1, 4, 5]


def box_average_u8(x: np.ndarray, fr: int, fc: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, H/fr, W/fc) uint8: what a lower-resolution site stores."""
    n, h, w = x.shape
    return np.round(x.reshape(n, h // fr, fr, w // fc, fc).mean(axis=(2, 4))).astype(np.uint8)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("sites")
    a = {
        "train": (rng.integers(0, 256, (N_A, 8, 8), dtype=np.uint8), rng.integers(0, 10, N_A).astype(np.uint8)),
        "test": (
            rng.integers(0, 256, (N_A_TEST, 8, 8), dtype=np.uint8),
            rng.integers(0, 10, N_A_TEST).astype(np.uint8),
        ),
    }
    b_full = rng.integers(0, 256, (N_B, 8, 8), dtype=np.uint8)
    b = {
        "train": (box_average_u8(b_full, 2, 2), rng.integers(0, 10, N_B).astype(np.uint8)),
        "test": (np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.uint8)),
    }  # site B's test split is never used
    write_mnist_files(root / "a", a, gz=False)
    write_mnist_files(root / "b", b, gz=False)
    return root, a, b, b_full


def _cfgs(root, transform="haar2", rows=4, cols=4, **extra):
    source = SourceConfig(name="mnist", root=str(root / "a"))
    split = SplitConfig(rows=rows, cols=cols, transform=transform, val_fraction=0.25, images_per_task=25)
    return source, split, [ExtraSourceConfig(name="mnist", root=str(root / "b"), **extra)]


@pytest.fixture(scope="module")
def written(ray_session, sites, tmp_path_factory):
    root = sites[0]
    storage = RunStorage(str(tmp_path_factory.mktemp("multires") / "run"))
    source, split, extra = _cfgs(root)
    result = split_dataset(source, split, storage, extra_sources=extra)
    return storage, result.manifest


def test_manifest_sources_and_rows_by_source(written):
    storage, m = written
    main, b = m.sources
    assert (main.src, main.resolution, main.branches) == (0, [8, 8], list(range(16)))
    assert (b.src, b.resolution, b.factors, b.branches) == (1, [4, 4], [2, 2], FED)
    assert b.counts == {"train": N_B}
    assert main.nodes and b.nodes  # the Ray node ids whose tasks read them
    n_val = round(0.25 * N_A)
    for k, branch in enumerate(m.branches):
        train = branch.splits["train"]
        want = {"0": N_A - n_val, **({"1": N_B} if k in FED else {})}
        assert train.rows_by_source == want and train.rows == sum(want.values())
        assert branch.splits["val"].rows_by_source == {"0": n_val}  # the main source alone
        assert branch.splits["test"].rows_by_source == {"0": N_A_TEST}
        assert any("src1" in f for f in train.files) == (k in FED)
    # what is on disk reads back as the same manifest, and writes back as the same JSON
    assert load_manifest(storage) == m and m.to_json() == storage.read_json(MANIFEST)


def test_branch_values_from_lowres_rows(written, sites):
    """Site B's rows equal the branches of its full-resolution originals up to the files' rounding
    (sum_p |T[k, p]| * 0.5/255) plus the storage's uint8 quantisation (half a code step)."""
    storage, m = written
    _, _, b, b_full = sites
    t = split_matrix("haar2", 4, 4)
    truth = spectral_components(b_full[:, None].astype(np.float64) / 255, 4, 4, t)  # (N_B, 16, 1, 2, 2)
    for k in FED:
        data = read_branch(storage, m, "train", k)
        from_b = data.src == 1
        assert from_b.sum() == N_B and np.array_equal(np.sort(data.idx[from_b]), np.arange(N_B))
        bound = np.abs(t[k]).sum() * 0.5 / 255 + 0.5 * m.branches[k].scale[0] + 1e-6
        np.testing.assert_allclose(data.values()[from_b], truth[data.idx[from_b], k], rtol=0, atol=bound)
        np.testing.assert_array_equal(data.y[from_b], b["train"][1][data.idx[from_b]])
    assert not (read_branch(storage, m, "train", 2).src == 1).any()  # a branch site B cannot determine


def test_wrong_resolution_is_an_error_naming_the_source(ray_session, sites, tmp_path):
    root = sites[0]
    source, split, extra = _cfgs(root, transform="dct", rows=2, cols=1)  # 4x4 is not (8/fr, 8/fc) with fr | 2, fc | 1
    storage = RunStorage(str(tmp_path / "run"))
    with pytest.raises(
        ValueError,
        match=r"extra_sources\[0\] \(mnist at .*/b\) has resolution 4x4.*8x8 \(fr=1, fc=1\), 4x8 \(fr=2, fc=1\)",
    ):
        split_dataset(source, split, storage, extra_sources=extra)
    assert not (tmp_path / "run").exists()


def test_source_that_feeds_nothing_is_an_error(ray_session, sites, tmp_path):
    source, split, extra = _cfgs(sites[0], transform="identity", rows=2, cols=2)
    assert fed_branches(split_matrix("identity", 2, 2), 2, 2, 2, 2) == []
    with pytest.raises(ValueError, match=r"extra_sources\[0\].*feeds no branch"):
        split_dataset(source, split, RunStorage(str(tmp_path / "run")), extra_sources=extra)
    assert not (tmp_path / "run").exists()


def test_resource_no_node_has_fails_fast(ray_session, sites, tmp_path):
    source, split, extra = _cfgs(sites[0], resources={"site_b": 1})
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"extra_sources\[0\].*site_b"):
        split_dataset(source, split, RunStorage(str(tmp_path / "run")), extra_sources=extra)
    assert time.monotonic() - t0 < 30  # a check of the cluster's resources, not a timeout on a pending task
    assert not (tmp_path / "run").exists()


def test_sources_by_branches_table(written):
    from rich.console import Console

    from orchestrator.summaries import sources_table

    console = Console(width=200, record=True)
    console.print(sources_table(written[1]).rich())
    text = console.export_text()
    cells = lambda name: re.search(rf"{name} *│(.*)│", text)[1].replace(" ", "").split("│")  # noqa: E731
    n_train = N_A - round(0.25 * N_A)
    assert cells("mnist 8x8")[:16] == [str(n_train)] * 16
    assert cells("mnist 4x4")[:16] == [str(N_B) if k in FED else "-" for k in range(16)]


@pytest.mark.slow
def test_cli_run_prints_sources_by_branches_and_reports_per_branch(ray_session, sites, tmp_path, capsys, monkeypatch):
    """`spectral run` with an extra source: the split's sources-by-branches table, training on the extra
    rows of the branches it feeds (dct 2x2: branch 0 only), and the report's per-branch section."""
    import yaml

    from orchestrator.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    root = sites[0]
    config = tmp_path / "multires.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"name": "mnist", "root": str(root / "a")},
                "extra_sources": [{"name": "mnist", "root": str(root / "b")}],
                "split": {"rows": 2, "cols": 2, "transform": "dct", "val_fraction": 0.25, "images_per_task": 100},
                "model": {"name": "fc4"},
                "train": {"epochs": 1, "batch_size": 32},
                "ensemble": {"weights": "uniform"},
                "ray": {"num_cpus": 2},
            }
        )
    )
    uri = str(tmp_path / "run")
    assert main(["run", "--config", str(config), "--storage", uri]) == 0
    out = capsys.readouterr().out
    n_train = N_A - round(0.25 * N_A)
    table = out[out.index("train rows by source and branch") :]
    cells = lambda name: re.search(rf"{name} *│(.*)│", table)[1].replace(" ", "").split("│")  # noqa: E731
    assert cells("mnist 8x8")[:4] == [str(n_train)] * 4
    assert cells("mnist 4x4")[:4] == [str(N_B), "-", "-", "-"]
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    section = report[report.index("## Branches by source") :]
    assert f"| 0 | 0: mnist 8x8 ({n_train}); 1: mnist 4x4 ({N_B}) | {n_train + N_B} |" in section
    assert f"| 1 | 0: mnist 8x8 ({n_train}) | {n_train} |" in section
