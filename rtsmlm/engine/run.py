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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtsmlm.acquisition.registry import open_source
from rtsmlm.acquisition.source import PublishesTruth, Source
from rtsmlm.core.config import ON_DISK_SOURCES, Config, effective_max_frames
from rtsmlm.core.jsonio import write_json_atomically
from rtsmlm.engine.pipeline import Localizer, Pipeline
from rtsmlm.engine.summary import RunStatus
from rtsmlm.engine.view import RunView
from rtsmlm.outputs.files import SUMMARY_JSON, LocalizationFiles, TruthFiles, clear_previous_run, prepare_out_dir

log = logging.getLogger("rtsmlm.engine.run")


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


@dataclass
class Run:
    """A built run: start, stop, wait, finish (writes summary.json); :attr:`view` for a live view."""

    pipeline: Pipeline
    out_dir: Path
    run_id: str
    backend: dict[str, Any] = field(default_factory=dict)
    render: Any = None  # the render listener
    _view: RunView | None = field(default=None, init=False, repr=False)

    @property
    def view(self) -> RunView:
        """What a live view may read (and the render settings it may change)."""
        if self._view is None:
            self._view = RunView(self.pipeline, self.render, self.backend)
        return self._view

    def start(self) -> None:
        self.pipeline.start()

    def stop(self) -> None:
        """Ask the source to stop; the run then drains and flushes (see :meth:`wait`)."""
        self.pipeline.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every frame acquired is analysed or accounted for and every listener is done."""
        return self.pipeline.wait(timeout)

    def finish(self) -> dict[str, Any]:
        """After the pipeline has drained: end the listeners and write summary.json."""
        summary = self.pipeline.summary()
        summary["status"] = (RunStatus.COMPLETE if not summary["errors"] else RunStatus.FAILED).value
        # Every file in the folder belongs to this run (plugins' logs too): a later --overwrite removes them.
        summary["files"] = sorted({p.name for p in self.out_dir.iterdir() if p.is_file()} | {SUMMARY_JSON})
        try:
            write_json_atomically(self.out_dir / SUMMARY_JSON, summary)
        except OSError as e:  # e.g. a full disk: report it like any other error of the run
            summary["errors"].append(f"cannot write {self.out_dir / SUMMARY_JSON}: {e.strerror or e}")
            summary["status"] = RunStatus.FAILED.value
        return summary


def output_listeners(cfg: Config, out: Path, pixel_size_nm: float, shape: tuple[int, int],
                     include_z: bool) -> tuple[list[object], Any]:
    """The listeners that turn a localization stream into a run's outputs in ``out`` — drift stage (when
    ``drift.enabled``), render, localization files — in the order they end: the drift stage first (its
    final drift is handed on), then the render (redrawn with it) and the files (which add the
    drift-corrected columns). Returns them and the render listener. A live run and a batch re-analysis
    (:mod:`rtsmlm.batch`) write the same files through these."""
    from rtsmlm.analysis.live_render import RenderListener

    drift = None
    if cfg.drift.enabled:
        from rtsmlm.analysis.drift_stage import DriftListener

        drift = DriftListener(cfg, out, (shape[0] * pixel_size_nm, shape[1] * pixel_size_nm))
    render = RenderListener(cfg, out, pixel_size_nm, shape, drift.estimator if drift else None)
    files = LocalizationFiles(out, pixel_size_nm=pixel_size_nm, shape=shape, csv_style=cfg.output.csv_style,
                              psf_sigma_nm=cfg.psf.sigma_nm, include_z=include_z, overwrite=True,
                              drift_correction=cfg.drift.enabled)
    return [*([drift] if drift else []), render, files], render


def build_run(cfg: Config, *, realtime: bool = True, localizer: Localizer | None = None,
              extra_listeners: Sequence[object] = (), on_stats: Callable[[dict[str, Any]], None] | None = None,
              keep_stream: bool = False, source: Source | None = None, backend: tuple[Any, Any] | None = None) -> Run:
    """Open everything a run needs; nothing is started. Errors name the file/key at fault.
    ``extra_listeners`` follow the run after rtsmlm's own (scripts, tests); ``keep_stream`` keeps every
    localization batch in ``run.pipeline.stream``; ``source`` is an opened source to use instead of the
    one ``cfg.source`` names (the push source of an embedded run); ``backend`` an opened (backend, model
    metadata) pair to reuse (``rtsmlm watch`` opens the model once, not at every acquisition's start)."""
    out = prepare_out_dir(resolve_out_dir(cfg.output.dir), cfg.output.overwrite)
    run_id = uuid.uuid4().hex[:12]
    if source is None:
        source = open_source(cfg, realtime=realtime)
    camera = source.camera
    backend_info: dict[str, Any] = {}
    model_info: dict[str, Any] = {}
    is_3d = cfg.psf.model != "gaussian"
    if localizer is None:
        from rtsmlm.localization.backends import model_for_backend, open_backend
        from rtsmlm.localization.checkpoint import check_compatible
        from rtsmlm.localization.localizer import StreamingLocalizer

        cfg = model_for_backend(cfg)  # a GPU runs the larger sibling of a shipped model where there is one
        backend, meta = backend if backend is not None else open_backend(cfg.backend, cfg.model.checkpoint)
        check_compatible(meta, camera.describe(), f"source {cfg.source.kind}")
        localizer = StreamingLocalizer.for_run(backend, meta, camera, source.shape, cfg)
        backend_info = backend.describe()
        is_3d = is_3d or (meta.psf or {}).get("model", "gaussian") != "gaussian"  # a 3D model writes z
        model_info = {"checkpoint": cfg.model.checkpoint, "step": meta.step, "width": meta.width,
                      "depth": meta.depth, "window": meta.window, "trained_metrics": meta.metrics,
                      "conditioning": list(meta.scales.conditioning), "refine": cfg.model.refine,
                      "p_threshold": localizer.p_threshold, "p_threshold_from": localizer.p_threshold_source,
                      "min_photons": localizer.floor.min_photons,
                      "residual_threshold": localizer.postprocessor.residual_threshold}
    # Everything that can still fail (the colour map, plugins, the stream's port) is checked or opened
    # before any output file is created, so a failed --overwrite run leaves the previous run's files untouched.
    from rtsmlm.analysis.live_render import check_colormap

    check_colormap(cfg.gui.colormap)
    plugins: list[tuple[str, object, str]] = []
    if cfg.plugins:
        from rtsmlm.engine.plugins import PluginHost

        plugins = PluginHost.from_config(cfg).loaded
    stream = None
    if cfg.stream.enabled:
        from rtsmlm.outputs.stream import StreamListener

        stream = StreamListener(cfg, run_id, camera.pixel_size_nm)
    try:
        clear_previous_run(out)
        listeners, render = output_listeners(cfg, out, camera.pixel_size_nm, source.shape, is_3d)
        recorder = None
        if cfg.output.record_raw and cfg.source.kind not in ON_DISK_SOURCES:
            from rtsmlm.io.movies import open_movie_writer

            name = "raw.raw" if cfg.output.raw_format == "raw" else "raw.tif"
            recorder = open_movie_writer(out / name, pixel_size_nm=camera.pixel_size_nm,
                                         metadata=camera.describe(),  # a replay then uses this camera
                                         overwrite=True)
    except BaseException:
        if stream is not None:
            stream.close()
        raise
    if isinstance(source, PublishesTruth):
        listeners.append(TruthFiles(out))
    if stream is not None:
        listeners.append(stream)
    listeners += list(extra_listeners)
    run_info = {"run_id": run_id, "frame_limit": effective_max_frames(cfg.source) or None,
                "source": {"kind": cfg.source.kind, "path": cfg.source.path, "shape": list(source.shape),
                           "camera": camera.describe()},
                "backend": backend_info, "model": model_info, "output_dir": str(out)}
    write_json_atomically(out / SUMMARY_JSON, {**run_info, "status": RunStatus.RUNNING.value})
    # A movie on disk (replayed, or growing) has no camera to protect: at any pace the producer waits for
    # the readers rather than lose a frame. A live camera (or a user's acquisition thread) never waits.
    pipeline = Pipeline(cfg, source, localizer, listeners=listeners, plugins=plugins, recorder=recorder,
                        run_info=run_info, on_stats=on_stats, backpressure=cfg.source.kind in ON_DISK_SOURCES,
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

