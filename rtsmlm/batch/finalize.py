"""A movie's outputs once all its chunks are localized: the files a run writes, and its summary.

The chunks' tables, in frame order, go through the listeners a run's outputs are written by
(:func:`rtsmlm.engine.run.output_listeners`: drift over the whole movie, render with FRC, CSV + Picasso
HDF5 with drift-corrected columns), so a batch's outputs open in the same tools as a run's. The movie's
``summary.json`` has the run's keys where they apply (``status``, ``frames_*``, ``n_locs``, ``drift``,
``render``, ``outputs``) and a ``batch`` section (chunks, worker seconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import rtsmlm
from rtsmlm.batch.plan import BATCH_JSON, CHUNKS_DIR, MoviePlan
from rtsmlm.core.config import Config, to_dict
from rtsmlm.core.jsonio import write_json_atomically
from rtsmlm.core.locs import LocBatch
from rtsmlm.engine.listener import RunStart
from rtsmlm.engine.summary import SUMMARY_VERSION, RunStatus
from rtsmlm.engine.table_replay import replay_table
from rtsmlm.outputs.files import SUMMARY_JSON

__all__ = ["MovieResult", "finalize_movie", "write_failed_summary"]


@dataclass(frozen=True)
class MovieResult:
    """One movie's line of the batch index."""

    movie: str
    name: str
    status: str
    frames: int
    n_locs: int
    density_per_um2: float | None  # localizations per frame per µm² of the field
    frc_resolution_nm: float | None
    drift_max_nm: float | None
    worker_seconds: float
    error: str = ""


def _batches(plan: MoviePlan) -> Iterator[LocBatch]:
    for seq, (start, stop, _, _) in enumerate(plan.chunks):
        yield LocBatch(seq, start, stop - 1, np.load(plan.chunk_file(start, stop)))


def finalize_movie(cfg: Config, plan: MoviePlan, camera_info: dict[str, Any], pixel_size_nm: float,
                   is_3d: bool, batch_info: dict[str, Any]) -> MovieResult:
    """Write ``plan``'s outputs from its chunk files (all present) and its summary.json."""
    from rtsmlm.engine.run import output_listeners
    from rtsmlm.outputs.files import clear_previous_run

    t0 = time.perf_counter()
    out = plan.out_dir
    clear_previous_run(out, keep=frozenset({BATCH_JSON, CHUNKS_DIR}))
    listeners, _ = output_listeners(cfg, out, pixel_size_nm, plan.shape, is_3d)
    n_locs = sum(int(np.load(plan.chunk_file(a, b), mmap_mode="r").shape[0]) for a, b, _, _ in plan.chunks)
    info = {"run_id": f"batch-{plan.name}", "kind": "batch",
            "source": {"kind": "file", "path": str(plan.path), "shape": list(plan.shape), "camera": camera_info},
            "model": {"checkpoint": cfg.model.checkpoint}, "output_dir": str(out)}
    summary: dict[str, Any] = {
        "summary_version": SUMMARY_VERSION, **info, "rtsmlm_version": rtsmlm.__version__, "config": to_dict(cfg),
        "frames_acquired": plan.n_frames, "frames_localized": plan.n_frames, "frames_lost_localizer": 0,
        "frames_missing_final": 0, "n_locs": n_locs, "errors": [], "batch": dict(batch_info)}
    run = RunStart(info["run_id"], None, out, 0.0, pixel_size_nm, plan.shape, cfg, info)
    replay_table(listeners, run, _batches(plan), summary)
    summary["batch"]["finalize_s"] = round(time.perf_counter() - t0, 3)
    summary["status"] = RunStatus.COMPLETE.value
    summary["files"] = sorted({p.name for p in out.iterdir() if p.is_file()} | {SUMMARY_JSON})
    write_json_atomically(out / SUMMARY_JSON, summary)
    area_um2 = plan.shape[0] * plan.shape[1] * (pixel_size_nm / 1e3) ** 2
    render = summary.get("render") or {}
    drift = summary.get("drift") or {}
    return MovieResult(str(plan.path), plan.name, RunStatus.COMPLETE.value, plan.n_frames, n_locs,
                       n_locs / max(plan.n_frames, 1) / area_um2 if area_um2 else None,
                       render.get("frc_resolution_nm"), drift.get("max_abs_nm"),
                       float(batch_info.get("worker_seconds", 0.0)))


def write_failed_summary(plan: MoviePlan | None, movie: str, name: str, error: str) -> MovieResult:
    """A movie that could not be analysed: its summary.json says ``failed`` and why (no other output is
    written, so nothing partial passes for complete); the chunks done are kept for a rerun."""
    if plan is not None:
        write_json_atomically(plan.out_dir / SUMMARY_JSON, {
            "summary_version": SUMMARY_VERSION, "kind": "batch", "status": RunStatus.FAILED.value,
            "source": {"kind": "file", "path": movie}, "errors": [error],
            "chunks_done": len(plan.done), "chunks": len(plan.chunks)})
    return MovieResult(movie, name, RunStatus.FAILED.value, plan.n_frames if plan else 0, 0, None, None, None, 0.0,
                       error)
