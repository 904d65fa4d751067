"""`spectral split` through the CLI entry point: summary table, idempotence, conflicts, clear errors."""

from __future__ import annotations

import pytest
import yaml

from data_split import RunStorage
from orchestrator.cli import main


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"name": "synthetic", "synthetic": {"train": 300, "test": 100, "height": 8, "width": 8, "classes": 4}},
        "split": {"rows": 2, "cols": 2, "images_per_task": 150},
    }))
    return str(path)


def test_split_prints_a_summary_and_is_idempotent(ray_session, config_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich: a wide table, no wrapped headers
    uri = str(tmp_path / "run")
    assert main(["split", "--config", config_file, "--storage", uri]) == 0
    out = capsys.readouterr().out
    for header in ("split", "branch", "rows", "bytes", "seconds", "images/s"):
        assert header in out
    assert "400 images" in out  # the total row: 300 train (incl. val) + 100 test
    manifest = RunStorage(uri).read_json("data/manifest.json")
    assert manifest["split"]["K"] == 4
    # bytes per branch and their ratio to the raw images: each of the K=4 branches holds about 1/4
    total_row = next(line for line in out.splitlines() if "400 images" in line)
    stored = sum(e["bytes"] for b in manifest["branches"] for e in b["splits"].values())
    want = f"{stored / sum(manifest['raw_bytes'].values()):.3f}"
    assert want in total_row and "stored as uint8" in out
    train0 = next(line for line in out.splitlines() if [c.strip() for c in line.split("│")[1:3]] == ["train", "0"])
    ratio0 = manifest["branches"][0]["splits"]["train"]["bytes"] / manifest["raw_bytes"]["train"]
    assert f"{ratio0:.3f}" in train0 and ratio0 < 0.6

    assert main(["split", "--config", config_file, "--storage", uri]) == 0
    assert "up to date" in capsys.readouterr().out

    # another configuration on the same URI: refused, named, nothing overwritten
    assert main(["split", "--config", config_file, "--storage", uri, "--set", "split.transform=haar"]) == 1
    out = capsys.readouterr().out
    assert "SplitConflictError" in out and "--overwrite" in out
    assert RunStorage(uri).read_json("data/manifest.json")["split"]["transform"] == "dct"

    assert main(["split", "--config", config_file, "--storage", uri, "--set", "split.transform=haar", "--overwrite"]) == 0
    assert RunStorage(uri).read_json("data/manifest.json")["split"]["transform"] == "haar"


@pytest.mark.parametrize("args,message", [
    (["--set", "split.rowz=2"], "split.rowz"),
    (["--set", "split.rows=two"], "split.rows"),
    (["--set", "split.transform=wavelet"], "wavelet"),
    (["--set", "noequals"], "KEY=VALUE"),
])
def test_bad_configuration_is_one_clear_error_line(config_file, tmp_path, capsys, args, message):
    assert main(["split", "--config", config_file, "--storage", str(tmp_path / "run"), *args]) == 1
    out = capsys.readouterr().out
    assert "error:" in out and message in out
    assert not (tmp_path / "run").exists()  # failed before touching storage
