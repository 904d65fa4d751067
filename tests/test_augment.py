"""Exact spectral augmentation: for every transform, augment-then-split == split-then-augment for each augmentation
the code calls exact; the others are refused with the exact ones listed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_split.augment import (
    AUGMENTATIONS, FLIPS, branch_signs, check_augment, exact_augmentations, image_op, translate,
)
from data_split.transforms import TRANSFORMS, spectral_components, transform_matrix

SHAPES = [(2, 2), (4, 4), (1, 4), (2, 4)]


def _cases():
    for name in TRANSFORMS:
        for r, c in SHAPES:
            try:
                yield name, r, c, transform_matrix(name, r * c)
            except ValueError:  # e.g. haar needs K a power of two
                continue


@pytest.mark.parametrize("name,r,c,t", [pytest.param(*case, id=f"{case[0]}-{case[1]}x{case[2]}") for case in _cases()])
def test_augment_then_split_equals_split_then_augment(name, r, c, t):
    x = np.random.default_rng(0).random((3, 2, 3 * r, 5 * c))  # (N, C, H, W), sub-images 3 x 5
    s = spectral_components(x, r, c, t)  # (N, K, C, h, w)
    exact = exact_augmentations(t, r, c)
    assert exact[0] == "crop"
    for dy, dx in ((1, 0), (0, -2), (-1, 1)):  # translating the image by whole sub-pixels (dy*r, dx*c pixels)
        moved = spectral_components(translate(x, dy * r, dx * c), r, c, t)
        np.testing.assert_allclose(moved, translate(s, dy, dx), atol=1e-12)
    for f in FLIPS:
        signs = branch_signs(f, t, r, c)
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
    np.testing.assert_array_equal(branch_signs("vflip", transform_matrix("dct", 4), 1, 4), [1, 1, 1, 1])
    np.testing.assert_array_equal(branch_signs("hflip", transform_matrix("dct", 4), 1, 4), [1, -1, 1, -1])


def test_inexact_augmentation_is_refused_with_the_exact_ones_listed():
    t = transform_matrix("identity", 4)
    with pytest.raises(ValueError, match=r"train\.augment: hflip is not exact for the 2x2 identity split.*exact here: crop$"):
        check_augment(["crop", "hflip"], t, 2, 2, "identity")
    with pytest.raises(ValueError, match=r"unknown \['spin'\]"):
        check_augment(["spin"], t, 2, 2, "identity")
    check_augment(["crop", "hflip"], transform_matrix("dct", 4), 1, 4, "dct")  # exact: no error
    assert set(AUGMENTATIONS) == {"crop", *FLIPS}


def test_torch_and_numpy_agree():
    x = np.random.default_rng(1).random((2, 1, 4, 6)).astype(np.float32)
    for f in FLIPS:
        np.testing.assert_array_equal(image_op(f, torch.from_numpy(x)).numpy(), image_op(f, x))
    np.testing.assert_array_equal(translate(torch.from_numpy(x), 1, -2).numpy(), translate(x, 1, -2))
