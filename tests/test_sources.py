"""data_split.sources: every source format read back exactly, and bad files rejected before anything is written.

Files are written by ``fixtures_formats`` in the real on-disk formats (IDX, CIFAR-10 pickles, PNG folders).
No Ray here: sources are validated on the driver, and ``read`` is a plain method.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from data_split import SourceConfig, SourceError, SplitConfig, SyntheticConfig, make_source
from data_split.config import SOURCES
from data_split.pipeline import MANIFEST, split_dataset
from data_split.sources import FACTORIES, FASHION_MNIST_DEBIAN_ROOT, SYNTHETIC_CHUNK
from data_split.storage import RunStorage
from fixtures_formats import (
    CIFAR_FOLDER,
    cifar_batch_dict,
    idx_bytes,
    mnist_arrays,
    torchvision_raw_folder,
    write_cifar,
    write_idx,
    write_imagefolder,
    write_mnist_files,
    write_pickle,
)


def test_every_source_name_the_config_accepts_has_a_factory():
    """The config lists the names (so that it imports no source); the sources package builds each, in that order."""
    assert tuple(FACTORIES) == SOURCES


def _read_all(source, split):
    return source.read(split, 0, source.count(split))


def _assert_mnist_roundtrip(source, arrays):
    for split, (x, y) in arrays.items():
        assert source.count(split) == len(y)
        got_x, got_y = _read_all(source, split)
        assert got_x.dtype == np.uint8 and got_x.shape == (len(y), 1, *x.shape[1:])
        np.testing.assert_array_equal(got_x[:, 0], x)
        assert got_y.dtype == np.int64
        np.testing.assert_array_equal(got_y, y)


# -- IDX: MNIST in torchvision's layout, Fashion-MNIST flat (Debian) -------------------------------
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_torchvision_layout(tmp_path, gz):
    arrays = mnist_arrays(n_train=12, n_test=5, size=(8, 6))  # H != W catches a transposed reader
    write_mnist_files(torchvision_raw_folder(tmp_path, "mnist"), arrays, gz=gz)
    source = make_source(SourceConfig(name="mnist", root=str(tmp_path)))
    assert (source.channels, source.height, source.width, source.classes) == (1, 8, 6, 10)
    _assert_mnist_roundtrip(source, arrays)
    # A range in the middle (the reader seeks past the 16-byte header and `start` images).
    x, y = source.read("train", 4, 9)
    np.testing.assert_array_equal(x[:, 0], arrays["train"][0][4:9])
    np.testing.assert_array_equal(y, arrays["train"][1][4:9])
    d = source.describe()
    assert d == {
        "name": "mnist",
        "resolution": [8, 6],
        "channels": 1,
        "classes": 10,
        "counts": {"train": 12, "test": 5},
        "class_names": [str(i) for i in range(10)],
    }


def test_mnist_torchvision_layout_with_gz_and_extracted_files(tmp_path):
    """torchvision keeps both the download (.gz) and the extracted file in raw/: either reads the same."""
    arrays = mnist_arrays(n_train=7, n_test=3)
    raw = torchvision_raw_folder(tmp_path, "mnist")
    write_mnist_files(raw, arrays, gz=True)
    write_mnist_files(raw, arrays, gz=False)
    _assert_mnist_roundtrip(make_source(SourceConfig(name="mnist", root=str(tmp_path))), arrays)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_fashion_mnist_flat_layout(tmp_path, gz):
    arrays = mnist_arrays(n_train=10, n_test=4, size=(28, 28), seed=3)
    write_mnist_files(tmp_path, arrays, gz=gz)  # files directly in root, as Debian ships them
    source = make_source(SourceConfig(name="fashion-mnist", root=str(tmp_path)))
    assert source.name == "fashion-mnist"
    _assert_mnist_roundtrip(source, arrays)


def test_fashion_mnist_torchvision_layout(tmp_path):
    arrays = mnist_arrays(n_train=6, n_test=2, seed=4)
    write_mnist_files(torchvision_raw_folder(tmp_path, "fashion-mnist"), arrays)
    _assert_mnist_roundtrip(make_source(SourceConfig(name="fashion-mnist", root=str(tmp_path))), arrays)


def test_limit_keeps_first_n(tmp_path):
    arrays = mnist_arrays(n_train=12, n_test=5)
    write_mnist_files(tmp_path, arrays)
    source = make_source(SourceConfig(name="fashion-mnist", root=str(tmp_path), limit=4))
    assert (source.count("train"), source.count("test")) == (4, 4)
    _assert_mnist_roundtrip(source, {s: (x[:4], y[:4]) for s, (x, y) in arrays.items()})
    assert source.describe()["counts"] == {"train": 4, "test": 4}
    # A limit above the size keeps everything.
    assert make_source(SourceConfig(name="fashion-mnist", root=str(tmp_path), limit=100)).count("train") == 12


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DEBIAN_ROOT).is_dir(),
    reason=f"{FASHION_MNIST_DEBIAN_ROOT} absent (Debian package dataset-fashion-mnist)",
)
def test_debian_fashion_mnist_opens():
    source = make_source(SourceConfig(name="fashion-mnist"))  # default root: the Debian package
    d = source.describe()
    assert d["counts"] == {"train": 60000, "test": 10000}
    assert sum(d["counts"].values()) == 70000
    assert (d["resolution"], d["channels"], d["classes"]) == ([28, 28], 1, 10)
    assert d["class_names"][0] == "T-shirt/top" and d["class_names"][9] == "Ankle boot"
    x, y = source.read("test", 9990, 10000)
    assert x.shape == (10, 1, 28, 28) and x.dtype == np.uint8 and x.max() > 0
    assert y.min() >= 0 and y.max() < 10
    # The file's own first test labels (t10k-labels: 9, 2, 1, 1, 6, ...).
    np.testing.assert_array_equal(source.read("test", 0, 5)[1], [9, 2, 1, 1, 6])
    _, y_all = _read_all(source, "train")
    np.testing.assert_array_equal(np.bincount(y_all, minlength=10), np.full(10, 6000))


# -- download via torchvision, without network -------------------------------------------------------
@pytest.mark.parametrize(
    "name,cls_name", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("cifar10", "CIFAR10")]
)
def test_download_calls_torchvision(tmp_path, monkeypatch, name, cls_name):
    import torchvision.datasets

    calls = []
    written = {}

    class Fake:
        """Stands in for the torchvision dataset class: 'downloads' into the folder torchvision uses."""

        def __init__(self, root, train=True, download=False, **kwargs):
            calls.append((root, train, download))
            if name == "cifar10":
                written.update(write_cifar(Path(root)))  # <root>/cifar-10-batches-py
            else:
                arrays = mnist_arrays(n_train=5, n_test=3, seed=5)
                write_mnist_files(Path(root) / cls_name / "raw", arrays, gz=True)  # torchvision: <root>/<Class>/raw
                written.update(arrays)

    monkeypatch.setattr(torchvision.datasets, cls_name, Fake)
    source = make_source(SourceConfig(name=name, root=str(tmp_path), download=True))
    assert calls and all(r == str(tmp_path) and dl for r, _, dl in calls)
    assert {train for _, train, _ in calls} == {True, False}
    for split, (x, y) in written.items():
        got_x, got_y = _read_all(source, split)
        np.testing.assert_array_equal(got_x.reshape(x.shape), x)
        np.testing.assert_array_equal(got_y, y)


def test_download_without_root_goes_under_data_not_the_read_only_debian_folder(tmp_path, monkeypatch):
    import torchvision.datasets

    roots = []

    class Fake:
        def __init__(self, root, train=True, download=False, **kwargs):
            roots.append(root)
            write_mnist_files(Path(root) / "FashionMNIST" / "raw", mnist_arrays(n_train=5, n_test=3, seed=5), gz=True)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Fake)
    source = make_source(SourceConfig(name="fashion-mnist", download=True))
    assert set(roots) == {"data/fashion-mnist"}
    assert source.count("train") == 5


def test_no_download_by_default(tmp_path, monkeypatch):
    import torchvision.datasets

    def boom(*a, **k):
        raise AssertionError("downloader called although source.download is false")

    monkeypatch.setattr(torchvision.datasets, "MNIST", boom)
    with pytest.raises(SourceError, match="train-images-idx3-ubyte"):
        make_source(SourceConfig(name="mnist", root=str(tmp_path)))


# -- CIFAR-10 -------------------------------------------------------------------------------------------
def test_cifar10_pickles(tmp_path):
    arrays = write_cifar(tmp_path, per_batch=(3, 2, 4, 1, 2), n_test=3)
    source = make_source(SourceConfig(name="cifar10", root=str(tmp_path)))
    assert (source.channels, source.height, source.width, source.classes) == (3, 32, 32, 10)
    assert (source.count("train"), source.count("test")) == (12, 3)
    for split, (x, y) in arrays.items():
        got_x, got_y = _read_all(source, split)
        assert got_x.dtype == np.uint8 and got_x.shape == x.shape
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
    # Ranges that cross batch boundaries (batches hold 3, 2, 4, 1, 2 images).
    x, y = arrays["train"]
    for a, b in [(2, 6), (0, 1), (5, 10), (9, 12), (8, 9)]:
        got_x, got_y = source.read("train", a, b)
        np.testing.assert_array_equal(got_x, x[a:b])
        np.testing.assert_array_equal(got_y, y[a:b])
    # Channel layout: b'data' holds 1024 red values first.
    raw = cifar_batch_dict(x[:1], y[:1], "b")[b"data"]
    np.testing.assert_array_equal(source.read("train", 0, 1)[0][0, 0].ravel(), raw[0, :1024])


def test_cifar10_limit(tmp_path):
    arrays = write_cifar(tmp_path)
    source = make_source(SourceConfig(name="cifar10", root=str(tmp_path), limit=4))
    assert (source.count("train"), source.count("test")) == (4, 3)
    got_x, got_y = _read_all(source, "train")
    np.testing.assert_array_equal(got_x, arrays["train"][0][:4])
    np.testing.assert_array_equal(got_y, arrays["train"][1][:4])


# -- image folder ---------------------------------------------------------------------------------------
def test_imagefolder_rgb_exact(tmp_path):
    files = write_imagefolder(tmp_path, size=(6, 4), mode="RGB")
    source = make_source(SourceConfig(name="imagefolder", root=str(tmp_path), image_size=[6, 4], channels=3))
    assert (source.classes, source.channels, source.height, source.width) == (3, 3, 6, 4)
    assert source.class_names == ["ant", "bee", "cat"]
    for split, rows in files.items():
        x, y = _read_all(source, split)
        assert x.shape == (len(rows), 3, 6, 4) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, np.stack([a.transpose(2, 0, 1) for _, _, a in rows]))
        np.testing.assert_array_equal(y, [label for _, label, _ in rows])


def test_imagefolder_grayscale_and_resize(tmp_path):
    from PIL import Image

    files = write_imagefolder(tmp_path, size=(10, 12), mode="RGB", per_class={"train": 2, "test": 1})
    source = make_source(SourceConfig(name="imagefolder", root=str(tmp_path), image_size=[4, 6], channels=1))
    x, y = _read_all(source, "train")
    assert x.shape == (6, 1, 4, 6)
    for i, (path, label, _) in enumerate(files["train"]):
        with Image.open(path) as im:
            want = np.asarray(im.convert("L").resize((6, 4), Image.BILINEAR))
        np.testing.assert_array_equal(x[i, 0], want)
        assert y[i] == label
    assert source.count("test") == 3


def test_imagefolder_limit_and_gray_source(tmp_path):
    files = write_imagefolder(tmp_path, size=(4, 4), mode="L", per_class={"train": 3, "test": 1})
    source = make_source(SourceConfig(name="imagefolder", root=str(tmp_path), image_size=[4, 4], channels=1, limit=5))
    assert source.count("train") == 5 and source.count("test") == 3
    x, y = _read_all(source, "train")
    np.testing.assert_array_equal(x[:, 0], np.stack([a for _, _, a in files["train"][:5]]))
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1])


# -- synthetic ------------------------------------------------------------------------------------------
def _synthetic(**kw):
    syn = {"train": 2 * SYNTHETIC_CHUNK + 100, "test": 50, "height": 4, "width": 6, "channels": 2, "classes": 3, **kw}
    return make_source(SourceConfig(name="synthetic", synthetic=SyntheticConfig(**syn)))


def test_synthetic_seeded():
    a, b, other = _synthetic(seed=1), _synthetic(seed=1), _synthetic(seed=2)
    xa, ya = a.read("train", 0, 64)
    xb, yb = b.read("train", 0, 64)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert xa.shape == (64, 2, 4, 6) and xa.dtype == np.uint8
    assert ya.min() >= 0 and ya.max() < 3 and len(np.unique(ya)) == 3
    assert not np.array_equal(xa, other.read("train", 0, 64)[0])
    # train and test are different images.
    assert not np.array_equal(xa[:50], a.read("test", 0, 50)[0])


def test_synthetic_random_access_across_chunks():
    source = _synthetic()
    n = source.count("train")
    x_all, y_all = source.read("train", 0, n)
    assert x_all.shape[0] == n and len(y_all) == n
    c = SYNTHETIC_CHUNK
    for a, b in [(0, 1), (c - 3, c + 5), (c - 1, c), (c, c + 1), (5, 2 * c + 7), (2 * c + 50, n), (n - 1, n)]:
        x, y = source.read("train", a, b)
        assert len(x) == b - a
        np.testing.assert_array_equal(x, x_all[a:b])
        np.testing.assert_array_equal(y, y_all[a:b])


def test_synthetic_limit_and_describe():
    source = make_source(
        SourceConfig(name="synthetic", limit=7, synthetic=SyntheticConfig(train=20, test=3, height=8, width=8))
    )
    assert source.describe() == {
        "name": "synthetic",
        "resolution": [8, 8],
        "channels": 1,
        "classes": 10,
        "counts": {"train": 7, "test": 3},
        "class_names": [str(i) for i in range(10)],
    }


# -- bad input: a clear error naming the file, and no manifest ---------------------------------------
def _assert_rejected_before_writing(tmp_path, source_cfg, match, split_cfg=None, exc=SourceError):
    """make_source and split_dataset both raise ``exc`` matching ``match``; the run holds no manifest."""
    with pytest.raises(exc, match=match):
        make_source(source_cfg)
    run = tmp_path / "run"
    storage = RunStorage(str(run))
    with pytest.raises(exc, match=match):
        split_dataset(source_cfg, split_cfg or SplitConfig(), storage)
    assert not (run / MANIFEST).exists()
    assert not run.exists() or not any(run.rglob("*.parquet"))


@pytest.fixture
def fmnist_dir(tmp_path):
    """A flat Fashion-MNIST folder (gz) with 10 train and 4 test 8x8 images; returns (root, paths, arrays)."""
    root = tmp_path / "src"
    arrays = mnist_arrays(n_train=10, n_test=4)
    paths = write_mnist_files(root, arrays)
    return root, paths, arrays


def test_missing_file(tmp_path, fmnist_dir):
    root, paths, _ = fmnist_dir
    paths["t10k-labels-idx1-ubyte"].unlink()
    _assert_rejected_before_writing(
        tmp_path,
        SourceConfig(name="fashion-mnist", root=str(root)),
        r"missing source file t10k-labels-idx1-ubyte.*" + str(root),
    )


def test_missing_root(tmp_path):
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="mnist", root=str(tmp_path / "nowhere")), r"train-images-idx3-ubyte.*nowhere"
    )


@pytest.mark.parametrize("stem", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_gz(tmp_path, fmnist_dir, stem, keep):
    root, paths, _ = fmnist_dir
    path = paths[stem]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    _assert_rejected_before_writing(tmp_path, SourceConfig(name="fashion-mnist", root=str(root)), str(path))


def test_truncated_raw_idx(tmp_path):
    root = tmp_path / "src"
    paths = write_mnist_files(root, mnist_arrays(n_train=10, n_test=4), gz=False)
    path = paths["train-images-idx3-ubyte"]
    path.write_bytes(path.read_bytes()[:-10])
    _assert_rejected_before_writing(tmp_path, SourceConfig(name="fashion-mnist", root=str(root)), rf"{path}.*truncated")


@pytest.mark.parametrize("damage", ["crc", "deflate"])
def test_corrupt_gz_bytes(tmp_path, fmnist_dir, damage):
    root, paths, _ = fmnist_dir
    path = paths["train-images-idx3-ubyte"]
    data = bytearray(path.read_bytes())
    if damage == "crc":
        data[20:40] = bytes(20)  # inside a stored block: decompresses, then the CRC check fails
    else:
        data[10] |= 0x06  # first deflate block header (after gzip's 10 bytes): BTYPE=11 is reserved -> zlib.error
    path.write_bytes(bytes(data))
    _assert_rejected_before_writing(tmp_path, SourceConfig(name="fashion-mnist", root=str(root)), str(path))


def test_wrong_magic(tmp_path, fmnist_dir):
    root, paths, arrays = fmnist_dir
    path = paths["train-images-idx3-ubyte"]
    write_idx(path, arrays["train"][0], magic=0x00000903)  # not unsigned-byte data
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="fashion-mnist", root=str(root)), rf"{path}.*magic.*0x00000903.*0x00000803"
    )


def test_labels_file_with_images_magic(tmp_path, fmnist_dir):
    root, paths, arrays = fmnist_dir
    path = paths["t10k-labels-idx1-ubyte"]
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 1, 1), np.uint8))))
    _assert_rejected_before_writing(tmp_path, SourceConfig(name="fashion-mnist", root=str(root)), rf"{path}.*magic")


def test_labels_out_of_range(tmp_path, fmnist_dir):
    root, paths, arrays = fmnist_dir
    y = arrays["train"][1].copy()
    y[6] = 10
    path = write_idx(paths["train-labels-idx1-ubyte"], y)
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="fashion-mnist", root=str(root)), rf"{path}.*label 10 at index 6.*out of range"
    )


def test_image_label_count_mismatch(tmp_path, fmnist_dir):
    root, paths, arrays = fmnist_dir
    write_idx(paths["t10k-labels-idx1-ubyte"], arrays["test"][1][:3])
    _assert_rejected_before_writing(
        tmp_path,
        SourceConfig(name="fashion-mnist", root=str(root)),
        r"t10k-images-idx3-ubyte.* 4 images.*t10k-labels-idx1-ubyte.* 3 labels",
    )


def test_train_test_resolution_mismatch(tmp_path, fmnist_dir):
    root, paths, _ = fmnist_dir
    write_idx(paths["t10k-images-idx3-ubyte"], np.zeros((4, 6, 6), np.uint8))
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="fashion-mnist", root=str(root)), r"t10k-images-idx3-ubyte.*\(6, 6\)"
    )


def test_cifar_missing_data_field(tmp_path):
    src = tmp_path / "src"
    arrays = write_cifar(src)
    d = cifar_batch_dict(*[a[:3] for a in arrays["train"]], "b3")
    del d[b"data"]
    path = write_pickle(src / CIFAR_FOLDER / "data_batch_3", d)
    _assert_rejected_before_writing(tmp_path, SourceConfig(name="cifar10", root=str(src)), rf"{path}.*b'data'")


def test_cifar_wrong_shape(tmp_path):
    src = tmp_path / "src"
    write_cifar(src)
    d = cifar_batch_dict(np.zeros((2, 3, 32, 32), np.uint8), [0, 1], "t")
    d[b"data"] = d[b"data"].reshape(2, 3, 32, 32)  # not flattened to 3072
    path = write_pickle(src / CIFAR_FOLDER / "test_batch", d)
    _assert_rejected_before_writing(tmp_path, SourceConfig(name="cifar10", root=str(src)), rf"{path}.*\(2, 3, 32, 32\)")


def test_cifar_missing_and_truncated_batch(tmp_path):
    src = tmp_path / "src"
    write_cifar(src)
    (src / CIFAR_FOLDER / "data_batch_5").unlink()
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="cifar10", root=str(src)), r"missing source file .*data_batch_5"
    )
    write_cifar(src)
    path = src / CIFAR_FOLDER / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="cifar10", root=str(src)), rf"{path}.*truncated or corrupt"
    )


def test_cifar_label_out_of_range_and_count(tmp_path):
    src = tmp_path / "src"
    write_cifar(src)
    path = write_pickle(
        src / CIFAR_FOLDER / "data_batch_1", cifar_batch_dict(np.zeros((2, 3, 32, 32), np.uint8), [1, 12], "b1")
    )
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="cifar10", root=str(src)), rf"{path}.*label 12 at index 1"
    )
    d = cifar_batch_dict(np.zeros((2, 3, 32, 32), np.uint8), [1, 2], "b1")
    d[b"labels"] = [1, 2, 3]
    write_pickle(path, d)
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="cifar10", root=str(src)), rf"{path}.*3 labels for 2 images"
    )


def test_imagefolder_missing_train(tmp_path):
    _assert_rejected_before_writing(
        tmp_path,
        SourceConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=[4, 4]),
        r"missing folder .*imgs/train",
    )


def test_imagefolder_unknown_test_class(tmp_path):
    src = tmp_path / "src"
    write_imagefolder(src, size=(4, 4))
    (src / "test" / "zebra").mkdir()
    _assert_rejected_before_writing(
        tmp_path, SourceConfig(name="imagefolder", root=str(src), image_size=[4, 4]), r"test/zebra"
    )


def test_image_size_not_divisible_by_split(tmp_path):
    cfg = SourceConfig(name="synthetic", synthetic=SyntheticConfig(train=10, test=2, height=9, width=9))
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"\(H, W\) = \(9, 9\).*\(rows, cols\) = \(2, 2\)"):
        split_dataset(cfg, SplitConfig(rows=2, cols=2), RunStorage(str(run)))
    assert not run.exists()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "svhn"}, "source.name"),
        ({"name": "synthetic", "limit": 0}, "source.limit"),
        ({"name": "imagefolder"}, "source.root"),
        ({"name": "mnist", "skip_bad": True}, "source.skip_bad"),
        ({"name": "imagefolder", "root": "/x", "image_size": 0}, "source.image_size"),
        ({"name": "imagefolder", "root": "/x", "image_size": [4]}, "source.image_size"),
        ({"name": "synthetic", "channels": 2}, "source.channels"),
    ],
)
def test_source_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SourceConfig(**kwargs)


def test_missing_debian_fashion_mnist_names_both_ways_out(tmp_path, monkeypatch):
    import data_split.sources as sources
    from data_split.config import SourceConfig

    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_ROOT", str(tmp_path / "absent"))
    with pytest.raises(sources.SourceError) as e:
        sources.make_source(SourceConfig(name="fashion-mnist"))
    assert "apt-get install dataset-fashion-mnist" in str(e.value) and "--set source.download=true" in str(e.value)
