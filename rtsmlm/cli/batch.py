"""``rtsmlm batch``: re-analyse many movies on a Dask cluster (a local one by default)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_batch_parser", "batch_main"]


def add_batch_parser(sub: argparse._SubParsersAction, add_config_args: object) -> argparse.ArgumentParser:
    p = sub.add_parser("batch", help="re-analyse many movies on a Dask cluster (resumable)",
                       description="Localize every movie the inputs name, in time chunks on Dask workers; write "
                                   "each movie's outputs (as `rtsmlm run` does) under --out/<movie>/ and an index "
                                   "of all movies (index.csv, index.json). A rerun skips the chunks already done.")
    add_config_args(p)  # type: ignore[operator]
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="movie files (TIFF/OME-TIFF/.raw/.dax), OME-Zarr folders, folders of movies, glob patterns")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (one sub-folder per movie)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="an existing Dask scheduler, e.g. tcp://host:8786 (default: start a LocalCluster)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="LocalCluster worker processes (default: one per GPU, else one per core)")
    p.add_argument("--chunk-frames", type=int, default=1000, metavar="F",
                   help="frames per task (default 1000; each reads the model's window beyond its ends)")
    p.add_argument("--retries", type=int, default=2, help="times a failed chunk is retried (default 2)")
    p.add_argument("--model", metavar="CHECKPOINT", help="model checkpoint (default: model.checkpoint)")
    p.add_argument("--restart", action="store_true", help="redo every movie, ignoring chunks done before")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def batch_main(args: argparse.Namespace, cfg: object) -> int:
    from rtsmlm.batch.runner import BatchOptions, run_batch

    if args.chunk_frames < 1:
        print(f"rtsmlm batch: --chunk-frames must be at least 1, got {args.chunk_frames}", file=sys.stderr)
        return 2
    opts = BatchOptions(Path(args.out), scheduler=args.scheduler, workers=args.workers,
                        chunk_frames=args.chunk_frames, retries=max(0, args.retries), restart=args.restart,
                        progress=not args.quiet)
    from rtsmlm.engine.run import stop_signals

    def on_signal(signum: int) -> None:
        # Ctrl-C or SIGTERM: stop submitting, shut the cluster down (run_batch's finally); the chunks
        # finished so far are on disk and a rerun continues from them.
        raise KeyboardInterrupt

    with stop_signals(on_signal):
        summary = run_batch(cfg, args.inputs, opts)  # type: ignore[arg-type]
    done = len(summary.movies) - len(summary.failed)
    print(f"{done} of {len(summary.movies)} movies analysed ({summary.frames_run} frames in {summary.chunks_run} "
          f"chunks on {summary.workers} workers, {summary.chunks_skipped} chunks done before) in "
          f"{summary.wall_s:.1f} s; index: {opts.out_dir / 'index.csv'}")
    for movie in summary.failed:
        print(f"rtsmlm batch: {movie.movie}: {movie.error}", file=sys.stderr)
    return 1 if summary.failed else 0
