"""`spectral serve`: real HTTP on loopback against a Ray Serve app; answers equal the exported program's."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import free_port, wait_until
from data_split import RunStorage, make_source
from inference import ServeConfig, export_program, load_ensemble, start_serving

HTTP_TIMEOUT_S = 60

pytestmark = pytest.mark.slow  # a trained run, Ray Data / Ray Serve end to end


def request(url: str, body: bytes | None = None, content_type: str = "application/octet-stream") -> tuple[int, object]:
    req = urllib.request.Request(url, data=body, headers={"content-type": content_type} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def encode(img: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(img[0])
    (im.convert(mode) if mode else im).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(trained_tiny_run):
    from ray import serve

    url = start_serving(
        RunStorage.from_config(trained_tiny_run.storage),
        ServeConfig(cpus_per_replica=0.5, max_batch_size=8),
        port=free_port(),
    )
    yield url
    serve.shutdown()


def test_predictions_equal_the_exported_programs(trained_tiny_run, server):
    source = make_source(trained_tiny_run.source)
    x, _ = source.read("test", 0, 12)
    program = export_program(load_ensemble(RunStorage.from_config(trained_tiny_run.storage))).module()
    with torch.no_grad():
        want = torch.softmax(program(torch.from_numpy(x.astype(np.float32) * np.float32(1 / 255))), 1).numpy()

    with ThreadPoolExecutor(8) as pool:  # concurrent requests: @serve.batch groups them
        answers = list(pool.map(lambda img: request(f"{server}/predict", encode(img)), x))
    for (status, body), p in zip(answers, want):
        assert status == 200, body
        np.testing.assert_allclose(body["probabilities"], p, rtol=0, atol=1e-5)
        assert body["class"] == int(p.argmax()) and body["class_name"] == str(int(p.argmax()))

    status, many = request(
        f"{server}/predict",
        json.dumps([base64.b64encode(encode(img)).decode() for img in x[:3]]).encode(),
        "application/json",
    )
    assert status == 200 and [a["class"] for a in many] == want[:3].argmax(1).tolist()
    status, rgb = request(
        f"{server}/predict", encode(x[0], mode="RGB")
    )  # 3 channels: converted to grey as the source did
    assert status == 200 and rgb["class"] == int(want[0].argmax())


def test_health_and_model_card(trained_tiny_run, server):
    assert request(f"{server}/healthz") == (200, {"status": "ok"})
    status, card = request(f"{server}/")
    assert status == 200
    assert card["run"] == trained_tiny_run.storage.uri and card["K"] == 4 and card["transform"] == "dct"
    assert card["weights_method"] == "geometric" and len(card["weights"]) == 4 and "test_acc" in card


@pytest.mark.parametrize(
    "body,content_type,message",
    [
        (b"", "application/octet-stream", "empty request body"),
        (b"this is not an image", "application/octet-stream", "cannot decode image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", "cannot decode image"),
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"image": "abc"}', "application/json", "non-empty array of base64"),
        (b'["%%%not-base64"]', "application/json", "image 0: not valid base64"),
        (
            json.dumps([base64.b64encode(b"GIF89a nonsense").decode()]).encode(),
            "application/json",
            "image 0: cannot decode",
        ),
    ],
)
def test_bad_input_is_a_400_and_the_server_keeps_serving(trained_tiny_run, server, body, content_type, message):
    status, answer = request(f"{server}/predict", body, content_type)
    assert status == 400 and message in answer["error"]
    x, _ = make_source(trained_tiny_run.source).read("test", 0, 1)
    status, ok = request(f"{server}/predict", encode(x[0]))
    assert status == 200 and len(ok["probabilities"]) == 4


def multipart(files: list[tuple[str, bytes]], boundary: str = "spectral-test-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body as `curl -F file=@x.png` sends it."""
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_multipart_upload_answers_as_the_raw_bytes_do_and_docs_describe_it(trained_tiny_run, server):
    x, _ = make_source(trained_tiny_run.source).read("test", 0, 2)
    status, raw = request(f"{server}/predict", encode(x[0]))
    assert status == 200
    status, one = request(f"{server}/predict", *multipart([("a.png", encode(x[0]))]))
    assert status == 200 and one == raw
    status, two = request(f"{server}/predict", *multipart([("a.png", encode(x[0])), ("b.png", encode(x[1]))]))
    assert status == 200 and len(two) == 2 and two[0]["class"] == raw["class"]
    # in a batch of two, BLAS may block the products otherwise: equal to float32 rounding, not bitwise
    assert two[0]["probabilities"] == pytest.approx(raw["probabilities"], rel=1e-5, abs=1e-7)
    status, answer = request(f"{server}/predict", *multipart([("bad.png", b"not an image")]))
    assert status == 400 and "bad.png" in answer["error"]

    with urllib.request.urlopen(f"{server}/docs", timeout=HTTP_TIMEOUT_S) as resp:  # the OpenAPI page (HTML)
        assert resp.status == 200 and "swagger" in resp.read().decode().lower()
    status, schema = request(f"{server}/openapi.json")
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert status == 200 and {"multipart/form-data", "image/png", "application/json"} <= set(body)
    assert {"/", "/healthz", "/predict"} <= set(schema["paths"])


DEPLOY_CONFIG = """
http_options:
  host: 127.0.0.1
  port: {port}
applications:
  - name: built
    route_prefix: /built
    import_path: inference.serve:app_builder
    args:
      storage: {uri}
      weights: uniform
      cpus_per_replica: "0.25"
      max_images_per_request: "2"
      max_request_bytes: "4096"
"""


def serve_cli(*args: str, address: str) -> None:
    """Ray's ``serve`` command, joining the session's Ray (``RAY_ADDRESS``) as a user's shell would."""
    serve_bin = Path(sys.executable).with_name("serve")
    proc = subprocess.run(
        [str(serve_bin), *args], env={**os.environ, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def wait_answering(url: str, deadline_s: float = 240) -> None:
    def answers() -> bool:
        try:
            return request(url)[0] == 200
        except (OSError, ValueError):  # not routed yet (Serve's 404 is plain text)
            return False

    wait_until(answers, timeout_s=deadline_s, what=f"{url} answering", poll_s=0.5)


@pytest.fixture(scope="module")
def built(trained_tiny_run, server, ray_address, tmp_path_factory):
    """The app deployed by Ray's own CLI, beside ``server``'s: ``serve run CONFIG`` with a ``serve deploy`` config
    file (the config's ``import_path: inference.serve:app_builder`` and ``args``, built by Serve's controller, as
    ``serve deploy`` has it built), and ``serve run inference.serve:app_builder storage=...`` (built by the CLI).
    ``--non-blocking``: the command returns, the applications keep serving until deleted."""

    uri = trained_tiny_run.storage.uri
    config = tmp_path_factory.mktemp("serve") / "deploy.yaml"
    config.write_text(DEPLOY_CONFIG.format(uri=uri, port=server.rsplit(":", 1)[1]))
    serve_cli("run", "--non-blocking", str(config), address=ray_address)
    serve_cli(
        "run",
        "--non-blocking",
        "--name=cli",
        "--route-prefix=/cli",
        "inference.serve:app_builder",
        f"storage={uri}",
        "cpus_per_replica=0.25",
        address=ray_address,
    )
    for prefix in ("/built", "/cli"):
        wait_answering(f"{server}{prefix}/healthz")
    yield f"{server}/built"  # both go with ``server``'s serve.shutdown(), which drains every app at once


def test_serve_run_of_the_import_path_serves_the_chosen_ensemble(trained_tiny_run, built, server):
    x, _ = make_source(trained_tiny_run.source).read("test", 0, 1)
    status, answer = request(f"{server}/cli/predict", encode(x[0]))
    _, want = request(f"{server}/predict", encode(x[0]))  # the same run, its chosen weights
    assert status == 200 and answer["class"] == want["class"]
    np.testing.assert_allclose(answer["probabilities"], want["probabilities"], rtol=0, atol=1e-6)


def test_the_app_builder_deploys_from_a_config_with_its_limits(trained_tiny_run, built):
    x, _ = make_source(trained_tiny_run.source).read("test", 0, 3)
    model = load_ensemble(RunStorage.from_config(trained_tiny_run.storage), "uniform")
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x.astype(np.float32) * np.float32(1 / 255))), 1).numpy()
    status, answer = request(f"{built}/predict", encode(x[0]))
    assert status == 200
    np.testing.assert_allclose(answer["probabilities"], want[0], rtol=0, atol=1e-5)  # weights: uniform, from args
    status, card = request(f"{built}/")
    assert status == 200 and card["weights_method"] == "uniform"

    many = json.dumps([base64.b64encode(encode(img)).decode() for img in x]).encode()
    status, answer = request(f"{built}/predict", many, "application/json")  # 3 images, the limit is 2
    assert status == 413 and "serve.max_images_per_request (2)" in answer["error"]
    status, answer = request(f"{built}/predict", b"\x89PNG" + b"\x00" * 5000)  # over 4096 bytes: refused unread
    assert status == 413 and "serve.max_request_bytes" in answer["error"]
    two = json.dumps([base64.b64encode(encode(img)).decode() for img in x[:2]]).encode()
    status, answers = request(f"{built}/predict", two, "application/json")  # at the limits: answered
    assert status == 200 and [a["class"] for a in answers] == want[:2].argmax(1).tolist()


def test_the_app_builder_names_a_bad_argument():
    from data_split.errors import ConfigError
    from inference.serve import app_builder

    with pytest.raises(ConfigError, match="args.storage"):
        app_builder({})
    with pytest.raises(ConfigError, match="serve.replicaz"):
        app_builder({"storage": "runs/x", "replicaz": "2"})
