"""``rtsmlm simulate`` through ``rtsmlm.cli.commands``: the files, their metadata, and that they agree.

The movie must open in tifffile/Fiji calibrated, the ground truth must explain the movie (its emitters
sit on the bright pixels, with the brightness the camera model predicts), and the truth of fixed
fiducials must move exactly as drift.csv says.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import stats

from rtsmlm.cli import main
from rtsmlm.core import config
from rtsmlm.sim import Simulator
from rtsmlm.sim.camera import camera_from_config
from rtsmlm.sim.psf import psf_from_config

FRAMES, SIZE, PIXEL_NM, DRIFT_NM_PER_FRAME, FIDUCIALS = 60, 40, 160.0, 2.0, 3
Z = 5.0


def simulate(out: Path, *args: str) -> int:
    return main(["simulate", "--out", str(out), "--quiet", *args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    rc = simulate(out, "--frames", str(FRAMES), "--size", str(SIZE), "--density", "1.0", "--seed", "5",
                  "--drift", "--set", f"camera.pixel_size_nm={PIXEL_NM}",
                  "--set", f"sim.fiducials={FIDUCIALS}",
                  "--set", f"sim.drift.linear_nm_per_frame={DRIFT_NM_PER_FRAME}")
    assert rc == 0
    return out


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    return header, np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def run_config(out: Path) -> config.Config:
    return config.from_dict(json.loads((out / "simulation.json").read_text()), str(out / "simulation.json"))


def test_writes_movie_truth_drift_and_config(run_dir: Path) -> None:
    assert {p.name for p in run_dir.iterdir()} == {"movie.tif", "ground_truth.csv", "drift.csv",
                                                   "simulation.json"}
    cfg = run_config(run_dir)
    assert (cfg.sim.frames, cfg.sim.size, cfg.sim.density, cfg.sim.seed, cfg.sim.structure) \
        == (FRAMES, SIZE, 1.0, 5, "filaments")
    assert cfg.sim.drift.enabled and cfg.camera.pixel_size_nm == PIXEL_NM and cfg.sim.fiducials == FIDUCIALS


def test_movie_opens_in_tifffile_as_a_calibrated_imagej_stack(run_dir: Path) -> None:
    with tifffile.TiffFile(run_dir / "movie.tif") as tif:
        assert tif.is_imagej
        assert len(tif.pages) == FRAMES
        series = tif.series[0]
        assert series.shape == (FRAMES, SIZE, SIZE) and series.dtype == np.uint16
        page = tif.pages[0]
        # ImageJ reads the pixel size as pixels per unit (XResolution) in the description's unit.
        for tag in ("XResolution", "YResolution"):
            num, den = page.tags[tag].value
            assert num / den == pytest.approx(1000.0 / PIXEL_NM)
        ij = tif.imagej_metadata
        assert ij["unit"] in ("um", "micron", "\\u00B5m")
        assert ij["frames"] == FRAMES or ij.get("images") == FRAMES
        info = json.loads(ij["Info"])
        data = series.asarray()
    assert info["pixel_size_nm"] == PIXEL_NM
    camera = info["metadata"]["camera"]
    cfg = run_config(run_dir)
    expected_camera = camera_from_config(cfg.camera, (SIZE, SIZE)).describe()
    assert camera == json.loads(json.dumps(expected_camera))
    assert camera["model"] == "emccd" and camera["pixel_size_nm"] == PIXEL_NM
    # The file is the acquisition simulation.json describes: regenerating it gives the same pixels.
    sim = Simulator(cfg)
    for i in range(FRAMES):
        assert np.array_equal(sim.step()[0], data[i]), f"frame {i} differs from its regeneration"


def test_ground_truth_rows_land_on_bright_pixels(run_dir: Path) -> None:
    header, truth = read_csv(run_dir / "ground_truth.csv")
    assert header == ["frame", "x", "y", "z", "photons"]
    frame_idx = truth[:, 0].astype(int)
    assert frame_idx.min() >= 0 and frame_idx.max() < FRAMES and np.all(np.diff(frame_idx) >= 0)
    extent = SIZE * PIXEL_NM
    assert np.all((truth[:, 1] >= 0) & (truth[:, 1] < extent) & (truth[:, 2] >= 0) & (truth[:, 2] < extent))
    movie = tifffile.imread(run_dir / "movie.tif").astype(np.float64)

    cfg = run_config(run_dir)
    cam = camera_from_config(cfg.camera, (SIZE, SIZE))
    psf = psf_from_config(cfg.psf, PIXEL_NM)
    # The truth predicts each frame: PSFs of its emitters + background, through the camera model
    # (EMCCD variance: excess noise 2 on the electrons, read noise, rounding).
    expected = np.stack([
        psf.render(truth[frame_idx == f, 1] / PIXEL_NM, truth[frame_idx == f, 2] / PIXEL_NM,
                   truth[frame_idx == f, 3], truth[frame_idx == f, 4], (SIZE, SIZE)) + cfg.sim.bg_photons
        for f in range(FRAMES)])
    mean = cam.mean_adu(expected)
    electrons = cam.qe * expected + cam.spurious_charge
    sd = np.sqrt((2 * electrons * cam.em_gain ** 2 + cam.read_noise_e ** 2) / cam.e_per_adu ** 2 + 1 / 12)

    bright = truth[:, 4] >= 1000
    rows = (truth[bright, 2] // PIXEL_NM).astype(int)  # y → row
    cols = (truth[bright, 1] // PIXEL_NM).astype(int)  # x → column
    f = frame_idx[bright]
    n = len(f)
    assert n > 100
    z = (movie[f, rows, cols] - mean[f, rows, cols]) / sd[f, rows, cols]
    assert abs(z.mean()) < Z / np.sqrt(n), z.mean()
    # Every such pixel is above the background: with 160 nm pixels and a 130 nm PSF sigma a pixel
    # holds ≥ 15 % of its emitter's photons (emitter at a corner), ≥ 150 photons here, which in ADU is
    # ≥ 7 noise sd above the background mean.
    background = cam.mean_adu(np.array(cfg.sim.bg_photons))
    assert np.all(movie[f, rows, cols] > background)
    # The test can tell orientation: with x and y swapped the truth misses its spots.
    z_swapped = (movie[f, cols, rows] - mean[f, rows, cols]) / sd[f, rows, cols]
    assert z_swapped.mean() < -Z / np.sqrt(n)


def test_drift_csv_is_the_displacement_of_the_sample_in_the_truth(run_dir: Path) -> None:
    header, drift = read_csv(run_dir / "drift.csv")
    assert header == ["frame", "dx", "dy"]
    assert drift.shape == (FRAMES, 3)
    assert np.array_equal(drift[:, 0], np.arange(FRAMES))
    assert np.array_equal(drift[0, 1:], [0.0, 0.0])
    # Smooth: steps stay within the random walk's 5 sd plus the configured creep and sinusoid speed.
    cfg = run_config(run_dir)
    d = cfg.sim.drift
    max_step = (Z * d.random_walk_nm_per_frame + abs(d.linear_nm_per_frame)
                + d.sinusoid_amplitude_nm * 2 * np.pi / d.sinusoid_period_frames)
    assert np.abs(np.diff(drift[:, 1:], axis=0)).max() < max_step

    _, truth = read_csv(run_dir / "ground_truth.csv")
    fid = truth[truth[:, 4] == cfg.sim.fiducial_photons]
    assert len(fid) == FIDUCIALS * FRAMES
    # The CSVs round positions to 0.01 nm and drift to 0.001 nm.
    tol = 0.005 * 2 + 0.0005 + 1e-9
    start = fid[fid[:, 0] == 0]
    for f in range(FRAMES):
        rows = fid[fid[:, 0] == f]
        for x0, y0 in start[:, 1:3]:
            k = np.argmin(np.hypot(rows[:, 1] - x0, rows[:, 2] - y0))
            # A label at x0 is imaged at x0 + dx: the fiducial follows drift.csv with the same sign.
            assert rows[k, 1] - x0 == pytest.approx(drift[f, 1], abs=tol)
            assert rows[k, 2] - y0 == pytest.approx(drift[f, 2], abs=tol)
    assert np.hypot(*drift[-1, 1:]) > 0.5 * DRIFT_NM_PER_FRAME * (FRAMES - 1)  # the creep is there


def test_existing_output_directory_is_refused_and_left_alone(run_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    digest = hashlib.sha256((run_dir / "movie.tif").read_bytes()).hexdigest()
    assert simulate(run_dir, "--frames", "5", "--size", "16") == 2
    err = capsys.readouterr().err
    assert str(run_dir) in err and "exists" in err and err.count("\n") == 1
    assert hashlib.sha256((run_dir / "movie.tif").read_bytes()).hexdigest() == digest

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert simulate(other, "--frames", "5", "--size", "16") == 2
    # --overwrite replaces an earlier run only: a folder with someone's notes is refused, untouched.
    assert simulate(other, "--frames", "5", "--size", "16", "--overwrite") == 2
    assert "notes.txt" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert (other / "notes.txt").read_text() == "keep me"
    (other / "notes.txt").unlink()
    assert simulate(other, "--frames", "5", "--size", "16", "--drift", "--overwrite") == 0
    assert (other / "drift.csv").exists()
    # Overwriting with a run without drift leaves no drift.csv of the earlier run behind.
    assert simulate(other, "--frames", "7", "--size", "16", "--overwrite") == 0
    with tifffile.TiffFile(other / "movie.tif") as tif:
        assert len(tif.pages) == 7
    assert not (other / "drift.csv").exists()
    assert run_config(other).sim.frames == 7


def test_scmos_camera_writes_pixel_map_frames(tmp_path: Path) -> None:
    out = tmp_path / "scmos"
    frames, size = 60, 24
    assert simulate(out, "--frames", str(frames), "--size", str(size), "--density", "0",
                    "--camera", "scmos") == 0
    with tifffile.TiffFile(out / "movie.tif") as tif:
        camera = json.loads(tif.imagej_metadata["Info"])["metadata"]["camera"]
        movie = tif.series[0].asarray().astype(np.float64)
    assert camera["model"] == "scmos" and camera["has_pixel_maps"] is True and camera["em_gain"] == 1.0
    cfg = run_config(out)
    assert cfg.camera.model == "scmos"
    cam = camera_from_config(cfg.camera, (size, size))
    # Background only: every pixel's mean is its own offset + qe·bg / gain.
    bg = np.full((size, size), cfg.sim.bg_photons)
    var = cam.qe * bg / cam.gain_map ** 2 + cam.variance_map + 1 / 12
    z = (movie.mean(axis=0) - cam.mean_adu(bg)) / np.sqrt(var / frames)
    assert np.max(np.abs(z)) < stats.norm.isf(1e-3 / (2 * z.size))
