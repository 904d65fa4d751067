"""`spectral serve`: the run's ensemble behind HTTP on Ray Serve, a FastAPI app (``@serve.ingress``).

    POST /predict   multipart/form-data, one or more image files -> {"class", "class_name", "probabilities"}
                                                                    (a list when several files)
                    body: one image's bytes (PNG/JPEG)            -> {"class", "class_name", "probabilities"}
                    body: JSON array of base64 images             -> [{"class", "class_name", "probabilities"}, ...]
    GET  /healthz   -> {"status": "ok"}
    GET  /          -> the model card (run, K, transform, weights, test accuracy, classes, input shape)
    GET  /docs      -> the OpenAPI page (FastAPI's; the schema at /openapi.json)

Each replica loads the ensemble once. With ``serve.batching`` (default) concurrent requests are
grouped by ``@serve.batch`` into one forward pass of up to ``serve.max_batch_size`` images.
Images are decoded as the run's source did (``data_split.decode_image``). Bad input (an empty
body, bytes that are not an image, an image that cannot be converted, malformed JSON, base64 or
multipart) is answered with HTTP 400 and a message naming the problem; a body over
``serve.max_request_bytes`` or more than ``serve.max_images_per_request`` images with 413; the
replica keeps serving. Multipart bodies are parsed with the standard library's ``email`` parser
(FastAPI's ``UploadFile`` would need ``python-multipart``).

    curl -F file=@shirt.png http://127.0.0.1:8000/predict
    curl --data-binary @shirt.png http://127.0.0.1:8000/predict
    serve run inference.serve:app_builder storage=runs/fm      (or a `serve deploy` config: ``app_builder``)
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (`request: Request`) at
# definition time, and Serve's ingress wrapper does not carry the module's globals to resolve strings.
import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Sequence
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import numpy as np
import torch
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from data_split import RunStorage, SourceError, decode_image
from data_split.config import StorageConfig
from data_split.errors import ConfigError, SpectralError
from data_split.fields import build
from data_split.shutdown import freeze_at_exit
from inference.config import ServeConfig
from inference.model import CHOSEN, load_ensemble

log = logging.getLogger(__name__)

APP_NAME = "spectral"
MIN_ONGOING_REQUESTS = 16  # per replica; @serve.batch needs at least max_batch_size in flight to fill a batch
IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
PREDICT_BODY = {  # what /docs shows of POST /predict (the handler reads the body itself: three encodings)
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "a PNG/JPEG image (repeat for several)",
                    }
                },
            }
        },
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
        "application/json": {
            "schema": {
                "type": "array",
                "items": {"type": "string", "format": "byte"},
                "description": "base64-encoded PNG/JPEG images",
            }
        },
    },
}
ANSWER = {
    "type": "object",
    "properties": {
        "class": {"type": "integer"},
        "class_name": {"type": "string"},
        "probabilities": {"type": "array", "items": {"type": "number"}},
    },
}
PREDICT_RESPONSES = {
    "200": {
        "description": "the class of each image (a list for a JSON array or several files)",
        "content": {"application/json": {"schema": {"oneOf": [ANSWER, {"type": "array", "items": ANSWER}]}}},
    },
    "400": {"description": "bad input, named"},
    "413": {"description": "body or image count over the limit"},
}

api = FastAPI(
    title="spectral tensor network ensemble",
    description="A run's K-branch spectral ensemble on Ray Serve (docs/inference.md).",
)


class BadInput(SpectralError, ValueError):
    """The request cannot be classified; answered with HTTP 400."""


class TooLarge(SpectralError, ValueError):
    """The request is over ``serve.max_request_bytes`` or ``serve.max_images_per_request``; HTTP 413."""


def multipart_files(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file part of a multipart/form-data body, in order."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise BadInput("multipart body without parts (is the boundary right?)")
    files = []
    for part in message.iter_parts():
        name = part.get_filename() or part.get_param("name", header="content-disposition") or f"part {len(files)}"
        files.append((str(name), part.get_payload(decode=True) or b""))
    if not files:
        raise BadInput("multipart body without a file: send one as `-F file=@image.png`")
    return files


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (``TooLarge``) as soon as it is known to exceed ``limit`` bytes: the declared length
    first, else while it streams in, so an oversize upload is never held whole."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {int(declared):,} bytes is over serve.max_request_bytes ({limit:,})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over serve.max_request_bytes ({limit:,} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment
@serve.ingress(api)
class EnsembleServer:
    """One replica: the ensemble, the FastAPI routes, and an optional dynamic batcher."""

    def __init__(
        self,
        storage: RunStorage,
        weights: str | Sequence[float],
        batching: bool,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_images: int = 64,
        max_request_bytes: int = 16 * 2**20,
    ) -> None:
        freeze_at_exit()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_ensemble(storage, weights).to(self.device)
        self.info = self.model.info
        self.batching = batching
        self.max_images, self.max_request_bytes = max_images, max_request_bytes
        self.classify_batch.set_max_batch_size(max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def forward(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(n, C, H, W)`` -> probabilities ``(n, classes)``."""
        pixels = torch.from_numpy(images.astype(np.float32) * np.float32(1 / 255)).to(self.device)
        with torch.no_grad():
            return torch.softmax(self.model(pixels), dim=1).cpu().numpy()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def classify_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.forward(np.stack(images)))

    async def classify(self, image: np.ndarray) -> dict:
        prob = await self.classify_batch(image) if self.batching else self.forward(image[None])[0]
        k = int(prob.argmax())
        return {"class": k, "class_name": self.info.class_names[k], "probabilities": [float(p) for p in prob]}

    def decode(self, data: bytes, name: str) -> np.ndarray:
        try:
            return decode_image(data, self.info.channels, self.info.decode_size, name=name)
        except SourceError as e:
            raise BadInput(str(e)) from None

    def _count(self, n: int) -> None:
        if n > self.max_images:
            raise TooLarge(f"{n} images in one request, over serve.max_images_per_request ({self.max_images})")

    def images_of(self, body: bytes, content_type: str) -> tuple[list[np.ndarray], bool]:
        """The request's images, and whether the answer is a list (a JSON array, several files)."""
        if not body:
            raise BadInput(
                "empty request body: send an image (multipart upload or its bytes), or a JSON array of base64 images"
            )
        if content_type.startswith("multipart/form-data"):
            files = multipart_files(body, content_type)
            self._count(len(files))
            return [self.decode(data, name) for name, data in files], len(files) > 1
        if not content_type.startswith("application/json"):
            return [self.decode(body, "request body")], False
        try:
            items = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInput(f"body is not valid JSON: {e}") from None
        if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
            raise BadInput("a JSON body must be a non-empty array of base64-encoded images")
        self._count(len(items))
        images = []
        for i, s in enumerate(items):
            try:
                data = base64.b64decode(s, validate=True)
            except (binascii.Error, ValueError) as e:
                raise BadInput(f"image {i}: not valid base64 ({e})") from None
            images.append(self.decode(data, f"image {i}"))
        return images, True

    @api.get("/healthz", summary="liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/", summary="the model card: run, K, transform, weights, test accuracy, classes, input shape")
    async def card(self) -> dict:
        return self.info.card()

    @api.post(
        "/predict",
        summary="classify images: a multipart upload, an image's bytes, or base64 JSON",
        openapi_extra={"requestBody": PREDICT_BODY, "responses": PREDICT_RESPONSES},
    )
    async def predict(self, request: Request) -> JSONResponse:
        try:
            body = await read_limited(request, self.max_request_bytes)
            images, many = self.images_of(body, request.headers.get("content-type", ""))
        except TooLarge as e:
            return JSONResponse({"error": str(e)}, status_code=413)
        except BadInput as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        answers = await asyncio.gather(*(self.classify(x) for x in images))
        return JSONResponse(answers if many else answers[0])


def build_app(
    storage: RunStorage, cfg: ServeConfig = ServeConfig(), *, weights: str | Sequence[float] = CHOSEN, gpus: float = 0.0
):
    """The Serve application for the run at ``storage`` (``gpus``: per replica, used when ``cfg`` leaves it open).

    The storage object travels to the replicas pickled in the deployment's arguments, credentials included.
    """
    gpus = cfg.gpus_per_replica if cfg.gpus_per_replica is not None else gpus
    return EnsembleServer.options(
        num_replicas=cfg.replicas,
        max_ongoing_requests=max(MIN_ONGOING_REQUESTS, 2 * cfg.max_batch_size),
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": gpus},
    ).bind(
        storage,
        weights,
        cfg.batching,
        cfg.max_batch_size,
        cfg.batch_wait_timeout_s,
        cfg.max_images_per_request,
        cfg.max_request_bytes,
    )


def _arg(value: Any) -> Any:
    """``serve run``'s ``key=value`` arguments are strings: read them as YAML (``2``, ``true``, ``[1, 2]``)."""
    return yaml.safe_load(value) if isinstance(value, str) else value


def app_builder(args: dict[str, Any]):
    """The application for ``serve run inference.serve:app_builder storage=URI [weights=...] [replicas=2 ...]``
    and for a ``serve deploy`` config's ``import_path: inference.serve:app_builder`` with ``args``.

    ``args``: ``storage`` (the run's URI, required); ``weights`` (``chosen``, a method, or a list of K
    numbers); ``endpoint_url`` and ``retry_budget_s`` (``storage.*``); any ``serve.*`` key by its name
    (``replicas``, ``max_batch_size``, ``max_request_bytes``, ...). Credentials come from the environment of
    the replicas (never from a config file). An unknown or bad key is a ``ConfigError`` naming it.
    """
    args = dict(args)
    if not args.get("storage"):
        raise ConfigError(
            "app_builder needs args.storage: the run's URI (serve run inference.serve:app_builder storage=runs/fm)"
        )
    storage_cfg = StorageConfig(
        uri=str(args.pop("storage")),
        **{key: _arg(args.pop(key)) for key in ("endpoint_url", "retry_budget_s") if key in args},
    )
    weights = _arg(args.pop("weights", CHOSEN))
    cfg = build(ServeConfig, {key: _arg(v) for key, v in args.items()}, "serve")  # an unknown key: named
    return build_app(RunStorage.from_config(storage_cfg), cfg, weights=weights, gpus=0.0)


def start_serving(
    storage: RunStorage,
    cfg: ServeConfig = ServeConfig(),
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    weights: str | Sequence[float] = CHOSEN,
) -> str:
    """Deploy the run at ``storage`` on the connected Ray cluster as the application ``APP_NAME``; return the
    base URL. ``stop_serving()`` deletes that application (and only it: others on the cluster keep serving)."""
    import ray

    load_ensemble(storage, weights)  # a clear error here (within the retry budget), not a crash-looping replica
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(storage, cfg, weights=weights, gpus=gpus), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    log.info(
        "serving %s at %s (%d replica(s), batching %s)", storage.uri, url, cfg.replicas, "on" if cfg.batching else "off"
    )
    return url


def stop_serving() -> None:
    """Delete our application (``serve.delete``); Serve itself and other applications keep running."""
    serve.delete(APP_NAME)
