"""``rtsmlm calibrate``: camera gain, baseline and type, PSF width and background measured from simulated
movies of cameras unlike the default one; the config it writes runs; bad input gets one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtsmlm.analysis.calibrate import CalibrationError, calibrate
from rtsmlm.core import config
from rtsmlm.core.camera import CameraModel
from rtsmlm.sim import Simulator

SCMOS = ["camera.model=\"scmos\"", "camera.e_per_adu=0.4", "camera.em_gain=1", "camera.qe=0.8",
         "camera.read_noise_e=1.5", "camera.spurious_charge=0", "camera.baseline_adu=300", "camera.pixel_size_nm=108",
         "psf.sigma_nm=150", "sim.bg_photons=60"]
EMCCD = ["camera.em_gain=200", "camera.e_per_adu=25", "camera.baseline_adu=400", "camera.pixel_size_nm=160",
         "psf.sigma_nm=170", "sim.bg_photons=30"]


def _movie(overrides: list[str], frames: int = 150, structured: bool = True, seed: int = 77):
    # Emitters spread evenly: the camera figures' targets are set for a sample that leaves background pixels
    # everywhere (a filament sample crowds its emitters onto a few lines).
    cfg = config.load(None, ["sim.size=64", "sim.density=0.3", f"sim.bg_structured={str(structured).lower()}",
                             'sim.structure="uniform"',
                             f"sim.seed={seed}", *overrides])
    sim = Simulator(cfg)
    movie, _ = sim.movie(frames)
    return cfg, sim, movie, sim.dark_frames(30)


@pytest.mark.parametrize("camera", [SCMOS, EMCCD], ids=["scmos", "emccd"])
def test_with_a_dark_movie_every_figure_is_within_its_target(camera) -> None:
    cfg, sim, movie, dark = _movie(camera)
    cal = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, dark=dark)
    cam = sim.camera
    assert cal.camera_model == cfg.camera.model, cal.camera_model_method
    assert abs(cal.baseline_adu.value - cam.baseline_adu) <= 2.0
    assert cal.gain_adu_per_e.value == pytest.approx(cam.em_gain / cam.e_per_adu, rel=0.05)
    assert cal.psf_sigma_nm is not None and cal.psf_sigma_nm.value == pytest.approx(cfg.psf.sigma_nm, rel=0.05)
    assert cal.background_photons["median"] == pytest.approx(np.median(sim.background) * cam.qe, rel=0.10)
    # The calibrated camera converts this movie's counts to the photo-electrons the simulator made.
    converted = cal.camera().to_photons(np.asarray(cam.mean_adu(np.full(sim.shape, 100.0)), np.float32))
    assert converted.mean() == pytest.approx(100.0 * cam.qe, rel=0.06)


@pytest.mark.parametrize("camera, background, structured", [
    (SCMOS, 500, True),   # the light of emitters left in the statistics once read as an EM register's tail
    (EMCCD, 30, False),   # a flat field once left the photon-transfer slope, and with it the ratio, undetermined
    (SCMOS, 60, False),
], ids=["scmos-bg500", "emccd-flat", "scmos-flat"])
def test_the_camera_type_is_read_off_the_noise_at_any_background(camera, background, structured) -> None:
    cfg, sim, movie, dark = _movie([*camera, f"sim.bg_photons={background}"], frames=200, structured=structured)
    cal = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, dark=dark)
    assert cal.camera_model == cfg.camera.model, cal.camera_model_method
    # Ideal 1 and 1.5, read lower from the frames left (0.7–1.0 and 1.3–1.4 on bench_calibrate's cameras):
    # each clear of the decision (SKEW_DECISION 1.1) by 0.1 or more.
    low, high = (0.6, 1.0) if cfg.camera.model == "scmos" else (1.2, 1.7)
    assert low <= cal.skew_ratio <= high
    given = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, dark=dark, camera_model=cfg.camera.model)
    assert not [w for w in given.warnings if "noise looks like" in w]


@pytest.mark.parametrize("camera", [SCMOS, EMCCD], ids=["scmos", "emccd"])
def test_a_dense_movie_keeps_its_emitters_out_of_the_noise_and_the_background(camera) -> None:
    # 1 emitter/µm²: most frames have an emitter near every pixel; their light once read as camera noise
    # (gain +90 % and +670 % on two bench_calibrate cameras) and lifted the background's temporal median.
    cfg, sim, movie, dark = _movie([*camera, "sim.density=1.0"], frames=200)
    cal = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, dark=dark, camera_model=cfg.camera.model)
    cam = sim.camera
    assert cal.gain_adu_per_e.value == pytest.approx(cam.em_gain / cam.e_per_adu, rel=0.05)
    assert cal.background_photons["median"] == pytest.approx(np.median(sim.background) * cam.qe, rel=0.10)


@pytest.mark.parametrize("dark_frames", [True, False], ids=["dark", "no-dark"])
def test_a_dense_filament_sample_lights_its_pixels_yet_the_gain_holds(dark_frames) -> None:
    # Filaments at 1 emitter/µm²: the pixels on them are never free of emitter light in the frames the masks
    # keep; their photon-transfer points read as bright background 5–25× noisier than it is, and the line through
    # them once took the gain 16× too high (80 ADU/e⁻ for 5), with no warning.
    cfg = config.load(None, ["sim.size=96", "sim.density=1.0", "sim.bg_structured=true", 'sim.structure="filaments"',
                             "sim.filament_count=8", "sim.seed=9521", "sim.photons_mean=2000", "sim.photons_sigma=800",
                             *EMCCD])
    sim = Simulator(cfg)
    movie, _ = sim.movie(300)
    cal = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, camera_model="emccd",
                    dark=sim.dark_frames(30) if dark_frames else None,
                    baseline_adu=None if dark_frames else cfg.camera.baseline_adu)
    cam = sim.camera
    assert cal.gain_adu_per_e.value == pytest.approx(cam.em_gain / cam.e_per_adu, rel=0.05)
    assert [w for w in cal.warnings if "photon-transfer points" in w and "emitter light" in w], cal.warnings
    # A sample of evenly spread emitters leaves every point on the line: none dropped, no warning.
    _, _, even, dark = _movie(EMCCD)
    assert not [w for w in calibrate(even, pixel_size_nm=160.0, dark=dark).warnings if "photon-transfer points" in w]


def test_without_a_dark_movie_the_photon_transfer_line_gives_the_gain_and_a_stated_baseline() -> None:
    cfg, sim, movie, _ = _movie(EMCCD, frames=300)
    cal = calibrate(movie, pixel_size_nm=160.0, prior=CameraModel())
    cam = sim.camera
    # Without dark frames the line is fitted free over the illumination profile: 3–9 % on the simulated
    # cameras (benchmarks/bench_calibrate.py); the 5 % target needs the dark movie (test above).
    assert cal.gain_adu_per_e.value == pytest.approx(cam.em_gain / cam.e_per_adu, rel=0.10)
    assert "intercept" in cal.baseline_adu.method and cal.baseline_adu.uncertainty is not None
    assert abs(cal.baseline_adu.value - cam.baseline_adu) <= 3.0 * cal.baseline_adu.uncertainty + 1.0


def test_a_flat_background_without_dark_frames_or_baseline_is_refused_with_what_to_supply() -> None:
    cfg, sim, movie, _ = _movie(SCMOS, structured=False)
    with pytest.raises(CalibrationError, match=r"--dark.*--baseline-adu"):
        calibrate(movie, pixel_size_nm=108.0, camera_model="scmos")
    cal = calibrate(movie, pixel_size_nm=108.0, camera_model="scmos", baseline_adu=300.0,
                    prior=CameraModel.from_config(cfg.camera))
    assert cal.gain_adu_per_e.value == pytest.approx(1 / 0.4, rel=0.05)


def test_a_flat_emccd_field_without_dark_frames_is_refused_not_fitted_to_its_noise() -> None:
    # The EMCCD's skewed noise makes the pixels that read brighter also read noisier: once accepted as a
    # photon-transfer line (gain +60 %, baseline +38 ADU on bench_calibrate's EMCCD 160 nm camera).
    cfg, sim, movie, _ = _movie([*EMCCD, "camera.em_gain=300", "camera.e_per_adu=60", "camera.baseline_adu=200",
                                 "camera.read_noise_e=60", "sim.bg_photons=20", "sim.photons_mean=2000"],
                                frames=300, structured=False)
    with pytest.raises(CalibrationError, match=r"--dark.*--baseline-adu"):
        calibrate(movie, pixel_size_nm=160.0, camera_model="emccd")


def test_bad_input_is_one_sentence() -> None:
    cfg, sim, movie, dark = _movie(SCMOS, frames=30)
    with pytest.raises(CalibrationError, match="needs at least 10"):
        calibrate(movie[:5], pixel_size_nm=108.0)
    with pytest.raises(CalibrationError, match="dark movie's frames are"):
        calibrate(movie, pixel_size_nm=108.0, dark=dark[:, :32, :32])
    with pytest.raises(CalibrationError, match="'ccd' is not"):
        calibrate(movie, pixel_size_nm=108.0, camera_model="ccd")


def test_thresholds_chosen_with_test_time_flips_bind_the_run_to_them(tmp_path) -> None:
    from rtsmlm.cli import main
    from rtsmlm.io.movies import write_tiff_movie

    cfg, sim, movie, dark = _movie(SCMOS)
    write_tiff_movie(tmp_path / "movie.tif", movie, 108.0, {})
    write_tiff_movie(tmp_path / "dark.tif", dark, 108.0, {})
    out = tmp_path / "camera.toml"
    assert main(["calibrate", str(tmp_path / "movie.tif"), "--dark", str(tmp_path / "dark.tif"), "--models",
                 "broad_2d", "--threshold-frames", "20", "--set", "backend.test_time_flips=2", "--out", str(out)]) == 0
    loaded = config.load(out)
    assert loaded.backend.test_time_flips == 2  # the maps the thresholds were chosen on
    assert loaded.model.checkpoint == "broad_2d" and 0.2 <= loaded.model.p_threshold <= 0.9


def test_the_command_writes_a_config_that_run_and_train_accept_and_a_report(tmp_path, capsys) -> None:
    from rtsmlm.cli import main
    from rtsmlm.io.movies import write_tiff_movie

    cfg, sim, movie, dark = _movie(SCMOS)
    write_tiff_movie(tmp_path / "movie.tif", movie, 108.0, {})
    write_tiff_movie(tmp_path / "dark.tif", dark, 108.0, {})
    out = tmp_path / "camera.toml"
    assert main(["calibrate", str(tmp_path / "movie.tif"), "--dark", str(tmp_path / "dark.tif"), "--out",
                 str(out)]) == 0
    loaded = config.load(out)
    assert loaded.camera.model == "scmos" and loaded.camera.pixel_size_nm == 108.0
    assert loaded.camera.baseline_adu == pytest.approx(300.0, abs=2.0)
    assert loaded.camera.e_per_adu == pytest.approx(0.4, rel=0.05) and loaded.camera.qe == 1.0  # photo-electrons
    assert loaded.psf.sigma_nm == pytest.approx(150.0, rel=0.05)
    assert loaded.model.checkpoint in ("default", "broad_2d") and 0.2 <= loaded.model.p_threshold <= 0.9
    assert loaded.model.thresholds_for == loaded.model.checkpoint  # bound to the model they were chosen for
    assert loaded.model.residual_threshold in (0.0, 0.5)  # the second pass as configured, or off
    assert loaded.train.bg_min < np.median(sim.background) * 0.8 < loaded.train.bg_max
    assert loaded.train.threads == 0  # the fine-tune takes every core
    # An sCMOS with dark frames: each pixel's own offset goes to the run through camera.maps_file.
    from rtsmlm.core.camera import CameraModel

    cam = CameraModel.from_config(loaded.camera)
    assert cam.offset_map is not None and cam.offset_map.shape == movie.shape[1:]
    assert np.allclose(cam.offset_map, dark.mean(axis=0), atol=0.01)
    png = out.with_suffix(".png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The fine-tune it suggests starts from the default model at this background (tens of photons/px).
    assert f"rtsmlm train --config {out} --init default --steps 1500" in capsys.readouterr().out


def test_the_command_calibrates_on_the_middle_of_a_long_movie_not_its_crowded_start(tmp_path, capsys) -> None:
    # A dSTORM movie starts crowded (every dye on until it is switched off): 200 frames at 3 emitters/µm², then
    # 600 at 0.3. The density and background a fine-tune is fitted to are the sparse part's.
    from rtsmlm.cli import main
    from rtsmlm.io.movies import write_tiff_movie

    _, _, crowded, dark = _movie([*SCMOS, "sim.density=3"], frames=200, seed=5)
    _, sim, sparse, _ = _movie(SCMOS, frames=600, seed=6)
    write_tiff_movie(tmp_path / "movie.tif", np.concatenate([crowded, sparse]), 108.0, {})
    write_tiff_movie(tmp_path / "dark.tif", dark, 108.0, {})
    assert main(["calibrate", str(tmp_path / "movie.tif"), "--dark", str(tmp_path / "dark.tif"), "--frames", "300",
                 "--models", "", "--json", "--out", str(tmp_path / "camera.toml")]) == 0
    out = capsys.readouterr()
    assert "frames 250–549 of 800 (the middle of the movie" in out.err
    figures, _ = json.JSONDecoder().raw_decode(out.out)
    assert figures["frames_used"] == 300 and figures["spots"]["density_per_um2"] < 0.6  # the sparse part's
    assert 0.2 < figures["sample"]["density_per_um2"] < 0.4  # 0.3 simulated (3 in the crowded start)


def test_a_fine_tune_starts_from_default_unless_the_background_is_beyond_its_range() -> None:
    from rtsmlm.cli.calibrate import fine_tune_init

    # The default model was trained on 20-150 photons/px; its range guard passes up to 1.6x (240).
    assert [fine_tune_init(bg) for bg in (5.0, 200.0, 239.0, 241.0, 800.0)] == \
        ["default", "default", "default", "broad_2d", "broad_2d"]


@pytest.mark.slow  # localizes 2 × 40 simulated frames
def test_the_thresholds_are_chosen_on_the_calibrated_conditions_as_a_run_at_them_scores() -> None:
    from rtsmlm.analysis.metrics import evaluate
    from rtsmlm.analysis.thresholds import CANDIDATE_GRID, GRID, JACCARD_TOLERANCE, choose_thresholds
    from rtsmlm.localization.brightness_floor import CONFIRM_RADIUS_PX, kept_by_floor
    from rtsmlm.localization.offline import OfflineLocalizer
    from rtsmlm.sim import Simulator

    # A dim sample: the fixed 0.6 loses dim emitters; the surface says which thresholds recover them.
    cfg = config.load(None, ["sim.size=64", "sim.density=0.5", "sim.photons_mean=700", "sim.photons_sigma=200",
                             "sim.bg_photons=60", "sim.seed=5", "sim.structure='uniform'", "backend.threads=1"])
    choice = choose_thresholds(cfg, "default", frames=40, candidates=(0.15, 0.3), floors=(0.0, 0.5))
    # The second detection pass as configured (0.5) and off.
    assert set(choice.surface) == {(c, float(t), f, r) for c in (0.15, 0.3) for t in GRID for f in (0.0, 350.0)
                                   for r in (0.5, 0.0)}
    assert CANDIDATE_GRID == (0.3,)  # calibrate's default: the p threshold alone (measured: the grid gained 0.001)
    key = (choice.candidate_threshold, choice.p_threshold, choice.min_photons, choice.residual_threshold)
    assert choice.jaccard == choice.surface[key]
    assert choice.jaccard >= max(choice.surface.values()) - JACCARD_TOLERANCE
    assert choice.jaccard >= choice.surface[(0.3, 0.6, 0.0, 0.5)]
    assert all(0.0 <= j <= 1.0 for j in choice.surface.values()) and choice.jaccard > 0.3
    # Each entry is what a run at those settings scores on the same simulated movie, the floor and the second
    # pass included.
    assert choice.frames == 49  # 40 asked, but 1000 emitters at 0.5/µm² on 41 µm² take 49 frames
    movie, truth = Simulator(cfg).movie(choice.frames)
    loc = OfflineLocalizer("default", config.replace(cfg.backend, name="torch", device="cpu"))
    for cand, p, floor, residual in ((0.15, 0.3, 0.0, 0.5), (0.3, 0.6, 0.0, 0.5), (0.15, 0.3, 350.0, 0.5),
                                     (0.3, 0.3, 0.0, 0.0)):
        loc.p_threshold, loc.candidate_threshold, loc.min_photons, loc.residual_threshold = p, cand, floor, residual
        locs = loc.localize(movie, Simulator(cfg).camera)
        # Every localization is at the floor or beside one that is, in an adjacent frame (the floor's waiver).
        assert kept_by_floor(locs, floor, CONFIRM_RADIUS_PX * cfg.camera.pixel_size_nm + 1e-3).all()
        assert floor == 0.0 or (locs["photons"] < floor).sum() < (locs["photons"] >= floor).sum()
        got = evaluate(locs, truth, tolerance_nm=250.0)["jaccard"]
        # Up to one detection apart: the run's batches differ from the surface's, and on some CPUs that moves
        # the network's outputs by a rounding error, enough to put a read-out at the floor on the other side.
        assert got == pytest.approx(choice.surface[(cand, p, floor, residual)], abs=0.002)
    # The floor removes detections (and is chosen only for a clear gain over none). Half the brightness: a fifth
    # is waived for nearly every detection under it here, emitters on for several frames confirming each other.
    assert choice.surface[(0.15, 0.3, 350.0, 0.5)] != choice.surface[(0.15, 0.3, 0.0, 0.5)]
    if choice.min_photons > 0:
        assert choice.jaccard > max(j for k, j in choice.surface.items() if k[2] == 0.0) + JACCARD_TOLERANCE
    # The second pass finds detections the first does not (and is turned off only for a clear gain).
    assert any(j != choice.surface[k[:3] + (0.0,)] for k, j in choice.surface.items() if k[3] == 0.5)
    if choice.residual_threshold == 0.0:
        assert choice.jaccard > max(j for k, j in choice.surface.items() if k[3] == 0.5) + JACCARD_TOLERANCE


def test_a_sparse_sample_is_simulated_long_enough_for_a_thousand_emitters() -> None:
    from rtsmlm.analysis.thresholds import MAX_FRAMES, frames_for

    dense = config.load(None, ["sim.density=3"])  # 100 nm pixels: 64² frames are 41 µm², 123 emitters each
    assert frames_for(dense, 100, 64) == 100
    sparse = config.load(None, ["sim.density=0.1", "camera.pixel_size_nm=65"])  # 1.7 emitters per frame
    assert frames_for(sparse, 100, 64) == 578
    assert frames_for(config.load(None, ["sim.density=0.001"]), 100, 64) == MAX_FRAMES


@pytest.mark.parametrize("background, expect_map", [(600, True), (5, False)])
def test_an_scmos_pixels_own_response_is_measured_from_a_bright_background(tmp_path, background, expect_map) -> None:
    from rtsmlm.core.camera import load_maps, save_maps

    # The simulated sCMOS has a 3 % per-pixel gain spread (SCMOS_PRESET): a fixed pattern as strong as the shot
    # noise at hundreds of photons per pixel, which the network reads as emitters unless the run corrects it.
    cfg, sim, movie, dark = _movie([*SCMOS, "camera.scmos_gain_sigma=0.03", f"sim.bg_photons={background}"],
                                   frames=200)
    cal = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, dark=dark)
    offset, variance, response = cal.pixel_maps
    if not expect_map:
        assert response is None  # at 5 photons/px the ratios are mostly noise: no map rather than a noisy one
        return
    true = sim.camera.gain_map.mean() / sim.camera.gain_map  # a brighter pixel has fewer e⁻ per ADU
    assert np.corrcoef(response.ravel(), true.ravel())[0, 1] > 0.85
    assert np.std(response - true) < 0.5 * np.std(true)
    # Through the maps file to the run's camera, which then converts every pixel with its own gain.
    save_maps(tmp_path / "maps.npz", *cal.pixel_maps)
    assert np.array_equal(load_maps(tmp_path / "maps.npz")[2], response)
    loaded = CameraModel.from_config(config.load(None, ['camera.model="scmos"', "camera.e_per_adu=0.4",
                                                        f'camera.maps_file="{tmp_path / "maps.npz"}"']).camera)
    assert np.allclose(loaded.gain_map, 0.4 / response)
    flat = loaded.to_photons(sim.camera.mean_adu(np.full(sim.shape, 1000.0)).astype(np.float32))
    uncorrected = CameraModel.from_config(config.load(None, ['camera.model="scmos"', "camera.e_per_adu=0.4"]).camera)
    assert np.std(flat) < 0.5 * np.std(uncorrected.to_photons(sim.camera.mean_adu(np.full(sim.shape, 1000.0))))


def test_a_maps_file_without_a_response_still_loads_and_a_foreign_response_is_named(tmp_path) -> None:
    from rtsmlm.core.camera import MapsError, save_maps

    save_maps(tmp_path / "old.npz", np.full((8, 8), 100.0), np.ones((8, 8)))  # as written before responses
    cam = CameraModel.from_config(config.load(None, [f'camera.maps_file="{tmp_path / "old.npz"}"']).camera)
    assert cam.gain_map is None and cam.offset_map.shape == (8, 8)
    np.savez(tmp_path / "bad.npz", offset_adu=np.zeros((8, 8)), variance_adu2=np.ones((8, 8)), response=np.ones((4, 4)))
    with pytest.raises(MapsError, match="response map"):
        CameraModel.from_config(config.load(None, [f'camera.maps_file="{tmp_path / "bad.npz"}"']).camera)


def test_a_missing_or_foreign_maps_file_is_one_sentence(tmp_path) -> None:
    from rtsmlm.core.camera import CameraModel, MapsError

    with pytest.raises(MapsError, match="does not exist"):
        CameraModel.from_config(config.load(None, [f'camera.maps_file="{tmp_path / "none.npz"}"']).camera)
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(MapsError, match="not an rtsmlm maps file"):
        CameraModel.from_config(config.load(None, [f'camera.maps_file="{tmp_path / "other.npz"}"']).camera)


def test_a_ten_frame_movie_gives_the_gain_from_the_pixels_no_emitter_reached() -> None:
    # A short movie (the storm-analysis test data: 10 frames of 256², baseline known): a loose spot mask lets
    # emitter light into the noise statistics (that movie read gain 1.45 for 1); the strictest mask that leaves
    # enough pixels is used instead.
    storm_like = ['camera.model="scmos"', "camera.e_per_adu=1", "camera.em_gain=1", "camera.qe=1",
                  "camera.read_noise_e=1", "camera.spurious_charge=0", "camera.baseline_adu=100",
                  "camera.pixel_size_nm=160", "camera.scmos_offset_sigma_adu=0", "camera.scmos_gain_sigma=0",
                  "psf.sigma_nm=160", "sim.bg_photons=50", "sim.mean_on_frames=1", "sim.size=256", "sim.density=0.12"]
    cfg, sim, movie, _ = _movie(storm_like, frames=10, structured=False)
    cal = calibrate(movie, pixel_size_nm=160.0, prior=CameraModel.from_config(cfg.camera), camera_model="scmos",
                    baseline_adu=100.0)
    assert cal.gain_adu_per_e.value == pytest.approx(1.0, rel=0.05)
    assert cal.background_photons["median"] == pytest.approx(50.0, rel=0.10)


@pytest.mark.parametrize("camera", ["scmos", "emccd"])
def test_a_bleaching_background_does_not_count_as_camera_noise(camera) -> None:
    # STORM backgrounds bleach over the movie: here an extra 40 photo-electrons/px fade to 16 over 300 frames.
    # A variance about each pixel's mean counts that trend as noise (gain +5 % at 30 % bleaching, +13 % at 60 %);
    # the differences of successive frames do not.
    cfg, sim, movie, dark = _movie(SCMOS if camera == "scmos" else EMCCD, frames=300)
    cam, rng = sim.camera, np.random.default_rng(4)
    electrons = rng.poisson(np.linspace(40.0, 16.0, len(movie))[:, None, None] * np.ones(movie.shape[1:]))
    if camera == "emccd":  # the EM register's output per electron is exponential: a gamma of their number
        electrons = np.where(electrons > 0, rng.gamma(np.maximum(electrons, 1), cam.em_gain), 0.0)
    bleaching = movie + electrons / cam.e_per_adu
    cal = calibrate(bleaching, pixel_size_nm=cam.pixel_size_nm, dark=dark, camera_model=camera, prior=CameraModel())
    assert cal.gain_adu_per_e.value == pytest.approx(cam.em_gain / cam.e_per_adu, rel=0.03)
