"""The streaming pipeline assembled by ``rtsmlm.engine.run.build_run``, run in-process on the simulated camera.

Real components throughout: the physics simulator, the shipped model on the CPU backend, the ring
buffer, the BigTIFF recorder and the localization files in ``tmp_path``. The properties checked are
the issue's: every frame is either localized or listed as lost, the recorder keeps every frame even
when the ring overruns the localizer, and the pipeline's localizations are those of an offline
analysis of the same recorded frames.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from rtsmlm.core.config import Config, load
from rtsmlm.core.locs import LOC_DTYPE, LocBatch, concat
from rtsmlm.engine.pipeline import index_ranges
from rtsmlm.outputs.files import LOCS_CSV, LOCS_HDF5, SUMMARY_JSON, TRUTH_CSV

# Generous bound on how long any single wait in these tests may take on a loaded 2-core machine; it is a
# guard against a hung pipeline, never a synchronisation.
GUARD_S = 120.0


def run_config(out: Path, frames: int, *extra: str) -> Config:
    """A small simulated run: 64x64 frames, one inference thread (the machine is shared), no ZeroMQ, no
    drift correction (it has its own tests; here it would only add CPU time to a test of the threads)."""
    return load(None, [f"source.max_frames={frames}", f"output.dir={json.dumps(str(out))}",
                       "stream.enabled=false", "backend.threads=1", "drift.enabled=false", *extra])


def simulated_frames(cfg: Config, n: int) -> np.ndarray:
    """The frames the simulated camera delivers for ``cfg`` (it is deterministic for a given seed)."""
    from rtsmlm.acquisition.simulated import SimulatedCamera

    cam = SimulatedCamera(cfg, max_frames=n)
    cam.start()
    return np.stack([f.data for f in cam.frames()])


def offline_localizer(cfg: Config, camera, shape, *, eager: bool = False):
    """A fresh StreamingLocalizer with the same model, backend and thresholds as ``build_run`` uses.

    ``eager`` keeps the torch CPU backend out of TorchScript: the traced graph's oneDNN kernels are
    specialised per batch shape and re-optimised after its first calls, so its bf16 results depend
    (by ~0.1 nm) on how the frames were batched; eager mode gives the same numbers for any batching.
    """
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.localizer import StreamingLocalizer

    backend, meta = open_backend(cfg.backend, cfg.model.checkpoint, jit=not eager)
    return StreamingLocalizer(backend, meta, camera, shape, cfg.model.p_threshold,
                              cfg.model.candidate_threshold)


def sort_locs(locs: np.ndarray) -> np.ndarray:
    return np.sort(locs, order=["frame", "x", "y"])


def assert_same_locs(a: np.ndarray, b: np.ndarray) -> None:
    """Same rows; float columns equal up to float32 rounding (a sum's order can move the last bit)."""
    assert len(a) == len(b)
    np.testing.assert_array_equal(a["frame"], b["frame"])
    for name in LOC_DTYPE.names[1:]:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-4, err_msg=name)


def picasso_view(locs: np.ndarray, summary: dict) -> np.ndarray:
    """What the Picasso file holds: rows in the outer half of an edge pixel moved just inside the image
    (Picasso's loader drops them otherwise; rtsmlm.io.locfiles.keep_for_picasso)."""
    locs = locs.copy()
    pixel = summary["source"]["camera"]["pixel_size_nm"]
    for axis, size in zip(("y", "x"), summary["source"]["shape"]):
        locs[axis] = np.clip(locs[axis], (0.5 + 1e-3) * pixel, (size - 1e-3 + 0.5) * pixel)
    return locs


def read_recorded(out: Path) -> np.ndarray:
    from rtsmlm.io.movies import open_movie

    with open_movie(out / "raw.tif") as movie:
        return np.stack([movie.read(i) for i in range(len(movie))])


def run_to_end(run) -> dict:
    run.pipeline.start()
    assert run.pipeline.wait(timeout=GUARD_S), "the pipeline did not drain"
    return run.finish()


class SlowLocalizer:
    """A localizer slower than the camera: wraps the real one and, after taking each batch of frames,
    holds the localizer thread until the ring has overrun it once more (it watches the localizer
    reader's loss counter), so losses are certain however fast or slow this machine is. Records every
    frame index it was given."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.pipeline = None  # set once build_run made it
        self.seen: list[int] = []
        self.pushes = 0

    def _lost(self) -> int:
        return next(r.n_lost for r in self.pipeline.ring.stats().readers if r.name == "localizer")

    def push(self, frames: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        self.seen.extend(int(i) for i in indices)
        self.pushes += 1
        lost_before = self._lost()
        deadline = time.monotonic() + GUARD_S
        while self._lost() == lost_before and not self.pipeline.ring.closed:
            assert time.monotonic() < deadline, "the camera stopped delivering frames"
            time.sleep(0.002)  # polling a condition the producer thread changes, not ordering by time
        return self.inner.push(frames, indices)

    def finish(self) -> tuple[np.ndarray, int]:
        return self.inner.finish()

    def restart(self) -> None:
        """The catch-up after the acquisition: from here on, push at full speed and record nothing."""
        self.inner.restart()
        self.push = self.inner.push

    @property
    def context_frames(self) -> int:
        return self.inner.context_frames


class StopAfter:
    """A listener with only the hooks it needs: asks the pipeline to stop once a batch reaches ``frame``
    (as Ctrl-C would), and reports that frame in the summary."""

    name = "stop-after"

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self.pipeline = None
        self.stopped_at: int | None = None
        self.batches: list[LocBatch] = []

    def on_batch(self, batch: LocBatch) -> None:
        self.batches.append(batch)
        if self.stopped_at is None and batch.last_frame >= self.frame:
            self.stopped_at = batch.last_frame
            self.pipeline.stop()

    def on_run_end(self, end):
        return {"stop_after": self.stopped_at}


# --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # loads the model twice and localizes 160 frames twice: ~10-20 s on a loaded 2-core box
def test_pipeline_localizations_equal_offline_analysis_of_the_recorded_frames(tmp_path):
    from rtsmlm.analysis.metrics import evaluate, match
    from rtsmlm.engine.run import build_run
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.localization.localizer import localize_movie

    n = 160
    # The default ring (512 frames) holds the whole run; a camera at 40 frames/s leaves a slow or busy 2-core
    # machine time to localize every frame live (at 100 frames/s a loaded machine skips frames, caught up
    # later: another test's subject).
    cfg = run_config(tmp_path / "run", n, "camera.exposure_ms=25")
    run = build_run(cfg, keep_stream=True)
    summary = run_to_end(run)
    out = run.out_dir

    assert summary["status"] == "complete" and summary["errors"] == []
    assert summary["frames_acquired"] == summary["frames_localized"] == summary["frames_recorded"] == n
    assert summary["frames_lost_localizer"] == summary["frames_lost_recorder"] == 0
    assert summary["frames_lost_localizer_ranges"] == []
    on_disk = json.loads((out / SUMMARY_JSON).read_text())
    assert on_disk["status"] == "complete" and on_disk["frames_localized"] == n

    # The recorder wrote exactly the frames the camera delivered.
    raw = read_recorded(out)
    np.testing.assert_array_equal(raw, simulated_frames(cfg, n))

    # Offline analysis of the recorded movie with the same model and backend finds the same molecules
    # at the same places. (Not bit-identical: the default CPU backend's bf16 kernels depend slightly on
    # the batch shape, and the pipeline batches whatever frames are waiting; see offline_localizer.)
    streamed = sort_locs(run.pipeline.stream.snapshot())
    offline = sort_locs(localize_movie(offline_localizer(cfg, run.pipeline.source.camera, raw.shape[1:]), raw))
    assert len(streamed) == summary["n_locs"] > 0
    same = match(streamed, offline, tolerance_nm=5.0)
    assert same.tp >= 0.99 * max(len(streamed), len(offline))
    assert np.sqrt(np.mean(same.dx**2 + same.dy**2)) < 1.0  # nm; the localization precision is ~10 nm

    # The batches cover every frame exactly once, in order.
    batches = run.pipeline.stream.batches_since(0, timeout=0)
    assert batches[0].first_frame == 0 and batches[-1].last_frame == n - 1
    assert all(b.first_frame == a.last_frame + 1 for a, b in zip(batches, batches[1:]))

    # The files hold the same table, and score the same against the simulator's truth.
    truth = read_locs(out / TRUTH_CSV)
    assert set(np.unique(truth["frame"])) <= set(range(n)) and len(truth) > 0
    for name in (LOCS_CSV, LOCS_HDF5):
        written = sort_locs(read_locs(out / name))
        want = streamed if name == LOCS_CSV else sort_locs(picasso_view(streamed, summary))
        assert len(written) == len(want), name
        np.testing.assert_array_equal(written["frame"], want["frame"])
        np.testing.assert_allclose(written["x"], want["x"], atol=0.01, err_msg=name)
        np.testing.assert_allclose(written["y"], want["y"], atol=0.01, err_msg=name)
        assert evaluate(written, truth)["jaccard"] == pytest.approx(evaluate(offline, truth)["jaccard"],
                                                                    abs=0.01), name


@pytest.mark.slow  # loads the model twice: ~10-20 s on a loaded 2-core machine
def test_a_slow_localizer_is_overrun_while_the_recorder_keeps_every_frame(tmp_path):
    from rtsmlm.analysis.metrics import evaluate
    from rtsmlm.engine.run import build_run
    from rtsmlm.io.locfiles import read_locs

    n = 300
    # Camera paced at 5 ms/frame so the 64-frame ring gives the recorder a third of a second of slack
    # even on a busy machine; the localizer takes at most 4 frames per call and is held back each time.
    cfg = run_config(tmp_path / "run", n, "pipeline.ring_frames=64", "pipeline.max_batch=4",
                     "camera.exposure_ms=5.0", "pipeline.max_latency_ms=0")
    from rtsmlm.acquisition.simulated import SimulatedCamera

    camera = SimulatedCamera(cfg)  # the camera model and frame shape the run's source will have
    slow = SlowLocalizer(offline_localizer(cfg, camera.camera, camera.shape, eager=True))
    run = build_run(cfg, realtime=True, localizer=slow, keep_stream=True)
    slow.pipeline = run.pipeline
    summary = run_to_end(run)

    assert summary["errors"] == [] and summary["status"] == "complete"
    assert summary["frames_acquired"] == n
    # The recorder, a separate ring reader, got every frame although the localizer fell far behind.
    assert summary["frames_recorded"] == n and summary["frames_lost_recorder"] == 0
    raw = read_recorded(run.out_dir)
    np.testing.assert_array_equal(raw, simulated_frames(cfg, n))

    # The ring overran the localizer, and the summary lists exactly the frames it never saw.
    seen = np.asarray(slow.seen)
    assert np.all(np.diff(seen) > 0), "frames reached the localizer out of order or twice"
    never_seen = np.setdiff1d(np.arange(n), seen)
    assert summary["frames_lost_localizer"] == len(never_seen) > 0
    assert summary["frames_lost_localizer_ranges"] == index_ranges(never_seen)
    assert summary["frames_localized"] == len(seen)
    assert summary["frames_localized"] + summary["frames_lost_localizer"] == summary["frames_acquired"]
    on_disk = json.loads((run.out_dir / SUMMARY_JSON).read_text())
    assert on_disk["frames_lost_localizer_ranges"] == summary["frames_lost_localizer_ranges"]

    # Live, no localization comes from a lost frame; the live batches skip exactly the lost frames.
    batches = run.pipeline.stream.batches_since(0, timeout=0)
    live = [b for b in batches if not b.late]
    streamed = sort_locs(concat([b.locs for b in live]))
    assert set(np.unique(streamed["frame"]).tolist()) <= set(seen.tolist())
    covered = np.concatenate([np.arange(b.first_frame, b.last_frame + 1) for b in live])
    assert set(covered.tolist()) >= set(seen.tolist())

    # Offline analysis of the same frames (the recorded movie minus the lost ones, with the same gaps,
    # hence the same sequence breaks) gives the same localizations (eager backend on both sides: the
    # batches differ) and the same score.
    again = offline_localizer(cfg, run.pipeline.source.camera, raw.shape[1:], eager=True)
    parts = [again.push(raw[seen[i:i + 16]], seen[i:i + 16])[0] for i in range(0, len(seen), 16)]
    offline = sort_locs(concat([*parts, again.finish()[0]]))
    assert_same_locs(streamed, offline)
    truth = read_locs(run.out_dir / TRUTH_CSV)
    truth_seen = truth[np.isin(truth["frame"], seen)]
    assert evaluate(streamed, truth_seen)["jaccard"] == pytest.approx(evaluate(offline, truth_seen)["jaccard"],
                                                                      abs=0.01)

    # After the acquisition the lost frames were analysed from the raw recording: nothing is missing
    # from the final files, and each caught-up frame has exactly what an offline analysis of the whole
    # recorded movie gives it (its window had its real neighbours).
    assert summary["frames_caught_up"] == len(never_seen) and summary["frames_missing_final"] == 0
    late = sort_locs(concat([b.locs for b in batches if b.late]))
    whole = offline_localizer(cfg, run.pipeline.source.camera, raw.shape[1:], eager=True)
    all_idx = np.arange(n)
    parts = [whole.push(raw[i:i + 16], all_idx[i:i + 16])[0] for i in range(0, n, 16)]
    full = concat([*parts, whole.finish()[0]])
    assert_same_locs(late, sort_locs(full[np.isin(full["frame"], never_seen)]))
    in_file = read_locs(run.out_dir / LOCS_CSV)
    assert len(in_file) == summary["n_locs"] == len(streamed) + len(late)


@pytest.mark.slow  # loads the model: ~5-10 s on a loaded 2-core machine
def test_stop_mid_run_drains_flushes_and_accounts_for_every_frame(tmp_path):
    from rtsmlm.engine.run import build_run
    from rtsmlm.io.locfiles import read_locs

    stopper = StopAfter(frame=40)
    cfg = run_config(tmp_path / "run", 0)  # max_frames 0: the simulated camera runs until stopped
    run = build_run(cfg, realtime=True, extra_listeners=[stopper], keep_stream=True)
    stopper.pipeline = run.pipeline
    summary = run_to_end(run)

    acquired = summary["frames_acquired"]
    assert summary["errors"] == [] and summary["status"] == "complete"
    assert summary["stop_after"] is not None and acquired > stopper.stopped_at
    # Live: localized, skipped (latency bound) or lost; the skipped and lost ones are caught up after.
    assert (summary["frames_localized"] + summary["frames_skipped_live"]
            + summary["frames_lost_localizer"]) == acquired
    assert summary["frames_missing_final"] == 0
    assert summary["frames_recorded"] == acquired and summary["frames_lost_recorder"] == 0
    # Drained: the frames still in the ring when the camera stopped were analysed too. (The stream's last
    # batch is not always the latest frame: frames skipped live under load are caught up after the drain.)
    batches = run.pipeline.stream.batches_since(0, timeout=0)
    assert max(b.last_frame for b in batches) == acquired - 1
    assert len(read_recorded(run.out_dir)) == acquired
    # Flushed: the files hold every localization of the stream.
    streamed = run.pipeline.stream.snapshot()
    assert len(read_locs(run.out_dir / LOCS_CSV)) == len(streamed) == summary["n_locs"]
    assert len(read_locs(run.out_dir / LOCS_HDF5)) == len(streamed)
    assert int(read_locs(run.out_dir / TRUTH_CSV)["frame"].max()) <= acquired - 1
    assert [b.seq for b in stopper.batches] == list(range(run.pipeline.stream.n_batches))


class DelayedLocalizer:
    """A localizer that needs ``delay_s`` for every call (hardware slower than the camera)."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def push(self, frames: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        time.sleep(self.delay_s)  # the simulated cost of the work, not a synchronisation
        return self.inner.push(frames, indices)

    def finish(self) -> tuple[np.ndarray, int]:
        return self.inner.finish()

    def restart(self) -> None:
        self.inner.restart()
        self.delay_s = 0.0

    @property
    def context_frames(self) -> int:
        return self.inner.context_frames


@pytest.mark.slow  # loads the model: ~10 s on a loaded 2-core machine
def test_a_live_localizer_that_falls_behind_skips_to_recent_frames_and_catches_up_after(tmp_path):
    """A 200 frames/s camera, a localizer good for ~40: without a bound the backlog (and the latency
    feedback plugins act on) grows by seconds; with pipeline.max_latency_ms it stays bounded, and the
    skipped frames are analysed from the raw recording after the acquisition: nothing missing."""
    from rtsmlm.acquisition.simulated import SimulatedCamera
    from rtsmlm.engine.run import build_run
    from rtsmlm.io.locfiles import read_locs

    n = 400
    cfg = run_config(tmp_path / "run", n, "pipeline.max_batch=4", "camera.exposure_ms=5.0",
                     "pipeline.max_latency_ms=200")
    camera = SimulatedCamera(cfg)
    run = build_run(cfg, realtime=True,
                    localizer=DelayedLocalizer(offline_localizer(cfg, camera.camera, camera.shape, eager=True), 0.1))
    summary = run_to_end(run)
    assert summary["errors"] == [] and summary["frames_acquired"] == n
    assert summary["frames_skipped_live"] > 0 and summary["frames_lost_localizer"] == 0
    # The live latency stays near the bound (200 ms + one slow call; more on a loaded machine), far below the multi-second
    # backlog an unbounded queue builds here.
    assert summary["latency_ms_p99"] < 2500.0  # unbounded, the last frames here wait ~8 s
    assert summary["frames_localized"] + summary["frames_skipped_live"] == n
    assert summary["frames_caught_up"] == summary["frames_skipped_live"] and summary["frames_missing_final"] == 0
    in_file = read_locs(run.out_dir / LOCS_CSV)
    frames_with_locs = set(np.unique(in_file["frame"]).tolist())
    skipped = {f for a, b in summary["frames_skipped_live_ranges"] for f in range(a, b + 1)}
    assert len(frames_with_locs & skipped) > 0.5 * len(skipped)  # the catch-up found their molecules


def test_the_stream_drops_batches_every_consumer_has_taken():
    from rtsmlm.core.locs import LocalizationStream

    stream = LocalizationStream(retain=False)
    stream.add_reader("files")
    stream.add_reader("render")
    for i in range(10):
        stream.append(i, i, np.zeros(3, LOC_DTYPE))
    stream.consumed("files", 10)
    assert len(stream.batches_since(0)) == 10  # render has not taken them yet
    stream.consumed("render", 6)
    assert [b.seq for b in stream.batches_since(6)] == [6, 7, 8, 9]
    assert len(stream.snapshot()) == 4 * 3 and stream.n_batches == 10 and stream.n_locs == 30
    with pytest.raises(ValueError, match="dropped"):
        stream.batches_since(2)
