"""Re-analyse many movies on a Dask cluster: chunks to the workers, outputs and the index on the client.

::

    inputs ─▶ plan (movies × time chunks, minus those done) ─▶ Dask workers: localize_chunk (read only
    their frames) ─▶ client: chunk files (resumable) ─▶ a movie's last chunk ─▶ its outputs + summary.json
                                                                              └▶ index.csv / index.json

With no scheduler address the batch starts a ``LocalCluster`` of worker processes (one inference thread
each); with one it connects to that cluster. A chunk that fails is retried (``retries``; a worker that
dies is replaced by Dask and its chunk runs again elsewhere), then reported, and the movie is marked
failed while the other movies go on. Movies are submitted in order with decreasing priority, so the
first ones finish (and get their outputs) while the later ones are still computing.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtsmlm.batch.finalize import MovieResult, finalize_movie, write_failed_summary
from rtsmlm.batch.plan import BatchInputError, MoviePlan, find_movies, output_names, plan_movie, save_chunk, settings_of
from rtsmlm.batch.worker import ChunkResult, ChunkTask, localize_chunk, single_thread_config
from rtsmlm.core.config import Config
from rtsmlm.core.errors import RtsmlmError, SourceError
from rtsmlm.core.jsonio import write_json_atomically

__all__ = ["BatchOptions", "BatchSummary", "SchedulerError", "run_batch"]

log = logging.getLogger("rtsmlm.batch")

INDEX_CSV = "index.csv"
INDEX_JSON = "index.json"


class SchedulerError(RtsmlmError, RuntimeError):
    """The Dask scheduler cannot be reached or the cluster cannot be started."""


@dataclass(frozen=True)
class BatchOptions:
    out_dir: Path
    scheduler: str | None = None  # tcp://host:8786; None = a LocalCluster
    workers: int | None = None  # LocalCluster worker processes (None: one per GPU, else one per core)
    chunk_frames: int = 1000
    retries: int = 2
    restart: bool = False
    progress: bool = True
    connect_timeout_s: float = 10.0


@dataclass
class BatchSummary:
    """The batch's outcome (index.json): one :class:`MovieResult` per movie, the timings."""

    movies: list[MovieResult] = field(default_factory=list)
    workers: int = 0
    scheduler: str = ""
    chunks_run: int = 0
    chunks_skipped: int = 0
    frames_run: int = 0
    wall_s: float = 0.0
    worker_seconds: float = 0.0

    @property
    def failed(self) -> list[MovieResult]:
        return [m for m in self.movies if m.status != "complete"]


def _start_client(opts: BatchOptions) -> tuple[Any, Any]:
    """A Dask client (and the LocalCluster it owns, or None)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise SchedulerError("rtsmlm batch needs Dask's distributed scheduler: pip install "
                             "'rtsmlm[batch]' (or: pip install distributed)") from e
    if opts.scheduler:
        try:
            return Client(opts.scheduler, timeout=opts.connect_timeout_s), None
        except (OSError, TimeoutError) as e:
            raise SchedulerError(f"cannot reach the Dask scheduler at {opts.scheduler} within "
                                 f"{opts.connect_timeout_s:g} s ({type(e).__name__}); is `dask scheduler` running "
                                 "there, and the port open?") from e
    n = opts.workers or _default_workers()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _default_workers() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _context(cfg: Config) -> int:
    """Frames a chunk reads beyond each of its ends (:func:`rtsmlm.localization.brightness_floor.context_frames`)."""
    from rtsmlm.localization import checkpoint as ckpt
    from rtsmlm.localization.brightness_floor import context_frames
    from rtsmlm.localization.refine import checks_splits

    meta = ckpt.load_meta(cfg.model.checkpoint)
    splits = checks_splits(cfg.model.refine, cfg.model.merge_splits, (meta.psf or {}).get("model", "gaussian"))
    return context_frames(meta.window, cfg.model.min_photons, hold=splits)


def run_batch(cfg: Config, inputs: list[str], opts: BatchOptions) -> BatchSummary:
    """Analyse every movie ``inputs`` name into ``opts.out_dir/<movie>/`` and write the index."""
    t0 = time.perf_counter()
    cfg = single_thread_config(cfg)
    out_root = opts.out_dir
    out_root.mkdir(parents=True, exist_ok=True)
    paths = find_movies(inputs)
    settings = settings_of(cfg, opts.chunk_frames)
    context = _context(cfg)
    summary = BatchSummary()
    plans: list[MoviePlan] = []
    for path, name in zip(paths, output_names(paths)):
        try:
            plans.append(plan_movie(path, name, out_root, settings, context, opts.restart))
        except (SourceError, BatchInputError) as e:
            print(f"rtsmlm batch: {e}", file=sys.stderr)
            summary.movies.append(write_failed_summary(None, str(path), name, str(e)))
    _check_one_camera_size(plans, cfg)
    client, cluster = _start_client(opts)
    try:
        summary.scheduler = str(client.scheduler.address)
        summary.workers = len(client.scheduler_info().get("workers", {}))
        summary.movies += _run_plans(cfg, client, plans, opts, summary, context)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    order = {p.name: k for k, p in enumerate(plans)}
    summary.movies.sort(key=lambda m: order.get(m.name, -1))
    summary.wall_s = time.perf_counter() - t0
    write_index(out_root, summary)
    return summary


def _check_one_camera_size(plans: list[MoviePlan], cfg: Config) -> None:
    """sCMOS pixel maps fit one frame size: a movie of another size cannot use them (one line, up front)."""
    if not cfg.camera.maps_file:
        return
    from rtsmlm.core.camera import CameraModel

    maps = CameraModel.from_config(cfg.camera).offset_map
    for plan in plans:
        if maps is not None and tuple(maps.shape) != plan.shape:
            raise BatchInputError(f"{plan.path}: {plan.shape[0]}x{plan.shape[1]} frames, but camera.maps_file "
                                  f"{cfg.camera.maps_file} holds {maps.shape[0]}x{maps.shape[1]} maps")


def _camera_of(cfg: Config, plan: MoviePlan) -> tuple[dict[str, Any], float]:
    from rtsmlm.acquisition.file import camera_from_metadata
    from rtsmlm.core.camera import CameraModel
    from rtsmlm.io.movies import open_movie

    with open_movie(plan.path) as movie:
        camera = camera_from_metadata(movie.metadata, movie.pixel_size_nm, CameraModel.from_config(cfg.camera),
                                      str(plan.path))[0]
    return camera.describe(), float(camera.pixel_size_nm)


def _run_plans(cfg: Config, client: Any, plans: list[MoviePlan], opts: BatchOptions,
               summary: BatchSummary, context: int) -> list[MovieResult]:
    from distributed import as_completed

    from rtsmlm.localization import checkpoint as ckpt

    meta = ckpt.load_meta(cfg.model.checkpoint)
    is_3d = cfg.psf.model != "gaussian" or (meta.psf or {}).get("model", "gaussian") != "gaussian"  # writes z

    results: list[MovieResult] = []
    pending: dict[str, set[int]] = {}
    errors: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    verdicts: dict[str, Any] = {}
    futures = []
    total_frames = sum(p.n_frames for p in plans)
    done_frames = sum(b - a for p in plans for a, b, _, _ in p.chunks if a in p.done)
    for rank, plan in enumerate(plans):
        pending[plan.name] = {c[0] for c in plan.todo}
        errors[plan.name], seconds[plan.name] = [], 0.0
        summary.chunks_skipped += len(plan.done)
        for start, stop, read_start, read_stop in plan.todo:
            task = ChunkTask(str(plan.path), start, stop, read_start, read_stop, judge_range=start == 0)
            fut = client.submit(localize_chunk, cfg, task, key=f"rtsmlm-{plan.name}-{start}", pure=False,
                                retries=opts.retries, priority=-rank)
            futures.append((fut, plan))
    by_key = {f.key: p for f, p in futures}
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_frames, initial=done_frames, unit="frame", desc="batch", dynamic_ncols=True)

    def movie_done(plan: MoviePlan) -> None:
        if errors[plan.name]:
            msg = f"{len(errors[plan.name])} chunk(s) failed, first: {errors[plan.name][0]}"
            results.append(write_failed_summary(plan, str(plan.path), plan.name, msg))
            print(f"rtsmlm batch: {plan.path}: failed ({msg}); chunks done so far are kept for a rerun",
                  file=sys.stderr)
            return
        try:
            camera_info, pixel_nm = _camera_of(cfg, plan)
            info = {"chunks": len(plan.chunks), "chunks_skipped": len(plan.done), "chunk_frames": opts.chunk_frames,
                    "context_frames": context, "worker_seconds": round(seconds[plan.name], 3),
                    "model_range": verdicts.get(plan.name)}
            results.append(finalize_movie(cfg, plan, camera_info, pixel_nm, is_3d, info))
        except Exception as e:  # one movie's outputs failing must not stop the batch
            log.debug("finalize %s", plan.path, exc_info=True)
            results.append(write_failed_summary(plan, str(plan.path), plan.name, f"writing the outputs: {e}"))
            print(f"rtsmlm batch: {plan.path}: writing the outputs failed: {e}", file=sys.stderr)

    for plan in plans:
        if not pending[plan.name]:
            movie_done(plan)  # everything was done by an earlier run: outputs only
    for fut in as_completed([f for f, _ in futures]):
        plan = by_key[fut.key]
        start = int(str(fut.key).rsplit("-", 1)[1])
        try:
            res: ChunkResult = fut.result()
            save_chunk(plan.chunk_file(res.start, res.stop), res.locs)
            seconds[plan.name] += res.seconds
            summary.worker_seconds += res.seconds
            summary.chunks_run += 1
            summary.frames_run += res.stop - res.start
            if res.range_verdict is not None:
                verdicts[plan.name] = res.range_verdict
            if bar is not None:
                bar.update(res.stop - res.start)
        except Exception as e:
            stop = next(c[1] for c in plan.chunks if c[0] == start)
            errors[plan.name].append(f"frames {start}-{stop - 1}: {type(e).__name__}: {e}")
        fut.release()
        pending[plan.name].discard(start)
        if not pending[plan.name]:
            movie_done(plan)
    if bar is not None:
        bar.close()
    return results


def write_index(out_root: Path, summary: BatchSummary) -> None:
    """``index.csv`` (one row per movie; opens in any spreadsheet) and ``index.json`` (the whole summary)."""
    rows = [asdict(m) for m in summary.movies]
    tmp = out_root / (INDEX_CSV + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(MovieResult.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out_root / INDEX_CSV)
    write_json_atomically(out_root / INDEX_JSON, {**asdict(summary), "movies": rows})
