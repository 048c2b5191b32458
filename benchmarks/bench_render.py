"""Incremental rendering and FRC speed.

    python benchmarks/bench_render.py
    python benchmarks/bench_render.py --repeats 20 --canvas 2048 --pixel 10

Figures printed:

* adding a batch of 10,000 localizations to a 2048 x 2048 canvas (histogram and Gaussian modes), with
  localization uncertainties from the Cramér-Rao bound of simulated emitters (the same model as
  bench_drift.py: median ~9 nm, 10 % above ~27 nm; Gaussian sigmas clamped to [5, 50] nm);
* re-rendering 1,000,000 localizations (what a drift update triggers);
* FRC of the two half canvases holding 1,000,000 localizations.

Timings are wall-clock (time.perf_counter) over ``--repeats`` runs: the minimum is the closest to an
otherwise idle CPU, the median shows the effect of whatever else the machine is doing (the load average
is printed alongside); the CPU time of the process (time.process_time, minimum over the runs) is
printed too, as the machine this was written on was shared with training jobs.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from rtsmlm.analysis.frc import frc
from rtsmlm.analysis.render import Canvas
from rtsmlm.core.locs import LOC_DTYPE


def filament_locs(n: int, extent_nm: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` localizations on a few smooth curves across the field, with Cramér-Rao uncertainties."""
    from rtsmlm.sim import structures

    labels = structures.filaments(rng, (extent_nm, extent_nm), 12, 100.0)
    pick = labels[rng.integers(0, len(labels), n), :2]
    photons = np.maximum(rng.normal(2500, 1000, n), 250.0) * rng.uniform(0.05, 1.0, n) ** 0.5
    sa2 = 130.0 ** 2 + 100.0 ** 2 / 12
    tau = 2 * math.pi * sa2 * 75.0 / (photons * 100.0 ** 2)
    sigma = np.sqrt(2 * sa2 / photons * (16 / 9 + 4 * tau))
    locs = np.zeros(n, LOC_DTYPE)
    locs["frame"] = np.sort(rng.integers(0, 20_000, n))
    locs["x"] = np.clip(pick[:, 0] + rng.normal(0, 1, n) * sigma, 0, extent_nm - 1e-3)
    locs["y"] = np.clip(pick[:, 1] + rng.normal(0, 1, n) * sigma, 0, extent_nm - 1e-3)
    locs["sigma_x"] = locs["sigma_y"] = sigma
    locs["photons"] = photons
    return locs


CPU_TIMES: list[float] = []


def timed(fn, repeats: int) -> tuple[float, float]:
    """(minimum, median) wall time of ``fn()`` in seconds; the minimum CPU time goes to CPU_TIMES."""
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU_TIMES.append(min(cpu))
    return min(times), float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--canvas", type=int, default=2048, help="canvas side in pixels")
    ap.add_argument("--pixel", type=float, default=10.0, help="canvas pixel size in nm")
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--total", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    extent = args.canvas * args.pixel
    locs = filament_locs(args.total, extent, rng)
    sig = np.clip(locs["sigma_x"], 5, 50)
    print(f"canvas {args.canvas}x{args.canvas} px of {args.pixel:g} nm; localization sigma median "
          f"{np.median(sig):.1f} nm, 90th percentile {np.percentile(sig, 90):.1f} nm (clamped to [5, 50]); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for mode in ("histogram", "gaussian"):
        canvas = Canvas((extent, extent), args.pixel, mode, 5.0, 50.0)
        canvas.add(locs[: args.batch])  # first touch of the canvas memory is not part of the figure
        batches = iter(range(1, args.total // args.batch))

        def add_one() -> None:
            i = next(batches)
            canvas.add(locs[i * args.batch:(i + 1) * args.batch])

        best, med = timed(add_one, min(args.repeats, args.total // args.batch - 1))
        print(f"{mode}: add {args.batch:,} localizations: min {best * 1e3:.2f} ms, median {med * 1e3:.2f} ms "
              f"(CPU min {CPU_TIMES[-1] * 1e3:.2f} ms)")
        best, med = timed(lambda: canvas.rerender(locs), 3)
        print(f"{mode}: re-render {args.total:,} localizations: min {best:.2f} s, median {med:.2f} s "
              f"(CPU min {CPU_TIMES[-1]:.2f} s)")
        if mode == "histogram":
            a, b = canvas.halves
            best, med = timed(lambda: frc(a, b, args.pixel), 5)
            cpu = CPU_TIMES[-1]
            result = frc(a, b, args.pixel)
            print(f"FRC of the half canvases ({args.total:,} localizations, {args.canvas}x{args.canvas}): "
                  f"min {best:.2f} s, median {med:.2f} s (CPU, all threads, min {cpu:.2f} s); "
                  f"resolution {result.resolution_nm:.1f} nm "
                  f"{result.reason}".rstrip())
            best, med = timed(lambda: canvas.to_uint8(99.5), 5)
            print(f"to_uint8 for the display: min {best * 1e3:.1f} ms, median {med * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
