"""The sample behind the movie's spots (analysis.sample_model): emitter density, brightness and on-time
recovered from simulated movies of known samples, where the detected spots alone are far off."""

from __future__ import annotations

import numpy as np
import pytest

from rtsmlm.analysis.calibrate import calibrate
from rtsmlm.analysis.sample_model import SpotStatistics, fit_sample, sample_map, spot_statistics
from rtsmlm.core import config
from rtsmlm.sim import Simulator
from rtsmlm.sim.structures import from_map

EMCCD = ["camera.em_gain=300", "camera.e_per_adu=60", "camera.baseline_adu=200", "camera.pixel_size_nm=160",
         "psf.sigma_nm=170", "sim.bg_photons=20", "sim.photons_mean=2000", "sim.photons_sigma=800"]
SCMOS = ['camera.model="scmos"', "camera.e_per_adu=0.25", "camera.em_gain=1", "camera.qe=1", "camera.read_noise_e=2",
         "camera.baseline_adu=400", "camera.pixel_size_nm=130", "psf.sigma_nm=180", "sim.bg_photons=100",
         "sim.photons_mean=3000", "sim.photons_sigma=1200"]


@pytest.mark.parametrize("camera, tau", [(EMCCD, 1.0), (SCMOS, 5.0)], ids=["emccd-on-1-frame", "scmos-on-5-frames"])
def test_calibrate_recovers_the_sample_the_spots_came_from(camera, tau) -> None:
    cfg = config.load(None, ["sim.size=64", "sim.density=0.3", 'sim.structure="uniform"', "sim.seed=901",
                             f"sim.mean_on_frames={tau}", *camera])
    sim = Simulator(cfg)
    movie, truth = sim.movie(300)
    cal = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, dark=sim.dark_frames(30))
    sample = cal.sample
    assert sample is not None and sample.method.startswith("simulated"), sample
    # Spots found: well under half the emitters (dim, partly-on and overlapping ones are missed).
    assert cal.spots.density_per_um2 < 0.5 * 0.3
    assert sample.density_per_um2 == pytest.approx(0.3, rel=0.2)
    assert sample.photons_mean == pytest.approx(cfg.sim.photons_mean, rel=0.15)
    assert sample.mean_on_frames == pytest.approx(tau, rel=0.3)
    assert all(abs(a - 1.0) < 0.15 for a in sample.agreement.values()), sample.agreement
    # A movie simulated from the fitted sample holds as many emitters per frame as the movie.
    again = config.replace(cfg, sim=config.to_dict(config.replace(
        cfg.sim, seed=902, density=sample.density_per_um2, photons_mean=sample.photons_mean,
        photons_sigma=sample.photons_sigma, mean_on_frames=sample.mean_on_frames)))
    _, truth2 = Simulator(again).movie(300)
    assert len(truth2) == pytest.approx(len(truth), rel=0.2)
    assert "density = " in calibrate_config(cal) and f"{sample.photons_mean:.4g}" in calibrate_config(cal)


def calibrate_config(cal) -> str:
    from rtsmlm.analysis.calibrate import config_toml

    return config_toml(cal).split("[sim]")[1].split("[train]")[0]


def test_spot_statistics_of_known_spots_and_the_fallbacks() -> None:
    # Two spots of 1000 photons on a flat background, in three frames; one stays, one blinks once.
    photons = np.full((3, 32, 32), 10.0)
    for k in range(3):
        photons[k, 8, 8] += 1000.0
    photons[1, 20, 20] += 1000.0
    stats = spot_statistics(photons, np.full((32, 32), 10.0), 100.0, [(0, 8, 8), (1, 8, 8), (2, 8, 8), (1, 20, 20)])
    assert stats.spots == 4 and stats.photons["median"] == pytest.approx(1000.0)
    assert stats.density_per_um2 == pytest.approx(4 / 3 / (3.2 * 3.2))
    assert stats.on_frames is None  # fewer than 10 spots: no on-time read from them
    # Too few spots, or no PSF width to simulate with: the detected figures, the density × 1.5, and why.
    few = SpotStatistics(0.2, {"median": 1500.0, "p10": 800.0, "p90": 2500.0}, 2.0, 12)
    s = fit_sample(few, None, shape=(64, 64))
    assert (s.density_per_um2, s.photons_mean, s.mean_on_frames) == (pytest.approx(0.3), 1500.0, 2.0)
    assert "no PSF width" in s.method


def _filaments_or_even(structure: str, overrides: list[str], seed: int = 9511):
    cfg = config.load(None, ["sim.size=96", "sim.density=0.3", f'sim.structure="{structure}"', "sim.filament_count=8",
                             "sim.bg_structured=true", f"sim.seed={seed}", *overrides])
    sim = Simulator(cfg)
    movie, truth = sim.movie(300)
    return cfg, sim, movie, truth


def test_a_filament_sample_is_fitted_where_its_emitters_are() -> None:
    # Spread evenly, the fit read this sample's density 42 % low and its brightness 51 % high (isolated spots
    # are rarer and brighter on filaments); placed on the movie's own map of where the light is, within 20 %.
    cfg, sim, movie, truth = _filaments_or_even("filaments", EMCCD)
    cal = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, dark=sim.dark_frames(30), camera_model="emccd")
    true_density = len(truth) / 300 / (96 * cfg.camera.pixel_size_nm / 1000.0) ** 2
    assert "where the movie's are" in cal.sample.method
    assert cal.sample.density_per_um2 == pytest.approx(true_density, rel=0.2)
    assert cal.sample.photons_mean == pytest.approx(cfg.sim.photons_mean, rel=0.2)


@pytest.mark.parametrize("structure, camera", [("filaments", EMCCD), ("uniform", EMCCD), ("uniform", SCMOS)])
def test_the_sample_map_shows_structure_not_noise(structure, camera) -> None:
    # The sCMOS with a per-pixel gain spread of 3 % at background 500: a fixed pattern of ±15 photons per pixel,
    # more than the emitters' mean light; it is not the sample's and the map stays flat.
    overrides = [*camera, "camera.scmos_gain_sigma=0.03", "sim.bg_photons=500"] if camera is SCMOS else camera
    cfg, sim, movie, truth = _filaments_or_even(structure, overrides, seed=9512)
    photons = sim.camera.to_photons(movie.astype(np.float32)).astype(np.float64)
    weights = sample_map(photons, sim.background * sim.camera.qe, psf_sigma_px=cfg.psf.sigma_nm / cfg.camera.pixel_size_nm)
    if structure == "uniform":
        assert weights is None or weights.std() < 0.6
    else:
        assert weights.shape == movie.shape[1:] and weights.mean() == pytest.approx(1.0) and weights.min() >= 0
        px = cfg.camera.pixel_size_nm
        on = weights[(truth["y"] / px).astype(int), (truth["x"] / px).astype(int)]
        assert weights.std() > 1.5 and np.median(on) > 4.0  # the emitters sit where the map is 4× its mean


def test_labels_from_a_map_follow_it() -> None:
    weights = np.zeros((20, 30))
    weights[5, :] = 1.0
    weights[15, 10:20] = 3.0  # 30 of the 60 units: half the labels
    labels = from_map(np.random.default_rng(1), weights, 100.0, 1000.0)
    assert len(labels) == pytest.approx(1000.0 * 6.0, rel=0.05)  # 1000/µm² over the 2 × 3 µm field
    rows, cols = (labels[:, 1] // 100).astype(int), (labels[:, 0] // 100).astype(int)
    assert set(rows) == {5, 15} and cols[rows == 15].min() >= 10 and cols[rows == 15].max() < 20
    assert np.mean(rows == 15) == pytest.approx(0.5, abs=0.03)
