"""Incremental rendering into the canvas, its halves, the display scaling, and FRC resolution."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rtsmlm.analysis.frc import FRC_THRESHOLD, frc
from rtsmlm.analysis.render import Canvas
from rtsmlm.core.config import RenderConfig
from rtsmlm.core.locs import LOC_DTYPE, with_drift_columns
from rtsmlm.sim import structures


def make_locs(x, y, sigma=10.0, frame=0) -> np.ndarray:
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    locs = np.zeros(len(x), LOC_DTYPE)
    locs["x"] = x
    locs["y"] = y
    locs["sigma_x"] = sigma
    locs["sigma_y"] = sigma
    locs["frame"] = frame
    return locs


def filament_locs(n: int, extent: float, precision: float, seed: int, frames: int = 10_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = structures.filaments(np.random.default_rng(0), (extent, extent), 8, 100.0)
    pick = labels[rng.integers(0, len(labels), n), :2]
    locs = make_locs(pick[:, 0] + rng.normal(0, precision, n), pick[:, 1] + rng.normal(0, precision, n),
                     precision)
    locs["frame"] = np.sort(rng.integers(0, frames, n))
    inside = (locs["x"] >= 0) & (locs["x"] < extent) & (locs["y"] >= 0) & (locs["y"] < extent)
    return locs[inside]


def test_histogram_puts_each_localization_in_its_pixel():
    canvas = Canvas((1000.0, 2000.0), 10.0, mode="histogram")
    assert canvas.shape == (100, 200)
    # pixel (row i, column j) covers x in [10 j, 10 j + 10), y in [10 i, 10 i + 10)
    canvas.add(make_locs([0.0, 25.0, 1999.9, 9.999], [0.0, 35.0, 999.9, 10.0]))
    img = canvas.image
    assert img[0, 0] == 1 and img[3, 2] == 1 and img[99, 199] == 1 and img[1, 0] == 1
    assert img.sum() == 4 and canvas.n_locs == 4


def test_localizations_outside_the_canvas_are_counted_not_drawn():
    for mode in ("histogram", "gaussian"):
        canvas = Canvas((500.0, 500.0), 10.0, mode=mode)
        canvas.add(make_locs([-1.0, 500.0, np.nan, 250.0], [10.0, 10.0, 10.0, 250.0]))
        assert canvas.n_outside == 3 and canvas.n_locs == 1
        assert canvas.image.sum() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_spot_is_normalised_centred_and_as_wide_as_sigma():
    canvas = Canvas((2000.0, 2000.0), 5.0, mode="gaussian", min_sigma_nm=2.0, max_sigma_nm=100.0)
    yy, xx = np.mgrid[: canvas.shape[0], : canvas.shape[1]]
    cx, cy = (xx + 0.5) * canvas.pixel_nm, (yy + 0.5) * canvas.pixel_nm  # pixel centres in nm
    widths = []
    for sigma in (8.0, 30.0):
        canvas.rerender(make_locs([1003.3], [987.1], sigma))
        img = canvas.image.astype(np.float64)
        assert img.sum() == pytest.approx(1.0, abs=1e-5)  # each localization adds exactly 1
        mx, my = (img * cx).sum(), (img * cy).sum()
        assert mx == pytest.approx(1003.3, abs=0.3) and my == pytest.approx(987.1, abs=0.3)
        sd = np.sqrt((img * (cx - mx) ** 2).sum())
        # a truncated Gaussian, sampled on pixels: its width follows sigma
        assert sd == pytest.approx(np.sqrt(sigma ** 2 + canvas.pixel_nm ** 2 / 12), rel=0.08)
        widths.append(sd)
    assert widths[1] > 3 * widths[0]


def test_gaussian_sigma_is_clamped_to_the_limits():
    def spread(sigma: float) -> float:
        canvas = Canvas((1000.0, 1000.0), 5.0, mode="gaussian", min_sigma_nm=10.0, max_sigma_nm=20.0)
        canvas.add(make_locs([500.0], [500.0], sigma))
        img = canvas.image
        return float((img > 1e-4).sum())

    assert spread(0.0) == spread(10.0)  # unknown or tiny uncertainty: the minimum
    assert spread(500.0) == spread(20.0)  # huge uncertainty: the maximum
    assert spread(10.0) < spread(15.0) < spread(20.0)


def test_drift_corrected_columns_are_drawn_when_present():
    canvas = Canvas((1000.0, 1000.0), 10.0, mode="histogram")
    locs = with_drift_columns(make_locs([105.0], [205.0]))
    locs["x_dc"], locs["y_dc"] = 505.0, 705.0
    canvas.add(locs)
    assert canvas.image[70, 50] == 1 and canvas.image[20, 10] == 0


def test_halves_alternate_by_time_block_and_sum_to_the_image():
    canvas = Canvas((1000.0, 1000.0), 10.0, mode="gaussian", half_block_frames=100)
    locs = make_locs(np.full(6, 500.0), 500.0)
    locs["frame"] = [0, 99, 100, 199, 200, 350]  # blocks 0, 0, 1, 1, 2, 3
    canvas.add(locs)
    even, odd = canvas.halves
    assert even.sum() == pytest.approx(3.0, abs=1e-4) and odd.sum() == pytest.approx(3.0, abs=1e-4)
    assert np.allclose(even + odd, canvas.image)
    canvas.add(make_locs([500.0, 500.0], 500.0), block_parity=1)  # one parity for the whole batch
    canvas.add(make_locs([500.0, 500.0], 500.0), block_parity=np.array([0, 1]))
    even, odd = canvas.halves
    assert even.sum() == pytest.approx(4.0, abs=1e-4) and odd.sum() == pytest.approx(6.0, abs=1e-4)


@pytest.mark.parametrize("mode", ["histogram", "gaussian"])
def test_incremental_batches_equal_one_rerender(mode):
    locs = filament_locs(20_000, 3000.0, 12.0, seed=1)
    locs["sigma_x"] = np.random.default_rng(2).uniform(3.0, 60.0, len(locs))  # clamping included
    locs["sigma_y"] = locs["sigma_x"] * 0.8
    inc = Canvas((3000.0, 3000.0), 10.0, mode=mode)
    for part in np.array_split(locs, 7):
        inc.add(part)
    once = Canvas((3000.0, 3000.0), 10.0, mode=mode)
    once.rerender(locs)
    assert np.allclose(inc.image, once.image, atol=1e-4)
    for a, b in zip(inc.halves, once.halves):
        assert np.allclose(a, b, atol=1e-4)
    assert inc.n_locs == once.n_locs == len(locs)
    # rerender replaces the content: drawing a shifted copy leaves nothing of the first
    shifted = locs.copy()
    shifted["x"] = np.minimum(shifted["x"] + 50.0, 2999.0)
    inc.rerender(shifted)
    fresh = Canvas((3000.0, 3000.0), 10.0, mode=mode)
    fresh.add(shifted)
    assert np.allclose(inc.image, fresh.image, atol=1e-4)
    if mode == "histogram":
        assert inc.image.sum() == len(locs)
    else:  # Gaussians of localizations near the border lose the part beyond it
        assert 0.97 * len(locs) < inc.image.sum() <= len(locs) + 0.01


@pytest.mark.parametrize("mode", ["histogram", "gaussian"])
def test_negative_weight_takes_localizations_back(mode):
    locs = filament_locs(5_000, 3000.0, 12.0, seed=5)
    first, second = locs[:2000], locs[2000:]
    canvas = Canvas((3000.0, 3000.0), 10.0, mode=mode)
    canvas.add(first)
    canvas.add(second)
    canvas.add(first, weight=-1.0)
    only = Canvas((3000.0, 3000.0), 10.0, mode=mode)
    only.add(second)
    assert np.allclose(canvas.image, only.image, atol=1e-5)
    assert canvas.n_locs == only.n_locs == len(second)


def test_to_uint8_maps_the_percentile_to_full_scale():
    canvas = Canvas((1000.0, 1000.0), 10.0, mode="histogram")
    assert canvas.to_uint8().max() == 0  # empty canvas
    canvas.add(make_locs(np.repeat([105.0, 305.0, 505.0], [1, 2, 40]), 105.0))
    img8 = canvas.to_uint8(lut_percentile=50.0)  # the median non-empty pixel holds 2
    assert img8.dtype == np.uint8 and img8.shape == canvas.shape
    assert img8[10, 10] == 127 and img8[10, 30] == 255 and img8[10, 50] == 255
    assert canvas.to_uint8(100.0)[10, 50] == 255 and canvas.to_uint8(100.0)[10, 30] < 20
    with pytest.raises(ValueError, match="lut_percentile"):
        canvas.to_uint8(0.0)


def test_adding_from_one_thread_while_another_reads():
    locs = filament_locs(30_000, 2000.0, 10.0, seed=3)
    canvas = Canvas((2000.0, 2000.0), 10.0, mode="gaussian")
    done = threading.Event()
    sums = []

    def reader() -> None:
        while not done.is_set():
            sums.append(float(canvas.image.sum()))
            canvas.halves

    t = threading.Thread(target=reader)
    t.start()
    for part in np.array_split(locs, 30):
        canvas.add(part)
    done.set()
    t.join()
    alone = Canvas((2000.0, 2000.0), 10.0, mode="gaussian")
    alone.add(locs)
    assert np.allclose(canvas.image, alone.image, atol=1e-4)  # the reads did not disturb the drawing
    assert sums == sorted(sums)  # a reader only ever sees whole batches, in order
    assert sums[-1] <= canvas.image.sum() + 1e-2


def test_from_config_and_bad_arguments():
    canvas = Canvas.from_config(RenderConfig(pixel_size_nm=20.0, mode="histogram"), (1000.0, 500.0))
    assert canvas.shape == (50, 25) and canvas.mode == "histogram"
    with pytest.raises(ValueError, match="mode"):
        Canvas((100.0, 100.0), 10.0, mode="splat")
    with pytest.raises(ValueError, match="shape_nm"):
        Canvas((0.0, 100.0), 10.0)
    with pytest.raises(ValueError, match="pixel_nm"):
        Canvas((100.0, 100.0), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        Canvas((100.0, 100.0), 10.0, min_sigma_nm=30.0, max_sigma_nm=10.0)
    with pytest.raises(ValueError, match="lacks the column"):
        Canvas((100.0, 100.0), 10.0).add(np.zeros(2, dtype=[("x", "<f4")]))


# ------------------------------------------------------------------------------------------------ FRC


def halves_of(precision: float, n: int, seed: int = 7, pixel: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    canvas = Canvas((3000.0, 3000.0), pixel, mode="histogram", half_block_frames=100)
    canvas.add(filament_locs(n, 3000.0, precision, seed))
    return canvas.halves


def test_frc_of_identical_images_never_drops():
    a, _ = halves_of(10.0, 20_000)
    result = frc(a, a, 5.0)
    body = result.curve[1:][np.isfinite(result.curve[1:])]
    assert np.allclose(body[body != 0], 1.0, atol=1e-6)
    assert np.isnan(result.resolution_nm) and result.reason == "finer than 2 pixels"


def test_frc_of_independent_noise_finds_no_correlation():
    rng = np.random.default_rng(4)
    a = rng.poisson(2.0, (256, 256)).astype(np.float32)
    b = rng.poisson(2.0, (256, 256)).astype(np.float32)
    result = frc(a - a.mean(), b - b.mean(), 10.0)
    # beyond the first rings (a handful of Fourier samples each) the correlation is ~0
    assert np.abs(result.curve_smooth[20:]).max() < FRC_THRESHOLD
    assert np.abs(result.curve[20:].mean()) < 0.03
    # no resolution, or only one as coarse as the field itself
    assert np.isnan(result.resolution_nm) or result.resolution_nm > 0.1 * 256 * 10.0


def test_frc_resolution_follows_localization_precision_and_count():
    sharp = frc(*halves_of(6.0, 60_000), 5.0)
    blurred = frc(*halves_of(25.0, 60_000), 5.0)
    sparse = frc(*halves_of(6.0, 6_000), 5.0)
    for r in (sharp, blurred, sparse):
        assert np.isfinite(r.resolution_nm)
        assert r.freqs[1] == pytest.approx(1 / (600 * 5.0))  # ring spacing: 1 / field size
    assert sharp.resolution_nm < blurred.resolution_nm
    assert sharp.resolution_nm < sparse.resolution_nm
    # the resolution is where the smoothed curve crosses 1/7
    q = 1 / sharp.resolution_nm
    assert np.interp(q, sharp.freqs, sharp.curve_smooth) == pytest.approx(FRC_THRESHOLD, abs=0.02)
    resolution, freqs, curve = sharp  # unpacks as (resolution_nm, freqs, curve)
    assert resolution == sharp.resolution_nm and len(freqs) == len(curve)


def test_frc_rejects_mismatched_images():
    with pytest.raises(ValueError, match="same shape"):
        frc(np.zeros((10, 10)), np.zeros((10, 12)), 10.0)
    with pytest.raises(ValueError, match="pixel_nm"):
        frc(np.zeros((10, 10)), np.zeros((10, 10)), 0.0)


def test_a_3d_render_is_coloured_by_depth_with_a_colour_bar(tmp_path) -> None:
    """Left half of the field at z = -400 nm, right half at +400 nm: the two halves get the two ends of the
    colour map, brightness from the render."""
    from rtsmlm.analysis.render import write_z_png, z_colour_image
    from rtsmlm.core.locs import LOC_DTYPE

    rng = np.random.default_rng(0)
    locs = np.zeros(4000, LOC_DTYPE)
    locs["x"] = rng.uniform(0, 2000, len(locs))
    locs["y"] = rng.uniform(0, 1000, len(locs))
    locs["z"] = np.where(locs["x"] < 1000, -400.0, 400.0)
    intensity = np.ones((50, 100))
    rgb = z_colour_image(intensity, locs, 20.0, (-500.0, 500.0))
    assert rgb.shape == (50, 100, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, 10:40].reshape(-1, 3).mean(0), rgb[:, 60:90].reshape(-1, 3).mean(0)
    assert left[2] > left[0] and right[0] > right[2]  # turbo: blue-ish for low z, red-ish for high z
    write_z_png(tmp_path / "z.png", rgb, (-500.0, 500.0), 20.0)
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "z.png").shape[2] in (3, 4)


def test_live_view_of_a_3d_run_is_coloured_by_depth_through_drift_redraws() -> None:
    """The render listener of a run whose model gives z keeps depth maps beside the canvas — drawn, taken
    back and redrawn with it when the drift estimate moves localizations — and the live view colours the
    image by them: left half (z = −400 nm) blue-ish, right half (+400 nm) red-ish, with the z range shown."""
    from rtsmlm.analysis.drift_stage import DriftListener
    from rtsmlm.analysis.live_render import RenderListener
    from rtsmlm.core import config
    from rtsmlm.core.locs import LOC_DTYPE, LocBatch
    from rtsmlm.gui.app import _depth_bar
    from rtsmlm.gui.display import DisplayWorker

    cfg = config.load(None, ["drift.block_frames=20", "drift.min_block_locs=200", "psf.z_range_nm=500"])
    drift = DriftListener(cfg, None, (2000.0, 2000.0))
    render = RenderListener(cfg, None, 100.0, (20, 20), drift.estimator)
    rng = np.random.default_rng(1)
    sites = np.column_stack([rng.uniform(100, 1900, 300), rng.uniform(100, 1900, 300)])
    for k in range(10):  # 10 batches of 20 frames; a slow lateral drift the estimator follows
        frames = np.repeat(np.arange(20 * k, 20 * k + 20), 40)
        pick = rng.integers(0, len(sites), len(frames))
        locs = np.zeros(len(frames), LOC_DTYPE)
        locs["frame"] = frames
        locs["x"] = sites[pick, 0] + rng.normal(0, 8, len(frames)) + 1.0 * frames
        locs["y"] = sites[pick, 1] + rng.normal(0, 8, len(frames))
        locs["z"] = np.where(sites[pick, 0] < 1000, -400.0, 400.0) + rng.normal(0, 30, len(frames))
        locs["sigma_x"] = locs["sigma_y"] = 8.0
        batch = LocBatch(k, 20 * k, 20 * k + 19, locs)
        drift.on_batch(batch)
        render.on_batch(batch)
    render._publish_snapshot()
    snap = render.snapshot()
    assert snap is not None and snap.depth_count is not None and snap.z_range_nm == (-500.0, 500.0)
    # Every localization is in the depth maps exactly once, whatever the redraws did.
    assert snap.depth_count.sum() == pytest.approx(render.canvas.n_locs - render.canvas.n_outside, abs=1e-6)
    worker = DisplayWorker(None)
    assert worker._prepare_sr(snap)
    rgb, shown = worker._sr.rgb, worker._sr.image
    bright = shown > 32
    w = rgb.shape[1]
    left = rgb[:, : w // 2][bright[:, : w // 2]].mean(0)
    right = rgb[:, w // 2:][bright[:, w // 2:]].mean(0)
    assert left[2] > left[0] + 20 and right[0] > right[2] + 20
    assert worker._sr.z_range_nm == (-500.0, 500.0)
    assert "z -500" in _depth_bar((-500.0, 500.0)) and "+500 nm" in _depth_bar((-500.0, 500.0))
    # The live view's depth range control: a range around the right half's depth puts the left half at the
    # colour map's low end, the right half mid-map; an empty range is refused in one sentence.
    worker.set_z_range((0.0, 800.0))
    assert worker._prepare_sr(snap) and worker._sr.z_range_nm == (0.0, 800.0)
    rgb2 = worker._sr.rgb
    left2 = rgb2[:, : w // 2][bright[:, : w // 2]].mean(0)
    right2 = rgb2[:, w // 2:][bright[:, w // 2:]].mean(0)
    assert left2[2] < left[2] - 20  # −400 nm, a tenth up the map before, is clipped to turbo's dark low end
    assert right2[1] > right[1] + 20  # +400 nm moves from the red end to turbo's green middle
    with pytest.raises(ValueError, match="low < high"):
        worker.set_z_range((300.0, 300.0))
    worker.set_z_range(None)
    assert worker._prepare_sr(snap) and worker._sr.z_range_nm == (-500.0, 500.0)
