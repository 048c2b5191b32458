"""Camera noise models of the simulator, checked with statistics.

EMCCD: mean ADU = baseline + (qe·photons + spurious)·gain / e_per_adu, and the variance carries the
excess-noise factor 2 of the EM register (Poisson electrons through a gamma-distributed gain). sCMOS:
every pixel has its own offset and gain. Tolerances are 5 standard errors of the estimated quantity
(computed from the sample itself where the distribution is not Gaussian), so a failure means the model
is off, not that the seed was unlucky.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from rtsmlm.core import config
from rtsmlm.sim import Simulator
from rtsmlm.sim.camera import SCMOS_PRESET, camera_from_config, emccd, scmos_random_maps

Z = 5.0  # standard errors allowed
ROUNDING_VAR = 1.0 / 12.0  # rounding to whole ADU adds a uniform(-0.5, 0.5) error


def mean_and_variance_with_errors(values: np.ndarray) -> tuple[float, float, float, float]:
    """Sample mean and variance with their standard errors (variance's from the 4th central moment)."""
    v = values.astype(np.float64).ravel()
    n = v.size
    mean = v.mean()
    d = v - mean
    var = float(np.mean(d * d))
    m4 = float(np.mean(d ** 4))
    return float(mean), var, float(np.sqrt(var / n)), float(np.sqrt(max(m4 - var * var, 0.0) / n))


@pytest.mark.parametrize("photons", [0.0, 12.0])
def test_emccd_mean_adu_and_excess_noise_factor_at_high_gain(photons: float) -> None:
    cam = emccd(qe=0.9, spurious_charge=0.0015, em_gain=300.0, read_noise_e=74.4, e_per_adu=45.0,
                baseline_adu=100.0)
    rng = np.random.default_rng(11)
    frames = np.stack([cam.expose(np.full((256, 256), photons), rng) for _ in range(4)])
    assert frames.dtype == np.uint16
    assert 0 < frames.min() and frames.max() < 65535, "clipping would bias the moments"

    mean, var, se_mean, se_var = mean_and_variance_with_errors(frames)
    electrons = cam.qe * photons + cam.spurious_charge
    expected_mean = cam.baseline_adu + electrons * cam.em_gain / cam.e_per_adu
    assert float(cam.mean_adu(np.array(photons))) == pytest.approx(expected_mean)
    assert abs(mean - expected_mean) < Z * se_mean, (mean, expected_mean, se_mean)

    # Var(ADU) = (F²·electrons·G² + read²) / e_per_adu² + 1/12, with excess-noise factor F² = 2.
    read_var_adu = (cam.read_noise_e / cam.e_per_adu) ** 2
    gain_adu = cam.em_gain / cam.e_per_adu
    excess_noise_factor = (var - read_var_adu - ROUNDING_VAR) / (electrons * gain_adu ** 2)
    se_factor = se_var / (electrons * gain_adu ** 2)
    if photons > 0:  # in the dark the signal variance is too small next to the read noise to test F²
        assert abs(excess_noise_factor - 2.0) < Z * se_factor, (excess_noise_factor, se_factor)
    expected_var = (2.0 * electrons * cam.em_gain ** 2 + cam.read_noise_e ** 2) / cam.e_per_adu ** 2 \
        + ROUNDING_VAR
    assert abs(var - expected_var) < Z * se_var, (var, expected_var, se_var)


def test_emccd_photon_image_maps_to_adu_pixel_by_pixel() -> None:
    """A bright spot stays where it is and each pixel's mean follows the linear ADU model."""
    cam = emccd()
    rng = np.random.default_rng(3)
    expected = np.full((16, 16), 50.0)
    expected[4, 11] = 2000.0  # row 4, column 11
    frames = np.stack([cam.expose(expected, rng) for _ in range(300)]).astype(np.float64)
    per_pixel = frames.mean(axis=0)
    assert np.unravel_index(np.argmax(per_pixel), per_pixel.shape) == (4, 11)
    electrons = cam.qe * expected + cam.spurious_charge
    var = (2.0 * electrons * cam.em_gain ** 2 + cam.read_noise_e ** 2) / cam.e_per_adu ** 2 + ROUNDING_VAR
    z = (per_pixel - cam.mean_adu(expected)) / np.sqrt(var / len(frames))
    # Bonferroni over the pixels: a false alarm anywhere on the image has probability < 1e-3.
    limit = stats.norm.isf(1e-3 / (2 * z.size))
    assert np.max(np.abs(z)) < limit, np.max(np.abs(z))


def test_simulator_background_and_photons_in_adu_match_the_camera_model() -> None:
    """Frames of the full simulator: background and emitter photons convert to ADU as the camera says.

    Fiducials (20,000 photons each) sit ≥ 0.1 of the field (6.4 px ≈ 4.9 sigma) from the edges, so
    their PSF loses < 1e-6 of its mass outside the frame.
    """
    cfg = config.load(overrides=["sim.size=64", "sim.density=0", "sim.fiducials=4", "sim.bg_photons=75"])
    sim = Simulator(cfg)
    cam = sim.camera
    n_frames = 40
    adu_sum = 0.0
    photon_sum = 0.0
    for _ in range(n_frames):
        frame, truth = sim.step()
        assert len(truth) == cfg.sim.fiducials
        adu_sum += float(frame.astype(np.float64).sum())
        photon_sum += float(truth["photons"].sum())
    npix = frame.size
    bg_photons = cfg.sim.bg_photons * npix * n_frames
    gain_adu = cam.em_gain / cam.e_per_adu
    expected_adu = (cam.baseline_adu * npix * n_frames
                    + (cam.qe * (photon_sum + bg_photons) + cam.spurious_charge * npix * n_frames) * gain_adu)
    var_sum = (2.0 * cam.qe * (photon_sum + bg_photons) * gain_adu ** 2
               + npix * n_frames * ((cam.read_noise_e / cam.e_per_adu) ** 2 + ROUNDING_VAR))
    assert abs(adu_sum - expected_adu) < Z * np.sqrt(var_sum), (adu_sum, expected_adu)

    # The localizer's conversion (CameraModel.to_photons) gives the photons back: background per pixel
    # and the fiducials' photons over the frame.
    model = cam
    photons_back = model.to_photons(frame).astype(np.float64)
    expected_back = (cfg.sim.bg_photons * npix + cfg.sim.fiducials * cfg.sim.fiducial_photons
                     + npix * cam.spurious_charge / cam.qe)
    adu_to_photons = cam.e_per_adu / (cam.em_gain * cam.qe)
    sd_back = np.sqrt(2.0 * expected_back / cam.qe
                      + npix * ((cam.read_noise_e / cam.e_per_adu) ** 2 + ROUNDING_VAR) * adu_to_photons ** 2)
    assert abs(photons_back.sum() - expected_back) < Z * sd_back


def test_scmos_per_pixel_offset_and_gain() -> None:
    """Dark frames reproduce the offset map, illuminated frames the gain map, pixel by pixel."""
    cam = scmos_random_maps((24, 24), seed=5, baseline_adu=100.0, offset_sigma_adu=2.0, e_per_adu=0.5,
                            gain_sigma=0.05, read_noise_e=1.6, qe=0.8)
    rng = np.random.default_rng(8)
    photons = 200.0
    n = 400
    dark = np.stack([cam.expose(np.zeros((24, 24)), rng) for _ in range(n)]).astype(np.float64)
    lit = np.stack([cam.expose(np.full((24, 24), photons), rng) for _ in range(n)]).astype(np.float64)
    limit = stats.norm.isf(1e-3 / (2 * dark[0].size))  # Bonferroni over the pixels

    dark_var = cam.variance_map + ROUNDING_VAR
    z_offset = (dark.mean(axis=0) - cam.offset_map) / np.sqrt(dark_var / n)
    assert np.max(np.abs(z_offset)) < limit, np.max(np.abs(z_offset))
    # The per-pixel offsets are resolved: one global offset is rejected by the same data.
    z_global = (dark.mean(axis=0) - cam.offset_map.mean()) / np.sqrt(dark_var / n)
    assert np.max(np.abs(z_global)) > limit

    lit_var = cam.qe * photons / cam.gain_map ** 2 + cam.variance_map + ROUNDING_VAR
    assert np.allclose(cam.mean_adu(np.full((24, 24), photons)), cam.qe * photons / cam.gain_map + cam.offset_map)
    # Photon transfer: slope (ADU per photon) of each pixel = qe / gain (e⁻/ADU).
    slope = (lit.mean(axis=0) - dark.mean(axis=0)) / photons
    se_slope = np.sqrt(lit_var / n + dark_var / n) / photons
    z_gain = (slope - cam.qe / cam.gain_map) / se_slope
    assert np.max(np.abs(z_gain)) < limit, np.max(np.abs(z_gain))
    z_gain_global = (slope - cam.qe / cam.gain_map.mean()) / se_slope
    assert np.max(np.abs(z_gain_global)) > limit

    # Per-pixel variance: the read-noise map plus shot noise scaled by each pixel's gain.
    var_ratio = lit.var(axis=0, ddof=1) / lit_var
    # (n-1)·s²/σ² is chi² with n-1 dof for Gaussian data; shot noise at 160 e⁻ is close to Gaussian.
    lo, hi = stats.chi2.ppf([1e-3 / (2 * var_ratio.size), 1 - 1e-3 / (2 * var_ratio.size)], n - 1) / (n - 1)
    assert lo < var_ratio.min() and var_ratio.max() < hi, (var_ratio.min(), var_ratio.max())

    # The localizer's conversion undoes the maps: every pixel gives back the photons.
    model = cam
    assert model.offset_map is cam.offset_map and model.gain_map is cam.gain_map
    back = model.to_photons(lit.astype(np.uint16)).mean(axis=0)
    se_back = np.sqrt(lit_var / n) * cam.gain_map / cam.qe
    assert np.max(np.abs(back - photons) / se_back) < limit


def test_scmos_from_config_maps_follow_the_map_seed() -> None:
    overrides = [f"camera.{k}={json.dumps(v)}" for k, v in SCMOS_PRESET.items()]
    cfg_a = config.load(overrides=overrides)
    cfg_b = config.load(overrides=[*overrides, "camera.scmos_map_seed=1"])
    a1 = camera_from_config(cfg_a.camera, (32, 40))
    a2 = camera_from_config(cfg_a.camera, (32, 40))
    b = camera_from_config(cfg_b.camera, (32, 40))
    assert a1.model == "scmos" and a1.offset_map.shape == (32, 40)
    assert np.array_equal(a1.offset_map, a2.offset_map) and np.array_equal(a1.gain_map, a2.gain_map)
    assert not np.array_equal(a1.offset_map, b.offset_map)
    # The maps are drawn around the configured values with the configured spreads.
    n = a1.offset_map.size
    cam_cfg = cfg_a.camera
    assert abs(a1.offset_map.mean() - cam_cfg.baseline_adu) < Z * cam_cfg.scmos_offset_sigma_adu / np.sqrt(n)
    gain_sd = cam_cfg.e_per_adu * cam_cfg.scmos_gain_sigma
    assert abs(a1.gain_map.mean() - cam_cfg.e_per_adu) < Z * gain_sd / np.sqrt(n)
    model = a1
    assert model.model == "scmos" and model.em_gain == 1.0 and model.qe == cam_cfg.qe


def test_emccd_from_config_carries_every_setting() -> None:
    cfg = config.load(overrides=["camera.em_gain=250", "camera.e_per_adu=12.5", "camera.qe=0.95",
                                 "camera.baseline_adu=400", "camera.pixel_size_nm=117"])
    cam = camera_from_config(cfg.camera, (8, 8))
    model = cam
    assert (model.model, model.em_gain, model.e_per_adu, model.qe, model.baseline_adu, model.pixel_size_nm) \
        == ("emccd", 250.0, 12.5, 0.95, 400.0, 117.0)
