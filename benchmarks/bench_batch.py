"""Batch re-analysis on Dask against running the movies one after another, and what a cluster would do.

Run: python benchmarks/bench_batch.py [--movies 8] [--frames 2000] [--size 64] [--workers 2] [--chunk-frames 500]
                                     [--scaling 1,2] [--plot scaling.png]

1. ``--movies`` simulated movies (different seeds) are analysed with ``rtsmlm run`` one after another (each a
   process, as a user's shell loop would) and with one ``rtsmlm batch --workers N`` (a LocalCluster of N
   worker processes, one inference thread each). Printed: wall time, frames/s, the ratio, and whether the
   localizations are the same (every movie: same rows in the same frames, coordinates within 0.01 nm).
2. Per-worker throughput (frames per worker-second, from the batch's index.json) and the scheduler's
   overhead per chunk (a round trip of a chunk-sized result through the same LocalCluster, no compute).
3. From them: the chunk size that keeps the overhead below 5 %, and a projection for N workers.
4. ``--scaling``: the batch again with each worker count; ``--plot`` draws frames/s against workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rtsmlm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rtsmlm", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def table(path: Path) -> np.ndarray:
    import pandas as pd

    t = pd.read_csv(path)
    return t.sort_values(["frame", "x", "y"])[["frame", "x", "y"]].to_numpy()


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a[:, 0], b[:, 0]) and float(np.abs(a[:, 1:] - b[:, 1:]).max()) < 0.01


def _echo(n_locs: int) -> np.ndarray:
    return np.zeros(n_locs, dtype=[("frame", "<i8")] + [(f"c{i}", "<f4") for i in range(10)])


def scheduler_overhead_s(workers: int, n_locs: int, tasks: int = 200) -> float:
    """Seconds per task of submitting, scheduling and returning a result of ``n_locs`` localizations."""
    from distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        wait([client.submit(_echo, n_locs, pure=False) for _ in range(workers * 2)])  # warm
        t0 = time.perf_counter()
        futures = [client.submit(_echo, n_locs, pure=False) for _ in range(tasks)]
        for f in futures:
            f.result()
        return (time.perf_counter() - t0) * workers / tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--movies", type=int, default=8)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-frames", type=int, default=500)
    ap.add_argument("--scaling", default="", help="worker counts to time the batch with, e.g. 1,2")
    ap.add_argument("--plot", default=None, help="PNG of frames/s against workers")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; {args.movies} movies of {args.frames} frames of {args.size}²; "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="rtsmlm-batch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        movies = []
        for k in range(args.movies):
            rtsmlm("simulate", "--frames", str(args.frames), "--size", str(args.size), "--seed", str(100 + k),
                   "--out", str(tmp / f"sim{k}"), "--quiet")
            movies.append(tmp / f"sim{k}" / "movie.tif")
        total = args.movies * args.frames

        t0 = time.perf_counter()
        for k, movie in enumerate(movies):
            rtsmlm("run", "--source", str(movie), "--out", str(tmp / f"run{k}"), "--no-stream", "--quiet")
        t_seq = time.perf_counter() - t0

        t0 = time.perf_counter()
        rtsmlm("batch", *map(str, movies), "--out", str(tmp / "batch"), "--workers", str(args.workers),
               "--chunk-frames", str(args.chunk_frames), "--quiet")
        t_batch = time.perf_counter() - t0
        index = json.loads((tmp / "batch" / "index.json").read_text())
        names = {Path(m["movie"]).parent.name: m["name"] for m in index["movies"]}
        identical = all(same(table(tmp / f"run{k}" / "localizations.csv"),
                             table(tmp / "batch" / names[f"sim{k}"] / "localizations.csv")) for k in range(args.movies))
        n_locs = int(np.mean([m["n_locs"] for m in index["movies"]]) * args.chunk_frames / args.frames)

        print(f"\n{'':34s} {'wall s':>8s} {'frames/s':>9s}")
        print(f"{'rtsmlm run, one after another':34s} {t_seq:8.1f} {total / t_seq:9.0f}")
        print(f"{f'rtsmlm batch --workers {args.workers}':34s} {t_batch:8.1f} {total / t_batch:9.0f}")
        print(f"throughput ratio batch / sequential: {t_seq / t_batch:.2f}x; identical localizations: {identical}")

        per_worker = index["frames_run"] / index["worker_seconds"]
        overhead = scheduler_overhead_s(args.workers, n_locs)
        chunk_5pct = 20 * overhead * per_worker
        print(f"\nper-worker throughput: {per_worker:.0f} frames/s ({args.size}², CPU, one thread); scheduler "
              f"overhead per chunk: {overhead * 1e3:.1f} ms (a {n_locs}-localization result, LocalCluster)")
        print(f"chunk size for < 5 % overhead at this throughput: >= {max(1, int(np.ceil(chunk_5pct)))} frames")
        print("projection (throughput × workers, overhead as measured; GPU throughput is an input, not measured here):")
        frame_bytes = args.size * args.size * 2
        for n in (1, 8, 64):
            tb_per_h = per_worker * n * frame_bytes * 3600 / 1e12
            print(f"  this CPU, {args.size}² uint16 frames: {n:3d} workers -> {per_worker * n:9.0f} frames/s = "
                  f"{tb_per_h:.4f} TB/h")
        print(f"  N workers of T frames/s each re-analyse N·T·{frame_bytes} bytes/s of {args.size}² movies "
              f"(10 TB/h needs N·T ≥ {10e12 / 3600 / frame_bytes:.0f} frames/s of {args.size}²), chunks of ≥ 20·"
              f"{overhead * 1e3:.0f} ms·T frames")

        points = [(args.workers, total / t_batch)]
        for n in (int(v) for v in args.scaling.split(",") if v):
            if n == args.workers:
                continue
            t0 = time.perf_counter()
            rtsmlm("batch", *map(str, movies), "--out", str(tmp / f"batch{n}"), "--workers", str(n),
                   "--chunk-frames", str(args.chunk_frames), "--quiet")
            points.append((n, total / (time.perf_counter() - t0)))
        points.sort()
        if len(points) > 1:
            print("\nscaling: " + ", ".join(f"{n} workers {fps:.0f} frames/s" for n, fps in points))
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
            ns = [n for n, _ in points]
            ax.plot(ns, [f for _, f in points], "o-", label="rtsmlm batch (LocalCluster)")
            ax.plot(ns, [points[0][1] * n / points[0][0] for n in ns], "--", color="grey", label="linear")
            ax.axhline(total / t_seq, color="C3", lw=1, label="rtsmlm run, one after another")
            ax.set_xlabel("worker processes (1 inference thread each)")
            ax.set_ylabel(f"frames/s ({args.size}²)")
            ax.set_xticks(ns)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(args.plot)
            print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
