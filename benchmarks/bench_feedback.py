"""Activation-laser feedback on the simulator with bleaching: reach and hold a localization density.

Run: python benchmarks/bench_feedback.py [--minutes 10] [--target 30] [--out out/bench_feedback]

The plant is the project's physics simulator (rtsmlm.sim): a 25.6 × 25.6 µm field of uniformly placed
labels whose activation rate scales with ``activation_power`` and that bleach with probability
``--bleach`` each time they switch off, so holding the density uses up the pool and the power must
keep rising. "Localizations" are the emitters the simulator reports in a frame with more than
``--threshold`` photons (its ground truth; no network in the loop). The clock is the exposure time:
frames × 10 ms. Localizations reach the controller in batches of ``--batch`` frames, ``--latency``
frames after acquisition (the localizer's lag), and a set-point acts on the next frame acquired.

Controllers, each started 5× too high and 5× too low (P* = the power that gives the target on the fresh
pool, measured first):

* ``pi``     — plugins/activation_feedback.py, through the real plugin host, with its default gains;
  it drives the simulated microscope's ``ActivationLaser.Power`` property.
* ``htsmlm`` — htSMLM's multiplicative step rule (Micro-Manager/EMU activation task): once per second,
  ``p ← p·(1 + f·(1 − N/N₀))`` with N the count of a single frame, clamped to the same power range.
* ``const``  — P* held constant (no feedback), to show what bleaching does on its own.

Printed per run: time to first enter ±10% of the target and time after which it stays there (1-s
means of localizations per frame), the fraction of 1-s windows in band from 30 s to the end, the
worst deviation there, power at the end, and how much of the pool bleached. Writes feedback.png
(density, power and bleaching over time) and the 1-s series of each run (series_*.csv) to ``--out``;
the figure shows every series there, so runs split over several invocations (``--controllers pi``,
then ``--controllers htsmlm,const``, on a slow machine) end up in one plot.
The issue's criterion: from a 5× wrong start, within ±10% within 30 s and for the following 10 min.
"""

from __future__ import annotations

import argparse
import collections
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtsmlm.acquisition.simulated import SimulatorControl
from rtsmlm.core.config import from_dict
from rtsmlm.core.locs import LOC_DTYPE, LocalizationStream
from rtsmlm.engine.plugins import PluginHost, RunInfo
from rtsmlm.sim import Simulator

BAND = 0.10  # ±10 % of the target
SETTLE_LIMIT_S = 30.0


@dataclass
class Trace:
    name: str
    start: str
    counts: np.ndarray  # localizations per frame
    power: np.ndarray  # activation power in effect during each frame
    bleached: np.ndarray  # fraction of the pool bleached after each frame
    wall_s: float


def make_config(args: argparse.Namespace) -> object:
    return from_dict({"camera": {"exposure_ms": args.exposure_ms},
                      "sim": {"structure": "uniform", "size": args.size, "density": args.density_at_1,
                              "labels_per_um2": args.labels,
                              "bleach_probability": args.bleach, "seed": args.seed}})


def calibrate(cfg: object, threshold: float, n_frames: int = 400) -> float:
    """Localizations per frame at power 1 on the fresh pool (after the on-state population settles)."""
    sim = Simulator(cfg)
    counts = []
    for f in range(n_frames):
        _, photons = sim.photophysics.step(1.0)
        if f >= 50:
            counts.append(np.count_nonzero(photons > threshold))
    return float(np.mean(counts))


class HtsmlmRule:
    """htSMLM's activation update, re-stated: p ← p·(1 + f·(1 − N/N₀)) once per ``interval_s``."""

    def __init__(self, target: float, power: float, pmin: float, pmax: float, feedback: float,
                 interval_frames: int) -> None:
        self.target, self.power, self.pmin, self.pmax = target, power, pmin, pmax
        self.feedback = feedback
        self.interval = interval_frames
        self.next_update = interval_frames

    def add(self, frame: int, n_last_frame: int) -> float | None:
        if frame + 1 < self.next_update:
            return None
        self.next_update += self.interval
        p = self.power * (1.0 + self.feedback * (1.0 - n_last_frame / self.target))
        self.power = min(max(p, self.pmin), self.pmax)
        return self.power


def run(cfg: object, args: argparse.Namespace, controller: str, start_power: float, p_star: float,
        label: str) -> Trace:
    n_frames = int(round(args.minutes * 60 / (args.exposure_ms / 1000))) + int(SETTLE_LIMIT_S * 1000
                                                                                 / args.exposure_ms)
    sim = Simulator(cfg)
    sim.activation_power = start_power
    control = SimulatorControl(sim)
    n_labels = len(sim.labels)
    pmin, pmax = p_star / 100.0, p_star * 100.0
    host = rule = None
    if controller == "pi":
        host = PluginHost.from_config({"activation_feedback": {
            "target_locs_per_frame": args.target, "min_power": pmin, "max_power": pmax,
            "log_file": f"setpoints_{label}.csv"}})
        host.start(RunInfo(f"bench-{label}", control=control, output_dir=args.out,
                           exposure_ms=args.exposure_ms))
    elif controller == "htsmlm":
        rule = HtsmlmRule(args.target, start_power, pmin, pmax, args.htsmlm_feedback,
                          int(round(1000 / args.exposure_ms)))
    stream = LocalizationStream()
    in_flight: collections.deque = collections.deque()  # (frame when analysed, first, last, counts)
    counts = np.zeros(n_frames, np.int64)
    power = np.zeros(n_frames)
    bleached = np.zeros(n_frames)
    batch_counts: list[int] = []
    t0 = time.perf_counter()
    for f in range(n_frames):
        power[f] = sim.activation_power
        _, photons = sim.photophysics.step(sim.activation_power)
        counts[f] = np.count_nonzero(photons > args.threshold)
        if f % 100 == 0 or f == n_frames - 1:
            bleached[f] = sim.photophysics.n_bleached / n_labels
        batch_counts.append(int(counts[f]))
        if len(batch_counts) == args.batch:
            in_flight.append((f + args.latency, f - args.batch + 1, f, batch_counts))
            batch_counts = []
        while in_flight and in_flight[0][0] <= f:
            _, first, last, per_frame = in_flight.popleft()
            if host is not None:
                locs = np.zeros(sum(per_frame), LOC_DTYPE)
                locs["frame"] = np.repeat(np.arange(first, last + 1), per_frame)
                host.localizations(stream.append(first, last, locs))
            elif rule is not None:
                new = rule.add(last, per_frame[-1])
                if new is not None:
                    control.set_property("ActivationLaser", "Power", new)
    if host is not None:
        report = host.stop({})["activation_feedback"]
        if not report["active"]:
            raise RuntimeError(f"the feedback plugin failed: {report['error']}")
    # Fill the bleached fraction between samples (it only grows).
    idx = np.flatnonzero(bleached)
    if len(idx):
        bleached = np.interp(np.arange(n_frames), idx, bleached[idx])
    return Trace(controller, label, counts, power, bleached, time.perf_counter() - t0)


def per_second(x: np.ndarray, frames_per_s: int) -> np.ndarray:
    n = len(x) // frames_per_s
    return x[: n * frames_per_s].reshape(n, frames_per_s).mean(axis=1)


def evaluate(trace: Trace, target: float, frames_per_window: int, window_s: float) -> dict[str, float]:
    """Band figures on consecutive windows of ``window_s`` (the density is only defined as a mean:
    single-frame counts are Poisson, ±18 % at 30 per frame)."""
    d = per_second(trace.counts.astype(float), frames_per_window)
    inside = np.abs(d / target - 1.0) <= BAND
    t_start = window_s * np.arange(len(d), dtype=float)  # each window's start time, s
    # Entering: the first window in band starts; staying: the window after the last one outside starts.
    t_enter = float(t_start[np.argmax(inside)]) if inside.any() else float("inf")
    outside = np.flatnonzero(~inside)
    t_stay = 0.0 if len(outside) == 0 else (float(t_start[outside[-1] + 1]) if outside[-1] < len(d) - 1
                                              else float("inf"))
    hold = d[int(round(SETTLE_LIMIT_S / window_s)):]
    return {"t_enter_s": t_enter, "t_stay_s": t_stay,
            "in_band_after_30s": float(np.mean(np.abs(hold / target - 1) <= BAND)),
            "worst_dev_after_30s": float(np.max(np.abs(hold / target - 1))),
            "power_end": float(trace.power[-1]), "bleached_end": float(trace.bleached[-1])}


SERIES_HEADER = "time_s,locs_per_frame,power_over_pstar,bleached_fraction"


def write_series(trace: Trace, frames_per_s: int, p_star: float, out: Path) -> Path:
    """1-s means of one run, for the plot (which draws every series file in ``out``)."""
    d = per_second(trace.counts.astype(float), frames_per_s)
    p = per_second(trace.power, frames_per_s) / p_star
    b = per_second(trace.bleached, frames_per_s)
    path = out / f"series_{trace.name}_{trace.start.replace(' ', '_').replace('*', 'star')}.csv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# controller={trace.name} start={trace.start}\n{SERIES_HEADER}\n")
        fh.writelines(f"{i + 1},{d[i]:.5g},{p[i]:.5g},{b[i]:.5g}\n" for i in range(len(d)))
    return path


def plot(out: Path, target: float, window_s: float) -> list[Path]:
    """Density, power and bleaching over time from every ``series_*.csv`` in ``out`` (runs made by
    separate invocations with different ``--controllers`` end up in one figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"pi": "tab:blue", "htsmlm": "tab:orange", "const": "tab:gray"}
    styles = {"5x high": "-", "5x low": "--", "P*": ":"}
    files = sorted(out.glob("series_*.csv"), key=lambda f: ("_pi_" in f.name, f.name))  # PI drawn on top
    w = max(1, int(round(window_s)))
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    for f in files:
        meta = dict(kv.split("=", 1) for kv in f.read_text(encoding="utf-8").splitlines()[0][2:].split(" ", 1))
        data = np.loadtxt(f, delimiter=",", skiprows=2, ndmin=2)
        n = len(data) // w
        t = data[w - 1: n * w: w, 0]
        kw = dict(color=colors.get(meta["controller"], "k"), linestyle=styles.get(meta["start"], "-"), lw=1.0,
                  label=f"{meta['controller']}, start {meta['start']}")
        for ax, col, scale in ((axes[0], 1, 1.0), (axes[1], 2, 1.0), (axes[2], 3, 100.0)):
            ax.plot(t, scale * data[: n * w, col].reshape(n, w).mean(axis=1), **kw)
    axes[0].axhspan(target * (1 - BAND), target * (1 + BAND), color="green", alpha=0.15, label="target ±10%")
    axes[0].axvline(SETTLE_LIMIT_S, color="k", lw=0.8, ls=":")
    axes[0].set_ylabel(f"localizations / frame ({w:g}-s mean)")
    axes[0].set_ylim(0, target * 3)
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[1].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].set_ylabel("activation power / P*")
    axes[2].set_ylabel("pool bleached (%)")
    axes[2].set_xlabel("simulated time (s)")
    axes[0].legend(fontsize=8, ncol=2, loc="upper right")
    axes[0].set_title("Activation feedback on the simulator with bleaching")
    fig.tight_layout()
    fig.savefig(out / "feedback.png", dpi=110)
    plt.close(fig)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="hold period after the 30 s settling limit")
    ap.add_argument("--target", type=float, default=30.0, help="localizations per frame to hold")
    ap.add_argument("--size", type=int, default=256, help="field of view in 100 nm pixels")
    ap.add_argument("--labels", type=float, default=200.0, help="labels per µm²")
    ap.add_argument("--density-at-1", type=float, default=0.02, help="sim.density (emitters/µm²) at power 1")
    ap.add_argument("--bleach", type=float, default=0.1, help="bleach probability per switch-off")
    ap.add_argument("--threshold", type=float, default=500.0, help="photons for an emitter to count")
    ap.add_argument("--exposure-ms", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=8, help="frames per localization batch")
    ap.add_argument("--latency", type=int, default=20, help="frames between acquisition and localization")
    ap.add_argument("--htsmlm-feedback", type=float, default=0.4, help="htSMLM's feedback parameter f")
    ap.add_argument("--window-s", type=float, default=2.0, help="averaging window of the band criterion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--controllers", default="pi,htsmlm,const")
    ap.add_argument("--out", type=Path, default=Path("out/bench_feedback"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    frames_per_s = int(round(1000 / args.exposure_ms))

    cfg = make_config(args)
    d1 = calibrate(cfg, args.threshold)
    p_star = args.target / d1
    n_labels = len(Simulator(cfg).labels)
    print(f"field {args.size * 0.1:.1f} µm square, {n_labels:,} labels, bleach p={args.bleach}, "
          f"{args.exposure_ms:g} ms frames, batches of {args.batch}, latency {args.latency} frames")
    print(f"target {args.target:g} locs/frame (> {args.threshold:g} photons); fresh pool gives {d1:.2f} at "
          f"power 1, so P* = {p_star:.3f}; runs last {SETTLE_LIMIT_S:g} s + {args.minutes:g} min")
    print(f"band figures on {args.window_s:g}-s means (the controller's smoothing scale); in-band share "
          f"and worst deviation also on 1-s means")
    print(f"{'controller':10} {'start':8} {'enter ±10%':>10} {'stays from':>10} {'in band':>8} "
          f"{'worst dev':>9} {'1s: in band':>11} {'worst':>6} {'P_end/P*':>8} {'bleached':>8} {'wall':>5}")
    for name in args.controllers.split(","):
        starts = [("5x high", 5.0), ("5x low", 0.2)] if name != "const" else [("P*", 1.0)]
        for label, factor in starts:
            tr = run(cfg, args, name, factor * p_star, p_star, f"{name}_{label.replace(' ', '_')}")
            tr.start = label
            write_series(tr, frames_per_s, p_star, args.out)
            m = evaluate(tr, args.target, int(round(args.window_s * frames_per_s)), args.window_s)
            m1 = evaluate(tr, args.target, frames_per_s, 1.0)
            ok = m["t_stay_s"] <= SETTLE_LIMIT_S
            print(f"{name:10} {label:8} {m['t_enter_s']:9.0f}s {m['t_stay_s']:9.0f}s "
                  f"{100 * m['in_band_after_30s']:7.1f}% {100 * m['worst_dev_after_30s']:8.1f}% "
                  f"{100 * m1['in_band_after_30s']:10.1f}% {100 * m1['worst_dev_after_30s']:5.1f}% "
                  f"{m['power_end'] / p_star:8.2f} {100 * m['bleached_end']:7.1f}% {tr.wall_s:4.0f}s"
                  f"{'  meets the criterion' if ok else ''}")
    files = plot(args.out, args.target, args.window_s)
    print(f"wrote {args.out / 'feedback.png'} from {len(files)} series ({', '.join(f.name for f in files)}) "
          f"and the PI set-point logs setpoints_*.csv")


if __name__ == "__main__":
    main()
