"""data_split.transforms: orthonormal matrices, the polyphase split, lossless round trips, numpy == torch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from data_split.transforms import (
    SEPARABLE,
    TRANSFORMS,
    polyphase_split,
    spectral_components,
    spectral_merge,
    spectral_split,
    split_matrix,
    transform_matrix,
)

SIZES = (1, 2, 3, 4, 9, 16)
SHAPES = ((2, 2), (1, 4), (3, 3), (4, 4))  # (r, c)


def _pow2(k: int) -> bool:
    return (k & (k - 1)) == 0


def _defined(name: str, r: int, c: int) -> bool:
    """haar: K a power of two; haar2: r and c powers of two."""
    return {"haar": _pow2(r * c), "haar2": _pow2(r) and _pow2(c)}.get(name, True)


ONE_D = [n for n in TRANSFORMS if n not in SEPARABLE]
# (transform, K) and (transform, r, c) where the transform is defined.
MATRIX_CASES = [(n, k) for n in ONE_D for k in SIZES if _defined(n, 1, k)]
SPLIT_CASES = [(n, r, c) for n in TRANSFORMS for r, c in SHAPES if _defined(n, r, c)]
SEPARABLE_CASES = [(n, r, c) for n in SEPARABLE for r, c in SHAPES + ((2, 4), (4, 1)) if _defined(n, r, c)]


def _images(r: int, c: int, seed: int = 0) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1], H and W divisible by (r, c), H != W to catch axis mix-ups."""
    return np.random.default_rng(seed).random((3, 2, 4 * r, 3 * c), dtype=np.float32)


@pytest.mark.parametrize("name,k", MATRIX_CASES)
def test_matrix_is_orthonormal(name, k):
    t = transform_matrix(name, k)
    assert t.shape == (k, k) and t.dtype == np.float64
    np.testing.assert_allclose(t @ t.T, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(t.T @ t, np.eye(k), atol=1e-12)


@pytest.mark.parametrize("name,r,c", SEPARABLE_CASES)
def test_separable_matrix_is_orthonormal_kronecker(name, r, c):
    t = split_matrix(name, r, c)
    assert t.shape == (r * c, r * c)
    np.testing.assert_allclose(t @ t.T, np.eye(r * c), atol=1e-12)
    tr, tc = transform_matrix(SEPARABLE[name], r), transform_matrix(SEPARABLE[name], c)
    for kr in range(r):  # branch k = kr*c + kc is the 2-D frequency (kr, kc): row = outer(T_r[kr], T_c[kc])
        for kc in range(c):
            np.testing.assert_allclose(t[kr * c + kc].reshape(r, c), np.outer(tr[kr], tc[kc]), atol=1e-12)


@pytest.mark.parametrize("r,c", ((2, 2), (4, 4), (2, 3)))
def test_dct2_is_scipy_dctn(r, c):
    """dct2 of one phase grid is scipy's orthonormal 2-D DCT-II of that grid."""
    grid = np.random.default_rng(0).random((r, c))
    s = split_matrix("dct2", r, c) @ grid.reshape(-1)
    np.testing.assert_allclose(s.reshape(r, c), scipy.fft.dctn(grid, norm="ortho"), atol=1e-12)


def test_separable_needs_split_shape_and_haar2_powers_of_two():
    with pytest.raises(ValueError, match="split_matrix"):
        transform_matrix("haar2", 4)
    with pytest.raises(ValueError, match=r"'haar2'.*2 x 3|2 x 3.*'haar2'|\(got 2 x 3\)"):
        split_matrix("haar2", 2, 3)


@pytest.mark.parametrize("k", SIZES)
def test_dct_matches_scipy(k):
    np.testing.assert_allclose(transform_matrix("dct", k), scipy.fft.dct(np.eye(k), norm="ortho", axis=0), atol=1e-12)
    assert np.allclose(transform_matrix("dct", k)[0], 1 / np.sqrt(k))


@pytest.mark.parametrize("k", SIZES)
def test_dft_is_real_hartley(k):
    t = transform_matrix("dft", k)
    assert np.isrealobj(t)
    f = np.fft.fft(np.eye(k), axis=0)  # complex DFT: Hartley = Re - Im, scaled
    np.testing.assert_allclose(t, (f.real - f.imag) / np.sqrt(k), atol=1e-12)


def test_identity_and_haar_values():
    np.testing.assert_array_equal(transform_matrix("identity", 4), np.eye(4))
    h = transform_matrix("haar", 4)
    assert np.allclose(h[0], 0.5)  # coarsest row: the mean, orthonormally scaled
    # Every row but the first sums to zero (details carry no DC).
    np.testing.assert_allclose(h[1:].sum(axis=1), 0.0, atol=1e-12)


def test_matrix_is_a_copy():
    t = transform_matrix("dct", 4)
    t[:] = 0
    assert transform_matrix("dct", 4)[0, 0] == pytest.approx(0.5)


@pytest.mark.parametrize("r,c", SHAPES)
def test_polyphase_component_layout(r, c):
    x = _images(r, c)
    p = polyphase_split(x, r, c)
    assert p.shape == (3, 2, 4, 3, r * c)
    for a in range(r):
        for b in range(c):
            np.testing.assert_array_equal(p[..., a * c + b], x[:, :, a::r, b::c])


@pytest.mark.parametrize("name,r,c", SPLIT_CASES)
def test_split_merge_roundtrip_numpy(name, r, c):
    x = _images(r, c)
    s = spectral_split(x, r, c, name)
    assert s.shape == (3, 2, 4, 3, r * c) and s.dtype == np.float32
    np.testing.assert_allclose(spectral_merge(s, r, c, name), x, atol=2e-6)
    # Definition: s = polyphase @ T.T, and the branch-major layout holds the same numbers.
    t = split_matrix(name, r, c)
    np.testing.assert_allclose(s, polyphase_split(x, r, c).astype(np.float64) @ t.T, atol=2e-6)
    comps = spectral_components(x, r, c, name)
    assert comps.shape == (3, r * c, 2, 4, 3)
    np.testing.assert_array_equal(np.moveaxis(comps, 1, -1), s)


@pytest.mark.parametrize("name,r,c", SPLIT_CASES)
def test_torch_matches_numpy(name, r, c):
    x = _images(r, c, seed=1)
    xt = torch.from_numpy(x)
    st = spectral_split(xt, r, c, name)
    assert isinstance(st, torch.Tensor) and st.dtype == torch.float32
    np.testing.assert_allclose(st.numpy(), spectral_split(x, r, c, name), atol=2e-6)
    ct = spectral_components(xt, r, c, name)
    assert isinstance(ct, torch.Tensor)
    np.testing.assert_allclose(ct.numpy(), spectral_components(x, r, c, name), atol=2e-6)
    pt = polyphase_split(xt, r, c)
    np.testing.assert_array_equal(pt.numpy(), polyphase_split(x, r, c))
    back = spectral_merge(st, r, c, name)
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), x, atol=2e-6)


def test_torch_float64_keeps_dtype():
    x = torch.from_numpy(_images(2, 2).astype(np.float64))
    s = spectral_split(x, 2, 2, "dct")
    assert s.dtype == torch.float64
    torch.testing.assert_close(spectral_merge(s, 2, 2, "dct"), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("r,c", SHAPES)
def test_dct_branch0_is_scaled_average_pool(r, c):
    x = _images(r, c, seed=2)
    s = spectral_components(x, r, c, "dct")
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(x), (r, c)).numpy()
    np.testing.assert_allclose(s[:, 0], np.sqrt(r * c) * pooled, atol=2e-6)
    n, ch, h, w = x.shape
    np_pool = x.reshape(n, ch, h // r, r, w // c, c).mean(axis=(3, 5))
    np.testing.assert_allclose(s[:, 0], np.sqrt(r * c) * np_pool, atol=2e-6)


@pytest.mark.parametrize("r,c", SHAPES)
def test_dft_is_lossless_where_real_part_is_not(r, c):
    x = _images(r, c, seed=3).astype(np.float64)
    s = spectral_split(x, r, c, "dft")
    assert np.isrealobj(s)
    np.testing.assert_allclose(spectral_merge(s, r, c, "dft"), x, atol=1e-12)
    # Energy is preserved (Parseval), so nothing was dropped.
    np.testing.assert_allclose((s**2).sum(), (x**2).sum(), rtol=1e-12)
    if r * c > 2:
        # The reference code's `.real` of a complex DFT is singular: that is what we must not do.
        real_part = np.fft.fft(np.eye(r * c), axis=0).real
        assert np.linalg.matrix_rank(real_part) < r * c


@pytest.mark.parametrize("fn", [polyphase_split, spectral_components, spectral_split])
def test_not_divisible_raises_with_shape(fn):
    x = np.zeros((2, 1, 9, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(9, 8\).*\(2, 2\)"):
        fn(x, 2, 2)
    with pytest.raises(ValueError, match=r"\(9, 8\)"):
        fn(torch.zeros(2, 1, 9, 8), 3, 3)  # H ok, W not


def test_wrong_rank_raises_with_shape():
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        spectral_components(np.zeros((4, 4), np.float32), 2, 2)
    with pytest.raises(ValueError, match=r"\(1, 1, 2, 2, 3\)"):
        spectral_merge(np.zeros((1, 1, 2, 2, 3), np.float32), 2, 2)


@pytest.mark.parametrize("k", (3, 6, 9, 12))
def test_haar_needs_power_of_two(k):
    with pytest.raises(ValueError, match=rf"K={k}\b"):
        transform_matrix("haar", k)


def test_haar_split_not_power_of_two_raises():
    with pytest.raises(ValueError, match=r"K=9"):
        spectral_split(np.zeros((1, 1, 6, 6), np.float32), 3, 3, "haar")


@pytest.mark.parametrize("name", ("fft", "DCT", "", "wavelet"))
def test_unknown_transform(name):
    with pytest.raises(ValueError, match="unknown transform"):
        transform_matrix(name, 4)
    with pytest.raises(ValueError, match="unknown transform"):
        spectral_split(np.zeros((1, 1, 4, 4), np.float32), 2, 2, name)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_integer_input_rejected(lib):
    x = np.full((1, 1, 2, 2), 200, np.uint8)
    x = torch.from_numpy(x) if lib == "torch" else x
    with pytest.raises(ValueError, match="uint8"):
        spectral_components(x, 2, 2)
    with pytest.raises(ValueError, match="uint8"):
        spectral_merge(
            x[..., None].expand(1, 1, 2, 2, 4) if lib == "torch" else np.broadcast_to(x[..., None], (1, 1, 2, 2, 4)),
            2,
            2,
        )
    assert polyphase_split(x, 2, 2).dtype == x.dtype  # a pure re-indexing: any dtype


def test_explicit_matrix_shape_checked():
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(4, 4\)"):
        spectral_components(np.zeros((1, 1, 4, 4), np.float32), 2, 2, np.eye(3))
