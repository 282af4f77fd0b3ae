"""Map smoothing and resizing shared by the methods, checked against scipy / plain torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from tabad.methods.common import gaussian_blur, gaussian_kernel1d, upsample


def _scipy_blur(maps: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(m, sigma=sigma, mode="reflect", truncate=truncate) for m in maps])


@pytest.mark.parametrize("shape", [(2, 40, 50), (3, 5, 7), (1, 1, 1), (1, 2, 3), (2, 33, 9), (1, 70, 64)])
@pytest.mark.parametrize("sigma", [4.0, 1.5])
def test_gaussian_blur_equals_scipy(shape, sigma):
    rng = np.random.default_rng(sum(shape))
    maps = rng.random(shape, dtype=np.float64).astype(np.float32)
    got = gaussian_blur(torch.from_numpy(maps), sigma=sigma).numpy()
    want = _scipy_blur(maps.astype(np.float64), sigma)
    assert got.shape == maps.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_gaussian_blur_other_truncate_and_float64():
    rng = np.random.default_rng(7)
    maps = rng.normal(size=(2, 12, 17)) * 100
    got = gaussian_blur(torch.from_numpy(maps), sigma=2.5, truncate=2.0).numpy()
    assert got.dtype == np.float64
    # The kernel itself is float32 (gaussian_kernel1d), so agreement is ~1e-7 relative.
    np.testing.assert_allclose(got, _scipy_blur(maps, 2.5, truncate=2.0), rtol=1e-6, atol=1e-6)


def test_gaussian_blur_impulse_response_is_scipy_kernel():
    delta = np.zeros((1, 1, 81))
    delta[0, 0, 40] = 1.0
    got = gaussian_blur(torch.from_numpy(delta), sigma=4.0).numpy()[0, 0]
    want = ndimage.gaussian_filter1d(delta[0, 0], sigma=4.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(got, want, atol=1e-7)
    # 33 taps: radius int(4 * 4 + 0.5) = 16.
    assert np.count_nonzero(np.abs(got) > 0) == 33


def test_gaussian_kernel1d():
    k = gaussian_kernel1d(4.0)
    assert k.shape == (33,) and k.dtype == torch.float32
    assert abs(float(k.sum()) - 1.0) < 1e-6
    assert torch.equal(k, k.flip(0))
    assert int(k.argmax()) == 16
    assert gaussian_kernel1d(1.0, truncate=4.0).numel() == 9


@pytest.mark.parametrize("sigma", [0, 0.0, -1.0])
def test_gaussian_blur_sigma_zero_is_identity(sigma):
    maps = torch.rand(2, 5, 7)
    out = gaussian_blur(maps, sigma=sigma)
    assert torch.equal(out, maps)


def test_gaussian_blur_preserves_constants():
    maps = torch.full((1, 9, 11), 3.25)
    torch.testing.assert_close(gaussian_blur(maps, 4.0), maps)


@pytest.mark.parametrize("shape", [(2, 40, 33), (1, 5, 9), (1, 1, 6)])
def test_gaussian_blur_reflect_padding_equals_scipy_mirror(shape):
    # scipy's 'mirror' is torch's/numpy's 'reflect' (no edge repeat), any pad width.
    maps = np.random.default_rng(3).random(shape).astype(np.float64)
    want = ndimage.gaussian_filter(maps, sigma=(0, 4.0, 4.0), mode="mirror")
    got = gaussian_blur(torch.from_numpy(maps), sigma=4.0, padding="reflect").numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_gaussian_blur_reflect_padding_equals_torch_reflect_pad():
    # anomalib's GaussianBlur2d: torch 'reflect' pad, then the same 33 taps.
    maps = torch.rand(2, 48, 40, dtype=torch.float64)
    k = gaussian_kernel1d(4.0).double()
    padded = F.pad(maps[:, None], (16, 16, 16, 16), mode="reflect")
    want = F.conv2d(padded, (k[:, None] * k[None, :])[None, None])[:, 0]
    torch.testing.assert_close(gaussian_blur(maps, 4.0, padding="reflect"), want)
    # and the default differs from it only within the kernel radius of the border
    diff = (gaussian_blur(maps, 4.0) - want).abs()
    assert diff[:, 16:-16, 16:-16].max() < 1e-12 < diff.max()


def test_gaussian_blur_rejects_unknown_padding():
    with pytest.raises(ValueError, match="padding"):
        gaussian_blur(torch.rand(1, 8, 8), 4.0, padding="edge")


@pytest.mark.parametrize("size", [(56, 56), (30, 40), (7, 7)])
def test_upsample_shape_and_values(size):
    maps = torch.rand(3, 7, 7)
    out = upsample(maps, size)
    assert out.shape == (3, *size)
    want = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out, want)
    want_ac = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(upsample(maps, size, align_corners=True), want_ac)


def test_upsample_bilinear_not_nearest():
    maps = torch.tensor([[[0.0, 1.0]]])  # (1, 1, 2)
    out = upsample(maps, (1, 4))
    # align_corners=False: sample positions -0.25, 0.25, 0.75, 1.25 -> clamped linear interpolation.
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))
