"""The streaming pipeline: the threads of a run (the relays' threads are started from here too).

::

    producer ──▶ RingBuffer ──▶ localizer ──▶ LocalizationStream ──▶ one relay thread per listener
    (Source)        │                                                (files, ground truth, render/drift,
                    └──▶ recorder (raw frames to disk)                ZeroMQ, plugins)

* The **producer** moves frames from the source into the ring and never waits on anything downstream.
* The **localizer** reads whatever frames are waiting (a batch when it is behind, one frame when it keeps
  up), runs the streaming localizer and appends a localization batch. When it cannot keep up the ring
  overruns it: the lost frame indices are recorded exactly and reported.
* The **recorder** writes every camera frame to disk (camera sources); it is a separate ring reader, so
  it never waits for the localizer.
* **Listeners** (:mod:`rtsmlm.engine.listener`) each run on their own relay thread
  (:mod:`rtsmlm.engine.relay`) and follow the localization stream from their own position, so a slow
  listener (a plugin, a subscriber) never slows the localizer; ground truth a simulated source publishes
  and the stats reach them through the same relays.
* A **stats** tick once per ``pipeline.stats_interval_s`` measures rates, ring fill, losses, latency
  and memory, hands them to every listener and to the terminal.
"""

from __future__ import annotations

import errno
import logging
import resource
import shutil
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import rtsmlm
from rtsmlm.acquisition.ring import RingBuffer, add_to_runs, expand_runs
from rtsmlm.acquisition.source import DescribesDevice, PublishesTruth, ReportsCameraLosses, Source, TruthRecord
from rtsmlm.core.config import Config, to_dict
from rtsmlm.core.locs import LocalizationStream, concat
from rtsmlm.engine.listener import RunStart
from rtsmlm.engine.plugins import plugin_report
from rtsmlm.engine.relay import START_TIMEOUT_S, ListenerRelay, end_in_order
from rtsmlm.engine.summary import SUMMARY_VERSION, FrameCounts

log = logging.getLogger("rtsmlm.engine.pipeline")

# Free space kept on the output disk once acquisition stops for lack of it, so that the run can still
# close its files (raw TIFF page index, drift-corrected rewrite of the localization files, render,
# summary). On a disk that really fills up, writers fail half-way and HDF5 can be left unreadable.
DISK_RESERVE_BYTES = 16 * 2**20
# Bytes the closing writes need per recorded frame (TIFF page index) and per localization (the
# drift-corrected CSV and HDF5 rewritten at the end).
_CLOSE_BYTES_PER_FRAME = 256
# The recorder checks the free space each time it has written this much (see _record).
DISK_CHECK_BYTES = 4 * 2**20
_CLOSE_BYTES_PER_LOC = 400


class Localizer(Protocol):
    """Turns frames into localizations (``rtsmlm.localization.localizer.StreamingLocalizer``)."""

    def push(self, frames: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """Localize what the new frames complete; returns (localizations, last fully analysed index)."""

    def finish(self) -> tuple[np.ndarray, int]:
        """End of the stream: analyse the frames still pending."""

    def restart(self) -> None:
        """After finish: accept earlier frame indices again (catch-up of skipped frames)."""


CATCH_UP_CONTEXT = 1
"""Recorded frames a catch-up reads beyond each end of a skipped stretch when the localizer does not say
(``context_frames``, an optional attribute of a :class:`Localizer`: the frames a localization of a stretch
alone must read for its frames to come out as in one pass): half a 3-frame window."""


def ring_slots(cfg: Config, shape: tuple[int, int], dtype: Any) -> int:
    """``pipeline.ring_frames``, or fewer when that many frames would take more than a quarter of
    ``pipeline.memory_mb`` (a 4096² camera: 32 MB a frame), but at least 4."""
    frame_bytes = int(shape[0]) * int(shape[1]) * np.dtype(dtype).itemsize
    fit = int(cfg.pipeline.memory_mb * 2**20 / 4 // max(frame_bytes, 1))
    n = max(4, min(cfg.pipeline.ring_frames, fit))
    if n < cfg.pipeline.ring_frames:
        log.info("ring buffer: %d slots of %dx%d (pipeline.ring_frames = %d does not fit a quarter of "
                 "pipeline.memory_mb = %g)", n, shape[0], shape[1], cfg.pipeline.ring_frames, cfg.pipeline.memory_mb)
    return n


def index_ranges(indices: np.ndarray) -> list[list[int]]:
    """[[first, last], ...] runs of consecutive indices — a compact, exact list of lost frames."""
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(idx) - 1]])
    return [[int(idx[s]), int(idx[e])] for s, e in zip(starts, ends)]


class LatencyHistogram:
    """Whole-run latency percentiles in constant memory (a run may last days): log-spaced bins from
    10 µs to 1000 s, 0.5 % wide, so a percentile is exact to 0.5 %."""

    _LO, _HI, _BINS = 1e-5, 1e3, 3700

    def __init__(self) -> None:
        self._counts = np.zeros(self._BINS + 2, np.int64)  # + underflow and overflow
        self._scale = self._BINS / np.log(self._HI / self._LO)
        self.n = 0

    def add(self, seconds: float) -> None:
        k = int(np.log(max(seconds, 1e-12) / self._LO) * self._scale) + 1
        self._counts[min(max(k, 0), self._BINS + 1)] += 1
        self.n += 1

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile in ms (bin centre), None before the first value."""
        if not self.n:
            return None
        k = int(np.searchsorted(np.cumsum(self._counts), q / 100.0 * self.n))
        k = min(max(k, 1), self._BINS)
        return float(self._LO * np.exp((k - 0.5) / self._scale) * 1e3)


class Pipeline:
    """One run: source → ring → localizer → localization stream → listeners.

    Drive it with :meth:`start`, then :meth:`wait` (or :meth:`stop` from any thread); :meth:`summary`
    afterwards. Every stage is a plain object; this class owns the threads.
    """

    def __init__(self, cfg: Config, source: Source, localizer: Localizer, *,
                 listeners: Sequence[object] = (), plugins: Sequence[tuple[str, object, str]] = (),
                 recorder: Any = None, run_info: dict[str, Any] | None = None,
                 on_stats: Callable[[dict[str, Any]], None] | None = None, backpressure: bool = False,
                 keep_stream: bool = False) -> None:
        """``backpressure``: the source may wait for the readers (a file replayed as fast as possible);
        a live camera never waits, and frames a reader cannot keep up with are lost to that reader.
        ``listeners`` are rtsmlm's own (hooks called directly on their relay's thread), in the order they
        end (a listener finds the sections of those before it in ``RunEnd``; files after the render, so
        they get its final drift); ``plugins`` are (name, object, origin) of third-party listeners, whose
        hooks run under the watchdog. ``keep_stream``: keep every localization batch in :attr:`stream`
        (tests, scripts); by default a batch is dropped once every listener has taken it, so memory stays
        flat however long the run."""
        self.cfg = cfg
        self.source = source
        self.localizer = localizer
        self.ring = RingBuffer.for_source(source, ring_slots(cfg, source.shape, source.dtype))
        self.stream = LocalizationStream(retain=keep_stream)
        self._loc_reader = self.ring.add_reader("localizer")
        self._rec_reader = self.ring.add_reader("recorder") if recorder is not None else None
        self.recorder = recorder
        self.backpressure = backpressure
        self.run_info = dict(run_info or {})
        flush = cfg.output.flush_interval_s
        self.relays = [ListenerRelay(x, self.stream, flush_interval_s=flush, on_failure=self._fail_listener)
                       for x in listeners]
        self._plugin_relays = [ListenerRelay(obj, self.stream, flush_interval_s=flush, on_failure=self._fail_listener,
                                             hook_timeout_s=cfg.pipeline.hook_timeout_s, name=name, origin=origin)
                               for name, obj, origin in plugins]
        self.relays += self._plugin_relays
        names = [r.name for r in self.relays]
        if len(set(names)) != len(names):
            raise ValueError(f"two listeners share a name: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")
        self._on_stats = on_stats
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._localizer_done = threading.Event()
        self._errors: list[str] = []
        # Counters written by one thread each, read by the stats tick.
        self.n_acquired = 0
        self.n_localized_frames = 0
        self.n_recorded = 0
        self._last_done = -1
        self._latencies: deque[float] = deque(maxlen=20_000)
        self._all_latencies = LatencyHistogram()
        self.stats_history: deque[dict[str, Any]] = deque(maxlen=3600)
        self._stats_lock = threading.Lock()  # stats_history is appended by the stats thread, copied by viewers
        self._t_start = 0.0
        self._t_end: float | None = None
        self.latest_stats: dict[str, Any] = {}
        self._summary: dict[str, Any] | None = None
        self._disk_full = False
        self._disk_lock = threading.Lock()
        # The final render (float32 TIFF + PNG) is written at the end: keep room for it too.
        camera_px = float(getattr(getattr(source, "camera", None), "pixel_size_nm", 100.0) or 100.0)
        sr_px = max(cfg.render.pixel_size_nm, 1e-3)
        self._render_bytes = int(5 * source.shape[0] * source.shape[1] * (camera_px / sr_px) ** 2)
        self._t_localizer_done: float | None = None
        self._recorded_runs: list[list[int]] = []
        self.n_caught_up = 0
        self._missing_final: np.ndarray | None = None
        self._recorder_thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ threads

    def _producer(self) -> None:
        try:
            self.source.start()
            for frame in self.source.frames():
                if self.backpressure:
                    # A recorded file: wait for the slowest reader rather than lose a frame.
                    while not self.ring.wait_for_space(0.5):
                        if self._localizer_done.is_set():
                            break
                self.ring.write_frame(frame)
                self.n_acquired += 1
        except Exception:
            self._fail("producer")
        finally:
            self.ring.close()

    def _localize(self) -> None:
        reader = self._loc_reader
        pending_ts: dict[int, float] = {}
        max_batch = self.cfg.pipeline.max_batch
        # A live camera: once a frame waits longer than the latency bound, jump to the present (a file waits
        # for us instead), keeping the newest two frames: a localizer slower per call than the bound would
        # otherwise get one frame after every jump, a sequence of one that no neighbour pads.
        max_age_s = 0.0 if self.backpressure else self.cfg.pipeline.max_latency_ms / 1e3
        try:
            while True:
                if max_age_s > 0:
                    reader.skip_if_stale(time.perf_counter() - max_age_s, keep=2)
                frames = reader.read_many(max_batch, timeout=0.5)
                if not frames:
                    if reader.at_end:
                        break
                    continue
                for f in frames:
                    pending_ts[f.index] = f.timestamp
                data = np.stack([f.data for f in frames])
                indices = np.fromiter((f.index for f in frames), np.int64, len(frames))
                locs, last_done = self.localizer.push(data, indices)
                self._emit(locs, last_done, pending_ts)
            locs, last_done = self.localizer.finish()
            self._emit(locs, last_done, pending_ts)
            self._catch_up()
        except Exception:
            self._fail("localizer")
        finally:
            self.stream.close()
            self._t_localizer_done = time.perf_counter()
            self._localizer_done.set()

    def _catch_up(self) -> None:
        """After the acquisition: analyse the frames the live localizer skipped or lost from the raw
        recording, each run with its recorded neighbours as context (so a frame's window is what it would
        have been live), and append them as late batches: the final files miss no recorded frame."""
        missing = np.union1d(self._loc_reader.skipped_indices, self._loc_reader.lost_indices)
        self._missing_final = missing
        if not len(missing) or self._recorder_thread is None:
            return
        self._recorder_thread.join()  # the raw movie is complete and closed
        path = getattr(self.recorder, "path", None)
        recorded = expand_runs(self._recorded_runs)
        if path is None or not len(recorded):
            return
        from rtsmlm.io.movies import open_movie

        position = {int(i): k for k, i in enumerate(recorded)}
        done: list[np.ndarray] = []
        # The recorded neighbours each side that a live pass would have had.
        half = int(getattr(self.localizer, "context_frames", CATCH_UP_CONTEXT))
        with open_movie(path) as movie:
            for first, last in index_ranges(missing[np.isin(missing, recorded)]):
                lo = first - half if first - half in position else first
                hi = last + half if last + half in position else last
                want = np.arange(lo, hi + 1)
                want = want[np.isin(want, recorded)]
                self.localizer.restart()
                out = []
                for start in range(0, len(want), 64):
                    chunk = want[start:start + 64]
                    frames = np.stack([movie.read(position[int(i)]) for i in chunk])
                    out.append(self.localizer.push(frames, chunk)[0])
                out.append(self.localizer.finish()[0])
                locs = concat(out)
                locs = locs[(locs["frame"] >= first) & (locs["frame"] <= last)]
                caught = missing[(missing >= first) & (missing <= last)]
                done.append(caught)
                # Counted before the localizations appear, so that a stats tick between the two never sees
                # localizations without their frames (a spike in the live plot's localizations per frame).
                self.n_caught_up += len(caught)
                self.stream.append(first, last, locs, late=True)
        caught_all = np.concatenate(done) if done else np.empty(0, np.int64)
        self._missing_final = np.setdiff1d(missing, caught_all)
        log.info("caught up %d frames skipped or lost live, from the raw recording", self.n_caught_up)

    def _emit(self, locs: np.ndarray, last_done: int, pending_ts: dict[int, float]) -> None:
        if last_done <= self._last_done:
            return
        first = self._last_done + 1
        self.stream.append(first, last_done, locs)
        now = time.perf_counter()
        done = [i for i in pending_ts if i <= last_done]
        for i in done:
            lat = now - pending_ts.pop(i)
            self._latencies.append(lat)
            self._all_latencies.add(lat)
        self.n_localized_frames += len(done)
        self._last_done = last_done

    def _record(self) -> None:
        reader = self._rec_reader
        assert reader is not None  # the recorder thread exists only with a recorder
        interval = self.cfg.output.flush_interval_s
        next_flush = time.perf_counter() + interval
        frame_bytes = self.ring.nbytes // self.ring.capacity
        unchecked = 0
        try:
            while True:
                frames = reader.read_many(64, timeout=interval)
                for f in frames:
                    self.recorder.append(f.data)
                    add_to_runs(self._recorded_runs, f.index)  # source index → position in the raw movie
                self.n_recorded += len(frames)
                # A fast camera fills a small disk within one stats interval: the recorder, which writes
                # most, checks the free space every DISK_CHECK_BYTES it writes.
                unchecked += len(frames) * frame_bytes
                if unchecked >= DISK_CHECK_BYTES:
                    unchecked = 0
                    self._check_disk(camera_fps=self.latest_stats.get("camera_fps", 0.0),
                                     interval=self.cfg.pipeline.stats_interval_s)
                if time.perf_counter() >= next_flush:
                    self.recorder.flush()
                    next_flush = time.perf_counter() + interval
                if not frames and reader.at_end:
                    break
        except Exception:
            self._fail("recorder")
        finally:
            try:
                self.recorder.close()
            except Exception:
                self._fail("recorder (closing the raw movie)")

    def _publish_truth(self, record: TruthRecord) -> None:
        """The source's ground truth of one frame, to every listener that takes it (producer thread)."""
        for relay in self.relays:
            relay.post("on_truth", record)

    def _fail_listener(self, where: str, text: str, stop: bool, exc: BaseException | None = None) -> None:
        self._fail(where, text, stop=stop, exc=exc)

    def _stats_loop(self) -> None:
        interval = self.cfg.pipeline.stats_interval_s
        last = (time.perf_counter(), 0, 0)
        while not self._done.wait(interval):
            last = self._tick_stats(last)
            self._check_disk(camera_fps=self.latest_stats.get("camera_fps", 0.0), interval=interval)

    def disk_reserve_bytes(self, camera_fps: float, interval: float) -> int:
        """Free bytes the output disk must keep: the closing writes plus three stats intervals of raw
        frames at the current camera rate (the check runs once per interval)."""
        frame_bytes = self.ring.nbytes // self.ring.capacity if self.recorder is not None else 0
        return int(DISK_RESERVE_BYTES + self._render_bytes + 3 * interval * camera_fps * frame_bytes
                   + _CLOSE_BYTES_PER_FRAME * self.n_recorded + _CLOSE_BYTES_PER_LOC * self.stream.n_locs)

    def _check_disk(self, camera_fps: float, interval: float) -> None:
        """Stop acquisition while the output disk can still take the run's closing writes."""
        out = self.run_info.get("output_dir")
        with self._disk_lock:  # the stats thread and the recorder both check
            if not out or self._disk_full:
                return
            self._check_disk_locked(out, camera_fps, interval)

    def _check_disk_locked(self, out: str, camera_fps: float, interval: float) -> None:
        try:
            free = shutil.disk_usage(out).free
        except OSError:
            return  # the folder went away: the writers report that themselves
        need = self.disk_reserve_bytes(camera_fps, interval)
        if free < need:
            self._disk_full = True
            msg = (f"output disk of {out} is nearly full ({free / 2**20:.1f} MiB free, "
                   f"{need / 2**20:.1f} MiB kept to close the run's files): acquisition stopped after "
                   f"{self.n_acquired} frames")
            self._errors.append(msg)
            log.error(msg)
            self.source.stop()

    def _tick_stats(self, last: tuple[float, int, int]) -> tuple[float, int, int]:
        now = time.perf_counter()
        t_prev, acq_prev, loc_prev = last
        dt = max(now - t_prev, 1e-9)
        stats = self.stats(camera_fps=(self.n_acquired - acq_prev) / dt,
                           localized_fps=(self.n_localized_frames - loc_prev) / dt)
        self.latest_stats = stats
        with self._stats_lock:
            self.stats_history.append(stats)
        for relay in self.relays:
            relay.post("on_stats", stats)
        if self._on_stats is not None:
            self._on_stats(stats)
        return now, self.n_acquired, self.n_localized_frames

    def _fail(self, where: str, tb: str | None = None, *, stop: bool = True, exc: BaseException | None = None) -> None:
        """Record and log a stage's failure; stop acquisition unless the stage is not critical (a
        display or stream failure must not end an experiment whose data are still being saved)."""
        tb = tb or traceback.format_exc()
        exc = exc if exc is not None else sys.exc_info()[1]
        if isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or self._disk_full):
            # One line for a full disk, however many writers hit it (each one's part is in the log).
            log.info("%s: %s", where, exc)
            if not self._disk_full:
                self._disk_full = True
                msg = (f"output disk of {self.run_info.get('output_dir')} is full: acquisition stopped after "
                       f"{self.n_acquired} frames (free space, or choose another --out)")
                self._errors.append(msg)
                log.error(msg)
            self.source.stop()
            return
        line = f"{where}: {tb.strip().splitlines()[-1]}"
        self._errors.append(line)
        if isinstance(exc, OSError):
            log.error("%s", line)  # the disk or the OS said no: the message is the whole story
        else:
            log.error("%s failed:\n%s", where, tb)
        if stop:
            self.source.stop()

    # ---------------------------------------------------------------------------------- control

    def run_start(self) -> RunStart:
        """What every listener is told in ``on_run_start``."""
        camera = self.source.camera
        out = self.run_info.get("output_dir")
        return RunStart(str(self.run_info.get("run_id", "")), self.source.control, Path(out) if out else None,
                        float(camera.exposure_ms), float(camera.pixel_size_nm),
                        (int(self.source.shape[0]), int(self.source.shape[1])),
                        self.cfg, dict(self.run_info))

    def start(self) -> None:
        self._t_start = time.perf_counter()
        self.run_info.setdefault("started_unix", time.time())
        if isinstance(self.source, PublishesTruth):
            self.source.set_truth_sink(self._publish_truth)
        spawn = [("rtsmlm-localizer", self._localize)]
        if self.recorder is not None:
            spawn.append(("rtsmlm-recorder", self._record))
        spawn.append(("rtsmlm-stats", self._stats_loop))
        for name, target in spawn:
            t = threading.Thread(target=target, name=name, daemon=True)
            if name == "rtsmlm-recorder":
                self._recorder_thread = t
            t.start()
            self._threads.append(t)
        run = self.run_start()
        for relay in self.relays:
            relay.start(run)
        # The producer starts last, once every listener has started (a plugin's on_run_start sees no
        # frame before it, a publisher is bound), so every reader is registered when frames arrive.
        for relay in self.relays:
            if not relay.started.wait(START_TIMEOUT_S):
                log.warning("listener %s did not start within %.0f s; starting acquisition anyway", relay.name,
                            START_TIMEOUT_S)
        producer = threading.Thread(target=self._producer, name="rtsmlm-producer", daemon=True)
        producer.start()
        self._threads.insert(0, producer)

    def stop(self) -> None:
        """Ask the source to stop; the pipeline then drains, flushes and finishes (see :meth:`wait`)."""
        self.source.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every frame acquired has been analysed or lost and every listener is done."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        waits: list[tuple[threading.Thread, ListenerRelay | None]] = [
            (t, None) for t in self._threads if t.name != "rtsmlm-stats"]
        waits += [(r.thread, r) for r in self.relays if r.thread is not None]
        for t, relay in waits:
            while t.is_alive() and not (relay is not None and relay.abandoned):
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    return False
                t.join(0.5 if remaining is None else min(remaining, 0.5))
                # A listener gets drain_timeout_s after the last localization, then it is abandoned:
                # a hung listener must not keep the run (and its summary) from finishing.
                if (t.is_alive() and relay is not None and self._t_localizer_done is not None
                        and time.perf_counter() - self._t_localizer_done >= self.cfg.pipeline.drain_timeout_s):
                    self._abandon(relay)
        if self._t_end is None:
            self._t_end = time.perf_counter()
            self._done.set()
            # Let a stats tick under way finish before the final one.
            for t in self._threads:
                if t.name == "rtsmlm-stats":
                    t.join(max(5.0, 2 * self.cfg.pipeline.stats_interval_s))
            self._tick_stats((self._t_start, 0, 0))  # the whole-run rates as the final stats record
            self.source.close()
        return True

    def _abandon(self, relay: ListenerRelay) -> None:
        """Give up on a listener still busy ``drain_timeout_s`` after the stream ended (its thread is a
        daemon and stays blocked); the summary names it."""
        why = (f"did not finish within pipeline.drain_timeout_s = {self.cfg.pipeline.drain_timeout_s:g} s "
               "after the last localization; abandoned")
        relay.abandon(why)
        msg = f"listener {relay.name}: {why}"
        self._errors.append(msg)
        log.error("%s", msg)

    def stats_history_copy(self) -> list[dict[str, Any]]:
        """A copy of :attr:`stats_history`, safe while the stats thread appends."""
        with self._stats_lock:
            return list(self.stats_history)

    @property
    def running(self) -> bool:
        return self._t_end is None and self._t_start > 0

    @property
    def errors(self) -> list[str]:
        return list(self._errors)

    # ------------------------------------------------------------------------------------ reports

    def stats(self, **rates: float) -> dict[str, Any]:
        ring = self.ring.stats()
        fill = {r.name: r.fill_fraction for r in ring.readers}
        lost = {r.name: r.n_lost for r in ring.readers}
        if isinstance(self.source, ReportsCameraLosses):  # frames the camera's own buffer dropped
            lost["camera"] = int(self.source.lost_frames)
        lat = np.asarray(self._latencies) * 1e3
        elapsed = (self._t_end or time.perf_counter()) - self._t_start
        return {
            "elapsed_s": elapsed,
            "frames_acquired": self.n_acquired,
            "frames_localized": self.n_localized_frames,
            "frames_caught_up": self.n_caught_up,
            "frames_recorded": self.n_recorded,
            "frames_lost": lost,
            "frames_skipped_live": self._loc_reader.n_skipped,
            "ring_fill": fill,
            "n_locs": self.stream.n_locs,
            "locs_per_frame": self.stream.n_locs / max(self.n_localized_frames + self.n_caught_up, 1),
            # NaN until the first frame is localized (no percentile of nothing, no numpy warning).
            "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "gpu_mem_mb": _gpu_memory_mb(),
            **rates,
        }

    def summary(self) -> dict[str, Any]:
        """Everything about the run, for summary.json: config, counts, losses (exact), timings, and the
        sections the listeners return.

        The first call (after :meth:`wait`) ends every listener (``on_run_end``), in the order given;
        later calls return the same record.
        """
        if self._summary is not None:
            return self._summary
        elapsed = (self._t_end or time.perf_counter()) - self._t_start
        lost_loc = self._loc_reader.lost_indices
        missing_final = (self._missing_final if self._missing_final is not None
                         else np.union1d(lost_loc, self._loc_reader.skipped_indices))
        lost_rec = self._rec_reader.lost_indices if self._rec_reader is not None else None
        counts = FrameCounts(
            acquired=self.n_acquired, localized_live=self.n_localized_frames, lost_localizer=int(len(lost_loc)),
            # Skipped on purpose to keep the live latency bounded (pipeline.max_latency_ms), then
            # analysed from the raw recording with the lost ones (caught up); what is still missing.
            skipped_live=int(self._loc_reader.n_skipped), caught_up=self.n_caught_up,
            missing_final=int(len(missing_final)),
            recorded=self.n_recorded if lost_rec is not None else None,
            lost_recorder=int(len(lost_rec)) if lost_rec is not None else None)
        out: dict[str, Any] = {
            "summary_version": SUMMARY_VERSION,
            **self.run_info,
            "rtsmlm_version": rtsmlm.__version__,
            "versions": _versions(),
            "config": to_dict(self.cfg),
            "elapsed_s": elapsed,
            **counts.to_json(),
            "frames_lost_localizer_ranges": index_ranges(lost_loc),
            "frames_skipped_live_ranges": index_ranges(self._loc_reader.skipped_indices),
            "frames_missing_final_ranges": index_ranges(missing_final),
            "n_locs": self.stream.n_locs,
            "camera_fps": self.n_acquired / max(elapsed, 1e-9),
            "localized_fps": self.n_localized_frames / max(elapsed, 1e-9),
            "latency_ms_p50": self._all_latencies.percentile_ms(50),
            "latency_ms_p99": self._all_latencies.percentile_ms(99),
            "errors": self.errors,
        }
        if lost_rec is not None:
            out["frames_lost_recorder_ranges"] = index_ranges(lost_rec)
        verdict = getattr(self.localizer, "range_verdict", None)
        if verdict is not None and verdict.frames:
            out["model_range"] = verdict.to_json()
        nonfinite = getattr(self.localizer, "nonfinite", None)
        if nonfinite:
            out["nonfinite_frames"] = {"frames": len(nonfinite), "pixels": int(sum(nonfinite.values())),
                                       "ranges": index_ranges(np.array(sorted(nonfinite)))}
        # A camera's own losses (e.g. Micro-Manager's circular buffer overflowing) and its description.
        source_info = out.setdefault("source", {})
        if isinstance(source_info, dict):
            if isinstance(self.source, DescribesDevice):
                source_info["stats"] = self.source.stats()
                source_info["device"] = self.source.describe()
        self._end_listeners(out)
        out["errors"] = self.errors
        self._summary = out
        return out

    def _end_listeners(self, out: dict[str, Any]) -> None:
        """``on_run_end`` of every listener in order; merge their sections; report each one."""
        def is_active(relay: ListenerRelay) -> Callable[[], bool]:
            return lambda: relay.active

        end_in_order([(r.name, r.listener, r.end, is_active(r)) for r in self.relays], out)
        reports = {r.name: r.report() for r in self.relays}
        out["listeners"] = {name: asdict(rep) for name, rep in reports.items()}
        if self._plugin_relays:
            out["plugins"] = {r.name: plugin_report(r.listener, r.origin, reports[r.name].active, r.error,
                                                    reports[r.name].calls, reports[r.name].time_s)
                              for r in self._plugin_relays}
        errors = {r.name: r.error for r in self.relays if r.error}
        if errors:
            out["listener_errors"] = errors


def _gpu_memory_mb() -> float | None:
    torch = sys.modules.get("torch")  # only if the backend already imported it
    if torch is not None and torch.cuda.is_available():
        return float(torch.cuda.memory_allocated()) / 2**20
    return None


def _versions() -> dict[str, str]:
    import platform

    v = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "onnxruntime", "tensorrt"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v

