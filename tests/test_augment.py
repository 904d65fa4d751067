"""Exact spectral augmentation: for every transform, augment-then-split == split-then-augment for each augmentation
the code calls exact; the others are refused with the exact ones listed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_split.augment import (
    AUGMENTATIONS,
    QUARTER_TURNS,
    SYMMETRIES,
    branch_signs,
    check_augment,
    exact_augmentations,
    image_op,
    translate,
)
from data_split.transforms import TRANSFORMS, spectral_components, split_matrix, transform_matrix

SHAPES = [(1, 1), (2, 2), (4, 4), (1, 4), (2, 4)]  # 1 x 1: the full-resolution baseline


def _cases():
    for name in TRANSFORMS:
        for r, c in SHAPES:
            try:
                yield name, r, c, split_matrix(name, r, c)
            except ValueError:  # e.g. haar needs K a power of two
                continue


@pytest.mark.parametrize("name,r,c,t", [pytest.param(*case, id=f"{case[0]}-{case[1]}x{case[2]}") for case in _cases()])
def test_augment_then_split_equals_split_then_augment(name, r, c, t):
    x = np.random.default_rng(0).random((3, 2, 3 * r, 5 * c))  # (N, C, H, W), sub-images 3 x 5
    s = spectral_components(x, r, c, t)  # (N, K, C, h, w)
    exact = exact_augmentations(t, r, c, s.shape[2:])
    assert exact[0] == "crop"
    for dy, dx in ((1, 0), (0, -2), (-1, 1)):  # translating the image by whole sub-pixels (dy*r, dx*c pixels)
        moved = spectral_components(translate(x, dy * r, dx * c), r, c, t)
        np.testing.assert_allclose(moved, translate(s, dy, dx), atol=1e-12)
    assert not set(exact) & set(QUARTER_TURNS)  # 3 x 5 sub-images: a quarter turn changes the branch's shape
    if r == c:
        x = np.random.default_rng(0).random((3, 2, 4 * r, 4 * c))  # square sub-images, for the quarter turns
        s = spectral_components(x, r, c, t)
        exact = exact_augmentations(t, r, c, s.shape[2:])
    for f in SYMMETRIES:
        signs = branch_signs(f, t, r, c)
        if r != c and f in QUARTER_TURNS:  # the turned image's phases are not an r x c grid's
            assert signs is None and f not in exact
            continue
        got = spectral_components(np.ascontiguousarray(image_op(f, x)), r, c, t)
        want = image_op(f, s) * (signs if signs is not None else np.ones(r * c))[None, :, None, None, None]
        if f in exact:
            np.testing.assert_allclose(got, want, atol=1e-12, err_msg=f)
        else:  # the code's "not exact" is true: no per-branch sign makes the split commute with f
            assert signs is None
            assert not np.allclose(np.abs(got), np.abs(image_op(f, s)), atol=1e-6), f


def test_flips_are_exact_for_some_transforms_and_not_others():
    assert exact_augmentations(transform_matrix("identity", 4), 2, 2) == ["crop"]  # phases swap: never exact
    assert "hflip" in exact_augmentations(transform_matrix("haar", 2), 1, 2)  # the pair difference changes sign
    np.testing.assert_array_equal(branch_signs("hflip", transform_matrix("haar", 2), 1, 2), [1, -1])
    # 1 x 4 DCT: reversal gives (-1)^k; with one phase row a vertical flip moves no phase
    assert exact_augmentations(transform_matrix("dct", 4), 1, 4) == ["crop", "hflip", "vflip", "rot180"]
    # 2 x 2 haar2 (= haar_2 (x) haar_2): a transpose swaps the row and column differences, so it is not exact;
    assert "transpose" not in exact_augmentations(split_matrix("haar2", 2, 2), 2, 2)
    assert "rot90" not in exact_augmentations(transform_matrix("dct", 4), 2, 2, (1, 3, 5))  # not square
    # K = 1 (the baseline): every symmetry of a square image is exact; a 2 x 2 dct2 maps branch (i, j) to (j, i)
    assert exact_augmentations(split_matrix("identity", 1, 1), 1, 1, (1, 4, 4)) == list(AUGMENTATIONS)
    assert "transpose" not in exact_augmentations(split_matrix("dct2", 2, 2), 2, 2, (1, 4, 4))
    np.testing.assert_array_equal(branch_signs("vflip", transform_matrix("dct", 4), 1, 4), [1, 1, 1, 1])
    np.testing.assert_array_equal(branch_signs("hflip", transform_matrix("dct", 4), 1, 4), [1, -1, 1, -1])


def test_inexact_augmentation_is_refused_with_the_exact_ones_listed():
    t = transform_matrix("identity", 4)
    with pytest.raises(
        ValueError, match=r"train\.augment: hflip is not exact for the 2x2 identity split.*exact here: crop$"
    ):
        check_augment(["crop", "hflip"], t, 2, 2, "identity")
    with pytest.raises(ValueError, match=r"unknown \['spin'\]"):
        check_augment(["spin"], t, 2, 2, "identity")
    check_augment(["crop", "hflip"], transform_matrix("dct", 4), 1, 4, "dct")  # exact: no error
    assert set(AUGMENTATIONS) == {"crop", *SYMMETRIES}
    with pytest.raises(ValueError, match=r"rot90 is not exact.*quarter turns need r == c and square sub-images"):
        check_augment(["rot90"], transform_matrix("dct", 4), 1, 4, "dct")


def test_torch_and_numpy_agree():
    x = np.random.default_rng(1).random((2, 1, 4, 6)).astype(np.float32)
    for f in SYMMETRIES:
        np.testing.assert_array_equal(image_op(f, torch.from_numpy(x)).numpy(), image_op(f, x))
    sq = x[..., :4]
    np.testing.assert_array_equal(image_op("rot90", image_op("rot270", sq)), sq)
    np.testing.assert_array_equal(image_op("rot90", image_op("rot90", sq)), image_op("rot180", sq))
    np.testing.assert_array_equal(translate(torch.from_numpy(x), 1, -2).numpy(), translate(x, 1, -2))
