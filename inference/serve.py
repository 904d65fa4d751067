"""`spectral serve`: the run's ensemble behind HTTP on Ray Serve.

    POST /predict   body: one image's bytes (PNG/JPEG)      -> {"class", "class_name", "probabilities"}
                    body: JSON array of base64 images        -> [{"class", "class_name", "probabilities"}, ...]
    GET  /healthz   -> {"status": "ok"}
    GET  /          -> the model card (run, K, transform, weights, test accuracy, classes, input shape)

Each replica loads the ensemble once. With ``serve.batching`` (default) concurrent requests are
grouped by ``@serve.batch`` into one forward pass of up to ``serve.max_batch_size`` images.
Images are decoded as the run's source did (``data_split.decode_image``). Bad input (an empty
body, bytes that are not an image, an image that cannot be converted, malformed JSON or base64)
is answered with HTTP 400 and a message naming the problem; the replica keeps serving.

    curl --data-binary @shirt.png http://127.0.0.1:8000/predict
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Sequence

import numpy as np
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from data_split import RunStorage, SourceError, decode_image
from data_split.errors import SpectralError
from inference.config import ServeConfig
from inference.model import CHOSEN, load_ensemble

log = logging.getLogger(__name__)

APP_NAME = "spectral"
MIN_ONGOING_REQUESTS = 16  # per replica; @serve.batch needs at least max_batch_size in flight to fill a batch


class BadInput(SpectralError, ValueError):
    """The request cannot be classified; answered with HTTP 400."""


@serve.deployment
class EnsembleServer:
    """One replica: the ensemble, an HTTP router, and an optional dynamic batcher."""

    def __init__(self, storage: RunStorage, weights: str | Sequence[float], batching: bool,
                 max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_ensemble(storage, weights).to(self.device)
        self.info = self.model.info
        self.batching = batching
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

    def images_of(self, body: bytes, content_type: str) -> tuple[list[np.ndarray], bool]:
        """The request's images, and whether it was a JSON array (the answer is then a list)."""
        if not body:
            raise BadInput("empty request body: send an image's bytes, or a JSON array of base64 images")
        if not content_type.startswith("application/json"):
            return [self.decode(body, "request body")], False
        try:
            items = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInput(f"body is not valid JSON: {e}") from None
        if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
            raise BadInput("a JSON body must be a non-empty array of base64-encoded images")
        images = []
        for i, s in enumerate(items):
            try:
                data = base64.b64decode(s, validate=True)
            except (binascii.Error, ValueError) as e:
                raise BadInput(f"image {i}: not valid base64 ({e})") from None
            images.append(self.decode(data, f"image {i}"))
        return images, True

    async def __call__(self, request: Request) -> JSONResponse:
        route = (request.method, request.url.path.rstrip("/") or "/")
        if route == ("GET", "/healthz"):
            return JSONResponse({"status": "ok"})
        if route == ("GET", "/"):
            return JSONResponse(self.info.card())
        if route != ("POST", "/predict"):
            return JSONResponse({"error": f"no route {route[0]} {route[1]}: use POST /predict, GET /healthz, GET /"},
                                status_code=404)
        try:
            images, many = self.images_of(await request.body(), request.headers.get("content-type", ""))
        except BadInput as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        answers = await asyncio.gather(*(self.classify(x) for x in images))
        return JSONResponse(answers if many else answers[0])


def build_app(storage: RunStorage, cfg: ServeConfig = ServeConfig(), *, weights: str | Sequence[float] = CHOSEN,
              gpus: float = 0.0):
    """The Serve application for the run at ``storage`` (``gpus``: per replica, used when ``cfg`` leaves it open).

    The storage object travels to the replicas pickled in the deployment's arguments, credentials included.
    """
    gpus = cfg.gpus_per_replica if cfg.gpus_per_replica is not None else gpus
    return EnsembleServer.options(
        num_replicas=cfg.replicas,
        max_ongoing_requests=max(MIN_ONGOING_REQUESTS, 2 * cfg.max_batch_size),
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": gpus},
    ).bind(storage, weights, cfg.batching, cfg.max_batch_size, cfg.batch_wait_timeout_s)


def start_serving(storage: RunStorage, cfg: ServeConfig = ServeConfig(), *, host: str = "127.0.0.1",
                  port: int = 8000, weights: str | Sequence[float] = CHOSEN) -> str:
    """Deploy the run at ``storage`` on the connected Ray cluster as the application ``APP_NAME``; return the
    base URL. ``stop_serving()`` deletes that application (and only it: others on the cluster keep serving)."""
    import ray

    load_ensemble(storage, weights)  # a clear error here (within the retry budget), not a crash-looping replica
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(storage, cfg, weights=weights, gpus=gpus), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    log.info("serving %s at %s (%d replica(s), batching %s)", storage.uri, url, cfg.replicas,
             "on" if cfg.batching else "off")
    return url


def stop_serving() -> None:
    """Delete our application (``serve.delete``); Serve itself and other applications keep running."""
    serve.delete(APP_NAME)
