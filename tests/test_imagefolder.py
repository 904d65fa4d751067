"""Image folders (data_split.sources.imagefolder): listing, held-out folder, torchvision's resize + crop, common size,
bad files (an error naming the file, or skip_bad), grey/RGB conversion, s3://, and one split through Ray."""

from __future__ import annotations

import io
import logging
import re
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import tiny_config
from data_split import RunStorage, SourceConfig, SourceError, decode_image, load_manifest, make_source
from data_split.layout import MANIFEST
from data_split.pipeline import split_dataset
from data_split.sources.imagefolder import resized_size
from orchestrator import cli


def _save(path: Path, a: np.ndarray, fmt: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format=fmt)
    return path


def _img(rng, h: int, w: int, gray: bool = False) -> np.ndarray:
    return rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)


def _folder(root: Path, held_out: str = "val", n: int = 3, size=(12, 10)) -> dict:
    """root/{train,held_out}/{cat,dog}/: PNGs and upper-case .JPG files of one size; returns {split: [path]}."""
    rng, out = np.random.default_rng(0), {}
    for split in ("train", held_out):
        out[split] = [
            _save(root / split / cls / f"{i}.{'JPG' if i % 2 else 'png'}", _img(rng, *size), "JPEG" if i % 2 else "PNG")
            for cls in ("cat", "dog")
            for i in range(n)
        ]
    return out


def _truncated_jpeg(path: Path, rng) -> Path:
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(_img(rng, 12, 10)).save(buf, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = buf.getvalue()
    path.write_bytes(data[: data.index(b"\xff\xda") + 16])  # the header intact, the scan cut short
    return path


def test_listing_layout_and_labels(tmp_path):
    files = _folder(tmp_path)
    (tmp_path / "train" / "cat" / ".hidden.png").write_bytes(b"x")  # hidden: ignored
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    _save(tmp_path / "train" / "dog" / "nested" / "deep.jpeg", _img(np.random.default_rng(1), 12, 10), "JPEG")
    source = make_source(SourceConfig(name="imagefolder", root=str(tmp_path)))
    assert source.class_names == ["cat", "dog"] and source.folders == {"train": "train", "test": "val"}
    assert (source.count("train"), source.count("test")) == (7, 6)
    assert [source.uri_of("train", i) for i in range(7)] == sorted(map(str, files["train"][:3])) + sorted(
        [*map(str, files["train"][3:]), str(tmp_path / "train" / "dog" / "nested" / "deep.jpeg")]
    )
    _, y = source.read("train", 0, 7)
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1, 1])
    assert source.describe()["counts"] == {"train": 7, "test": 6}


def test_test_folder_is_held_out_and_val_plus_test_is_an_error(tmp_path):
    _folder(tmp_path, held_out="test")
    assert make_source(SourceConfig(name="imagefolder", root=str(tmp_path))).folders["test"] == "test"
    _save(tmp_path / "val" / "cat" / "a.png", _img(np.random.default_rng(0), 12, 10))
    with pytest.raises(SourceError, match=r"both .*/val and .*/test exist"):
        make_source(SourceConfig(name="imagefolder", root=str(tmp_path)))


@pytest.mark.parametrize("size", [8, [6, 9]], ids=["S", "HW"])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_and_crop_equal_torchvision(size, channels):
    """Exactly torchvision's Resize(size) + CenterCrop(size) (bilinear, PIL backend) on the same PIL image."""
    from PIL import Image
    from torchvision import transforms

    tv = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])
    rng = np.random.default_rng(channels)
    for h, w in [(13, 20), (20, 13), (17, 17), (8, 31), (9, 8)]:
        buf = io.BytesIO()
        Image.fromarray(_img(rng, h, w)).save(buf, format="PNG")
        got = decode_image(buf.getvalue(), channels, size if isinstance(size, int) else tuple(size))
        want = np.asarray(tv(Image.open(io.BytesIO(buf.getvalue())).convert("L" if channels == 1 else "RGB")))
        want = want[None] if want.ndim == 2 else want.transpose(2, 0, 1)
        assert got.shape == want.shape and np.array_equal(got, want), (h, w)
    assert resized_size(20, 13, 8) == (12, 8) and resized_size(13, 20, 8) == (8, 12)  # int() truncation


def test_common_size_is_used_and_different_sizes_are_an_error(tmp_path):
    _folder(tmp_path, size=(12, 10))
    source = make_source(SourceConfig(name="imagefolder", root=str(tmp_path), channels=1))
    assert (source.height, source.width, source.channels) == (12, 10, 1)
    odd = _save(tmp_path / "val" / "dog" / "z.png", _img(np.random.default_rng(0), 14, 10))
    with pytest.raises(
        SourceError,
        match=rf"images differ in size \(.*/train/cat/0.png is 10x12, {odd} is 10x14.*"
        r"source\.image_size is unset: set it",
    ):
        make_source(SourceConfig(name="imagefolder", root=str(tmp_path)))
    assert make_source(SourceConfig(name="imagefolder", root=str(tmp_path), image_size=8)).height == 8


def test_truncated_image_is_an_error_naming_the_file(tmp_path):
    _folder(tmp_path)
    bad = _truncated_jpeg(tmp_path / "train" / "dog" / "9.jpg", np.random.default_rng(3))
    source = make_source(SourceConfig(name="imagefolder", root=str(tmp_path)))  # the header is intact
    with pytest.raises(SourceError, match=rf"^{bad}: cannot decode image \(.*truncated"):
        source.read("train", 0, source.count("train"))


def test_grey_in_rgb_folder_and_rgb_in_grey_folder_are_converted(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    grey, rgb = _img(rng, 12, 10, gray=True), _img(rng, 12, 10)
    _save(tmp_path / "train" / "a" / "g.png", grey)
    _save(tmp_path / "train" / "b" / "c.png", rgb)
    x3, _ = make_source(SourceConfig(name="imagefolder", root=str(tmp_path), channels=3)).read("train", 0, 2)
    np.testing.assert_array_equal(x3[0], np.stack([grey] * 3))
    x1, _ = make_source(SourceConfig(name="imagefolder", root=str(tmp_path), channels=1)).read("train", 0, 2)
    np.testing.assert_array_equal(x1[1, 0], np.asarray(Image.fromarray(rgb).convert("L")))


def test_s3_folder_uses_the_run_storage_endpoint(s3_endpoint, tmp_path, monkeypatch):
    import boto3

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # the endpoint comes from the run's storage only
    files = _folder(tmp_path / "local", n=2)
    prefix, client = f"imgs-{uuid.uuid4().hex[:8]}", boto3.client("s3", endpoint_url=s3_endpoint)
    for p in (p for ps in files.values() for p in ps):
        client.put_object(
            Bucket="test-bucket", Key=f"{prefix}/{p.relative_to(tmp_path / 'local')}", Body=p.read_bytes()
        )
    run = RunStorage("s3://test-bucket/run", endpoint_url=s3_endpoint)
    source = make_source(SourceConfig(name="imagefolder", root=f"s3://test-bucket/{prefix}", image_size=6), run)
    assert source.class_names == ["cat", "dog"] and (source.count("train"), source.count("test")) == (4, 4)
    assert source.uri_of("test", 0) == f"s3://test-bucket/{prefix}/val/cat/0.png"
    x, y = source.read("test", 0, 4)
    local = make_source(SourceConfig(name="imagefolder", root=str(tmp_path / "local"), image_size=6))
    np.testing.assert_array_equal(x, local.read("test", 0, 4)[0])
    np.testing.assert_array_equal(y, [0, 0, 1, 1])


def test_split_through_ray_with_skip_bad(ray_session, tmp_path, caplog, capfd):
    """A tiny JPEG/PNG folder split by the Ray pipeline: bad files skipped and listed; counts match the Parquet.

    Without skip_bad the failed Ray Data task is one error line of the CLI: no Ray Data traceback or retry hint.
    """
    src, rng = tmp_path / "imgs", np.random.default_rng(5)
    for split, n in (("train", 10), ("test", 3)):
        for cls in ("a", "b", "c"):
            for i in range(n):  # varied sizes, some grey: image_size S resizes + crops all to 8 x 8
                _save(src / split / cls / f"{i}.jpg", _img(rng, 8 + i, 11 + 2 * i, gray=i % 3 == 0), "JPEG")
    bad = [_truncated_jpeg(src / "train" / "b" / "x.jpg", rng), src / "test" / "c" / "y.png"]
    bad[1].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cfg = tiny_config(
        str(tmp_path / "run"),
        **{
            "source.name": "imagefolder",
            "source.root": str(src),
            "source.image_size": 8,
            "source.skip_bad": True,
            "split.images_per_task": 7,
        },
    )
    storage = RunStorage(cfg.storage.uri)
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(cfg.replace(**{"source.skip_bad": False}).to_dict()))
    capfd.readouterr()
    assert cli.main(["split", "--config", str(strict)]) == 1
    out = "".join(capfd.readouterr())
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, out
    assert re.search(r"error: SourceError: \S+(train/b/x.jpg|test/c/y.png): cannot decode image", errors[0]), out
    assert not storage.exists("data/manifest.json")
    with caplog.at_level(logging.WARNING, logger="data_split.pipeline"):
        m = split_dataset(cfg.source, cfg.split, storage).manifest
    assert "skipped 2 unreadable image(s) (source.skip_bad)" in caplog.text
    assert load_manifest(storage) == m
    assert m.to_json() == storage.read_json(MANIFEST)  # the source's own keys (image_size, folders) kept in place
    assert [s.path for s in m.source.skipped] == sorted(map(str, bad))
    assert all("cannot decode image" in s.error for s in m.source.skipped)
    assert sum(m.counts.values()) == 31 + 10 - 2 and m.source.counts == {"train": 30, "test": 9}
    assert m.source.class_names == ["a", "b", "c"] and m.source.image_size == 8
    for b in m.branches:
        for split, entry in b.splits.items():
            rows = sum(pq.read_metadata(storage.path(f)).num_rows for f in entry.files)
            assert rows == entry.rows == m.counts[split], (b.k, split)
    # what a branch holds is what decode_image makes of the file (the inference path)
    from data_split import read_branch, spectral_components

    bd = read_branch(storage, m, "test", 0)
    source = make_source(cfg.source)
    x, _ = source.read("test", 0, source.count("test"))
    want = spectral_components(x[bd.idx].astype(np.float32) / 255, 2, 2)[:, 0]
    np.testing.assert_allclose(bd.values(), want, atol=m.branches[0].scale[0] / 2 + 1e-6)
