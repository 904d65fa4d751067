"""`spectral export`: the run's ensemble as one ``torch.export`` program plus a JSON sidecar.

The program takes float32 pixels ``(N, C, H, W)`` in [0, 1] for any N >= 1
and returns float32 logits ``(N, classes)``; it loads where this project is
not installed:

    import torch
    model = torch.export.load("model.pt2").module()
    logits = model(pixels)

``model.pt2.json`` names the classes, the input shape, the run and its test
accuracy (``RunInfo.card()``). Both files are written atomically, the program
first, so a sidecar never describes a missing or half-written program.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Sequence

import torch

from data_split import RunStorage
from inference.model import CHOSEN, SpectralEnsemble, load_ensemble

log = logging.getLogger(__name__)

EXPORT_EXAMPLE_BATCH = 2  # traced batch size; the batch dimension is symbolic, so any N >= 1 runs


def export_program(model: SpectralEnsemble) -> torch.export.ExportedProgram:
    """``model`` traced by ``torch.export`` with a dynamic batch dimension."""
    info = model.info
    example = torch.rand(EXPORT_EXAMPLE_BATCH, info.channels, info.height, info.width)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(model.eval(), (example,), dynamic_shapes={"x": {0: batch}})


def sidecar_path(output: str) -> str:
    return output + ".json"


def export_ensemble(storage: RunStorage, output: str, *, weights: str | Sequence[float] = CHOSEN) -> dict:
    """Write the run's ensemble to ``output`` (any fsspec URI, on the run's store settings) and ``output.json``;
    return the sidecar."""
    model = load_ensemble(storage, weights)
    program = export_program(model)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    folder, name = posixpath.split(output.rstrip("/"))
    target = storage.at(folder or ".")  # atomic writes to a path or an object store, with the run's settings
    card = {
        **model.info.card(),
        "format": "torch.export",
        "torch": torch.__version__,
        "load": "torch.export.load(FILE).module()(pixels) -> logits",
    }
    target.write_bytes(name, buf.getvalue())
    target.write_json(name + ".json", card)
    log.info("exported %s (%d bytes) and %s", target.url(name), len(buf.getvalue()), target.url(name + ".json"))
    return card
