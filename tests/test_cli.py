"""`spectral split` through the CLI entry point: summary table, idempotence, conflicts, clear errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from data_split import RunStorage, layout, load_manifest
from orchestrator.cli import main


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "source": {
                    "name": "synthetic",
                    "synthetic": {"train": 300, "test": 100, "height": 8, "width": 8, "classes": 4},
                },
                "split": {"rows": 2, "cols": 2, "images_per_task": 150},
            }
        )
    )
    return str(path)


def test_split_prints_a_summary_and_is_idempotent(ray_session, config_file, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich: a wide table, no wrapped headers
    uri = str(tmp_path / "run")
    assert main(["split", "--config", config_file, "--storage", uri]) == 0
    out, err = capfd.readouterr()
    assert (
        "Dataset" not in out + err
    )  # quiet by default: none of Ray Data's INFO lines ("Starting execution of Dataset")
    for header in ("split", "branch", "rows", "bytes", "seconds", "images/s"):
        assert header in out
    assert "400 images" in out  # the total row: 300 train (incl. val) + 100 test
    # progress off a terminal, on stderr: the first task's count (150 or 100 of 3 tasks), then the last
    counts = [line.split(" images")[0] for line in err.splitlines() if line.startswith("split: ")]
    assert counts[0] in ("split: 100 / 400", "split: 150 / 400") and counts[-1] == "split: 400 / 400", err
    assert "split: " not in out
    manifest = load_manifest(RunStorage(uri))
    assert manifest.K == 4
    # bytes per branch and their ratio to the raw images: each of the K=4 branches holds about 1/4
    total_row = next(line for line in out.splitlines() if "400 images" in line)
    stored = sum(e.bytes for b in manifest.branches for e in b.splits.values())
    want = f"{stored / sum(manifest.raw_bytes.values()):.3f}"
    assert want in total_row and "stored as uint8" in out
    train0 = next(line for line in out.splitlines() if [c.strip() for c in line.split("│")[1:3]] == ["train", "0"])
    ratio0 = manifest.branches[0].splits["train"].bytes / manifest.raw_bytes["train"]
    assert f"{ratio0:.3f}" in train0 and ratio0 < 0.6

    assert main(["split", "--config", config_file, "--storage", uri]) == 0
    out, err = capfd.readouterr()
    assert "up to date" in out and "split: " not in err  # nothing written, nothing counted

    # another configuration on the same URI: refused, named, nothing overwritten
    assert main(["split", "--config", config_file, "--storage", uri, "--set", "split.transform=haar"]) == 1
    out, err = capfd.readouterr()
    assert "SplitConflictError" in err and "--overwrite" in err and "error:" not in out  # errors: stderr only
    assert load_manifest(RunStorage(uri)).split.transform == "dct"

    assert (
        main(["split", "--config", config_file, "--storage", uri, "--set", "split.transform=haar", "--overwrite"]) == 0
    )
    assert load_manifest(RunStorage(uri)).split.transform == "haar"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "split.rowz=2"], "split.rowz"),
        (["--set", "split.rows=two"], "split.rows"),
        (["--set", "split.transform=wavelet"], "wavelet"),
        (["--set", "noequals"], "KEY=VALUE"),
    ],
)
def test_bad_configuration_is_one_clear_error_line(config_file, tmp_path, capsys, args, message):
    assert main(["split", "--config", config_file, "--storage", str(tmp_path / "run"), *args]) == 1
    out, err = capsys.readouterr()
    assert "error:" in err and message in err and out == ""
    assert not (tmp_path / "run").exists()  # failed before touching storage


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_train_evaluate_and_baseline_commands(ray_session, config_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    uri = str(tmp_path / "run")
    common = [
        "--config",
        config_file,
        "--storage",
        uri,
        "--set",
        "model.name=fc4",
        "--set",
        "train.epochs=1",
        "--set",
        "split.rows=1",
    ]  # K = 2: fewer branches, the same commands
    storage = RunStorage(uri)

    # train before split: exit code 1 and one line naming what is missing, no traceback
    assert main(["train", *common]) == 1
    out, err = capsys.readouterr()
    assert len(error_lines(err)) == 1 and "manifest" in error_lines(err)[0] and "Traceback" not in err
    assert not storage.exists("config.yaml")  # nothing kept of a run that did not start

    assert main(["split", *common]) == 0
    assert main(["train", *common]) == 0
    assert "trained 2 branch(es), skipped 0 finished" in capsys.readouterr().out
    assert all(storage.exists(f"branches/{k}/result.json") for k in range(2))
    assert not storage.exists("report/report.json")  # train trains, nothing more

    assert main(["evaluate", *common]) == 0
    out = capsys.readouterr().out
    report = storage.read_json("report/report.json")
    assert report["baseline"] is None and [b["k"] for b in report["branches"]] == [0, 1]
    assert "branch 1" in out and storage.url("report", "report.md") in out

    assert main(["baseline", *common]) == 0
    out = capsys.readouterr().out
    baseline = storage.read_json("baseline/branches/0/result.json")
    assert f"baseline fc4: test accuracy {baseline['test_acc']:.4f}" in out
    assert load_manifest(storage.child("baseline")).K == 1  # full resolution
    # its TensorBoard run beside the branches' (`tensorboard --logdir <run>`), an event per epoch
    assert storage.child("baseline").exists("branches/0/tensorboard/events.out.tfevents.0.spectral")
    assert storage.child("baseline").read_bytes("branches/0/tensorboard/events.out.tfevents.0.spectral").count(
        b"val_acc"
    ) == len(layout.read_metrics(storage.child("baseline"), 0))
    report = storage.read_json("report/report.json")  # rebuilt with the baseline row
    assert report["baseline"]["test_acc"] == baseline["test_acc"]
    assert "fc4 (full resolution)" in out.split("baseline fc4:")[1]  # the report table printed after has the row
    assert "fc4 (full resolution)" in storage.read_bytes("report/report.md").decode()


@pytest.mark.slow
def test_a_diverged_run_exits_1_with_one_error_line_naming_each_branch(
    ray_session, config_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")
    uri = str(tmp_path / "run")
    # The run: SGD at lr 10000. Every branch's loss becomes NaN within a few steps.
    common = [
        "--config",
        config_file,
        "--storage",
        uri,
        "--set",
        "model.name=fc4",
        "--set",
        "train.epochs=2",
        "--set",
        "split.rows=1",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.lr=10000",
    ]
    assert main(["run", *common]) == 1
    out = capsys.readouterr().err
    assert len(error_lines(out)) == 1, out
    line = error_lines(out)[0]
    assert line.startswith("error: BranchFailedError: 2 branch(es) failed: branch 0: "), line
    # the loss turns NaN/inf within the epoch, or the weights do and the validation logits show it
    what = r"non-finite (training loss \((nan|inf)\) at step \d+|validation logits in \d+ of \d+ rows)"
    assert re.search(rf"branch 0 diverged at epoch 1: {what}", line), line
    assert "branch 1 diverged at epoch 1" in line
    assert "Traceback" not in out
    storage = RunStorage(uri)
    assert not any(storage.exists(f"branches/{k}/logits_{s}.npy") for k in (0, 1) for s in ("val", "test"))
    assert not storage.exists("report/report.json")  # no report of a failed run


def poison_first_row(storage: RunStorage, k: int) -> None:
    """Make one training image of branch ``k`` NaN (float32 storage): its loss goes NaN in epoch 1, no other's does."""
    import io

    import numpy as np
    import pyarrow.parquet as pq

    from data_split.parquet import shard_bytes
    from data_split.shards import table_arrays

    manifest = load_manifest(storage)
    rel = manifest.branches[k].splits["train"].files[0]
    idx, src, y, x = table_arrays(
        pq.read_table(io.BytesIO(storage.read_bytes(rel))), manifest.split.shape, "float32", rel
    )
    x = x.copy()
    x.flat[0] = np.nan
    storage.write_bytes(rel, shard_bytes(idx, src, y, x))  # the same file, one value NaN


@pytest.mark.slow
def test_skip_branch_finishes_the_run_without_the_diverged_branch(
    ray_session, config_file, tmp_path, capsys, monkeypatch
):
    from inference import load_ensemble

    monkeypatch.setenv("COLUMNS", "200")
    uri = str(tmp_path / "run")
    common = [
        "--config",
        config_file,
        "--storage",
        uri,
        "--set",
        "model.name=fc4",
        "--set",
        "train.epochs=2",
        "--set",
        "split.rows=1",
        "--set",
        "split.dtype=float32",
    ]  # K = 2
    assert main(["split", *common]) == 0
    storage = RunStorage(uri)
    poison_first_row(storage, 1)
    capsys.readouterr()
    assert main(["run", *common, "--set", "train.on_nonfinite=skip_branch", "--set", "ensemble.weights=geometric"]) == 0
    out = capsys.readouterr().out
    record = storage.read_json("branches/1/diverged.json")
    assert record["epoch"] == 1 and record["step"] >= 1
    assert "skipped 1 diverged" in out
    assert f"skipped branch 1: diverged at epoch 1, step {record['step']}: branch 1 diverged at epoch 1" in out, out
    for name in ("weights.json", "uniform.json", "geometric.json"):  # every ensemble: exactly the surviving branch
        weights = storage.read_json(f"ensemble/{name}")
        assert weights["branches"] == [0] and weights["skipped_branches"] == [1], (name, weights)
        assert weights["weights"] == [1.0, 0.0]
    report = storage.read_json("report/report.json")
    assert [b["k"] for b in report["branches"]] == [0] and report["missing_branches"] == []
    assert [(d["k"], d["epoch"], d["step"]) for d in report["skipped_branches"]] == [(1, 1, record["step"])]
    md = storage.read_bytes("report/report.md").decode()
    assert "**Skipped branches**" in md and f"branch 1: diverged at epoch 1, step {record['step']}" in md
    assert report["ensembles"][0]["test_acc"] == pytest.approx(storage.read_json("branches/0/result.json")["test_acc"])
    model = load_ensemble(RunStorage(uri))  # export/predict/serve load this: branch 0 alone
    assert model.info.branches == [0] and len(model.branches) == 1


# -- conventions: streams, options, help; no Ray ------------------------------------------------------
def test_a_config_error_is_on_stderr_before_ray_is_imported(tmp_path):
    """`spectral run --config nope.yaml`: one error line on stderr, nothing on stdout, exit 1, and none of the
    heavy libraries imported (Ray, torch, scipy: what made this error take seconds), not timed: a CPU limit here
    failed on a slower machine."""
    import subprocess
    import sys

    heavy = ("ray", "torch", "scipy", "pyarrow.dataset", "matplotlib")
    code = (
        "import sys; from orchestrator.cli import main; code = main(['run', '--config', 'nope.yaml']); "
        f"print([m for m in {heavy!r} if m in sys.modules], file=sys.stderr); sys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "error: ConfigError: config file nope.yaml does not exist" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[]"  # none of them was imported


def test_verbose_goes_before_or_after_the_command_and_version_prints(capsys):
    from orchestrator.cli_args import build_parser, version

    parser = build_parser()
    for argv, total in (
        (["-v", "run"], 1),
        (["run", "-v"], 1),
        (["-v", "run", "-vv"], 3),
        (["export", "--storage", "x", "--output", "y", "-v"], 1),
    ):
        args = parser.parse_args(argv)
        assert args.verbose + args.verbose_after == total, argv
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"spectral {version()}" and re.fullmatch(r"\d+\.\d+\.\d+.*", version()) and err == ""


@pytest.mark.parametrize("command", ["export", "predict", "serve", "resume", "status"])
def test_storage_is_required_where_no_default_makes_sense(command, capsys):
    if command in ("resume", "status"):  # a usage error (argparse: exit 2)
        with pytest.raises(SystemExit) as stop:
            main([command])
        assert stop.value.code == 2
    else:  # a run's URI may also come from --config/--set storage.uri; the default is never assumed
        extra = (
            ["--output", "x", "--input", "y"]
            if command == "predict"
            else ["--output", "x"]
            if command == "export"
            else []
        )
        assert main([command, *extra]) == 1
    out, err = capsys.readouterr()
    assert "--storage" in err and out == ""


def test_weights_lists_its_choices_and_options_exist_only_where_they_act(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--storage", "runs/x", "--output", "m.pt2", "--weights", "best"])
    err = capsys.readouterr().err
    assert "invalid choice: 'best'" in err and "chosen" in err and "geometric" in err and "exact" in err
    for command in ("train", "evaluate", "baseline", "tune-weights"):  # nothing to overwrite there
        with pytest.raises(SystemExit):
            main([command, "--storage", "runs/x", "--overwrite"])
        assert "unrecognized arguments: --overwrite" in capsys.readouterr().err


def test_every_subcommand_help_ends_with_examples(capsys):
    from orchestrator.cli_args import EXAMPLES, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "examples:\n" in out and EXAMPLES[name][0] in out, name


def test_config_prints_the_resolved_configuration_as_yaml_that_loads_back(config_file, capsys):
    from orchestrator.config import load_config

    assert (
        main(
            [
                "config",
                "--config",
                config_file,
                "--set",
                "train.epochs=3",
                "--set",
                "storage.secret_access_key=hush-hush-secret",
                "--set",
                "storage.access_key_id=AKIDEXAMPLE",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "hush-hush-secret" not in out + err and "AKIDEXAMPLE" not in out + err
    assert "\n  # training epochs of every branch" in out  # every key under its meaning
    parsed = yaml.safe_load(out)
    assert parsed["train"]["epochs"] == 3 and parsed["source"]["name"] == "synthetic"
    assert parsed["storage"]["secret_access_key"] is None
    want = load_config(config_file, {"train.epochs": 3})
    assert load_config(None, {k: v for k, v in parsed.items()}) == want  # every key: the same config back


def test_completion_scripts_complete_commands_options_choices_and_paths(capsys, tmp_path):
    """`spectral completion bash`, sourced into a real bash and asked what completes a few command lines."""
    import shutil
    import subprocess

    assert main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert zsh.startswith("#compdef spectral") and "tune-weights" in zsh and "--skip-bad" in zsh
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "spectral.bash"
    script.write_text(capsys.readouterr().out)
    if shutil.which("bash") is None:
        pytest.skip("no bash to source the script into")
    (tmp_path / "fm.yaml").write_text("{}\n")

    def completions(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in ("spectral", *words))
        ask = f"COMP_WORDS=({line}); COMP_CWORD={len(words)}; _shtab_spectral"
        code = f'source {script}; {ask}; printf "%s\\n" "${{COMPREPLY[@]}}"'
        proc = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30, check=True)
        return sorted(filter(None, proc.stdout.splitlines()))

    assert completions("t") == ["train", "tune-weights"]
    assert {"--skip-bad", "--storage", "--set"} <= set(completions("predict", "--s"))
    assert completions("export", "--weights", "ge") == ["geometric"]
    assert completions("completion", "") == ["bash", "tcsh", "zsh"]
    assert completions("run", "--config", str(tmp_path / "fm")) == [str(tmp_path / "fm.yaml")]
