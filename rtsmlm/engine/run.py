"""Assemble a run from the config — source, model, outputs, stream, plugins — and run it from the CLI.

:func:`build_run` returns a ready :class:`rtsmlm.engine.pipeline.Pipeline` plus what the run writes;
:func:`run_cli` drives it with a progress bar and the stats line, handles Ctrl-C (stop, drain, flush,
write the summary) and returns the exit code. ``rtsmlm live`` uses the same :func:`build_run`.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtsmlm.acquisition.source import CameraModel, Source, SourceError
from rtsmlm.core.config import Config, effective_max_frames
from rtsmlm.core.jsonio import write_json_atomically
from rtsmlm.core.locs import LocBatch
from rtsmlm.engine.pipeline import Consumer, Localizer, Pipeline
from rtsmlm.outputs.files import (
    SUMMARY_JSON,
    TRUTH_CSV,
    TRUTH_DRIFT_CSV,
    LocalizationFiles,
    TruthWriter,
    clear_previous_run,
    prepare_out_dir,
)

log = logging.getLogger("rtsmlm.engine.run")


def open_source(cfg: Config, *, realtime: bool = False, on_truth=None) -> Source:
    """The frame source ``cfg.source`` names."""
    src = cfg.source
    max_frames = effective_max_frames(src) or None
    if src.kind == "simulator":
        from rtsmlm.acquisition.simulated import SimulatedCamera

        return SimulatedCamera(cfg, realtime=realtime, max_frames=max_frames, on_truth=on_truth)
    if src.kind == "file":
        from rtsmlm.acquisition.file import FileSource

        if not src.path:
            raise SourceError("source.kind is 'file' but source.path is empty (use --source FILE)")
        return FileSource(src.path, fps=src.fps, max_frames=effective_max_frames(src),
                          camera=CameraModel.from_config(cfg.camera), loop=src.loop)
    from rtsmlm.acquisition.micromanager import open_micromanager_source

    return open_micromanager_source(cfg)


def resolve_out_dir(configured: str) -> Path:
    """The configured output directory, or a new time-stamped one under ./runs when it is empty."""
    if configured:
        return Path(configured).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"run-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"run-{stamp}-{n}"
    return out


class PublisherConsumer:
    """Publishes the localization stream and stats over ZeroMQ (socket owned by this thread)."""

    name = "stream"
    critical = False  # subscribers lose the stream; the files still hold everything

    def __init__(self, cfg: Config, run_id: str, pixel_size_nm: float) -> None:
        from rtsmlm.outputs.stream import Publisher

        # Bound here, before acquisition starts, so a port in use fails the run at once; the socket is
        # then used only by this consumer's thread (handing it over once is safe in ZeroMQ).
        self.publisher = Publisher(cfg.stream, run_id, pixel_size_nm, wait_for_subscribers=0)
        self._wait = (cfg.stream.wait_for_subscribers, cfg.stream.wait_timeout_s)

    def start(self, run: dict[str, Any]) -> None:
        # The pipeline starts acquiring only after every consumer's start(): waiting here means the
        # scripted subscribers see the first batch.
        n, timeout = self._wait
        if n and not self.publisher.wait_for_subscribers(n, timeout):
            log.warning("only %d of %d stream subscribers connected within %.1f s; acquiring anyway",
                        self.publisher.subscriptions, n, timeout)

    def on_batch(self, batch: LocBatch) -> None:
        self.publisher.publish_locs(batch)

    def on_tick(self) -> None:
        pass

    def on_stats(self, stats: dict[str, Any]) -> None:
        self.publisher.publish_stats(stats)

    def finish(self, summary: dict[str, Any]) -> None:
        self.publisher.close()
        summary["stream"] = self.publisher.summary()


class PluginConsumer:
    """Runs the configured plugins' hooks off the localizer's thread."""

    name = "plugins"
    critical = False  # PluginHost already contains each plugin's failures

    def __init__(self, host, run_info) -> None:
        self.host = host
        self.run_info = run_info

    def start(self, run: dict[str, Any]) -> None:
        self.host.start(self.run_info)

    def on_batch(self, batch: LocBatch) -> None:
        if batch.late:
            return  # catch-up of old frames after the acquisition: nothing for feedback to act on
        self.host.localizations(batch)

    def on_tick(self) -> None:
        pass

    def on_stats(self, stats: dict[str, Any]) -> None:
        self.host.stats(stats)

    def finish(self, summary: dict[str, Any]) -> None:
        summary["plugins"] = self.host.stop(summary)


@dataclass
class Run:
    pipeline: Pipeline
    out_dir: Path
    run_id: str
    backend: dict[str, Any] = field(default_factory=dict)
    render: Any = None  # the render/drift consumer, for the live view

    def finish(self) -> dict[str, Any]:
        """After the pipeline has drained: let consumers finish and write summary.json."""
        summary = self.pipeline.summary()
        source = self.pipeline.source
        if getattr(source, "drift_table", None) and self.pipeline.cfg.sim.drift.enabled:
            from rtsmlm.io.tables import write_drift_csv

            # The simulated sample's true drift, to score drift.csv against.
            table = source.drift_table(self.pipeline.n_acquired)
            write_drift_csv(self.out_dir / TRUTH_DRIFT_CSV, table[:, 0], table[:, 1], table[:, 2])
            summary.setdefault("outputs", {})["ground_truth_drift"] = TRUTH_DRIFT_CSV
        summary["status"] = "complete" if not summary["errors"] else "failed"
        # Every file in the folder belongs to this run (plugins' logs too): a later --overwrite removes them.
        summary["files"] = sorted({p.name for p in self.out_dir.iterdir() if p.is_file()} | {SUMMARY_JSON})
        try:
            write_json_atomically(self.out_dir / SUMMARY_JSON, summary)
        except OSError as e:  # e.g. a full disk: report it like any other error of the run
            summary["errors"].append(f"cannot write {self.out_dir / SUMMARY_JSON}: {e.strerror or e}")
            summary["status"] = "failed"
        return summary


def build_run(cfg: Config, *, realtime: bool = True, localizer: Localizer | None = None,
              extra_consumers: list[Consumer] = (), on_stats=None, keep_stream: bool = False) -> Run:
    """Open everything a run needs; nothing is started. Errors name the file/key at fault.
    ``keep_stream`` keeps every localization batch in ``run.pipeline.stream`` (tests, scripts)."""
    out = prepare_out_dir(resolve_out_dir(cfg.output.dir), cfg.output.overwrite)
    run_id = uuid.uuid4().hex[:12]
    truth = TruthWriter(out / TRUTH_CSV) if cfg.source.kind == "simulator" else None
    source = open_source(cfg, realtime=realtime, on_truth=truth)
    camera = source.camera
    backend_info: dict[str, Any] = {}
    model_info: dict[str, Any] = {}
    if localizer is None:
        from rtsmlm.localization.backends import open_backend
        from rtsmlm.localization.checkpoint import check_compatible
        from rtsmlm.localization.localizer import StreamingLocalizer

        backend, meta = open_backend(cfg.backend, cfg.model.checkpoint)
        check_compatible(meta, camera.describe(), f"source {cfg.source.kind}")
        localizer = StreamingLocalizer(backend, meta, camera, source.shape, cfg.model.p_threshold,
                                       cfg.model.candidate_threshold, max_batch=cfg.pipeline.max_batch,
                                       split_threshold=cfg.model.split_threshold,
                                       memory_bytes=int(cfg.pipeline.memory_mb * 2**20 * 3 / 4))
        backend_info = backend.describe()
        model_info = {"checkpoint": cfg.model.checkpoint, "step": meta.step, "width": meta.width,
                      "depth": meta.depth, "window": meta.window, "trained_metrics": meta.metrics}
    # Everything that can still fail (plugins, the stream's port) is opened before any output file is
    # created, so a failed --overwrite run leaves the previous run's files untouched.
    from rtsmlm.analysis.live_render import RenderConsumer

    render = RenderConsumer(cfg, out, camera.pixel_size_nm, source.shape)
    plugins = None
    if cfg.plugins:
        from rtsmlm.engine.plugins import PluginHost, RunInfo

        host = PluginHost.from_config(cfg)
        info = RunInfo(run_id, source.control, out, camera.exposure_ms, camera.pixel_size_nm,
                       source.shape, cfg)
        plugins = PluginConsumer(host, info)
    publisher = PublisherConsumer(cfg, run_id, camera.pixel_size_nm) if cfg.stream.enabled else None
    try:
        clear_previous_run(out)
        files = LocalizationFiles(out, pixel_size_nm=camera.pixel_size_nm, shape=source.shape,
                                  csv_style=cfg.output.csv_style, psf_sigma_nm=cfg.psf.sigma_nm,
                                  include_z=cfg.psf.model != "gaussian", overwrite=True)
        recorder = None
        if cfg.output.record_raw and cfg.source.kind != "file":
            from rtsmlm.io.movies import open_movie_writer

            name = "raw.raw" if cfg.output.raw_format == "raw" else "raw.tif"
            recorder = open_movie_writer(out / name, pixel_size_nm=camera.pixel_size_nm,
                                         metadata=camera.describe(),  # a replay then uses this camera
                                         overwrite=True)
    except BaseException:
        if publisher is not None:
            publisher.publisher.close()
        raise
    # Consumers finish in this order: the files are closed before the render consumer rewrites them
    # with drift-corrected coordinates.
    consumers: list[Consumer] = [files, render, *([plugins] if plugins else []),
                                 *([publisher] if publisher else []), *extra_consumers]
    run_info = {"run_id": run_id, "frame_limit": effective_max_frames(cfg.source) or None,
                "source": {"kind": cfg.source.kind, "path": cfg.source.path, "shape": list(source.shape),
                           "camera": camera.describe()},
                "backend": backend_info, "model": model_info, "output_dir": str(out)}
    write_json_atomically(out / SUMMARY_JSON, {**run_info, "status": "running"})
    # A recorded file has no camera to protect: at any replay pace the producer waits for the readers
    # rather than lose a frame. A live camera never waits.
    pipeline = Pipeline(cfg, source, localizer, consumers=consumers, recorder=recorder, truth=truth,
                        run_info=run_info, on_stats=on_stats, backpressure=cfg.source.kind == "file",
                        keep_stream=keep_stream)
    return Run(pipeline, out, run_id, backend_info, render)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Ctrl-C, and ``kill``/systemd/docker stop: both drain, flush and write the summary."""


@contextmanager
def stop_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``on_signal(signum)`` for the duration (main thread only; elsewhere
    nothing is installed); the previous handlers are restored afterwards."""
    previous: dict[int, Any] = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, lambda signum, frame: on_signal(signum))
    except ValueError:  # not the main thread: signals are delivered there only
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def final_line(summary: dict[str, Any], out_dir: Path) -> str:
    """The one line a run prints at its end: frames acquired, analysed, lost, and any frame limit."""
    limit = summary.get("frame_limit")
    limit_text = f" (source.max_frames = {limit})" if limit else ""
    late = summary.get("frames_caught_up", 0)
    late_text = f" (+{late} analysed after the acquisition)" if late else ""
    missing = summary.get("frames_missing_final", summary["frames_lost_localizer"])
    return (f"{summary['frames_acquired']} frames acquired{limit_text}, {summary['frames_localized']} localized "
            f"live{late_text}, {summary['n_locs']} localizations, {missing} frames missing from the "
            f"results ({summary['localized_fps']:.0f} frames/s); outputs in {out_dir}")


def format_stats(s: dict[str, Any]) -> str:
    lost = sum(s["frames_lost"].values()) if s.get("frames_lost") else 0
    return (f"cam {s.get('camera_fps', 0):.0f} fps | loc {s.get('localized_fps', 0):.0f} fps | "
            f"{s['locs_per_frame']:.1f} locs/frame | ring {max(s['ring_fill'].values(), default=0):.0%} | "
            f"lost {lost} | skipped {s.get('frames_skipped_live', 0)} | "
            f"latency p50 {s['latency_ms_p50']:.0f} / p99 {s['latency_ms_p99']:.0f} ms")


def run_cli(cfg: Config, *, realtime: bool = True, progress: bool = True) -> int:
    """``rtsmlm run``: run to the end of the source or Ctrl-C, then drain, flush, summarise."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = build_run(cfg, realtime=realtime)
    p = run.pipeline
    interrupted = threading.Event()

    def on_signal(signum: int) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: give up draining
        interrupted.set()
        print(f"\nstopping ({signal_name(signum)}): draining and flushing (Ctrl-C again to abort)",
              file=sys.stderr)
        p.stop()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=p.source.n_frames, unit="frame", desc="localize", dynamic_ncols=True)
    with stop_signals(on_signal):
        p.start()
        while not p.wait(timeout=0.25):
            if bar:
                bar.n = p.n_localized_frames + p.n_caught_up
                if p.latest_stats:
                    bar.set_postfix_str(format_stats(p.latest_stats), refresh=False)
                bar.refresh()
    if bar:
        bar.n = p.n_localized_frames + p.n_caught_up
        bar.close()
    summary = run.finish()
    print(final_line(summary, run.out_dir))
    for e in summary["errors"]:
        print(f"rtsmlm: error: {e}", file=sys.stderr)
    return 1 if summary["errors"] else 0

