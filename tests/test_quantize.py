"""data_split.quantize: uint8 codes whose range comes from the matrix never clip; numpy, torch, torch.export agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_split.quantize import affine_params, branch_ranges, decode, dequantize, encode, quantize
from data_split.transforms import TRANSFORMS, spectral_components, split_matrix, transform_matrix

SPLITS = [(r, c) for r, c in ((2, 2), (4, 4), (1, 4), (2, 4))]


def _cases():
    for name in TRANSFORMS:
        for r, c in SPLITS:
            k = r * c
            if name.startswith("haar") and k & (k - 1):
                continue
            yield name, r, c


def _extreme_images(t: np.ndarray, r: int, c: int, channels: int = 2) -> np.ndarray:
    """For every branch the two images reaching its range's ends (pixels 1 where T[k, p] > 0, resp. < 0), plus 0, 1."""
    k = r * c
    imgs = []
    for row in t:
        for sign in (1, -1):
            phase_on = (sign * row > 0).astype(np.float32).reshape(r, c)
            imgs.append(np.tile(phase_on, (channels, 2, 3)))  # (C, 2r, 3c): every sub-pixel sees the phase pattern
    imgs += [np.zeros_like(imgs[0]), np.ones_like(imgs[0])]
    assert k == len(t)
    return np.stack(imgs)


@pytest.mark.parametrize("name,r,c", list(_cases()))
def test_codes_never_clip_and_round_to_nearest(name, r, c):
    t = split_matrix(name, r, c)
    lo, hi = branch_ranges(t)
    params = affine_params(t, channels=2)
    rng = np.random.default_rng(0)
    x = np.concatenate([_extreme_images(t, r, c), rng.random((6, 2, 2 * r, 3 * c), dtype=np.float32)])
    s = spectral_components(x.astype(np.float32), r, c, t.astype(np.float32))  # (N, K, C, h, w)
    for k, p in enumerate(params):
        off, scale = np.float32(p["offset"][0]), np.float32(p["scale"][0])
        unclamped = (s[:, k] - off) / scale
        assert unclamped.min() >= -1e-3 and unclamped.max() <= 255 + 1e-3, (name, k)  # inside the code range
        q = quantize(s[:, k], p["offset"], p["scale"])
        assert q.dtype == np.uint8
        err = np.abs(dequantize(q, p["offset"], p["scale"]) - s[:, k])
        assert err.max() <= scale / 2 + 1e-6, (name, k)
        # the extreme images hit both ends of the range: the range is tight, not just safe
        assert s[:, k].min() == pytest.approx(lo[k], abs=1e-5) and s[:, k].max() == pytest.approx(hi[k], abs=1e-5)


def test_numpy_and_torch_agree_bit_for_bit():
    t = transform_matrix("dct", 16)
    p = affine_params(t, channels=3)[5]
    x = np.random.default_rng(1).normal(0, 0.3, (7, 3, 5, 5)).astype(np.float32)
    q_np = quantize(x, p["offset"], p["scale"])
    q_t = quantize(torch.from_numpy(x), p["offset"], p["scale"])
    assert q_t.dtype == torch.uint8
    np.testing.assert_array_equal(q_t.numpy(), q_np)
    v_np = dequantize(q_np, p["offset"], p["scale"])
    v_t = dequantize(torch.from_numpy(q_np), torch.tensor(p["offset"]), torch.tensor(p["scale"]))
    assert v_t.dtype == torch.float32 and v_np.dtype == np.float32
    np.testing.assert_array_equal(v_t.numpy(), v_np)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_float_dtypes_store_the_values(dtype):
    x = np.random.default_rng(2).random((4, 1, 3, 3), dtype=np.float32) * 2 - 1
    stored = encode(x, dtype)
    assert stored.dtype == np.dtype(dtype)
    back = decode(stored, dtype)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=2**-11 if dtype == "float16" else 0, atol=0)
    assert decode(encode(torch.from_numpy(x), dtype), dtype).dtype == torch.float32


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match=r"split\.dtype.*'int4'.*uint8, float16, float32"):
        encode(np.zeros((1, 1, 1, 1), np.float32), "int4")


def test_dequantize_exports_with_a_dynamic_batch():
    p = affine_params(transform_matrix("haar", 4), channels=1)[3]

    class Decode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", torch.tensor(p["offset"]))
            self.register_buffer("scale", torch.tensor(p["scale"]))

        def forward(self, q):
            return dequantize(q, self.offset, self.scale)

    q = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    prog = torch.export.export(Decode(), (q,), dynamic_shapes={"q": {0: torch.export.Dim("batch", min=1)}})
    q2 = torch.randint(0, 256, (9, 1, 4, 4), dtype=torch.uint8)
    np.testing.assert_array_equal(prog.module()(q2).numpy(), dequantize(q2.numpy(), p["offset"], p["scale"]))
