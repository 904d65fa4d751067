"""One error hierarchy: what a user can act on is a ``SpectralError``; each pickles; the CLI prints a
user's error as one line and a bug with its traceback. (Only transient storage errors are retried:
``RunStorage`` does it, tests/test_storage.py; the launcher retries no exception, only dead processes.)"""

from __future__ import annotations

import importlib
import pickle
import pkgutil

from data_split.errors import SpectralError
from data_split.storage import StorageError
from orchestrator import cli
from orchestrator.launcher import BranchFailedError

PACKAGES = ("data_split", "branches", "tune", "inference", "orchestrator")


def all_error_classes() -> list[type]:
    for package in PACKAGES:  # import every module, so every subclass is defined
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{info.name}")
    found, todo = [], [SpectralError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted({c for c in found if c.__module__.split(".")[0] in PACKAGES}, key=lambda c: c.__name__)


def test_every_error_class_derives_from_the_one_base_and_pickles():
    classes = all_error_classes()
    names = {c.__name__ for c in classes}
    assert {
        "ConfigError",
        "SourceError",
        "StorageError",
        "ManifestError",
        "SplitConflictError",
        "BranchConflictError",
        "BranchFailedError",
        "EnsembleInputError",
        "PlacementError",
        "ReportError",
        "SweepError",
        "WeightSearchError",
        "EnsembleLoadError",
        "PredictError",
        "BadInput",
        "LeaseHeldError",
        "DDPFailedError",
        "NonFiniteError",
    } <= names
    for cls in classes:
        error = cls({1: "FileNotFoundError: shard", 3: "boom"}) if cls is BranchFailedError else cls("what to fix")
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is cls and str(back) == str(error) and isinstance(back, SpectralError)


def test_branch_failure_keeps_its_per_branch_messages_across_pickling():
    back = pickle.loads(pickle.dumps(BranchFailedError({1: "x"})))  # raised AttributeError before
    assert back.failures == {1: "x"} and "branch 1: x" in str(back)


def test_cli_prints_a_users_error_as_one_line_and_a_bug_with_its_traceback(monkeypatch, capsys):
    def user_mistake(cfg, args):
        raise StorageError("cannot reach s3://bucket/run (endpoint http://127.0.0.1:1)")

    def bug(cfg, args):
        raise KeyError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "split", user_mistake)
    assert cli.main(["split"]) == 1
    stdout, out = capsys.readouterr()  # errors and tracebacks: stderr; stdout stays for results
    assert "error: StorageError: cannot reach s3://bucket/run" in out and "Traceback" not in out and stdout == ""
    assert cli.main(["-v", "split"]) == 1
    assert "Traceback" in capsys.readouterr().err  # -v: always

    monkeypatch.setitem(cli.COMMANDS, "split", bug)
    assert cli.main(["split"]) == 1
    out = capsys.readouterr().err
    assert "Traceback" in out and "KeyError" in out
