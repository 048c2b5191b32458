"""The Micro-Manager source against a real MMCore with this project's own device adapter.

The adapter (plugins/micromanager) is built with the C++ compiler once per session; every test then runs
a real headless pycromanager Python-backend core that loads it, plays real movie files through MMCore's
sequence acquisition and circular buffer, and reads frames through :class:`MicroManagerSource`.
Only a missing compiler skips these tests.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rtsmlm.acquisition.micromanager import MicroManagerSource, open_micromanager_source
from rtsmlm.acquisition.source import Control, Source, SourceError
from rtsmlm.core import config

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugins" / "micromanager"
SHIPPED_CFG = PLUGIN / "rtsmlm_sim.cfg"
PIXEL_NM = 100.0  # the shipped configuration's calibration

# The synthetic movie's camera: ADU = photons * 2 + 100, no EM gain.
OFFSET_ADU = 100.0
E_PER_ADU = 0.5
PSF_SIGMA_PX = 1.3
SPOT_PHOTONS = 4000.0
BG_PHOTONS = 10.0
BUFFER_MB = 32  # MMCore allocates (and zeroes) its whole circular buffer: keep tests light


def headless(adapter_dir: Path, cfg: Path, **kwargs) -> MicroManagerSource:
    kwargs.setdefault("buffer_mb", BUFFER_MB)
    return MicroManagerSource.headless(adapter_dir, cfg, **kwargs)


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def adapter_dir() -> Path:
    """Build libmmgr_dal_Rtsmlm (incrementally; the SDK is fetched once) and return its folder."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ('{cxx}') to build the Micro-Manager device adapter")
    proc = subprocess.run([sys.executable, str(PLUGIN / "build.py")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"building the adapter failed:\n{proc.stdout}\n{proc.stderr}"
    library = Path(proc.stdout.strip().splitlines()[-1])
    assert library.is_file()
    return library.parent


def make_spot_movie(path: Path, n_frames: int, size: int, seed: int) -> np.ndarray:
    """Write a Picasso .raw + .yaml movie of 1-2 Gaussian spots per frame (10+ px apart, 5+ px from the
    edges); return the ground truth (frame, x, y in nm, photons), origin at the top-left pixel's corner."""
    erf = np.vectorize(math.erf, otypes=[np.float64])  # (scipy.special costs seconds to import)
    rng = np.random.default_rng(seed)
    xy = rng.uniform(5.0, size - 5.0, (n_frames, 2, 2))  # frame, spot, (x, y) in pixels
    too_close = np.hypot(*(xy[:, 0] - xy[:, 1]).T) <= 10.0
    while too_close.any():
        xy[too_close, 1] = rng.uniform(5.0, size - 5.0, (int(too_close.sum()), 2))
        too_close = np.hypot(*(xy[:, 0] - xy[:, 1]).T) <= 10.0
    present = np.ones((n_frames, 2), bool)
    present[:, 1] = rng.random(n_frames) < 0.5
    edges = np.arange(size + 1, dtype=np.float64)
    scale = np.sqrt(2) * PSF_SIGMA_PX
    wx = 0.5 * np.diff(erf((edges - xy[..., 0, None]) / scale), axis=-1)  # (frame, spot, column)
    wy = 0.5 * np.diff(erf((edges - xy[..., 1, None]) / scale), axis=-1)  # (frame, spot, row)
    expected = BG_PHOTONS + SPOT_PHOTONS * np.einsum("fs,fsi,fsj->fij", present.astype(float), wy, wx)
    # Shot noise as its Gaussian limit (>= 10 photons everywhere): as good here, and cheaper to draw.
    noisy = expected + np.sqrt(expected) * rng.standard_normal(expected.shape)
    movie = np.clip(np.rint(noisy / E_PER_ADU + OFFSET_ADU), 0, 65535).astype(np.uint16)
    movie.tofile(path)
    path.with_suffix(".yaml").write_text(
        f"Byte Order: <\nData Type: uint16\nFrames: {n_frames}\nHeight: {size}\nWidth: {size}\n")
    frame_idx, spot_idx = np.nonzero(present)
    truth = np.zeros(len(frame_idx), dtype=[("frame", "<i8"), ("x", "<f8"), ("y", "<f8"), ("photons", "<f8")])
    truth["frame"] = frame_idx
    truth["x"] = xy[frame_idx, spot_idx, 0] * PIXEL_NM
    truth["y"] = xy[frame_idx, spot_idx, 1] * PIXEL_NM
    truth["photons"] = SPOT_PHOTONS
    return truth


def movie_cfg(tmp_path: Path, movie: Path, *, loop: bool, exposure_ms: float, extra: str = "") -> Path:
    """The shipped configuration switched to Movie mode on ``movie`` (what a user would write)."""
    cfg = tmp_path / "movie.cfg"
    cfg.write_text(SHIPPED_CFG.read_text() + "\n# movie playback\n"
                   "Property,Camera,Mode,Movie\n"
                   f"Property,Camera,MovieFile,{movie}\n"
                   f"Property,Camera,Loop,{'Yes' if loop else 'No'}\n"
                   f"Property,Camera,Exposure,{exposure_ms}\n"
                   "Property,Camera,EMGain,1\n"
                   f"Property,Camera,Offset,{OFFSET_ADU}\n"
                   f"Property,Camera,ElectronsPerADU,{E_PER_ADU}\n" + extra)
    return cfg


@pytest.fixture(scope="module")
def spot_movie(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 5,000-frame 32x32 movie with its ground truth, written once for the module."""
    folder = tmp_path_factory.mktemp("mm_movie")
    path = folder / "spots.raw"
    truth = make_spot_movie(path, 5000, 32, seed=7)
    frames = np.fromfile(path, np.uint16).reshape(5000, 32, 32)
    return path, frames, truth


def centroid_localize(photons: np.ndarray, threshold: float, half: int = 3) -> np.ndarray:
    """Localize spots in a (frames, H, W) photon stack: brightest pixels above ``threshold`` (over the
    frame's median) refined by a background-subtracted centroid in a (2*half+1)^2 window.
    Returns rows (frame, x_nm, y_nm, photons); pixel j covers [j, j+1), so centres sit at j + 0.5."""
    from numpy.lib.stride_tricks import sliding_window_view

    n, h, w = photons.shape
    signal = photons - np.median(photons, axis=(1, 2))[:, None, None]
    padded = np.pad(signal, ((0, 0), (half, half), (half, half)))
    windows = sliding_window_view(padded, (2 * half + 1, 2 * half + 1), axis=(1, 2))  # n, h, w, k, k
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    work = signal.copy()
    out = []
    frames = np.arange(n)
    while True:
        flat = work.reshape(n, -1).argmax(axis=1)
        i, j = np.divmod(flat, w)
        found = work[frames, i, j] >= threshold
        if not found.any():
            return np.array(out).reshape(-1, 4)
        f, i, j = frames[found], i[found], j[found]
        win = windows[f, i, j]
        total = win.sum(axis=(1, 2))
        x = j + (win.sum(axis=1) * offsets).sum(axis=1) / total + 0.5
        y = i + (win.sum(axis=2) * offsets).sum(axis=1) / total + 0.5
        out.extend(zip(f, x * PIXEL_NM, y * PIXEL_NM, total))
        rows = np.clip(i[:, None, None] + np.arange(-half, half + 1)[None, :, None], 0, h - 1)
        cols = np.clip(j[:, None, None] + np.arange(-half, half + 1)[None, None, :], 0, w - 1)
        work[f[:, None, None], rows, cols] = -np.inf  # this spot is done


# ------------------------------------------------------------------------------------------ streaming

def test_movie_streams_every_frame_in_order_and_localizes_to_ground_truth(adapter_dir, spot_movie, tmp_path):
    path, frames, truth = spot_movie
    cfg = movie_cfg(tmp_path, path, loop=False, exposure_ms=0)
    with headless(adapter_dir, cfg) as src:
        assert isinstance(src, Source) and isinstance(src.control, Control)
        assert src.shape == (32, 32) and src.dtype == np.uint16 and src.n_frames is None
        # The camera model comes from Micro-Manager: calibration, exposure, offset and gain properties.
        assert src.camera.pixel_size_nm == pytest.approx(PIXEL_NM)
        assert src.camera.baseline_adu == pytest.approx(OFFSET_ADU)
        assert src.camera.e_per_adu == pytest.approx(E_PER_ADU)
        assert src.camera.em_gain == pytest.approx(1.0)
        assert src.camera.exposure_ms == pytest.approx(0.0)
        assert {"pixel_size_nm", "baseline_adu", "e_per_adu", "em_gain"} <= set(src.camera_from_device)
        src.start()
        indices, delivered = [], []
        for frame in src.frames():  # ends by itself: Loop=No stops the camera at the movie's end
            indices.append(frame.index)
            delivered.append(frame.data)
        assert indices == list(range(5000))
        assert src.lost_frames == 0 and src.lost_ranges == []
        assert src.stats()["frames_delivered"] == 5000
        stack = np.stack(delivered)
        assert stack.dtype == np.uint16 and np.array_equal(stack, frames)  # bit-identical to the movie
        located = centroid_localize(src.camera.to_photons(stack), threshold=SPOT_PHOTONS / 20)

    # Every ground-truth spot is found in its own frame, where the movie put it, and nothing else is.
    per_frame_found = np.bincount(located[:, 0].astype(int), minlength=5000)
    per_frame_true = np.bincount(truth["frame"], minlength=5000)
    assert np.array_equal(per_frame_found, per_frame_true)
    located = located[np.argsort(located[:, 0], kind="stable")]
    first = np.searchsorted(located[:, 0], truth["frame"])  # each frame holds 1 or 2 spots
    second = np.minimum(first + 1, len(located) - 1)
    candidates = np.stack([first, np.where(per_frame_true[truth["frame"]] == 2, second, first)], axis=1)
    dist = np.hypot(located[candidates, 1] - truth["x"][:, None], located[candidates, 2] - truth["y"][:, None])
    best = candidates[np.arange(len(truth)), dist.argmin(axis=1)]
    errors = dist.min(axis=1)
    assert np.sqrt(np.mean(errors ** 2)) < 0.25 * PIXEL_NM  # a centroid on 4000-photon spots
    assert errors.max() < PIXEL_NM
    # Photons from the camera model Micro-Manager reported (offset, e/ADU, EM gain) match the movie's.
    assert np.median(located[best, 3] / truth["photons"]) == pytest.approx(1.0, abs=0.1)


def test_max_frames_runs_a_finite_sequence(adapter_dir, spot_movie, tmp_path):
    path, frames, _ = spot_movie
    cfg = movie_cfg(tmp_path, path, loop=True, exposure_ms=0)
    with headless(adapter_dir, cfg, max_frames=300) as src:
        assert src.n_frames == 300
        src.start()
        got = [(f.index, np.array_equal(f.data, frames[f.index])) for f in src.frames()]
        assert [i for i, _ in got] == list(range(300)) and all(same for _, same in got)
        assert not src.core.isSequenceRunning()


def test_frames_lost_in_the_circular_buffer_are_counted_as_gaps(adapter_dir, spot_movie, tmp_path):
    path, frames, _ = spot_movie
    cfg = movie_cfg(tmp_path, path, loop=True, exposure_ms=0)
    # A 1 MB circular buffer holds 512 frames of 32x32; the consumer pauses until the camera has
    # produced several buffers' worth, so MMCore must drop frames.
    with headless(adapter_dir, cfg, buffer_mb=1) as src:
        capacity = int(src.core.getBufferTotalCapacity())
        src.start()
        frames_iter = src.frames()
        first = next(frames_iter)
        target = first.index + 4 * capacity
        deadline = time.monotonic() + 30.0
        idle = threading.Event()
        while int(src.control.get_property("Camera", "FramesProduced")) < target:
            assert time.monotonic() < deadline, "the camera stopped producing frames"
            idle.wait(0.002)
        indices = [first.index]
        for frame in frames_iter:
            indices.append(frame.index)
            assert np.array_equal(frame.data, frames[frame.index % len(frames)]), \
                f"frame {frame.index} does not show movie frame {frame.index % len(frames)}"
            if frame.index >= target + capacity:
                src.stop()
        frames_iter.close()
        assert all(b > a for a, b in zip(indices, indices[1:]))
        # Frames dropped before the first pop count too (the camera may fill the buffer that fast).
        gaps = indices[0] + sum(b - a - 1 for a, b in zip(indices, indices[1:]))
        assert gaps >= 3 * capacity
        assert src.lost_frames == gaps
        assert sum(last - first_ + 1 for first_, last in src.lost_ranges) == gaps
        assert src.frames_delivered + src.lost_frames == indices[-1] + 1


def test_tagged_transfer_the_java_bridge_path_gives_the_same_frames(adapter_dir, spot_movie, tmp_path):
    """popNextTaggedImage, the only pop the Java bridge offers, exercised on the in-process core."""
    path, frames, _ = spot_movie
    cfg = movie_cfg(tmp_path, path, loop=True, exposure_ms=0)
    with headless(adapter_dir, cfg, max_frames=200, transfer="tagged") as src:
        assert src.describe()["transfer"] == "tagged"
        src.start()
        got = list(src.frames())
        assert [f.index for f in got] == list(range(200))
        assert all(np.array_equal(f.data, frames[f.index]) for f in got)


def test_roi_and_binning_are_applied_by_the_camera_and_reported(adapter_dir, spot_movie, tmp_path):
    path, frames, _ = spot_movie
    cfg = movie_cfg(tmp_path, path, loop=True, exposure_ms=0,
                    extra="Property,Camera,Binning,2\n")
    x, y, w, h = 2, 3, 10, 8  # binned pixels
    pixel_size_um = None
    with headless(adapter_dir, cfg) as probe:
        probe.core.setROI(x, y, w, h)
        pixel_size_um = probe.core.getPixelSizeUm()
        # Reopen on the same core: the geometry is read when a source is made.
        src = MicroManagerSource(probe.core, max_frames=50)
        assert src.shape == (h, w)
        assert src.readout.roi == (x, y, w, h) and src.readout.binning == 2
        assert src.camera.pixel_size_nm == pytest.approx(pixel_size_um * 1000.0) == pytest.approx(2 * PIXEL_NM)
        src.start()
        for frame in src.frames():
            full = frames[frame.index].astype(np.uint32)
            binned = full.reshape(16, 2, 16, 2).sum(axis=(1, 3))
            expected = np.minimum(binned[y:y + h, x:x + w], 65535).astype(np.uint16)
            assert np.array_equal(frame.data, expected)
        assert src.frames_delivered == 50
        src.close()


def _write_movie(kind: str, path: Path, movie: np.ndarray) -> str:
    """Write ``movie`` in one of the layouts the adapter plays; return the extra .cfg lines it needs."""
    import tifffile

    n, h, w = movie.shape
    if kind == "imagej-tiff":  # what rtsmlm simulate writes
        tifffile.imwrite(path, movie, imagej=True)
    elif kind == "bigtiff-pages":  # one directory per page, written page by page (not contiguous)
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for frame in movie:
                tif.write(frame, contiguous=False, description="rtsmlm test page")
    elif kind == "plain-raw":  # no header: the geometry comes from camera properties
        movie.tofile(path)
        return f"Property,Camera,MovieWidth,{w}\nProperty,Camera,MovieHeight,{h}\n"
    else:
        raise ValueError(kind)
    return ""


@pytest.mark.parametrize("kind", ["imagej-tiff", "bigtiff-pages", "plain-raw"])
def test_movie_layouts_play_frame_for_frame(adapter_dir, tmp_path, kind):
    rng = np.random.default_rng(3)
    movie = rng.integers(0, 65535, size=(40, 20, 28), dtype=np.uint16)  # not square: catches swapped axes
    path = tmp_path / ("movie.raw" if kind == "plain-raw" else "movie.tif")
    geometry = _write_movie(kind, path, movie)
    cfg = tmp_path / "layout.cfg"
    cfg.write_text(SHIPPED_CFG.read_text() + geometry + "Property,Camera,Mode,Movie\n"
                   f"Property,Camera,MovieFile,{path}\nProperty,Camera,Loop,No\nProperty,Camera,Exposure,0\n")
    with headless(adapter_dir, cfg) as src:
        assert src.shape == (20, 28)
        src.start()
        got = list(src.frames())
    assert [f.index for f in got] == list(range(40))
    assert all(np.array_equal(f.data, movie[f.index]) for f in got)


def test_unplayable_movies_are_refused_naming_the_file(adapter_dir, tmp_path):
    import tifffile

    compressed = tmp_path / "compressed.tif"
    tifffile.imwrite(compressed, np.ones((3, 16, 16), np.uint16), compression="zlib", photometric="minisblack")
    truncated = tmp_path / "truncated.raw"
    np.ones((2, 16, 16), np.uint16).tofile(truncated)
    truncated.with_suffix(".yaml").write_text("Frames: 5\nHeight: 16\nWidth: 16\nData Type: uint16\n")
    with headless(adapter_dir, SHIPPED_CFG) as src:
        with pytest.raises(SourceError, match=r"compressed\.tif.*uncompressed 16-bit"):
            src.control.set_property("Camera", "MovieFile", str(compressed))
        with pytest.raises(SourceError, match=r"truncated\.raw.*too few for 5 frame"):
            src.control.set_property("Camera", "MovieFile", str(truncated))
        src.control.set_property("Camera", "Mode", "Movie")  # and no movie loaded:
        with pytest.raises(SourceError, match="MovieFile"):
            MicroManagerSource(src.core).start()


# ------------------------------------------------------------------------------------------ control

def test_laser_power_set_through_control_is_read_back_and_drives_the_camera(adapter_dir):
    """Closed loop through Micro-Manager: Power 0 leaves every emitter dark; once the control handle has
    set a high power, frames acquired afterwards show activated emitters, and Micro-Manager reads the
    new power back."""
    with headless(adapter_dir, SHIPPED_CFG) as opened:
        ctl = opened.control
        ctl.set_property("Camera", "SensorWidth", 48)
        ctl.set_property("Camera", "SensorHeight", 48)
        ctl.set_property("Camera", "EmitterCount", 50)
        ctl.set_property("Camera", "Exposure", 1.0)
        ctl.set_property("Camera", "ActivationPerMilliwatt", 0.02)
        ctl.set_property("Camera", "BleachProbability", 0.0)
        ctl.set_property("Laser", "Power", 0.0)
        # The geometry changed after the source was opened: read it again from the same core.
        live = MicroManagerSource(opened.core)
        # Background 50 photons through EM gain 100 and 45 e/ADU, with read noise: 8 standard
        # deviations above it no background pixel reaches, while a 2500-photon spot does.
        background_adu = 100.0 + 50.0 * 100.0 / 45.0
        noise_adu = np.sqrt(2 * 50.0 * 100.0 ** 2 + 74.4 ** 2) / 45.0
        bright_at = background_adu + 8.0 * noise_adu
        live.start()
        flags = []
        for frame in live.frames():
            flags.append(bool(frame.data.max() > bright_at))
            if frame.index == 20:
                live.control.set_property("Laser", "Power", 80.0)
                # Read back through Micro-Manager itself, and through the handle.
                assert float(opened.core.getProperty("Laser", "Power")) == pytest.approx(80.0)
                assert live.control.get_property("Laser", "Power") == pytest.approx(80.0)
            if len(flags) >= 80:
                live.stop()
        live.close()
        assert live.lost_frames == 0
    assert len(flags) == 80
    assert not any(flags[:21]), "emitters lit before the laser was switched on"
    first_bright = flags.index(True)
    assert all(flags[first_bright:]), "the camera stopped seeing the laser's power"


def test_control_reports_device_errors_with_the_devices_reason(adapter_dir):
    with headless(adapter_dir, SHIPPED_CFG) as src:
        with pytest.raises(SourceError, match=r"Camera\.MovieFile.*/no/such/movie\.raw"):
            src.control.set_property("Camera", "MovieFile", "/no/such/movie.raw")
        with pytest.raises(SourceError, match="Laser.Power"):
            src.control.set_property("Laser", "Power", 1e9)  # above MaxPower_mW
        assert src.control.get_property("Camera", "Mode") == "Simulation"
        assert isinstance(src.control.get_property("Camera", "EmitterCount"), int)


# ------------------------------------------------------------------------------------------ opening

def test_open_micromanager_source_from_config(adapter_dir, spot_movie, tmp_path):
    path, frames, _ = spot_movie
    cfg_file = movie_cfg(tmp_path, path, loop=True, exposure_ms=0)
    cfg = config.load(None, ['source.kind="micromanager"', f'source.mm_dir="{adapter_dir}"',
                             f'source.mm_config="{cfg_file}"', "source.max_frames=25",
                             "camera.qe=0.8"])
    with open_micromanager_source(cfg) as src:
        assert src.n_frames == 25
        assert src.camera.qe == pytest.approx(0.8)  # not reported by Micro-Manager: from the config
        assert src.camera.baseline_adu == pytest.approx(OFFSET_ADU)  # reported: from the device
        src.start()
        assert [f.index for f in src.frames()] == list(range(25))


def test_a_second_headless_core_is_refused_while_one_runs(adapter_dir):
    with headless(adapter_dir, SHIPPED_CFG):
        with pytest.raises(SourceError, match="already running"):
            headless(adapter_dir, SHIPPED_CFG)
    # Closed: a new one starts.
    with headless(adapter_dir, SHIPPED_CFG) as again:
        assert again.shape == (256, 256)


def test_bad_paths_give_one_clear_error(tmp_path, adapter_dir):
    with pytest.raises(SourceError, match=r"does not exist"):
        MicroManagerSource.headless(tmp_path / "nowhere", SHIPPED_CFG)
    with pytest.raises(SourceError, match=r"no device adapters"):
        MicroManagerSource.headless(tmp_path, SHIPPED_CFG)
    with pytest.raises(SourceError, match=r"missing\.cfg"):
        headless(adapter_dir, tmp_path / "missing.cfg")
    broken = tmp_path / "broken.cfg"
    broken.write_text("Device,Camera,NoSuchAdapter,NoSuchCamera\n")
    with pytest.raises(SourceError, match=r"broken\.cfg"):
        headless(adapter_dir, broken)
    cfg = config.load(None, ['source.kind="micromanager"'])
    with pytest.raises(SourceError, match=r"--mm-dir.*--mm-config"):
        open_micromanager_source(cfg)


def test_attach_without_a_running_micromanager_names_the_port():
    import socket

    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match=rf"port {port}.*Run server on port 4827"):
        MicroManagerSource.attach(port=port)


# ------------------------------------------------------------------------------------------ rtsmlm run

def _rtsmlm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rtsmlm", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"rtsmlm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_rtsmlm_run_streams_a_simulated_movie_through_micromanager(adapter_dir, tmp_path):
    """rtsmlm simulate -> the adapter plays movie.tif -> rtsmlm run --source micromanager: every one of the
    5,000 frames arrives, in order, bit for bit, and the localizations equal those of the same movie
    replayed from the file (and match its ground truth just as well)."""
    import json

    from rtsmlm.analysis.evaluate import evaluate_files
    from rtsmlm.io.movies import open_movie

    sim = tmp_path / "sim"
    _rtsmlm("simulate", "--frames", "5000", "--size", "32", "--seed", "3", "--out", str(sim), "--quiet")
    # The shipped .cfg's camera model (EM gain 100, 45 e/ADU, offset 100) is the simulator's default camera.
    cfg = tmp_path / "sim_movie.cfg"
    cfg.write_text(SHIPPED_CFG.read_text() + "Property,Camera,Mode,Movie\n"
                   f"Property,Camera,MovieFile,{sim / 'movie.tif'}\n"
                   "Property,Camera,Loop,No\nProperty,Camera,Exposure,0\n")
    common = ["--max-frames", "0", "--no-stream", "--quiet", "--set", "pipeline.ring_frames=8192",
              "--set", "drift.enabled=false",
              "--set", "backend.name=torch"]
    _rtsmlm("run", "--source", "micromanager", "--mm-dir", str(adapter_dir), "--mm-config", str(cfg),
            "--out", str(tmp_path / "mm"), *common)
    _rtsmlm("run", "--source", str(sim / "movie.tif"), "--out", str(tmp_path / "file"), *common)

    summary = json.loads((tmp_path / "mm" / "summary.json").read_text())
    assert summary["status"] == "complete", summary.get("errors")
    assert summary["frames_acquired"] == 5000
    assert summary["frames_lost_localizer"] == 0
    raw = open_movie(next((tmp_path / "mm").glob("raw.*")))  # the run's recording of every camera frame
    original = open_movie(sim / "movie.tif")
    assert len(raw) == len(original) == 5000
    assert all(np.array_equal(raw.read(i), original.read(i)) for i in range(5000))

    truth = sim / "ground_truth.csv"
    via_mm = evaluate_files(tmp_path / "mm" / "localizations.csv", truth, pixel_size_nm=PIXEL_NM)
    via_file = evaluate_files(tmp_path / "file" / "localizations.csv", truth, pixel_size_nm=PIXEL_NM)
    assert via_mm["tp"] > 0 and via_mm["rmse_lat_nm"] < 0.5 * PIXEL_NM  # matches are real matches
    assert via_mm["n_pred"] == pytest.approx(via_file["n_pred"], rel=0.01)
    assert via_mm["jaccard"] == pytest.approx(via_file["jaccard"], abs=0.01)
    assert via_mm["rmse_lat_nm"] == pytest.approx(via_file["rmse_lat_nm"], rel=0.05)
