"""`spectral predict`: Ray Data batch inference over image folders, local and on S3, with bad and empty input."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from data_split import RunStorage, make_source
from inference import load_ensemble
from orchestrator.cli import main

pytestmark = pytest.mark.slow  # a trained run, Ray Data / Ray Serve end to end


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # rich: one line per message, so paths are not wrapped


def png_bytes(img: np.ndarray) -> bytes:
    """(1, H, W) uint8 -> PNG bytes (lossless: the model sees exactly the source's pixels)."""
    buf = io.BytesIO()
    Image.fromarray(img[0]).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def test_images(trained_tiny_run):
    """The run's test split: uint8 images (N, 1, 8, 8) and labels."""
    source = make_source(trained_tiny_run.source)
    return source.read("test", 0, source.count("test"))


def write_folder(root, images, labels, names=None) -> list[str]:
    """``root/batch<i % 2>/<class>/<i>.png``: class folders one level down, to exercise the recursive listing."""
    paths = []
    for i, (img, y) in enumerate(zip(images, labels)):
        path = root / f"batch{i % 2}" / str(y) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(img))
        paths.append(str(path))
    return paths


def expected_probs(uri: str, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = load_ensemble(RunStorage(uri))(torch.from_numpy(images.astype(np.float32) * np.float32(1 / 255)))
    return torch.softmax(logits, 1).numpy()


def test_predict_classifies_every_image_and_reports_accuracy(
    trained_tiny_run, test_images, tmp_path, capsys, monkeypatch
):
    """An interrupted predict first (Ctrl-C once every part is written, before the commit): nothing complete-looking;
    the re-run completes the output."""
    from inference import _output

    cfg = trained_tiny_run
    x, y = test_images
    paths = write_folder(tmp_path / "images", x, y)
    out = tmp_path / "preds"
    argv = [
        "predict",
        "--storage",
        cfg.storage.uri,
        "--input",
        str(tmp_path / "images"),
        "--output",
        str(out),
        "--batch-size",
        "16",
        "--concurrency",
        "2",
        "--set",
        "predict.cpus_per_actor=0.5",
    ]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_output, "commit", interrupt)
    assert main(argv) == 130
    assert list((out / "_temporary").rglob("*.parquet")) and not (out / "_SUCCESS").exists()
    first_parts = sorted(p.name for p in (out / "_temporary").rglob("*.parquet"))
    assert main(argv) == 130  # interrupted again: the same part names (a retried task rewrites its own file)
    assert sorted(p.name for p in (out / "_temporary").rglob("*.parquet")) == first_parts
    assert ds.dataset(out, format="parquet").files == []  # a Parquet reader finds no output there
    monkeypatch.undo()
    capsys.readouterr()

    assert main(argv) == 0
    printed, logged = capsys.readouterr()
    assert f"predict: {len(y)} / {len(y)} images (100%)" in logged and "predict: " not in printed  # progress: stderr
    committed = RunStorage(str(out)).read_json("_manifest.json")
    parts = sorted(p["file"] for p in committed["parts"])
    assert committed["rows"] == len(y) and parts and all(p.startswith("part-") for p in parts)
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_manifest.json", *parts]  # no leftovers
    assert f"classified {len(y)} images" in printed and "images/s" in printed and "2 actor(s), batch 16" in printed
    chosen_acc = RunStorage(cfg.storage.uri).read_json("ensemble/weights.json")["test_acc"]
    assert f"accuracy {chosen_acc:.4f} over {len(y)} images" in printed  # lossless PNGs: the run's own test accuracy

    table = pq.read_table(out)
    assert table.schema.field("path").type == pa.string() and table.schema.field("pred").type == pa.int64()
    assert table.schema.field("class_name").type == pa.string()
    assert table.schema.field("prob").type == pa.list_(pa.float32())
    rows = sorted(table.to_pylist(), key=lambda r: r["path"])
    assert [r["path"] for r in rows] == sorted(paths)
    order = np.argsort(paths)
    probs = expected_probs(cfg.storage.uri, x)[order]
    np.testing.assert_allclose(np.asarray([r["prob"] for r in rows]), probs, rtol=0, atol=1e-5)
    assert [r["pred"] for r in rows] == probs.argmax(1).tolist()
    assert all(r["class_name"] == str(r["pred"]) for r in rows)


def test_an_unreadable_image_is_named_and_nothing_is_written(trained_tiny_run, test_images, tmp_path, capsys):
    x, y = test_images
    write_folder(tmp_path / "images", x[:6], y[:6])
    bad = tmp_path / "images" / "batch0" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    out = tmp_path / "preds"
    assert (
        main(
            [
                "predict",
                "--storage",
                trained_tiny_run.storage.uri,
                "--input",
                str(tmp_path / "images"),
                "--output",
                str(out),
            ]
        )
        == 1
    )
    printed = capsys.readouterr().err
    assert "1 unreadable image(s), nothing written" in printed and "broken.png" in printed and "--skip-bad" in printed
    assert not out.exists()


def test_skip_bad_on_s3_lists_the_skipped_image(trained_tiny_run, test_images, s3_endpoint, tmp_path, capsys):
    import boto3

    x, y = test_images
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = f"predict-{tmp_path.name}"
    for i in range(5):
        s3.put_object(Bucket="test-bucket", Key=f"{prefix}/in/{y[i]}/{i}.PNG", Body=png_bytes(x[i]))
    s3.put_object(Bucket="test-bucket", Key=f"{prefix}/in/notes/bad.jpg", Body=b"not a jpeg")
    s3.put_object(Bucket="test-bucket", Key=f"{prefix}/in/readme.txt", Body=b"ignored: not an image suffix")
    out = f"s3://test-bucket/{prefix}/out"
    assert (
        main(
            [
                "predict",
                "--storage",
                trained_tiny_run.storage.uri,
                "--input",
                f"s3://test-bucket/{prefix}/in",
                "--output",
                out,
                "--skip-bad",
                "--set",
                f"storage.endpoint_url={s3_endpoint}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"skipped unreadable image: s3://test-bucket/{prefix}/in/notes/bad.jpg" in printed
    assert "classified 5 images" in printed
    listing = s3.list_objects_v2(Bucket="test-bucket", Prefix=f"{prefix}/out/")["Contents"]
    table = pa.concat_tables(
        [
            pq.read_table(io.BytesIO(s3.get_object(Bucket="test-bucket", Key=o["Key"])["Body"].read()))
            for o in listing
            if o["Key"].endswith(".parquet")
        ]
    )
    assert sorted(table.column("path").to_pylist()) == sorted(
        f"s3://test-bucket/{prefix}/in/{y[i]}/{i}.PNG" for i in range(5)
    )


def test_empty_input_is_an_error(trained_tiny_run, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images here")
    assert (
        main(
            [
                "predict",
                "--storage",
                trained_tiny_run.storage.uri,
                "--input",
                str(tmp_path / "empty"),
                "--output",
                str(tmp_path / "preds"),
            ]
        )
        == 1
    )
    assert "no PNG/JPEG images under" in capsys.readouterr().err
    assert not (tmp_path / "preds").exists()


def test_a_run_with_image_size_s_crops_at_inference_as_its_split_did(trained_tiny_run, test_images, tmp_path):
    """``source.image_size: S`` (shorter side to S, centre crop) is how predict/serve prepare images too."""
    import json
    import shutil

    from inference.predict import predict_images

    run = tmp_path / "run"
    shutil.copytree(trained_tiny_run.storage.uri, run)
    on_disk = json.loads((run / "data" / "manifest.json").read_text())
    on_disk["source"]["image_size"] = 8  # as an imagefolder split with image_size 8 records it
    (run / "data" / "manifest.json").write_text(json.dumps(on_disk))
    assert load_ensemble(RunStorage(str(run))).info.decode_size == 8
    x, _ = test_images
    wide = np.concatenate([x[:6, :, :, :2] // 2, x[:6], x[:6, :, :, -2:] // 2], axis=3)  # (6, 1, 8, 12): 8 + 2 per side
    for i, img in enumerate(wide):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.png").write_bytes(png_bytes(img))
    predict_images(RunStorage(str(run)), str(tmp_path / "in"), str(tmp_path / "out"))
    rows = sorted(pq.read_table(tmp_path / "out").to_pylist(), key=lambda r: r["path"])
    # the centre 8 x 8 of each 8 x 12 image is the original test image: cropped, not stretched
    np.testing.assert_allclose(np.asarray([r["prob"] for r in rows]), expected_probs(str(run), x[:6]), atol=1e-5)
