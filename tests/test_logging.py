"""orchestrator._logging: what each verbosity lets through, and credentials masked in every line at every level."""

from __future__ import annotations

import io
import logging

import pytest

from orchestrator import _logging
from orchestrator._logging import LIBRARY_LOGGERS, OUR_LOGGERS, add_secrets, configure_logging, mask

KEY_ID, SECRET = "AKIATESTKEY0123456789", "s3cr3t/Value+With=Chars"
SIGNED = (
    "Sending http request: <AWSPreparedRequest headers={'Authorization': b'AWS4-HMAC-SHA256 "
    "Credential=OTHERKEYID9876/20261202/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc'}>"
)


@pytest.fixture
def console():
    """The CLI's logging set up on a string buffer; every level and handler restored afterwards."""
    names = ["", *OUR_LOGGERS, *LIBRARY_LOGGERS]
    levels = {n: logging.getLogger(n).level for n in names}
    handlers = logging.getLogger().handlers[:]
    secrets = set(_logging._secrets)
    buffer = io.StringIO()
    yield buffer, logging.StreamHandler(buffer)
    root = logging.getLogger()
    for h in root.handlers[:]:
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    _logging._handler = None
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    _logging._secrets.clear()
    _logging._secrets.update(secrets)


def emit() -> None:
    logging.getLogger("orchestrator.launcher").debug("our debug line")
    logging.getLogger("orchestrator.launcher").info("our info line, key %s", KEY_ID)
    logging.getLogger("botocore.endpoint").debug(SIGNED)
    logging.getLogger("s3fs").debug("CALL: get_object secret=%s", SECRET)
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        logging.getLogger("data_split.storage").exception("failed")


@pytest.mark.parametrize("verbosity", [0, 1, 2])
def test_each_verbosity_shows_its_lines_and_never_a_credential(console, verbosity, monkeypatch):
    buffer, handler = console
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # the environment's secret is masked without being told
    configure_logging(verbosity, handler)
    add_secrets(KEY_ID)  # the config's, as the CLI registers them once the config is read
    emit()
    out = buffer.getvalue()
    assert ("our debug line" in out) == (verbosity >= 1)
    assert "our info line, key ***" in out
    assert ("Sending http request" in out) == (verbosity >= 2)  # library DEBUG only with -vv
    assert ("CALL: get_object secret=***" in out) == (verbosity >= 2)
    assert "boom with ***" in out  # in a traceback too
    assert KEY_ID not in out and SECRET not in out and "OTHERKEYID9876" not in out
    if verbosity >= 2:
        assert "Credential=***/20261202" in out  # a key id nobody registered (a profile's) is masked by its shape


def test_mask_leaves_ordinary_text_alone():
    add_secrets("ab", None, "")  # too short to mask safely: ignored
    assert mask("a cab and a lab") == "a cab and a lab"


def test_a_workers_info_lines_reach_stderr_once_with_the_runs_keys_masked(console, capsys, monkeypatch):
    """What a branch actor sets up (Ray forwards its stderr to the driver): our INFO lines, the storage keys
    it was given masked, one handler however often it is called."""
    for h in logging.getLogger().handlers[:]:  # a fresh worker process: nothing configured
        logging.getLogger().removeHandler(h)
    logging.getLogger().setLevel(logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    _logging.worker_logging((KEY_ID, SECRET))
    _logging.worker_logging((KEY_ID, SECRET))
    logging.getLogger("branches.train").info("branch 1: resuming after epoch 2, key %s secret %s", KEY_ID, SECRET)
    logging.getLogger("branches.train").debug("branch 1 epoch 3/4: loss 0.1")
    logging.getLogger("botocore").info("a library's info line")
    err = capsys.readouterr().err
    assert err.splitlines() == ["branch 1: resuming after epoch 2, key *** secret ***"]
