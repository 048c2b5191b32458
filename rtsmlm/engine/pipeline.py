"""The streaming pipeline: all threads of a run live here, and only here.

::

    producer ──▶ RingBuffer ──▶ localizer ──▶ LocalizationStream ──▶ one thread per consumer
    (Source)        │                                                (files, render/drift, ZeroMQ,
                    └──▶ recorder (raw frames to disk)                plugins, the live view)

* The **producer** moves frames from the source into the ring and never waits on anything downstream.
* The **localizer** reads whatever frames are waiting (a batch when it is behind, one frame when it keeps
  up), runs the streaming localizer and appends a localization batch. When it cannot keep up the ring
  overruns it: the lost frame indices are recorded exactly and reported.
* The **recorder** writes every camera frame to disk (camera sources); it is a separate ring reader, so
  it never waits for the localizer.
* **Consumers** each run on their own thread and follow the localization stream from their own position,
  so a slow consumer (a plugin, a subscriber) never slows the localizer.
* A **stats** tick once per ``pipeline.stats_interval_s`` measures rates, ring fill, losses, latency
  and memory, hands them to every consumer and to the terminal.
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
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

import rtsmlm
from rtsmlm.acquisition.ring import RingBuffer, add_to_runs, expand_runs
from rtsmlm.acquisition.source import Source
from rtsmlm.core.config import Config, to_dict
from rtsmlm.core.locs import LocalizationStream, LocBatch, concat

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


class Consumer(Protocol):
    """A stage fed by the localization stream, on a thread of its own.

    ``start`` is called once before the first batch; ``on_batch`` for every localization batch in frame
    order; ``on_tick`` about every ``output.flush_interval_s`` (flush files here); ``on_stats`` with each
    stats record; ``finish`` once after the last batch, with the run summary it may add to.
    """

    name: str
    critical: bool
    """True when the run must stop if this consumer fails (it writes the data)."""

    def start(self, run: dict[str, Any]) -> None: ...

    def on_batch(self, batch: LocBatch) -> None: ...

    def on_tick(self) -> None: ...

    def on_stats(self, stats: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


class Localizer(Protocol):
    """Turns frames into localizations (``rtsmlm.localization.localizer.StreamingLocalizer``)."""

    def push(self, frames: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """Localize what the new frames complete; returns (localizations, last fully analysed index)."""

    def finish(self) -> tuple[np.ndarray, int]:
        """End of the stream: analyse the frames still pending."""

    def restart(self) -> None:
        """After finish: accept earlier frame indices again (catch-up of skipped frames)."""


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


@dataclass
class _ConsumerThread:
    consumer: Any
    thread: threading.Thread | None = None
    stats_queue: deque = field(default_factory=lambda: deque(maxlen=8))
    error: str | None = None
    started: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False


class Pipeline:
    """One run: source → ring → localizer → localization stream → consumers.

    Drive it with :meth:`start`, then :meth:`wait` (or :meth:`stop` from any thread); :meth:`summary`
    afterwards. Every stage is a plain object; this class owns the threads.
    """

    def __init__(self, cfg: Config, source: Source, localizer: Localizer, *,
                 consumers: list[Consumer] = (), recorder=None, truth: Any = None,
                 run_info: dict[str, Any] | None = None, on_stats=None, backpressure: bool = False,
                 keep_stream: bool = False) -> None:
        """``backpressure``: the source may wait for the readers (a file replayed as fast as possible);
        a live camera never waits, and frames a reader cannot keep up with are lost to that reader.
        ``keep_stream``: keep every localization batch in :attr:`stream` (tests, scripts); by default a
        batch is dropped once every consumer has taken it, so memory stays flat however long the run."""
        self.cfg = cfg
        self.source = source
        self.localizer = localizer
        self.ring = RingBuffer.for_source(source, ring_slots(cfg, source.shape, source.dtype))
        self.stream = LocalizationStream(retain=keep_stream)
        self._loc_reader = self.ring.add_reader("localizer")
        self._rec_reader = self.ring.add_reader("recorder") if recorder is not None else None
        self.recorder = recorder
        self.backpressure = backpressure
        self.truth = truth
        self.run_info = dict(run_info or {})
        self._consumers = [_ConsumerThread(c) for c in consumers]
        for ct in self._consumers:
            self.stream.add_reader(ct.consumer.name)
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
        self._truth_failed = False
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
        # A live camera: skip frames older than the latency bound (a file waits for us instead).
        max_age_s = 0.0 if self.backpressure else self.cfg.pipeline.max_latency_ms / 1e3
        try:
            while True:
                if max_age_s > 0:
                    reader.skip_stale(time.perf_counter() - max_age_s)
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
        half = 1  # one neighbour on each side: the window's context (DECODE windows are 3 frames)
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
                self.stream.append(first, last, locs, late=True)
                caught = missing[(missing >= first) & (missing <= last)]
                done.append(caught)
                self.n_caught_up += len(caught)
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

    def _consume(self, ct: _ConsumerThread) -> None:
        """Feed one consumer; a consumer with ``critical = False`` that fails is dropped, the run goes on."""
        c = ct.consumer
        interval = self.cfg.output.flush_interval_s
        seq = 0
        next_tick = time.perf_counter() + interval
        try:
            try:
                c.start(self.run_info)
            finally:
                ct.started.set()
            while True:
                # Wake no later than the next tick, so a batch is flushed at most one interval after
                # it was appended (the crash-safety promise), however quiet the stream is.
                wait = min(0.2, max(0.0, next_tick - time.perf_counter()))
                batches = self.stream.batches_since(seq, timeout=wait)
                for b in batches:
                    c.on_batch(b)
                seq += len(batches)
                self.stream.consumed(c.name, seq)
                while ct.stats_queue:
                    c.on_stats(ct.stats_queue.popleft())
                if time.perf_counter() >= next_tick:
                    c.on_tick()
                    next_tick = time.perf_counter() + interval
                if not batches and self.stream.closed and seq >= self.stream.n_batches:
                    break
            c.on_tick()
        except BaseException:  # SystemExit from third-party code too: never end a thread silently
            self.stream.remove_reader(c.name)
            ct.error = traceback.format_exc()
            self._fail(f"consumer {c.name}", ct.error, stop=getattr(c, "critical", True))

    def _stats_loop(self) -> None:
        interval = self.cfg.pipeline.stats_interval_s
        last = (time.perf_counter(), 0, 0)
        while not self._done.wait(interval):
            last = self._tick_stats(last)
            self._check_disk(camera_fps=self.latest_stats.get("camera_fps", 0.0), interval=interval)
            if self.truth is not None and not self._truth_failed:
                try:
                    self.truth.flush()
                except Exception:
                    self._truth_failed = True
                    self._fail("ground truth writer")

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

    def _tick_stats(self, last):
        now = time.perf_counter()
        t_prev, acq_prev, loc_prev = last
        dt = max(now - t_prev, 1e-9)
        stats = self.stats(camera_fps=(self.n_acquired - acq_prev) / dt,
                           localized_fps=(self.n_localized_frames - loc_prev) / dt)
        self.latest_stats = stats
        self.stats_history.append(stats)
        for ct in self._consumers:
            ct.stats_queue.append(stats)
        if self._on_stats is not None:
            self._on_stats(stats)
        return now, self.n_acquired, self.n_localized_frames

    def _fail(self, where: str, tb: str | None = None, *, stop: bool = True) -> None:
        """Record and log a stage's failure; stop acquisition unless the stage is not critical (a
        display or stream failure must not end an experiment whose data are still being saved)."""
        tb = tb or traceback.format_exc()
        exc = sys.exc_info()[1]
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

    def start(self) -> None:
        self._t_start = time.perf_counter()
        self.run_info.setdefault("started_unix", time.time())
        spawn = [("rtsmlm-localizer", self._localize, ()),
                 *[(f"rtsmlm-{ct.consumer.name}", self._consume, (ct,)) for ct in self._consumers]]
        if self.recorder is not None:
            spawn.append(("rtsmlm-recorder", self._record, ()))
        spawn.append(("rtsmlm-stats", self._stats_loop, ()))
        for name, target, args in spawn:
            t = threading.Thread(target=target, args=args, name=name, daemon=True)
            if name == "rtsmlm-recorder":
                self._recorder_thread = t
            t.start()
            self._threads.append(t)
        for ct, t in zip(self._consumers, self._threads[1:]):
            ct.thread = t
        # The producer starts last, once every consumer has started (a plugin's on_start sees no frame
        # before it, a publisher is bound), so every reader is registered when frames arrive.
        for ct in self._consumers:
            if not ct.started.wait(30.0):
                log.warning("consumer %s did not start within 30 s; starting acquisition anyway",
                            ct.consumer.name)
        producer = threading.Thread(target=self._producer, name="rtsmlm-producer", daemon=True)
        producer.start()
        self._threads.insert(0, producer)

    def stop(self) -> None:
        """Ask the source to stop; the pipeline then drains, flushes and finishes (see :meth:`wait`)."""
        self.source.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every frame acquired has been analysed or lost and every consumer is done."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        for t in self._threads:
            if t.name == "rtsmlm-stats":
                continue
            ct = next((c for c in self._consumers if c.thread is t), None)
            while t.is_alive() and not (ct is not None and ct.abandoned):
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    return False
                t.join(0.5 if remaining is None else min(remaining, 0.5))
                # A consumer gets drain_timeout_s after the last localization, then it is abandoned:
                # a hung consumer must not keep the run (and its summary) from finishing.
                if (t.is_alive() and ct is not None and self._t_localizer_done is not None
                        and time.perf_counter() - self._t_localizer_done >= self.cfg.pipeline.drain_timeout_s):
                    self._abandon(ct)
        if self._t_end is None:
            self._t_end = time.perf_counter()
            self._done.set()
            # Let a stats tick under way finish (it flushes the truth file) before the final one.
            for t in self._threads:
                if t.name == "rtsmlm-stats":
                    t.join(max(5.0, 2 * self.cfg.pipeline.stats_interval_s))
            self._tick_stats((self._t_start, 0, 0))  # the whole-run rates as the final stats record
            if self.truth is not None:
                try:
                    self.truth.close()
                except Exception:
                    self._fail("ground truth writer (closing)")
            self.source.close()
        return True

    def _abandon(self, ct: _ConsumerThread) -> None:
        """Give up on a consumer still busy ``drain_timeout_s`` after the stream ended (its thread is a
        daemon and stays blocked); the summary names it."""
        ct.abandoned = True
        self.stream.remove_reader(ct.consumer.name)
        ct.error = (f"did not finish within pipeline.drain_timeout_s = {self.cfg.pipeline.drain_timeout_s:g} s "
                    "after the last localization; abandoned")
        msg = f"consumer {ct.consumer.name}: {ct.error}"
        self._errors.append(msg)
        log.error("%s", msg)

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
        if hasattr(self.source, "lost_frames"):  # frames the camera's own buffer dropped
            lost["camera"] = int(self.source.lost_frames)
        lat = np.asarray(self._latencies) * 1e3
        elapsed = (self._t_end or time.perf_counter()) - self._t_start
        return {
            "elapsed_s": elapsed,
            "frames_acquired": self.n_acquired,
            "frames_localized": self.n_localized_frames,
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
        """Everything about the run, for summary.json: config, counts, losses (exact), timings.

        The first call (after :meth:`wait`) lets every consumer finish, in the order given; later calls
        return the same record.
        """
        if self._summary is not None:
            return self._summary
        elapsed = (self._t_end or time.perf_counter()) - self._t_start
        lost_loc = self._loc_reader.lost_indices
        missing_final = (self._missing_final if self._missing_final is not None
                         else np.union1d(lost_loc, self._loc_reader.skipped_indices))
        out = {
            **self.run_info,
            "rtsmlm_version": rtsmlm.__version__,
            "versions": _versions(),
            "config": to_dict(self.cfg),
            "elapsed_s": elapsed,
            "frames_acquired": self.n_acquired,
            "frames_localized": self.n_localized_frames,
            "frames_lost_localizer": int(len(lost_loc)),
            "frames_lost_localizer_ranges": index_ranges(lost_loc),
            # Skipped on purpose to keep the live latency bounded (pipeline.max_latency_ms), then
            # analysed from the raw recording with the lost ones (caught up); what is still missing.
            "frames_skipped_live": int(self._loc_reader.n_skipped),
            "frames_skipped_live_ranges": index_ranges(self._loc_reader.skipped_indices),
            "frames_caught_up": self.n_caught_up,
            "frames_missing_final": int(len(missing_final)),
            "frames_missing_final_ranges": index_ranges(missing_final),
            "n_locs": self.stream.n_locs,
            "camera_fps": self.n_acquired / max(elapsed, 1e-9),
            "localized_fps": self.n_localized_frames / max(elapsed, 1e-9),
            "latency_ms_p50": self._all_latencies.percentile_ms(50),
            "latency_ms_p99": self._all_latencies.percentile_ms(99),
            "errors": self.errors,
        }
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
            if callable(getattr(self.source, "stats", None)):
                source_info["stats"] = self.source.stats()
            if callable(getattr(self.source, "describe", None)):
                source_info["device"] = self.source.describe()
        if self._rec_reader is not None:
            lost_rec = self._rec_reader.lost_indices
            out["frames_recorded"] = self.n_recorded
            out["frames_lost_recorder"] = int(len(lost_rec))
            out["frames_lost_recorder_ranges"] = index_ranges(lost_rec)
        for ct in self._consumers:
            if ct.error is None:
                try:
                    ct.consumer.finish(out)
                except Exception:
                    ct.error = traceback.format_exc()
                    self._fail(f"consumer {ct.consumer.name} finish", ct.error)
            if ct.error is not None:
                out.setdefault("consumer_errors", {})[ct.consumer.name] = ct.error.strip().splitlines()[-1]
        out["errors"] = self.errors
        self._summary = out
        return out


def _gpu_memory_mb() -> float | None:
    torch = sys.modules.get("torch")  # only if the backend already imported it
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    return None


def _versions() -> dict[str, str]:
    import platform

    v = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "onnxruntime", "tensorrt"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v

