"""One trained run as one ``nn.Module``: raw pixels in, ensemble logits out.

``SpectralEnsemble`` replays, inside ``forward``, exactly what the run's data
went through before a branch saw it (docs/design.md section 1 and docs/storage.md):

    x (N, C, H, W) pixels in [0, 1]
      -> spectral_components with the manifest's matrix  (N, K, C, H/r, W/c)
      -> encode + decode of the storage (split.dtype)      uint8 codes by default: inputs equal the stored shards
      -> (s - mean_k) / std_k per branch and channel       as branches' Decoder normalised them
      -> branch k's model (final checkpoint), eval mode    (B, N, classes), B = K less skipped branches,
                                                           the B as one batched network (branches.packed)
      -> z = sum_k w_k z_k                                 (N, classes)

A branch the run skipped (diverged under ``train.on_nonfinite: skip_branch``; weight 0, not in the
weights record's ``branches``) has no final model and is left out of the module.

Everything is torch on buffers, so ``torch.export`` captures the whole chain
and the exported program needs nothing from this project.

    from data_split import RunStorage
    from inference import load_ensemble
    model = load_ensemble(RunStorage("runs/fashion-mnist-sub4"))  # the run's chosen weights
    logits = model(pixels)                                      # (N, 10); model.info: classes, run, test acc
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from branches import ModelConfig, build_model
from branches.checkpoint import load_checkpoint
from branches.data import MIN_STD
from branches.packed import PackError, grouped_eval
from data_split import RunStorage, layout, load_manifest, spectral_components
from data_split.errors import SpectralError
from data_split.quantize import DTYPES, LEVELS, branch_codec, decode, encode

log = logging.getLogger(__name__)

CHOSEN = "chosen"  # load_ensemble(weights=...): the run's ensemble/weights.json


class EnsembleLoadError(SpectralError, ValueError):
    """A run cannot be turned into a model (unfinished branch, missing weights); the message names the file."""


@dataclass(frozen=True)
class RunInfo:
    """What a user of the model needs to know about the run it came from (the export sidecar, the model card)."""

    uri: str
    channels: int
    height: int
    width: int
    class_names: list[str]
    source: str
    rows: int
    cols: int
    transform: str
    dtype: str  # the storage's split.dtype, whose quantisation the model applies
    model: str
    method: str  # weight rule: uniform, geometric, tuned, exact, or "given"
    weights: list[float]  # (K,): 0 for a skipped branch
    test_acc: float | None
    image_size: int | None = None  # the source's `image_size: S` (shorter side to S, centre crop); None: stretch
    branches: list[int] | None = None  # the branches in the model (None: all K)

    @property
    def k(self) -> int:
        return self.rows * self.cols

    @property
    def decode_size(self) -> int | tuple[int, int]:
        """``decode_image``'s size: images are prepared for the model exactly as the run's source prepared them."""
        return self.image_size if self.image_size is not None else (self.height, self.width)

    def card(self) -> dict:
        return {
            "run": self.uri,
            "source": self.source,
            "input_shape": ["N", self.channels, self.height, self.width],
            "input": "float32 pixels in [0, 1]",
            # how an image becomes the input: torchvision's Resize(image_size) + CenterCrop(image_size)
            "image_size": list(self.decode_size) if isinstance(self.decode_size, tuple) else self.decode_size,
            "classes": self.class_names,
            "K": self.k,
            "split": [self.rows, self.cols],
            "transform": self.transform,
            "storage_dtype": self.dtype,
            "model": self.model,
            "weights_method": self.method,
            "weights": self.weights,
            "test_acc": self.test_acc,
            "branches": self.branches if self.branches is not None else list(range(self.k)),
        }


class SpectralEnsemble(nn.Module):
    """Raw pixels ``(N, C, H, W)`` in [0, 1] -> logits ``(N, classes)`` of a weighted ensemble of K branches."""

    def __init__(
        self,
        *,
        rows: int,
        cols: int,
        matrix: np.ndarray,
        dtype: str,
        mean: np.ndarray,
        std: np.ndarray,
        branches: Sequence[nn.Module],
        weights: Sequence[float],
        offset: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        info: RunInfo | None = None,
        ks: Sequence[int] | None = None,
        packed: bool = True,
    ) -> None:
        """``mean``/``std`` (and for uint8 storage ``offset``/``scale``): ``(K, C)`` from the manifest's branches.

        ``ks``: which spectral component each of ``branches`` (and ``weights``) takes; default all K in order.
        ``packed``: evaluate the branches as one batched network (``branches.packed.grouped_eval``: grouped
        layers, one pass instead of B; same logits to float32 rounding), when their architecture packs.
        """
        super().__init__()
        self.info = info  # where the model came from (not part of the computation)
        k = rows * cols
        self.ks = list(range(k)) if ks is None else [int(i) for i in ks]
        if len(branches) != len(self.ks) or len(weights) != len(self.ks) or not set(self.ks) <= set(range(k)):
            raise ValueError(
                f"expected {len(self.ks)} branches and weights for components {self.ks} of a {rows}x{cols} "
                f"split, got {len(branches)} and {len(weights)}"
            )
        if dtype not in DTYPES:
            raise ValueError(f"storage dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if dtype == "uint8" and (offset is None or scale is None):
            raise ValueError("uint8 storage needs the branches' offset and scale")
        self.rows, self.cols, self.dtype = rows, cols, dtype
        as_buffer = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float32))  # noqa: E731
        self.register_buffer("matrix", as_buffer(matrix))  # (K, K)
        self.register_buffer("weights", as_buffer(weights))  # (B,) for components ks
        # (K, C) per-branch, per-channel constants; quantize/decode broadcast a (C,) row over (N, C, h, w)
        self.register_buffer("mean", as_buffer(mean)[:, None, :, None, None])  # (K, 1, C, 1, 1)
        self.register_buffer("std", as_buffer(np.maximum(np.asarray(std, np.float32), MIN_STD))[:, None, :, None, None])
        self.register_buffer("offset", as_buffer(offset if offset is not None else np.zeros_like(mean)))  # (K, C)
        self.register_buffer("scale", as_buffer(scale if scale is not None else np.ones_like(mean)))  # (K, C)
        self.packed = None
        if packed and len(branches) > 1:
            try:
                self.packed = grouped_eval(list(branches))  # (B, N, C, h, w) -> (B, N, classes) in one pass
            except PackError as e:
                log.info("branches evaluated one by one: %s", e)
        self.branches = nn.ModuleList(branches) if self.packed is None else None
        self.eval()

    def branch_input(self, s: torch.Tensor, k: int) -> torch.Tensor:
        """Spectral component ``k`` ``(N, C, h, w)`` -> what branch ``k`` trained on: stored, decoded, normalised."""
        stored = encode(s, self.dtype, self.offset[k], self.scale[k])  # the split's quantisation (data_split.quantize)
        return (decode(stored, self.dtype, self.offset[k], self.scale[k]) - self.mean[k]) / self.std[k]

    def packed_inputs(self, s: torch.Tensor) -> torch.Tensor:
        """Spectral components ``(N, K, C, h, w)`` -> every branch's input ``(B, N, C, h, w)`` in one pass.

        ``branch_input`` for all of ``ks`` at once: the same quantisation formulas as ``data_split.quantize``
        (round to nearest, clamp to the uint8 codes, ``offset + scale * q``), broadcast over the branches.
        """
        ks = self.ks
        x = s if ks == list(range(self.rows * self.cols)) else s[:, ks]  # (N, B, C, h, w): no copy when all K
        mean, std = self.mean[ks].transpose(0, 1), self.std[ks].transpose(0, 1)  # (1, B, C, 1, 1) statistics
        if self.dtype == "uint8":
            off, sc = self.offset[ks][None, :, :, None, None], self.scale[ks][None, :, :, None, None]  # (1, B, C, 1, 1)
            q = torch.round((x - off) / sc).clamp(0, LEVELS)  # the stored codes, exactly as the split computed them
            v = q * (sc / std) + (off - mean) / std  # (off + sc * q - mean) / std in one affine pass
        else:
            v = (x.to(getattr(torch, self.dtype)).to(torch.float32) - mean) / std
        return v.transpose(0, 1)

    def branch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, classes)``: every branch's logits for pixels ``x`` ``(N, C, H, W)``."""
        s = spectral_components(x, self.rows, self.cols, self.matrix)  # (N, K, C, h, w)
        if self.packed is not None:
            return self.packed(self.packed_inputs(s))  # (B, N, C, h, w) in, (B, N, classes) out
        return torch.stack([branch(self.branch_input(s[:, k], k)) for k, branch in zip(self.ks, self.branches)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("k,knc->nc", self.weights, self.branch_logits(x))  # z = sum_k w_k z_k


def _final_branch(storage: RunStorage, k: int, in_shape: tuple[int, int, int], classes: int) -> tuple[nn.Module, str]:
    """Branch ``k``'s network from the checkpoint of its final epoch (the one its logits came from)."""
    result = layout.read_result(storage, k)
    if result is None:
        raise EnsembleLoadError(
            f"branch {k} has not finished: {storage.url(layout.result(k))} is missing (train the run first)"
        )
    ckpt_rel = layout.checkpoint(k, int(result["epochs"]))
    try:
        ckpt = load_checkpoint(storage, ckpt_rel)
    except FileNotFoundError:
        raise EnsembleLoadError(f"branch {k}: final checkpoint {storage.url(ckpt_rel)} is missing") from None
    except (ValueError, RuntimeError) as e:
        raise EnsembleLoadError(f"branch {k}: final checkpoint {storage.url(ckpt_rel)} is unreadable: {e}") from e
    # the checkpoint holds every weight: no pretrained file is needed (or read) where the ensemble is served
    cfg = dataclasses.replace(ModelConfig(**ckpt["model_config"]), pretrained=None)
    model = build_model(cfg, in_shape, classes, probe=False)  # it trained on this input
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg.name


def _weights(
    storage: RunStorage, k: int, weights: str | Sequence[float]
) -> tuple[str, list[float], float | None, list[int]]:
    """(method, (K,) weights, test accuracy or None, branches in the sum) for ``weights``: "chosen", a method, or K
    numbers."""
    if not isinstance(weights, str):
        w = [float(v) for v in weights]
        if len(w) != k or not np.all(np.isfinite(w)):
            raise EnsembleLoadError(f"expected {k} finite ensemble weights, got {w}")
        return "given", w, None, list(range(k))
    rel = layout.WEIGHTS if weights == CHOSEN else layout.ensemble_record(weights)
    if not storage.exists(rel):
        have = sorted(
            n[:-5]
            for n in storage.ls(layout.ENSEMBLE)
            if n.endswith(".json") and f"{layout.ENSEMBLE}/{n}" != layout.WEIGHTS
        )
        raise EnsembleLoadError(
            f"{storage.url(rel)} does not exist (run `spectral evaluate` first); "
            f"methods of this run: {', '.join(have) or 'none'}"
        )
    record = storage.read_json(rel)
    w = [float(v) for v in record["weights"]]
    if len(w) != k:
        raise EnsembleLoadError(f"{storage.url(rel)} holds {len(w)} weights, the split has K={k}")
    return record["method"], w, record.get("test_acc"), [int(b) for b in record.get("branches", range(k))]


def load_ensemble(storage: RunStorage, weights: str | Sequence[float] = CHOSEN) -> SpectralEnsemble:
    """The run at ``storage`` as a ``SpectralEnsemble`` (CPU, eval mode); ``.info`` describes the run.

    ``storage``: the run's ``RunStorage`` (``RunStorage.from_config(cfg.storage)``: its endpoint,
    credentials and retry budget; every read retries through an outage within the budget).
    ``weights``: ``"chosen"`` (the run's ``ensemble/weights.json``), a method the run evaluated
    (``"uniform"``, ``"geometric"``, ``"tuned"``, ``"exact"``), or K numbers.
    """
    manifest = load_manifest(storage)
    split, source = manifest.split, manifest.source
    k, classes = manifest.K, int(source.classes)
    in_shape = split.shape
    # every branch but a skipped (diverged) one must have finished: a clear error for an untrained run comes first
    nets = {b: _final_branch(storage, b, in_shape, classes) for b in range(k) if not storage.exists(layout.diverged(b))}
    method, w, test_acc, ks = _weights(storage, k, weights)
    if missing := [b for b in ks if b not in nets]:
        raise EnsembleLoadError(
            f"branches {missing} diverged (branches/<k>/diverged.json) and have no final model; "
            f"weights {method!r} use them"
        )
    nets = [nets[b] for b in ks]
    height, width = (int(v) for v in source.resolution)
    info = RunInfo(
        uri=storage.uri,
        channels=int(source.channels),
        height=height,
        width=width,
        class_names=[str(c) for c in source.class_names or range(classes)],
        source=source.name,
        rows=int(split.r),
        cols=int(split.c),
        transform=split.transform,
        dtype=split.dtype,
        model=nets[0][1],
        method=method,
        weights=w,
        test_acc=test_acc,
        branches=ks,
        image_size=source.image_size if isinstance(source.image_size, int) else None,
    )
    codecs = [branch_codec(manifest, b) for b in range(k)]  # (dtype, offset (C,) or None, scale (C,) or None)
    model = SpectralEnsemble(
        rows=info.rows,
        cols=info.cols,
        matrix=np.asarray(split.matrix),
        dtype=info.dtype,
        mean=np.asarray([b.mean for b in manifest.branches]),
        std=np.asarray([b.std for b in manifest.branches]),
        offset=np.asarray([c[1] for c in codecs]) if info.dtype == "uint8" else None,
        scale=np.asarray([c[2] for c in codecs]) if info.dtype == "uint8" else None,
        branches=[net for net, _ in nets],
        weights=[w[b] for b in ks],
        info=info,
        ks=ks,
    )
    log.info(
        "loaded %s: K=%d %s branches, %s weights %s", storage.url(), k, info.model, method, np.round(w, 4).tolist()
    )
    return model
