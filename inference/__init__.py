"""Using a trained run: one ``nn.Module`` (``load_ensemble``), a ``torch.export`` file, Ray Data batch
prediction and a Ray Serve endpoint.

    from data_split import RunStorage
    from inference import load_ensemble, export_ensemble, predict_images, start_serving
    run = RunStorage("runs/fashion-mnist-sub4")     # or RunStorage.from_config(cfg.storage): endpoint, keys, budget
    model = load_ensemble(run)                      # pixels (N, C, H, W) in [0, 1] -> logits (N, classes)
    export_ensemble(run, "model.pt2")               # + model.pt2.json sidecar
    predict_images(run, "images/", "predictions/")  # Ray Data -> Parquet, committed with _SUCCESS
    start_serving(run, port=8000)                   # Ray Serve: POST /predict; stop_serving() deletes it

Layering: imports ``data_split``, ``branches`` and ``tune`` only; ``orchestrator`` (the CLI) calls it.
Names load lazily: ``orchestrator.config`` imports ``inference.config`` and must not pull in torch or Ray Serve.
"""

from __future__ import annotations

from data_split.lazy import lazy_exports

_EXPORTS = {
    "PredictConfig": "inference.config",
    "ServeConfig": "inference.config",
    "CHOSEN": "inference.model",
    "EnsembleLoadError": "inference.model",
    "RunInfo": "inference.model",
    "SpectralEnsemble": "inference.model",
    "load_ensemble": "inference.model",
    "export_ensemble": "inference.export",
    "export_program": "inference.export",
    "PredictError": "inference.predict",
    "PredictResult": "inference.predict",
    "predict_images": "inference.predict",
    "build_app": "inference.serve",
    "start_serving": "inference.serve",
    "stop_serving": "inference.serve",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
