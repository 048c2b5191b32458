"""Maximum-likelihood refinement (model.refine): on isolated emitters of simulated EMCCD and sCMOS frames it
reaches the Cramér–Rao bound from a perturbed start and reports that bound as the uncertainty; crowded
localizations and fits that run away keep the network's values; ``fuse`` weighs the network's estimate by
its σ; with an astigmatic PSF the depth is fitted too, at its bound; the localizer refines a real 2D and a real
3D model's output and refuses a spline PSF model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtsmlm.analysis.metrics import crlb_fisher_3d_nm, crlb_mle_lateral_nm
from rtsmlm.core.config import BackendConfig, from_dict
from rtsmlm.core.locs import LOC_DTYPE
from rtsmlm.localization.refine import MLERefiner
from rtsmlm.sim.camera import emccd, scmos_random_maps
from rtsmlm.sim.psf import AstigmaticPSF, GaussianPSF

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIGMA_PX = 1.3
SHAPE = (48, 48)


def _frames(camera, n_frames: int, photons: float, bg: float, seed: int):
    """Frames in photons with 9 emitters each on a grid (12 px apart), random sub-pixel positions."""
    rng = np.random.default_rng(seed)
    psf = GaussianPSF(SIGMA_PX)
    grid = np.arange(9.0, 40.0, 12.0)
    gx, gy = np.meshgrid(grid, grid)
    truth, frames = [], []
    for f in range(n_frames):
        x = gx.ravel() + rng.uniform(0, 1, gx.size)
        y = gy.ravel() + rng.uniform(0, 1, gy.size)
        img = psf.render(x, y, np.zeros(len(x)), np.full(len(x), photons), SHAPE) + bg
        frames.append(camera.to_photons(camera.expose(img, rng)))
        truth += [(f, xi, yi) for xi, yi in zip(x, y)]
    return np.stack(frames).astype(np.float32), np.array(truth)


def _locs(truth: np.ndarray, start_error_px: float, photons: float, bg: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    locs = np.zeros(len(truth), LOC_DTYPE)
    locs["frame"] = truth[:, 0]
    locs["x"] = (truth[:, 1] + rng.uniform(-start_error_px, start_error_px, len(truth))) * 100.0
    locs["y"] = (truth[:, 2] + rng.uniform(-start_error_px, start_error_px, len(truth))) * 100.0
    locs["photons"], locs["bg"], locs["sigma_x"], locs["sigma_y"], locs["p"] = photons * 0.8, bg * 1.2, 20.0, 20.0, 0.9
    return locs


@pytest.mark.parametrize("kind", ["emccd", "scmos"])
def test_fit_reaches_the_cramer_rao_bound_and_reports_it(kind) -> None:
    camera = emccd(100.0) if kind == "emccd" else scmos_random_maps(SHAPE, seed=2, qe=0.8)
    photons, bg = 2000.0, 40.0
    frames, truth = _frames(camera, 40, photons, bg, seed=1)
    locs = _locs(truth, 0.3, photons, bg, seed=2)
    refiner = MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE)
    out = refiner(locs, torch.from_numpy(frames), list(range(len(frames))))
    assert refiner.refined == len(locs)
    err = np.concatenate([out["x"] / 100.0 - truth[:, 1], out["y"] / 100.0 - truth[:, 2]]) * 100.0
    rmse_axis = float(np.sqrt(np.mean(err**2)))
    excess = (2.0 if kind == "emccd" else 1.0) / camera.qe
    bound = float(crlb_mle_lateral_nm(photons, bg, SIGMA_PX * 100.0, 100.0, excess_noise=excess))
    assert rmse_axis <= 1.1 * bound, (rmse_axis, bound)  # 360 emitters: the estimate's spread is ~4 %
    start = np.concatenate([locs["x"] / 100.0 - truth[:, 1], locs["y"] / 100.0 - truth[:, 2]]) * 100.0
    assert rmse_axis < 0.5 * np.sqrt(np.mean(start**2))
    assert np.median(out["sigma_x"]) == pytest.approx(bound, rel=0.15)  # the fit's CRLB, not the network's 20 nm
    assert np.median(out["photons"]) == pytest.approx(photons, rel=0.05)
    assert np.median(out["bg"]) == pytest.approx(bg, rel=0.1)


def test_crowded_and_runaway_localizations_keep_the_networks_values() -> None:
    camera = emccd(100.0)
    frames, truth = _frames(camera, 2, 2000.0, 40.0, seed=3)
    locs = _locs(truth, 0.0, 2000.0, 40.0, seed=4)
    crowded = locs[:1].copy()
    crowded["x"] += 150.0  # a second localization 1.5 px from the first: not isolated
    runaway = locs[1:2].copy()
    runaway["x"] += 250.0  # 2.5 px from its spot: the fit moves it back by more than MAX_SHIFT_PX
    table = np.concatenate([locs[:1], crowded, runaway])
    out = MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE)(table, torch.from_numpy(frames), [0, 1])
    np.testing.assert_array_equal(out[:2], table[:2])
    assert out["x"][2] == runaway["x"][0]


def test_fuse_weighs_the_network_by_its_own_sigma() -> None:
    camera = emccd(100.0)
    frames, truth = _frames(camera, 5, 2000.0, 40.0, seed=5)
    locs = _locs(truth, 0.3, 2000.0, 40.0, seed=6)
    fitted = MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE, mode="mle")(locs, torch.from_numpy(frames), list(range(5)))
    sure, unsure = locs.copy(), locs.copy()
    sure["sigma_x"], unsure["sigma_x"] = 0.01, 1e4
    fuse = MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE, mode="fuse")
    np.testing.assert_allclose(fuse(sure, torch.from_numpy(frames), list(range(5)))["x"], locs["x"], atol=0.01)
    np.testing.assert_allclose(fuse(unsure, torch.from_numpy(frames), list(range(5)))["x"], fitted["x"], atol=0.01)
    # Fused with itself (a "network" that saw exactly what the fit saw) the answer is the fit, and so is its σ:
    # two estimates from the same photons are not two independent measurements (no 1/√2).
    again = fuse(fitted, torch.from_numpy(frames), list(range(5)))
    np.testing.assert_allclose(again["x"], fitted["x"], atol=0.5)  # nm: the refit converges again from there
    np.testing.assert_allclose(again["sigma_x"], fitted["sigma_x"], rtol=0.05)  # independent: 1/√2 = −29 %
    assert np.all(fuse(sure, torch.from_numpy(frames), list(range(5)))["sigma_x"] == pytest.approx(0.01))
    with pytest.raises(ValueError, match="refinement mode 'best'"):
        MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE, mode="best")


def test_astigmatic_fit_finds_depth_at_the_cramer_rao_bound() -> None:
    camera, shape = emccd(100.0), (64, 64)
    psf = AstigmaticPSF(1.3, 300.0, 400.0)
    rng = np.random.default_rng(11)
    photons, bg = 2000.0, 50.0
    grid = np.arange(10.0, 56.0, 15.0)  # 15 px apart: isolated even at the widest spot of the range
    gx, gy = np.meshgrid(grid, grid)
    frames, truth = [], []
    for f in range(30):
        x, y = gx.ravel() + rng.uniform(0, 1, gx.size), gy.ravel() + rng.uniform(0, 1, gy.size)
        z = rng.uniform(-500.0, 500.0, gx.size)
        img = psf.render(x, y, z, np.full(len(x), photons), shape) + bg
        frames.append(camera.to_photons(camera.expose(img, rng)))
        truth += [(f, xi, yi, zi) for xi, yi, zi in zip(x, y, z)]
    truth = np.array(truth)
    locs = _locs(truth[:, :3], 0.3, photons, bg, seed=12)
    locs["z"] = truth[:, 3] + rng.uniform(-250.0, 250.0, len(truth))  # a poor start in depth
    locs["sigma_z"] = 50.0
    refiner = MLERefiner(psf, camera, shape, z_range_nm=600.0)
    out = refiner(locs, torch.from_numpy(np.stack(frames).astype(np.float32)), list(range(len(frames))))
    assert refiner.refined >= 0.99 * len(locs)  # a rare fit running away keeps the start values
    lateral = np.sqrt(np.mean(np.concatenate([out["x"] / 100.0 - truth[:, 1], out["y"] / 100.0 - truth[:, 2]]) ** 2)) * 100
    axial = np.sqrt(np.mean((out["z"] - truth[:, 3]) ** 2))
    bounds = np.array([crlb_fisher_3d_nm(photons, bg, psf.sigmas, z, 100.0, 2.0) for z in np.linspace(-500, 500, 11)])
    bound_lat, bound_ax = np.sqrt(np.mean(bounds[:, :2] ** 2)), np.sqrt(np.mean(bounds[:, 2] ** 2))
    # 480 emitters: the estimates' spread is ~3-5 %; measured 0.98 × the bound on both.
    assert lateral <= 1.1 * bound_lat and axial <= 1.1 * bound_ax, (lateral, bound_lat, axial, bound_ax)
    assert axial < 0.5 * np.sqrt(np.mean((locs["z"] - truth[:, 3]) ** 2))
    assert np.median(out["sigma_z"]) == pytest.approx(bound_ax, rel=0.2)  # the fit's CRLB, not the 50 nm given


def test_localizer_refines_real_2d_and_3d_models_and_refuses_a_spline_model() -> None:
    import dataclasses

    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie
    from rtsmlm.sim import Simulator

    sim = Simulator(from_dict({"sim": {"seed": 9, "size": 32, "density": 0.3}}))
    movie, _ = sim.movie(12)
    backend_cfg = BackendConfig(name="torch", device="cpu", precision="fp32", threads=1)
    backend, meta = open_backend(backend_cfg, "default", jit=False)
    tables = {}
    for refine in ("off", "mle"):
        loc = StreamingLocalizer(backend, meta, sim.camera, (32, 32), 0.6, 0.3, psf_sigma_px=1.3, refine=refine)
        tables[refine] = localize_movie(loc, movie)
    assert loc._refiner is not None and loc._refiner.refined > 0
    off, mle = tables["off"], tables["mle"]
    np.testing.assert_array_equal(off["frame"], mle["frame"])
    np.testing.assert_array_equal(off["p"], mle["p"])
    moved = np.hypot(off["x"] - mle["x"], off["y"] - mle["y"])
    assert (moved > 0).sum() >= loc._refiner.refined * 0.9 and moved.max() <= 70.0 + 1e-3
    with pytest.raises(ValueError, match="needs the PSF width"):
        StreamingLocalizer(backend, meta, sim.camera, (32, 32), 0.6, 0.3, refine="fuse")

    backend3d, meta3d = open_backend(backend_cfg, "astig_3d", jit=False)
    sim3d = Simulator(from_dict({"sim": {"seed": 9, "size": 32, "density": 0.3}, "psf": dict(meta3d.psf)}))
    movie3d, _ = sim3d.movie(12)
    tables = {}
    for refine in ("off", "mle"):
        loc = StreamingLocalizer(backend3d, meta3d, sim3d.camera, (32, 32), 0.6, 0.3, refine=refine)
        tables[refine] = localize_movie(loc, movie3d)
    assert loc._refiner is not None and loc._refiner.has_z and loc._refiner.refined > 0
    dz = np.abs(tables["off"]["z"] - tables["mle"]["z"])
    assert (dz > 0).sum() >= loc._refiner.refined * 0.9 and dz.max() <= 300.0 + 1e-3

    spline_meta = dataclasses.replace(meta3d, psf={**meta3d.psf, "model": "spline"})
    with pytest.raises(ValueError, match="fits a Gaussian or astigmatic PSF; this model's PSF is 'spline'"):
        StreamingLocalizer(backend3d, spline_meta, sim.camera, (32, 32), 0.6, 0.3, refine="mle")


def _one_emitter_frame(camera, photons: float, bg: float, seed: int, xs=(24.3,), ys=(23.6,)):
    """A frame in photons with emitters at (xs, ys) pixels."""
    rng = np.random.default_rng(seed)
    img = GaussianPSF(SIGMA_PX).render(np.array(xs), np.array(ys), np.zeros(len(xs)), np.full(len(xs), photons),
                                       SHAPE) + bg
    return torch.from_numpy(camera.to_photons(camera.expose(img, rng))[None].astype(np.float32))


def _split(x: float, y: float, half_sep_px: float, photons: float, bg: float) -> np.ndarray:
    """Two localizations of frame 0 either side of (x, y) pixels, the second less sure."""
    t = np.zeros(2, LOC_DTYPE)
    t["x"], t["y"] = [(x - half_sep_px) * 100.0, (x + half_sep_px) * 100.0], y * 100.0
    t["photons"], t["bg"], t["p"], t["sigma_x"], t["sigma_y"] = photons / 2, bg, [0.95, 0.6], 20.0, 20.0
    return t


def test_split_check_merges_one_emitter_read_as_two_and_fits_it() -> None:
    """One dim emitter reported as two localizations 1.2 px apart, seen in no adjacent frame: the frame is
    explained by one emitter as well as by two, so one row remains (the surer one), at the fit's position."""
    camera = emccd(100.0)
    hits = 0
    for seed in range(10):
        frame = _one_emitter_frame(camera, 800.0, 20.0, seed)
        refiner = MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE)
        out = refiner(_split(24.3, 23.6, 0.6, 800.0, 20.0), frame, [0], neighbours=np.zeros(0, LOC_DTYPE))
        if len(out) == 1:
            hits += 1
            assert refiner.merged == 1 and refiner.refined == 1 and out["p"][0] == pytest.approx(0.95)
            assert np.hypot(out["x"][0] - 2430.0, out["y"][0] - 2360.0) < 40.0  # nm; the bound here is ~12 nm
    assert hits >= 8  # a noise draw may favour two emitters by chance (2ΔLL ≥ 20)
    # Without the adjacent frames' localizations (neighbours=None) or switched off, nothing is merged.
    frame = _one_emitter_frame(camera, 800.0, 20.0, 0)
    assert len(MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE)(_split(24.3, 23.6, 0.6, 800.0, 20.0), frame, [0])) == 2
    off = MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE, merge_splits=False)
    assert len(off(_split(24.3, 23.6, 0.6, 800.0, 20.0), frame, [0], neighbours=np.zeros(0, LOC_DTYPE))) == 2


def test_split_check_keeps_a_true_pair_and_a_pair_repeated_next_door() -> None:
    camera = emccd(100.0)
    # Two emitters 1.6 px apart: two explain the frame far better than one.
    pair = _one_emitter_frame(camera, 3000.0, 20.0, 1, xs=(23.5, 25.1), ys=(23.6, 23.6))
    refiner = MLERefiner(GaussianPSF(SIGMA_PX), camera, SHAPE)
    assert len(refiner(_split(24.3, 23.6, 0.8, 6000.0, 20.0), pair, [0], neighbours=np.zeros(0, LOC_DTYPE))) == 2
    assert refiner.merged == 0
    # One emitter's split, but a localization at the weaker row's place in the next frame: a molecule that
    # stays on there, left to the network (which saw both frames).
    single = _one_emitter_frame(camera, 800.0, 20.0, 0)
    split = _split(24.3, 23.6, 0.6, 800.0, 20.0)
    next_door = split[1:].copy()
    next_door["frame"] = 1
    assert len(refiner(split, single, [0], neighbours=next_door)) == 2
    next_door["x"] += 150.0  # 1.5 px away: not the same molecule
    assert len(refiner(split, single, [0], neighbours=next_door)) == 1
    # A third localization within ISOLATION_SIGMAS σ: not tested (a crowded field is the network's).
    crowded = np.concatenate([split, split[:1]])
    crowded["y"][2] += 300.0
    assert len(refiner(crowded, single, [0], neighbours=np.zeros(0, LOC_DTYPE))) == 3
