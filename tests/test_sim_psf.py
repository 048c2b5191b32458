"""Point-spread functions: photon conservation, position (x = column axis) and astigmatic shape.

The PSFs are pixel-integrated Gaussians rendered on a patch of ±4.5 sigma (at least), so the mass a
render can miss inside the image is below the Gaussian tail outside ±4.5 sigma on either axis, and the
pixelated centroid and second moments of a Gaussian with sigma ≳ 1 px equal the continuous ones (plus
1/12 px² of pixel width for the variance) to far better than 1e-6 px. Those bounds are the tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rtsmlm.core import config
from rtsmlm.sim.psf import AstigmaticPSF, GaussianPSF, psf_from_config

PATCH_HALF_WIDTH_SIGMA = 4.5
MASS_TOL = 4 * stats.norm.sf(PATCH_HALF_WIDTH_SIGMA)  # both tails of both axes
SHAPE = (64, 64)


def moments(img: np.ndarray) -> tuple[float, float, float, float, float]:
    """Total, centroid (x = column, y = row, in px from the top-left corner) and variances along x, y."""
    rows, cols = np.indices(img.shape, dtype=np.float64)
    total = float(img.sum())
    cx = float((img * (cols + 0.5)).sum() / total)
    cy = float((img * (rows + 0.5)).sum() / total)
    vx = float((img * (cols + 0.5 - cx) ** 2).sum() / total)
    vy = float((img * (rows + 0.5 - cy) ** 2).sum() / total)
    return total, cx, cy, vx, vy


@pytest.mark.parametrize("x, y", [(20.3, 31.7), (40.5, 12.25), (32.5, 32.5), (9.95, 50.05)])
def test_gaussian_psf_integrates_to_photons_and_is_centred_on_the_emitter(x: float, y: float) -> None:
    psf = GaussianPSF(sigma_px=1.3)
    photons = 5000.0
    img = psf.render(np.array([x]), np.array([y]), np.zeros(1), np.array([photons]), SHAPE)
    assert img.shape == SHAPE and img.dtype == np.float64
    total, cx, cy, vx, vy = moments(img)
    assert total == pytest.approx(photons, rel=MASS_TOL)
    # Sub-pixel position on both axes, x along columns and y along rows.
    assert cx == pytest.approx(x, abs=1e-3)
    assert cy == pytest.approx(y, abs=1e-3)
    assert np.unravel_index(np.argmax(img), SHAPE) == (int(y), int(x))
    assert vx == pytest.approx(1.3 ** 2 + 1 / 12, rel=1e-3)
    assert vy == pytest.approx(1.3 ** 2 + 1 / 12, rel=1e-3)


def test_psf_of_several_emitters_is_the_sum_of_their_psfs() -> None:
    psf = GaussianPSF(sigma_px=1.1)
    x, y = np.array([10.2, 11.0, 50.7]), np.array([20.9, 21.4, 3.3])
    photons = np.array([1000.0, 300.0, 7000.0])
    together = psf.render(x, y, np.zeros(3), photons, SHAPE)
    apart = sum(psf.render(x[i:i + 1], y[i:i + 1], np.zeros(1), photons[i:i + 1], SHAPE) for i in range(3))
    np.testing.assert_allclose(together, apart, rtol=1e-12, atol=1e-9)
    assert psf.render(np.empty(0), np.empty(0), np.empty(0), np.empty(0), SHAPE).sum() == 0.0


def test_mass_outside_the_frame_is_lost_like_on_a_camera() -> None:
    """An emitter 0.4 px from the left edge keeps only the Gaussian mass right of the edge."""
    sigma, x, y, photons = 1.3, 0.4, 30.2, 1000.0
    img = GaussianPSF(sigma).render(np.array([x]), np.array([y]), np.zeros(1), np.array([photons]), SHAPE)
    expected = photons * (stats.norm.cdf((SHAPE[1] - x) / sigma) - stats.norm.cdf(-x / sigma))
    assert img.sum() == pytest.approx(expected, rel=MASS_TOL)
    # An emitter far outside the frame leaves nothing.
    far = GaussianPSF(sigma).render(np.array([-20.0]), np.array([10.0]), np.zeros(1), np.array([photons]), SHAPE)
    assert far.sum() == 0.0


def test_astigmatic_psf_elongates_along_x_below_focus_and_along_y_above() -> None:
    """sigma_x(z) = s0·sqrt(1 + ((z − c)/d)²), sigma_y(z) = s0·sqrt(1 + ((z + c)/d)²): z > 0 is narrower in x."""
    s0, c, d = 1.2, 300.0, 400.0
    psf = AstigmaticPSF(sigma_px=s0, focal_offset_nm=c, depth_nm=d)
    x, y, photons = 31.6, 29.3, 3000.0
    measured = {}
    for z in (-500.0, -300.0, 0.0, 300.0, 500.0):
        img = psf.render(np.array([x]), np.array([y]), np.array([z]), np.array([photons]), SHAPE)
        total, cx, cy, vx, vy = moments(img)
        assert total == pytest.approx(photons, rel=MASS_TOL)
        assert (cx, cy) == pytest.approx((x, y), abs=1e-3)
        sx, sy = np.sqrt(vx - 1 / 12), np.sqrt(vy - 1 / 12)
        expected_sx = s0 * np.sqrt(1 + ((z - c) / d) ** 2)
        expected_sy = s0 * np.sqrt(1 + ((z + c) / d) ** 2)
        assert (sx, sy) == pytest.approx((expected_sx, expected_sy), rel=1e-3)
        assert psf.sigmas(np.array(z)) == pytest.approx((expected_sx, expected_sy))
        measured[z] = (sx, sy)
    assert measured[300.0][0] == pytest.approx(s0, rel=1e-3)  # x in focus at z = +c
    assert measured[-300.0][1] == pytest.approx(s0, rel=1e-3)  # y in focus at z = −c
    for z in (300.0, 500.0):
        assert measured[z][0] < measured[z][1]
        assert measured[-z][0] > measured[-z][1]
    assert measured[0.0][0] == pytest.approx(measured[0.0][1], rel=1e-3)


def test_psf_from_config_scales_sigma_by_the_pixel_size() -> None:
    cfg = config.load(overrides=["psf.sigma_nm=150", "camera.pixel_size_nm=120"])
    psf = psf_from_config(cfg.psf, cfg.camera.pixel_size_nm)
    assert isinstance(psf, GaussianPSF) and psf.sigma_px == pytest.approx(1.25)
    cfg3d = config.load(overrides=['psf.model="astigmatic"', "psf.astig_focal_offset_nm=250",
                                   "psf.astig_depth_nm=350"])
    psf3d = psf_from_config(cfg3d.psf, cfg3d.camera.pixel_size_nm)
    assert isinstance(psf3d, AstigmaticPSF)
    assert (psf3d.sigma_px, psf3d.focal_offset_nm, psf3d.depth_nm) == (1.3, 250.0, 350.0)


def test_unknown_psf_model_is_refused_by_the_config() -> None:
    with pytest.raises(config.ConfigError, match=r"'psf.model'.*'gaussian', 'astigmatic', 'spline'"):
        config.load(overrides=['psf.model="airy"'])
