"""data_split.manifest: the typed manifest reads and writes manifest.json unchanged (docs/storage.md)."""

from __future__ import annotations

import pytest

from data_split import RunStorage, layout
from data_split.manifest import BranchInfo, Manifest, ManifestError, SplitFiles


def test_a_real_split_round_trips_json_to_manifest_to_json(tiny_split, tmp_path):
    _, storage = tiny_split
    on_disk = storage.read_json(layout.MANIFEST)
    m = layout.load_manifest(storage)
    assert m.to_json() == on_disk and list(m.to_json()) == list(on_disk)  # the same fields, in the same order
    assert Manifest.from_json(m.to_json()) == m
    copy = RunStorage(str(tmp_path / "copy"))
    layout.write_manifest(copy, m)
    assert copy.read_bytes(layout.MANIFEST) == storage.read_bytes(layout.MANIFEST)  # byte for byte
    # the typed view of what is there
    assert (m.K, m.split.shape, m.source.classes, m.source.root) == (4, (1, 4, 4), 4, None)
    assert isinstance(m.branches[3], BranchInfo) and isinstance(m.branches[3].splits["val"], SplitFiles)
    assert sum(m.branches[0].splits[s].rows for s in ("train", "val", "test")) == sum(m.counts.values())


def test_absent_fields_stay_absent_and_unset_ones_stay_null():
    obj = {
        "version": 2,
        "source": {"name": "synthetic", "classes": 4, "root": None, "limit": None},
        "split": {"r": 1, "c": 2, "K": 2, "transform": "dct"},
        "branches": [{"k": 0, "mean": [0.5], "std": [0.1], "splits": {"train": {"rows": 3, "files": ["a"]}}}],
    }
    m = Manifest.from_json(obj)
    assert m.branches[0].offset is None and m.split.dtype is None and m.sources == []
    back = m.to_json()
    assert back["source"] == obj["source"] and back["split"] == obj["split"] and back["branches"] == obj["branches"]


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"version": 2, "branches": {"0": {}}}, r"^branches: expected a list"),
        ({"version": 2, "split": {"r": 2, "c": 2, "transform": "dct"}}, r"^lacks field\(s\) split\.K$"),
        (
            {"version": 2, "branches": [{"k": 0, "splits": {"val": {"files": []}}}]},
            r"lacks field\(s\) branches\[0\]\.splits\.val\.rows",
        ),
    ],
)
def test_a_field_of_the_wrong_shape_is_named(obj, message):
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(obj)


def test_load_manifest_names_the_file_of_a_malformed_manifest(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    storage.write_json(layout.MANIFEST, {"version": layout.MANIFEST_VERSION, "split": {"r": 1}})
    with pytest.raises(
        ManifestError, match=rf"{layout.MANIFEST}: lacks field\(s\) split\.c, split\.K, split\.transform"
    ):
        layout.load_manifest(storage, fields=("split",))
