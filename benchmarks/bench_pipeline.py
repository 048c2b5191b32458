"""The whole streaming pipeline at the camera rate the CPU sustains: ``rtsmlm run`` on a simulated stream.

Run: python benchmarks/bench_pipeline.py [--frames 10000] [--size 64] [--fps auto] [--eager] [--cold]
                                         [--set KEY=VALUE ...]

1. The model is loaded and the backend opened once (as ``rtsmlm run`` does, or in eager mode with
   ``--eager``); every localizer below is a fresh ``StreamingLocalizer`` on it, built as ``build_run``
   builds it.
   Unless ``--cold``, every batch size the pipeline may push is run twice first: the TorchScript backend
   compiles kernels per input shape at its first calls, which in a cold run stalls the localizer the
   first time each batch size occurs.
2. Calibration (unless ``--fps`` is given): when the localizer keeps up it gets one frame per call, so
   the sustained rate is set by the cost of a one-frame push: the camera is paced at ``--headroom``
   (default 70 %, the rest is for the simulator, recorder, files, render and publisher threads) of
   1 / (90th percentile of that cost over ``--calib-frames`` pushes).
3. The run: ``build_run`` and the pipeline exactly as ``rtsmlm run --realtime`` assembles them, the
   simulated camera paced at that rate (``camera.exposure_ms`` = 1000 / fps), ``--frames`` frames of
   ``--size``×``--size`` pixels, localizations published on a loopback port.
4. Offline reference: the recorded raw movie is localized again with a fresh localizer pushed the same
   frames (all of them, or those the run's localizer did not lose, with the same gaps), and both tables
   are scored against the simulator's ground truth.

Printed: camera and live-localized frames/s, frames lost by the recorder, localized live, skipped live and
analysed from the recording after the acquisition, and missing from the results (with the check that every
frame is one of these), latency from frame arrival to localization p50/p99
(and the ≤ 100 ms + one frame period target), Jaccard of the run and of the offline analysis (target:
equal within 0.01) and whether the two tables are identical. Figures depend on the machine and on what
else runs on it: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from rtsmlm.core.config import Config, load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(out: Path, frames: int, size: int, fps: float | None, ring: int | None,
                extra: list[str]) -> Config:
    overrides = [f"source.max_frames={frames}", f"sim.size={size}", f"output.dir={json.dumps(str(out))}",
                 "output.overwrite=true", f'stream.address="tcp://127.0.0.1:{free_port()}"']
    if fps:
        overrides.append(f"camera.exposure_ms={1000.0 / fps}")
    if ring:
        overrides.append(f"pipeline.ring_frames={ring}")
    return load(None, [*overrides, *extra])


class Model:
    """The backend opened once; :meth:`localizer` builds a fresh StreamingLocalizer as build_run does."""

    def __init__(self, cfg: Config, eager: bool) -> None:
        from rtsmlm.localization.backends import open_backend

        self.cfg = cfg
        self.backend, self.meta = open_backend(cfg.backend, cfg.model.checkpoint, jit=not eager)

    def localizer(self, camera, shape):
        from rtsmlm.localization.localizer import StreamingLocalizer

        return StreamingLocalizer(self.backend, self.meta, camera, shape, self.cfg.model.p_threshold,
                                  self.cfg.model.candidate_threshold,
                                  psf_sigma_px=self.cfg.psf.sigma_nm / camera.pixel_size_nm)


def simulated(cfg: Config, n: int):
    from rtsmlm.acquisition.simulated import SimulatedCamera

    cam = SimulatedCamera(cfg, max_frames=n)
    cam.start()
    return cam, np.stack([f.data for f in cam.frames()])


def warm_batch_shapes(model: Model, cfg: Config) -> float:
    """Push every batch size the pipeline may push (1..max_batch frames) once; returns the seconds.

    The TorchScript CPU backend specialises its oneDNN kernels per input shape at the first calls of
    each shape; in a cold run those compilations stall the localizer the first time each batch size
    occurs. Doing it here keeps them out of the timed run (``--cold`` measures them instead).
    """
    t0 = time.perf_counter()
    n = cfg.pipeline.max_batch
    cam, movie = simulated(cfg, n)
    loc = model.localizer(cam.camera, cam.shape)
    for k in range(1, n + 1):
        for _ in range(2):  # the traced graph is optimised over its first runs of a shape
            loc.push(movie[:k], np.arange(loc.last_done + 1000, loc.last_done + 1000 + k))
            loc.finish()
    return time.perf_counter() - t0


def calibrate(model: Model, cfg: Config, n: int) -> tuple[float, float]:
    """(p50, p90) seconds of a one-frame push, the call a localizer that keeps up makes."""
    cam, movie = simulated(cfg, n)
    loc = model.localizer(cam.camera, cam.shape)
    costs = []
    for i in range(n):
        t = time.perf_counter()
        loc.push(movie[i:i + 1], np.array([i]))
        costs.append(time.perf_counter() - t)
    return float(np.percentile(costs[2:], 50)), float(np.percentile(costs[2:], 90))


def run_pipeline(cfg: Config, model: Model):
    from rtsmlm.acquisition.simulated import SimulatedCamera
    from rtsmlm.engine.run import build_run

    cam = SimulatedCamera(cfg)  # the camera model and frame shape the run's source will have
    run = build_run(cfg, realtime=True, localizer=model.localizer(cam.camera, cam.shape), keep_stream=True)
    run.pipeline.start()
    run.pipeline.wait()
    return run, run.finish()


def offline_locs(model: Model, run, lost_ranges: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Localize the recorded movie again, pushing exactly the frames the run's localizer got."""
    from rtsmlm.core.locs import concat
    from rtsmlm.io.movies import open_movie

    with open_movie(run.out_dir / "raw.tif") as movie:
        keep = np.ones(len(movie), bool)
        for a, b in lost_ranges:
            keep[a:b + 1] = False
        seen = np.flatnonzero(keep)
        loc = model.localizer(run.pipeline.source.camera, movie.shape)
        parts = []
        for i in range(0, len(seen), loc.batch_size):
            idx = seen[i:i + loc.batch_size]
            parts.append(loc.push(np.stack([movie.read(int(j)) for j in idx]), idx)[0])
        parts.append(loc.finish()[0])
    return concat(parts), seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000, help="frames in the timed run")
    ap.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    ap.add_argument("--fps", type=float, default=None, help="camera rate; default: calibrated")
    ap.add_argument("--calib-frames", type=int, default=100, help="one-frame pushes timed for the calibration")
    ap.add_argument("--headroom", type=float, default=0.7, help="fraction of the localizer's one-frame rate")
    ap.add_argument("--eager", action="store_true", help="torch CPU backend without TorchScript")
    ap.add_argument("--cold", action="store_true", help="do not warm every batch shape before the run")
    ap.add_argument("--ring", type=int, default=None, help="pipeline.ring_frames (default: the config's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--keep", metavar="DIR", help="keep the run's outputs in DIR")
    args = ap.parse_args()

    import torch  # imported here so its start-up time is not part of any figure

    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
              f"(other jobs share the cores), torch {torch.__version__}")
        out = Path(args.keep) if args.keep else work / "run"
        base = make_config(out, args.frames, args.size, None, args.ring, args.set)
        t0 = time.perf_counter()
        model = Model(base, args.eager)
        d = model.backend.describe()
        print(f"backend: {d.get('name')} {d.get('device')} {d.get('precision')} {d.get('graph', '')}, "
              f"{d.get('threads')} threads (opened in {time.perf_counter() - t0:.1f} s)")
        if not args.cold:
            print(f"warm-up: every batch size 1..{base.pipeline.max_batch} pushed twice in "
                  f"{warm_batch_shapes(model, base):.1f} s (kept out of the run; --cold to include it)")
        fps = args.fps
        if fps is None:
            p50, p90 = calibrate(model, base, args.calib_frames)
            fps = args.headroom / p90
            print(f"calibration: one-frame push p50 {p50 * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} ms -> camera at "
                  f"{fps:.1f} fps ({args.headroom:.0%} of 1/p90)")

        cfg = make_config(out, args.frames, args.size, fps, args.ring, args.set)
        print(f"run: {args.frames} frames of {args.size}x{args.size} at {fps:.1f} fps (frame period "
              f"{1000 / fps:.1f} ms), ring {cfg.pipeline.ring_frames} frames")
        run, s = run_pipeline(cfg, model)
        acquired = s["frames_acquired"]
        lost_rec = s.get("frames_lost_recorder", 0)
        # A frame the live localizer skipped (it fell behind) is analysed from the recording after the
        # acquisition ("caught up"); only what neither reached is missing from the results.
        live, late, missing = s["frames_localized"], s.get("frames_caught_up", 0), s["frames_missing_final"]
        missing_ranges = s.get("frames_missing_final_ranges", [])
        accounted = live + late + missing == acquired
        print(f"  status {s['status']}{' ' + '; '.join(s['errors']) if s['errors'] else ''}")
        print(f"  camera {s['camera_fps']:.1f} fps, localized live {s['localized_fps']:.1f} frames/s over "
              f"{s['elapsed_s']:.1f} s; {s['n_locs']} localizations")
        print(f"  frames: acquired {acquired}, recorded {s.get('frames_recorded')}, lost by the recorder "
              f"{lost_rec}, localized live {live}, skipped live and analysed after the acquisition {late}, "
              f"missing from the results {missing} {missing_ranges[:5]}{' ...' if len(missing_ranges) > 5 else ''}"
              f" -> every frame localized or listed as missing: {'yes' if accounted else 'NO'}")
        target = 100.0 + 1000.0 / fps
        p99 = s["latency_ms_p99"]
        print(f"  latency frame arrival -> localization: p50 {s['latency_ms_p50']:.1f} ms, p99 {p99:.1f} ms "
              f"(target <= {target:.1f} ms = 100 ms + one frame period: {'met' if p99 <= target else 'NOT met'})")

        from rtsmlm.analysis.metrics import evaluate
        from rtsmlm.io.locfiles import read_locs

        t0 = time.perf_counter()
        streamed = run.pipeline.stream.snapshot()
        offline, seen = offline_locs(model, run, missing_ranges)
        t_off = time.perf_counter() - t0
        truth = read_locs(out / "ground_truth.csv")
        truth = truth[np.isin(truth["frame"], seen)]
        j_run = evaluate(streamed, truth)["jaccard"]
        j_off = evaluate(offline, truth)["jaccard"]
        key = ["frame", "x", "y"]
        identical = len(streamed) == len(offline) and np.array_equal(np.sort(streamed, order=key),
                                                                     np.sort(offline, order=key))
        print(f"  Jaccard vs truth on the {len(seen)} localized frames: run {j_run:.4f}, offline {j_off:.4f}, "
              f"difference {abs(j_run - j_off):.4f} (target <= 0.01: {'met' if abs(j_run - j_off) <= 0.01 else 'NOT met'}); "
              f"tables identical: {'yes' if identical else 'no'} (offline pass {t_off:.0f} s)")
        print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
