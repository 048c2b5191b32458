"""The live view: display preparation, scale bar, and the real window on the real pipeline.

Qt runs offscreen (QT_QPA_PLATFORM=offscreen, set in conftest.py). The window tests drive the real
pipeline (simulated camera with a filament sample, the shipped model, every output consumer) and check
what the window shows: the SR image's bright pixels lie on the simulated filaments, the plots receive
the pipeline's stats, the event loop stays responsive while the localizer runs at full rate, and closing
the window stops the run with every file flushed.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("PyQt5")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from rtsmlm.core import config
from rtsmlm.gui.display import format_length, nice_length, percentile_levels, pool, series_from_stats, to_uint8  # noqa: E402
from rtsmlm.io.tables import read_truth_csv  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Display preparation (no Qt)


def test_pool_sums_blocks_and_keeps_geometry():
    rng = np.random.default_rng(1)
    image = rng.poisson(0.3, size=(2500, 1300)).astype(np.float32)
    pooled, factor = pool(image, 1024, "sum")
    assert factor == math.ceil(2500 / 1024) and max(pooled.shape) <= 1024
    # Pooled pixel (i, j) is exactly the block [i·f, (i+1)·f) × [j·f, (j+1)·f).
    i, j = 417, 201
    assert pooled[i, j] == pytest.approx(image[i * factor:(i + 1) * factor, j * factor:(j + 1) * factor].sum())
    h, w = pooled.shape
    assert pooled.sum() == pytest.approx(image[:h * factor, :w * factor].sum(), rel=1e-6)
    mean, f2 = pool(image, 1024, "mean")
    assert f2 == factor and np.allclose(mean * factor * factor, pooled, rtol=1e-5)
    small, f1 = pool(image[:100, :100], 1024)
    assert f1 == 1 and np.array_equal(small, image[:100, :100])


def test_sr_levels_ignore_empty_pixels_and_map_to_uint8():
    rng = np.random.default_rng(2)
    image = np.zeros((400, 400), np.float32)
    idx = rng.integers(0, 400, size=(2, 3000))
    np.add.at(image, tuple(idx), rng.exponential(5.0, 3000).astype(np.float32))
    lo, hi = percentile_levels(image, 0.0, 99.0, nonzero=True)
    nonzero = image[image > 0]
    assert lo == 0.0 and hi == pytest.approx(np.percentile(nonzero, 99.0), rel=1e-6)
    # Over all pixels the 99th percentile would be empty space: the nonzero rule is what makes it usable.
    assert np.percentile(image, 50.0) == 0.0 < hi
    u8 = to_uint8(image, lo, hi)
    assert u8.dtype == np.uint8 and u8[image == 0].max() == 0
    saturated = (image >= hi).mean()
    assert (u8 == 255).mean() == pytest.approx(saturated, abs=1e-6)
    assert 0.0 < (u8[image > 0] == 255).mean() <= 0.011  # ~1 % of the filled pixels saturate
    lo2, hi2 = percentile_levels(np.full((8, 8), 7.0), 1.0, 99.0)
    assert hi2 > lo2  # a flat frame still maps without dividing by zero


def test_scale_bar_lengths_are_1_2_5_and_labelled():
    rng = np.random.default_rng(3)
    for target in np.exp(rng.uniform(np.log(0.3), np.log(3e6), 300)):
        length = nice_length(float(target))
        mantissa = length / 10 ** math.floor(math.log10(length))
        assert length <= target * (1 + 1e-9) and length > target / 2.5
        assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-9
    assert format_length(500.0) == "500 nm" and format_length(2000.0) == "2 µm"
    assert format_length(5e6) == "5 mm"
    with pytest.raises(ValueError, match="positive"):
        nice_length(0.0)


def test_series_are_per_interval_rates():
    rng = np.random.default_rng(4)
    frames = np.cumsum(rng.integers(0, 40, 30))
    locs = np.cumsum(rng.integers(0, 200, 30))
    history = [{"elapsed_s": float(k), "frames_localized": int(f), "n_locs": int(n), "camera_fps": 50.0,
                "localized_fps": 40.0, "ring_fill": {"localizer": 0.1 * (k % 5)},
                "frames_lost": {"localizer": k // 3}}
               for k, (f, n) in enumerate(zip(frames, locs))]
    s = series_from_stats(history, (np.arange(3), np.ones(3), -np.ones(3)))
    d_frames, d_locs = np.diff(frames, prepend=0), np.diff(locs, prepend=0)
    ok = d_frames > 0
    assert np.allclose(s.locs_per_frame[ok], d_locs[ok] / d_frames[ok])
    assert np.isnan(s.locs_per_frame[~ok]).all()
    assert np.array_equal(s.frames_lost["localizer"], [k // 3 for k in range(30)])
    assert s.drift_dx.tolist() == [1.0, 1.0, 1.0] and len(s.elapsed_s) == 30


def test_series_count_frames_caught_up_after_the_live_run():
    # The end of a run that skipped frames live: 100 frames caught up from the recording bring their 3000
    # localizations with them; the curve stays at the sample's 30 per frame, not 3000 / 0.
    history = [{"elapsed_s": 1.0, "frames_localized": 100, "n_locs": 3000},
               {"elapsed_s": 2.0, "frames_localized": 200, "n_locs": 6000, "frames_caught_up": 0},
               {"elapsed_s": 3.0, "frames_localized": 200, "n_locs": 9000, "frames_caught_up": 100}]
    assert series_from_stats(history).locs_per_frame.tolist() == [30.0, 30.0, 30.0]


# --------------------------------------------------------------------------------------------------
# Qt widgets without a pipeline


def test_scale_bar_follows_zoom(qtbot):
    import pyqtgraph as pg

    from rtsmlm.gui.widgets import ScaleBar

    widget = pg.GraphicsLayoutWidget()
    qtbot.addWidget(widget)
    widget.resize(800, 600)
    vb = widget.addViewBox(lockAspect=True, invertY=True)
    vb.setDefaultPadding(0.0)
    item = pg.ImageItem(np.zeros((64, 64), np.uint8))
    item.setRect(0, 0, 6400, 6400)  # a 6.4 µm field in nm
    vb.addItem(item)
    bar = ScaleBar(vb, fraction=0.2)
    widget.show()
    qtbot.waitExposed(widget)
    vb.autoRange(padding=0.0)
    length, px = bar.measure()
    visible_nm = vb.viewRect().width()
    assert length <= 0.2 * visible_nm * (1 + 1e-6) and length > 0.2 * visible_nm / 2.5
    assert px == pytest.approx(length / vb.viewPixelSize()[0])
    vb.setRange(xRange=(0, 400), yRange=(0, 400), padding=0.0)  # zoom in 16×
    zoomed, _ = bar.measure()
    assert zoomed < length / 4 and bar.label().endswith("nm")
    img = widget.grab().toImage()
    assert not img.isNull()


def test_lookup_tables_are_256_entries_and_ordered():
    from rtsmlm.gui.widgets import COLORMAPS, lookup_table

    for name in COLORMAPS:
        lut = lookup_table(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        luminance = lut.astype(float) @ [0.2126, 0.7152, 0.0722]
        if name in ("inferno", "magma", "hot", "gray", "viridis", "cividis"):  # perceptually ordered maps
            assert luminance[-1] > luminance[0] + 150
    with pytest.raises(ValueError, match="not-a-map"):
        lookup_table("not-a-map")


# --------------------------------------------------------------------------------------------------
# The real window on the real pipeline

RUN_OVERRIDES = [
    'sim.structure="filaments"', "sim.density=1.0", "sim.seed=7", "stream.enabled=false",
    "pipeline.stats_interval_s=0.2", "drift.block_frames=60", "drift.min_block_locs=150",
]


def _cfg(out_dir, frames: int, *extra: str):
    return config.load(None, [*RUN_OVERRIDES, f"source.max_frames={frames}",
                              f"output.dir={json.dumps(str(out_dir))}", *extra])


@pytest.fixture(scope="module")
def finished_window(tmp_path_factory, qapp):
    """One live window over a 400-frame filament run at full rate, with an event-delay probe running."""
    from PyQt5 import QtCore

    from rtsmlm.gui.app import open_live_window
    from rtsmlm.gui.probe import EventDelayProbe

    out = tmp_path_factory.mktemp("live") / "run"
    window = open_live_window(_cfg(out, 400), autostart=False)
    window.grab()  # the window's first paint (fonts, layout) happens before acquisition starts
    probe = EventDelayProbe(interval_s=0.01)
    loop = QtCore.QEventLoop()
    window.run_finished.connect(loop.quit)
    QtCore.QTimer.singleShot(240_000, loop.quit)  # a hung run fails the tests instead of hanging them
    probe.start()
    window.start_acquisition()
    loop.exec_()
    delays = probe.stop()
    window.refresh()
    yield window, delays
    window.close()
    window.deleteLater()


@pytest.mark.slow
def test_sr_image_shows_the_simulated_filaments(finished_window):
    from scipy import ndimage

    window, _ = finished_window
    assert window.session.state == "finished", window.session.error
    # What is on screen: the coloured pixels in the image item, and the uint8 levels they were coloured from.
    shown = window.shown_sr.image
    rgb = window.sr_item.image
    assert rgb.shape == (*shown.shape, 3) and shown.dtype == np.uint8 and shown.max() == 255
    assert np.array_equal(rgb, window._lut[shown])
    # The item's rectangle is the image's extent in nm: recover the displayed pixel size from it.
    rect = window.sr_item.mapRectToParent(window.sr_item.boundingRect())
    px = rect.width() / shown.shape[1]
    assert rect.left() == 0 and rect.top() == 0 and rect.height() / shown.shape[0] == pytest.approx(px)
    table = read_truth_csv(window.session.run.out_dir / "ground_truth.csv")
    truth = np.column_stack([table["x"], table["y"]]).astype(np.float64)
    assert len(truth) > 500
    on_structure = np.zeros(shown.shape, bool)
    cols = np.clip((truth[:, 0] / px).astype(int), 0, shown.shape[1] - 1)
    rows = np.clip((truth[:, 1] / px).astype(int), 0, shown.shape[0] - 1)
    on_structure[rows, cols] = True
    # Within 60 nm of an emitter position: localization error plus the Gaussian rendering spread.
    radius = max(1, int(round(60.0 / px)))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    near_structure = ndimage.binary_dilation(on_structure, structure=(xx ** 2 + yy ** 2 <= radius ** 2))
    bright = shown >= 64
    assert bright.sum() >= 100  # non-empty
    assert near_structure.mean() < 0.25  # the filaments cover a small part of the field...
    # ...and the bright SR pixels lie on them. A failure (seen twice on 2 cores shared by 3-4 processes, once in
    # ~23 such runs; its cause not found) says what the image was made of.
    summary = window.session.summary or {}
    assert near_structure[bright].mean() > 0.9, (
        f"{near_structure[bright].mean():.2f} of {int(bright.sum())} bright pixels on the filaments; shown: "
        f"{window.shown_sr.n_locs} localizations, white level {window.shown_sr.white_level:.3g}; run: "
        f"{summary.get('frames_localized')} frames live, {summary.get('frames_caught_up')} caught up, "
        f"{summary.get('n_locs')} localizations, drift max {(summary.get('drift') or {}).get('max_abs_nm')} nm")
    # A random placement of as many bright pixels would mostly miss the filaments.
    rng = np.random.default_rng(0)
    random_hits = near_structure.ravel()[rng.choice(shown.size, int(bright.sum()), replace=False)].mean()
    assert random_hits < 0.5 * near_structure[bright].mean()


@pytest.mark.slow
def test_plots_and_status_receive_the_pipeline_stats(finished_window):
    window, _ = finished_window
    summary = window.session.summary
    t, locs = window.curves["locs"].getData()
    assert len(t) >= 2 and np.all(np.diff(t) > 0)
    assert np.nanmax(locs) > 0 and np.nanmean(locs) == pytest.approx(
        summary["n_locs"] / (summary["frames_localized"] + summary["frames_caught_up"]), rel=0.5)
    _, cam_fps = window.curves["camera_fps"].getData()
    _, loc_fps = window.curves["localized_fps"].getData()
    assert np.nanmax(cam_fps) > 0 and np.nanmax(loc_fps) > 0
    _, fill = window.curves["ring:localizer"].getData()
    assert np.all((fill >= 0) & (fill <= 100)) and np.nanmax(fill) > 0
    _, lost = window.curves["lost:localizer"].getData()
    assert lost[-1] == summary["frames_lost_localizer"]
    if window.cfg.drift.enabled and summary.get("drift", {}).get("file"):
        frames, dx = window.curves["drift_x"].getData()
        assert frames is not None and len(frames) >= 1 and np.all(np.isfinite(dx))
    cam = window.camera_item.image
    assert cam is not None and cam.dtype == np.uint8 and cam.std() > 0
    status = window.status_text()
    assert "finished" in status and f"{summary['n_locs']:,} localizations" in status
    assert "inside the model's training range" in status  # the range guard's verdict, as in summary.json
    assert summary["model_range"]["ok"]
    assert window.session.run.backend["name"] in status


@pytest.mark.slow
def test_event_loop_stays_responsive_while_the_localizer_runs(finished_window):
    window, delays = finished_window
    assert window.n_refreshes > 20  # the window really refreshed during the run
    assert len(delays) >= 100
    p99_ms = float(np.percentile(delays, 99)) * 1e3
    # A freeze check, not the speed target (benchmarks/bench_gui.py measures that: p99 < 50 ms on an idle
    # machine): other processes competing for the 2 CPUs delay every thread, this one too, so the bound
    # here only catches a GUI thread blocked by the run (seconds), and the load goes in the message.
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    assert p99_ms < 250.0, f"posted events waited {p99_ms:.1f} ms (p99) for the GUI thread ({load})"


@pytest.mark.slow
def test_save_sr_image_tiff_and_png(finished_window, tmp_path):
    import tifffile
    from PyQt5 import QtGui

    window, _ = finished_window
    snapshot = window.session.run.render.snapshot()
    tif = window.save_sr_image(tmp_path / "sr.tif")
    with tifffile.TiffFile(tif) as f:
        data = f.asarray()
        x_res = f.pages[0].tags["XResolution"].value
    assert data.dtype == np.float32 and np.array_equal(data, snapshot.image)
    assert x_res[0] / x_res[1] == pytest.approx(1000.0 / window.cfg.render.pixel_size_nm, rel=1e-3)  # px/µm
    png = window.save_sr_image(tmp_path / "sr.png")
    img = QtGui.QImage(str(png))
    assert (img.height(), img.width()) == snapshot.image.shape
    with pytest.raises(ValueError, match="sr.jpg"):
        window.save_sr_image(tmp_path / "sr.jpg")


@pytest.mark.slow
def test_controls_act_on_a_running_acquisition_and_closing_flushes_everything(qtbot, tmp_path):
    """Render controls, pause, then closing the window mid-run on a source that would not end."""
    import tifffile

    from rtsmlm.gui.app import open_live_window
    from rtsmlm.gui.widgets import lookup_table

    window = open_live_window(_cfg(tmp_path / "run", 1_000_000))
    qtbot.addWidget(window)
    pipeline = window.session.run.pipeline
    qtbot.waitUntil(lambda: window.shown_sr is not None and window.camera_item.image is not None, timeout=120_000)
    extent = window.sr_item.mapRectToParent(window.sr_item.boundingRect())

    # SR pixel size: the renderer re-renders; the image keeps its nm extent on screen.
    window.pixel_box.setCurrentIndex(window.pixel_box.findData(20.0))
    qtbot.waitUntil(lambda: window.shown_sr.render_pixel_nm == 20.0, timeout=60_000)
    new_extent = window.sr_item.mapRectToParent(window.sr_item.boundingRect())
    assert new_extent.width() == pytest.approx(extent.width(), abs=20.0)
    assert new_extent.height() == pytest.approx(extent.height(), abs=20.0)
    # Colour map and contrast are applied by the display worker.
    window.cmap_box.setCurrentText("gray")
    qtbot.waitUntil(lambda: np.array_equal(window.sr_item.image, lookup_table("gray")[window.shown_sr.image]),
                    timeout=60_000)
    saturated_before = (window.shown_sr.image == 255).mean()
    window.percentile_box.setValue(95.0)
    qtbot.waitUntil(lambda: window.shown_sr.percentile == 95.0, timeout=60_000)
    assert (window.shown_sr.image == 255).mean() > 2 * saturated_before  # white at a lower value
    # The depth range boxes (a 2D run: shown but disabled) reach the worker; an empty range is refused.
    assert [b.isEnabled() for b in window.z_boxes] == [False, False]
    window.set_z_range(-300.0, 300.0)
    assert window.worker.z_range == (-300.0, 300.0)
    window.set_z_range(200.0, 100.0)
    assert window.worker.z_range == (-300.0, 300.0) and "is empty" in window.statusBar().currentMessage()

    # Pause: the images freeze while the run goes on; resume catches up.
    window.action_pause.trigger()
    frozen_camera, frozen_sr = window.camera_item.image.copy(), window.shown_sr
    frames_at_pause = pipeline.n_localized_frames
    qtbot.waitUntil(lambda: pipeline.n_localized_frames > frames_at_pause + 30
                    and window.worker.latest().sr.n_locs > frozen_sr.n_locs, timeout=60_000)
    window.refresh()
    assert window.shown_sr is frozen_sr and np.array_equal(window.camera_item.image, frozen_camera)
    assert "display paused" in window.status_text()
    window.action_pause.trigger()
    qtbot.waitUntil(lambda: window.shown_sr.n_locs > frozen_sr.n_locs, timeout=60_000)

    with qtbot.waitSignal(window.closed, timeout=120_000):
        window.close()  # deferred: the window closes itself once the run has drained and flushed
        assert window.session.state in ("stopping", "finished")
    assert not pipeline.running and not window.isVisible()
    out = window.session.run.out_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["errors"] == []
    assert 40 <= summary["frames_acquired"] < 1_000_000
    with open(out / "localizations.csv") as fh:
        n_rows = sum(1 for _ in fh) - 1
    assert n_rows == summary["n_locs"] > 0
    with tifffile.TiffFile(out / "raw.tif") as f:
        assert len(f.pages) == summary["frames_recorded"]
    assert summary["frames_recorded"] + summary["frames_lost_recorder"] == summary["frames_acquired"]


@pytest.mark.slow
@pytest.mark.slow
def test_start_after_a_finished_run_starts_a_new_run_in_a_new_folder(qtbot, tmp_path):
    from rtsmlm.gui.app import open_live_window

    window = open_live_window(_cfg(tmp_path / "run", 40))
    qtbot.addWidget(window)
    first = window.session.run
    qtbot.waitUntil(lambda: window.session.state == "finished", timeout=120_000)
    with qtbot.waitSignal(window.run_finished, timeout=120_000):
        window.action_start.trigger()
    second = window.session.run
    assert second is not first and second.out_dir == tmp_path / "run-002"
    assert window.session.summary["frames_localized"] + window.session.summary["frames_caught_up"] == 40
    assert json.loads((first.out_dir / "summary.json").read_text())["status"] == "complete"
    assert window.worker.run is second and window.windowTitle().endswith("run-002")
    window.close()


def test_next_output_dir_skips_used_folders(tmp_path):
    from rtsmlm.gui.session import next_output_dir

    base = tmp_path / "run"
    assert next_output_dir(base) == tmp_path / "run-002"
    (tmp_path / "run-002").mkdir()
    assert next_output_dir(base) == tmp_path / "run-002"  # empty: usable
    (tmp_path / "run-002" / "summary.json").write_text("{}")
    assert next_output_dir(base) == tmp_path / "run-003"


@pytest.mark.slow
def test_rtsmlm_live_screenshot(tmp_path, qapp):
    from PyQt5 import QtGui

    from rtsmlm.cli import main

    png, out = tmp_path / "live.png", tmp_path / "run"
    argv = ["live", "--screenshot", str(png), "--max-frames", "80", "--out", str(out), "--no-stream"]
    for ov in RUN_OVERRIDES:
        argv += ["--set", ov]
    assert main(argv) == 0
    img = QtGui.QImage(str(png))
    assert not img.isNull() and img.width() >= 800 and img.height() >= 500
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["frames_localized"] + summary["frames_caught_up"] == 80 and summary["frames_missing_final"] == 0
    # The screenshot is not blank: the dark theme, white labels and the coloured SR/plots all appear.
    bits = img.convertToFormat(QtGui.QImage.Format_RGB888)
    ptr = bits.constBits()
    ptr.setsize(bits.sizeInBytes())
    rgb = np.frombuffer(ptr, np.uint8).reshape(bits.height(), bits.bytesPerLine())[:, :bits.width() * 3]
    assert rgb.std() > 10 and rgb.max() == 255
