"""Throughput of the physics simulator: frames/s at 64×64 and 256×256, default density and density 2.

Run: python benchmarks/bench_sim.py [--seconds 3] [--sizes 64 256] [--densities 0.3 2] [--no-files]

For each case it prints:
- ``step``: frames/s of ``Simulator.step()`` (photophysics + drift + PSF + background + camera noise:
  what the simulated camera source delivers), with the time per frame split by stage;
- ``simulate``: frames/s of the whole ``rtsmlm simulate`` path (``simulate_to_dir``: the steps, the
  ground-truth CSV and the ImageJ TIFF), i.e. wall time / frames of a real run into a temporary folder.

Targets on the project's 2-core machine: ≥ 500 frames/s at 64×64 and ≥ 30 frames/s at 256×256. Each
case is timed on one thread for at least ``--seconds`` after a short warm-up; nothing else should run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rtsmlm import config
from rtsmlm.sim import Simulator

TARGET_FPS = {64: 500.0, 256: 30.0}


def case_config(size: int, density: float, frames: int) -> config.Config:
    return config.load(overrides=[f"sim.size={size}", f"sim.density={density}", f"sim.frames={frames}"])


def time_steps(cfg: config.Config, seconds: float) -> tuple[float, int, dict[str, float], float]:
    """frames/s of Simulator.step(), frames timed, seconds per frame by stage, mean emitters per frame."""
    sim = Simulator(cfg)
    for _ in range(20):  # warm-up: first-call allocations, caches
        sim.step()
    n, emitters = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        emitters += len(sim.step()[1])
        n += 1
    fps = n / (time.perf_counter() - start)
    return fps, n, stage_times(sim, min(n, 200)), emitters / n


def stage_times(sim: Simulator, n: int) -> dict[str, float]:
    """Seconds per frame of each stage of a step, re-running the stages on their own (same inputs)."""
    px = sim.pixel_size_nm
    t = dict.fromkeys(("photophysics", "psf", "camera"), 0.0)
    for _ in range(n):
        t0 = time.perf_counter()
        idx, photons = sim.photophysics.step(sim.activation_power)
        t1 = time.perf_counter()
        pos = sim.labels[idx]
        img = sim.psf.render(pos[:, 0] / px, pos[:, 1] / px, pos[:, 2], photons, sim.shape)
        t2 = time.perf_counter()
        sim.camera.expose(img + sim.background, sim.rng)
        t3 = time.perf_counter()
        t["photophysics"] += t1 - t0
        t["psf"] += t2 - t1
        t["camera"] += t3 - t2
    return {k: v / n for k, v in t.items()}


def time_simulate(cfg: config.Config) -> float:
    """frames/s of simulate_to_dir (steps + ground-truth CSV + TIFF) for cfg.sim.frames frames."""
    from rtsmlm.sim.export import simulate_to_dir

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        simulate_to_dir(cfg, Path(tmp) / "run")
        return cfg.sim.frames / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timing per case")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--densities", type=float, nargs="+", default=[config.SimConfig().density, 2.0],
                    help="active emitters per µm² per frame (default: sim.density's default and 2)")
    ap.add_argument("--no-files", action="store_true", help="skip the rtsmlm simulate (files) timing")
    args = ap.parse_args()

    import os

    print(f"simulator throughput, {os.cpu_count()} CPUs, numpy {np.__version__}, default camera "
          f"(EMCCD) and PSF, one thread")
    header = (f"{'size':>7} {'density':>7} {'emitters':>8} {'step fps':>9} {'target':>7} "
              f"{'photophys ms':>12} {'psf ms':>7} {'camera ms':>9}")
    if not args.no_files:
        header += f" {'simulate fps':>12}"
    print(header)
    for size in args.sizes:
        for density in args.densities:
            probe = case_config(size, density, 1)
            fps, n, stages, emitters = time_steps(probe, args.seconds)
            target = TARGET_FPS.get(size)
            verdict = "" if target is None else (f"{target:>5.0f} {'ok' if fps >= target else 'MISS'}")
            line = (f"{size:>3}×{size:<3} {density:>7.2f} {emitters:>8.1f} {fps:>9.1f} {verdict:>7} "
                    f"{1e3 * stages['photophysics']:>12.3f} {1e3 * stages['psf']:>7.3f} "
                    f"{1e3 * stages['camera']:>9.3f}")
            if not args.no_files:
                frames = max(20, int(fps * args.seconds))
                line += f" {time_simulate(case_config(size, density, frames)):>12.1f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
