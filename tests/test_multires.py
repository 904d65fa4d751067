"""data_split.multires: which branches a lower-resolution source feeds, and exact values from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_split.multires import fed_branches, lowres_components, plan_extra_source, reduction_factors
from data_split.transforms import TRANSFORMS, spectral_components, split_matrix
from orchestrator.config import ConfigError, from_dict

# (transform, r, c, fr, fc): the cases the issue names, plus a 4x box average.
EXACT_CASES = [
    ("dct", 2, 2, 2, 2),
    ("dct", 4, 4, 2, 2),
    ("dct", 4, 4, 4, 4),
    ("haar2", 4, 4, 2, 2),
    ("haar2", 4, 4, 4, 4),
]


def box_average(x: np.ndarray, fr: int, fc: int) -> np.ndarray:
    n, ch, h, w = x.shape
    return x.reshape(n, ch, h // fr, fr, w // fc, fc).mean(axis=(3, 5))


@pytest.mark.parametrize(
    "name,r,c,fr,fc,want",
    [
        ("dct", 2, 2, 2, 2, [0]),
        ("dct", 4, 4, 2, 2, [0]),
        ("haar2", 4, 4, 2, 2, [0, 1, 4, 5]),  # kr < 2 and kc < 2: one pyramid level, 4 of 16
        ("haar2", 4, 4, 4, 4, [0]),
        ("haar2", 4, 4, 2, 1, [0, 1, 2, 3, 4, 5, 6, 7]),  # only rows halved: every kr < 2
        ("haar2", 2, 2, 1, 1, [0, 1, 2, 3]),  # full resolution feeds everything
        ("haar", 2, 2, 1, 2, [0, 1]),  # 1-D haar on k = a*c + b: rows 0 and 1 do not depend on b
        ("identity", 2, 2, 2, 2, []),
        ("dft", 2, 2, 2, 2, [0]),
    ],
)
def test_fed_branches(name, r, c, fr, fc, want):
    assert fed_branches(split_matrix(name, r, c), r, c, fr, fc) == want


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("fr,fc", [(2, 2), (2, 1), (1, 4)])
def test_fed_iff_blind_to_detail_below_the_source_resolution(name, fr, fc):
    """A branch is fed iff it does not change when detail with zero block means is added.

    That is what "determined by the box averages" means; checked on data, independently of the
    block-constancy rule that ``fed_branches`` reads off the matrix.
    """
    r, c = 4, 4
    rng = np.random.default_rng(1)
    x = rng.random((2, 1, 8, 8))
    detail = rng.standard_normal(x.shape)
    detail -= np.repeat(np.repeat(box_average(detail, fr, fc), fr, axis=2), fc, axis=3)  # zero mean per block
    t = split_matrix(name, r, c)
    change = np.abs(spectral_components(x + detail, r, c, t) - spectral_components(x, r, c, t)).max(axis=(0, 2, 3, 4))
    assert fed_branches(t, r, c, fr, fc) == [k for k in range(r * c) if change[k] < 1e-9]


@pytest.mark.parametrize("name,r,c,fr,fc", EXACT_CASES)
def test_float_box_averages_give_the_branches_exactly(name, r, c, fr, fc):
    x = np.random.default_rng(2).random((3, 2, 4 * r, 2 * c))  # H != W catches axis mix-ups
    t = split_matrix(name, r, c)
    fed, low = lowres_components(box_average(x, fr, fc), r, c, fr, fc, t)
    assert fed == fed_branches(t, r, c, fr, fc) and len(fed) >= 1
    assert low.shape == (3, len(fed), 2, 4, 2)
    np.testing.assert_allclose(low, spectral_components(x, r, c, t)[:, fed], rtol=0, atol=1e-12)
    # float32 and torch: the same numbers to float32 precision.
    x32 = torch.from_numpy(box_average(x, fr, fc).astype(np.float32))
    _, low32 = lowres_components(x32, r, c, fr, fc, t)
    assert isinstance(low32, torch.Tensor) and low32.dtype == torch.float32
    np.testing.assert_allclose(low32.numpy(), low, rtol=0, atol=2e-6)


@pytest.mark.parametrize("name,r,c,fr,fc", EXACT_CASES)
def test_8bit_lowres_files_within_their_rounding(name, r, c, fr, fc):
    """Low-res uint8 files (box averages rounded to 1/255): off by at most sum_p |T[k, p]| * 0.5/255."""
    x8 = np.random.default_rng(3).integers(0, 256, (50, 1, 4 * r, 4 * c), dtype=np.uint8)
    x = x8 / 255.0
    low8 = np.round(box_average(x8.astype(np.float64), fr, fc)).astype(np.uint8)  # what site B's files hold
    t = split_matrix(name, r, c)
    fed, low = lowres_components(low8 / 255.0, r, c, fr, fc, t)
    err = np.abs(low - spectral_components(x, r, c, t)[:, fed]).max(axis=(0, 2, 3, 4))  # (n_fed,)
    bound = np.abs(t[fed]).sum(axis=1) * 0.5 / 255
    assert (err <= bound + 1e-12).all(), (err, bound)
    assert err.max() > 0.2 * bound.max()  # the rounding is really there: the bound is not vacuous


def test_reduction_factors_and_errors():
    assert reduction_factors((28, 28), (14, 14), 2, 2, "x") == (2, 2)
    assert reduction_factors((28, 28), (28, 14), 4, 4, "x") == (1, 2)
    assert reduction_factors((28, 28), (7, 7), 4, 4, "x") == (4, 4)
    with pytest.raises(ValueError, match=r"extra_sources\[0\].*10x10.*28x28.*14x14 \(fr=2, fc=2\)"):
        reduction_factors((28, 28), (10, 10), 2, 2, "extra_sources[0] (mnist)")
    with pytest.raises(ValueError, match=r"7x7"):  # 4x smaller needs fr = 4, which does not divide r = 2
        reduction_factors((28, 28), (7, 7), 2, 2, "extra_sources[0]")


def test_source_that_feeds_nothing_is_an_error_that_says_why():
    with pytest.raises(ValueError, match=r"extra_sources\[1\].*feeds no branch.*'identity'.*constant on 2x2 blocks"):
        plan_extra_source(split_matrix("identity", 2, 2), 2, 2, (28, 28), (14, 14), "extra_sources[1]", "identity")
    assert plan_extra_source(split_matrix("haar2", 4, 4), 4, 4, (28, 28), (14, 14), "e", "haar2") == (
        2,
        2,
        [0, 1, 4, 5],
    )


def test_extra_sources_config():
    cfg = from_dict({"extra_sources": [{"name": "mnist", "root": "/b", "limit": 5, "resources": {"site_b": 1}}]})
    (extra,) = cfg.extra_sources
    assert (extra.name, extra.root, extra.limit, extra.resources) == ("mnist", "/b", 5, {"site_b": 1.0})
    assert from_dict({}).extra_sources == []
    with pytest.raises(ConfigError, match=r"extra_sources\[0\]\.colour"):
        from_dict({"extra_sources": [{"name": "mnist", "colour": 1}]})
    with pytest.raises(ConfigError, match="positive"):
        from_dict({"extra_sources": [{"name": "mnist", "resources": {"site_b": 0}}]})
    with pytest.raises(ConfigError, match="haar2.*powers of two"):
        from_dict({"split": {"rows": 3, "cols": 2, "transform": "haar2"}})
