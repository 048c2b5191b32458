"""Photoswitching kinetics checked with statistics: on-times, activation vs laser power, bleaching, density.

Tolerances are 5 standard errors derived from the process itself (binomial activation counts,
exponential on-times), or, for the emitter density, from a variance bound of the compound process.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rtsmlm.core import config
from rtsmlm.sim import Simulator
from rtsmlm.sim.photophysics import BLEACHED, OFF, ON, Photophysics, activation_rate_for_density

Z = 5.0  # standard errors allowed


def run_single_cycles(tau: float, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """On-time (frames) and number of frames seen of every blink, when each label blinks exactly once.

    ``bleach_probability = 1`` ends every label after its first on-period, and a constant brightness
    makes photons / brightness the time on within each frame. The laser is switched off at the end and
    the run continues until no label is on, so long blinks are not cut short (no selection bias).
    """
    n_labels, brightness = 20_000, 1000.0
    pp = Photophysics(n_labels, np.random.default_rng(seed), k_act=0.003, mean_on_frames=tau,
                      bleach_probability=1.0, photons_mean=brightness, photons_sigma=0.0)
    photons = np.zeros(n_labels)
    frames_seen = np.zeros(n_labels, dtype=np.int64)
    power = 1.0
    for f in range(100_000):
        if f == 1000:
            power = 0.0
        if power == 0.0 and pp.n_on == 0:
            break
        idx, ph = pp.step(power)
        assert len(np.unique(idx)) == len(idx), "a label is reported twice in one frame"
        photons[idx] += ph
        frames_seen[idx] += 1
    blinked = pp.state == BLEACHED
    assert pp.n_activations == np.count_nonzero(blinked)
    assert np.all(frames_seen[~blinked] == 0)
    return photons[blinked] / brightness, frames_seen[blinked]


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_on_time_is_exponential_with_the_configured_mean(tau: float) -> None:
    on_time, frames_seen = run_single_cycles(tau)
    n = len(on_time)
    assert n > 5000
    assert abs(on_time.mean() - tau) < Z * tau / np.sqrt(n), (on_time.mean(), tau)  # sd of Exp = mean
    assert stats.kstest(on_time, stats.expon(scale=tau).cdf).pvalue > 1e-3
    # A blink starting at a uniformly random moment of a frame and lasting D frames touches
    # ceil(U + D) frames, whose mean is exactly tau + 1: partial first and last frames count.
    assert abs(frames_seen.mean() - (tau + 1.0)) < Z * frames_seen.std() / np.sqrt(n)
    # Seen in k frames ⇒ on for more than k − 2 and at most k frames.
    assert np.all(on_time <= frames_seen + 1e-9) and np.all(on_time > frames_seen - 2)


def count_activations(power: float, seed: int, n_labels: int = 20_000, k_act: float = 1e-3,
                      frames: int = 400) -> tuple[int, float, float]:
    """Activations over ``frames`` and the binomial mean and variance given the OFF pool of each frame.

    Labels OFF before a step are exactly the ones eligible to activate in it, each with probability
    1 − exp(−k_act · power), independently.
    """
    pp = Photophysics(n_labels, np.random.default_rng(seed), k_act=k_act, mean_on_frames=2.0,
                      bleach_probability=0.0, photons_mean=1000.0, photons_sigma=100.0)
    p = 1.0 - np.exp(-k_act * power)
    mean = var = 0.0
    for _ in range(frames):
        eligible = np.count_nonzero(pp.state == OFF)
        mean += eligible * p
        var += eligible * p * (1.0 - p)
        pp.step(power)
    return pp.n_activations, mean, var


def test_activation_rate_scales_with_laser_power() -> None:
    counts = {}
    for power, seed in ((0.5, 1), (1.0, 2), (2.0, 3)):
        n, mean, var = count_activations(power, seed)
        assert abs(n - mean) < Z * np.sqrt(var), (power, n, mean)
        counts[power] = n
    # The user-facing claim: doubling the laser power doubles the activations. The ratio's error comes
    # from the two Poisson-like counts; the depletion of the OFF pool (≤ 0.5 % on here) is far below it.
    for lo, hi in ((0.5, 1.0), (1.0, 2.0)):
        ratio = counts[hi] / counts[lo]
        se = ratio * np.sqrt(1 / counts[hi] + 1 / counts[lo])
        assert abs(ratio - hi / lo) < Z * se, (lo, hi, ratio)
    n0, _, _ = count_activations(0.0, 4, frames=50)
    assert n0 == 0


def test_bleaching_probability_per_cycle_depletes_the_pool() -> None:
    p_bleach = 0.1
    pp = Photophysics(5000, np.random.default_rng(6), k_act=0.05, mean_on_frames=1.0,
                      bleach_probability=p_bleach, photons_mean=1000.0, photons_sigma=100.0)
    pool = []
    for _ in range(300):
        pp.step(1.0)
        pool.append(np.count_nonzero(pp.state != BLEACHED))
    cycles = pp.n_activations - pp.n_on  # completed on-periods, each ending in a bleach-or-not draw
    bleached = pp.n_bleached
    sd = np.sqrt(cycles * p_bleach * (1 - p_bleach))
    assert abs(bleached - cycles * p_bleach) < Z * sd, (bleached, cycles)
    assert np.all(np.diff(pool) <= 0), "a bleached label came back"
    assert pool[-1] < 0.5 * 5000  # ≈ 300 frames × 0.05/frame / (1 + …) cycles per label × 0.1 → most gone
    assert set(np.unique(pp.state)) <= {OFF, ON, BLEACHED}

    # The extremes are exact: never bleach, or bleach after the first blink.
    for p, check in ((0.0, lambda q: q.n_bleached == 0), (1.0, lambda q: q.n_bleached == q.n_activations - q.n_on)):
        q = Photophysics(2000, np.random.default_rng(7), k_act=0.05, mean_on_frames=1.0,
                         bleach_probability=p, photons_mean=1000.0, photons_sigma=100.0)
        for _ in range(100):
            q.step(1.0)
        assert check(q), p


@pytest.mark.parametrize("density", [0.3, 2.0])
def test_measured_emitter_density_matches_the_configured_density(density: float) -> None:
    """Emitters on per µm² per frame in the ground truth ≈ sim.density.

    Expected count: blinks start at n·k per frame and are seen in tau + 1 frames on average, with the
    pool shrinking by bleaching (each blink bleaches with probability p). Its standard deviation is
    bounded by the compound-Poisson value sqrt(E[blinks]·E[L²]), L = frames one blink is seen in
    (L ≤ U + D + 1, so E[L²] ≤ 7/3 + 3·tau + 2·tau²). Labels that are on are not available to activate:
    that fraction of the pool bounds the remaining (downward) bias.
    """
    frames = 800
    cfg = config.load(overrides=["sim.size=64", f"sim.density={density}", "sim.seed=12"])
    sim = Simulator(cfg)
    area_um2 = (cfg.sim.size * cfg.camera.pixel_size_nm / 1e3) ** 2
    counts = np.array([len(sim.step()[1]) for _ in range(frames)])
    tau, p_bleach = cfg.sim.mean_on_frames, cfg.sim.bleach_probability
    n_labels = len(sim.labels)
    k = activation_rate_for_density(density, area_um2, n_labels, tau)
    surviving = np.exp(-k * p_bleach * np.arange(frames))  # fraction of the pool not yet bleached
    expected = density * area_um2 * surviving.sum()
    blinks = n_labels * k * surviving.sum()
    sd = np.sqrt(blinks * (7 / 3 + 3 * tau + 2 * tau ** 2))
    on_fraction_bias = density * area_um2 / n_labels * expected
    measured_density = counts.sum() / frames / area_um2
    assert abs(counts.sum() - expected) < Z * sd + on_fraction_bias, (measured_density, density)


def test_activation_rate_for_density_formula() -> None:
    # visible per frame = n_labels · k · (tau + 1) = density · area
    k = activation_rate_for_density(0.5, 40.0, 10_000, 3.0)
    assert 10_000 * k * 4.0 == pytest.approx(0.5 * 40.0)
    assert activation_rate_for_density(0.5, 40.0, 0, 3.0) == 0.0


@pytest.mark.parametrize("tau", [0.5, 3.0])
def test_frame_locked_molecules_are_on_for_whole_frames_at_the_configured_density(tau: float) -> None:
    """sim.frame_locked: every emission is a whole frame at the molecule's full brightness, the runs of frames
    are as long as an exponential on-time of mean tau begun at a frame's start touches, and the density holds."""
    cfg = config.load(overrides=["sim.size=64", "sim.density=0.5", "sim.seed=4", "sim.frame_locked=true",
                                 f"sim.mean_on_frames={tau}", "sim.bleach_probability=0", "sim.photons_sigma=0",
                                 'sim.structure="uniform"'])
    sim = Simulator(cfg)
    frames = 400
    truth = np.concatenate([sim.step()[1] for _ in range(frames)])
    assert np.allclose(truth["photons"], cfg.sim.photons_mean)  # never a partial frame
    area_um2 = (cfg.sim.size * cfg.camera.pixel_size_nm / 1e3) ** 2
    assert len(truth) / frames / area_um2 == pytest.approx(0.5, rel=0.1)
    # Runs of consecutive frames at one position: geometric, mean 1 / (1 - exp(-1/tau)).
    runs: dict[tuple[float, float], list[int]] = {}
    for f, x, y in zip(truth["frame"], truth["x"], truth["y"]):
        seq = runs.setdefault((float(x), float(y)), [])
        if seq and seq[-1][1] == f - 1:
            seq[-1] = (seq[-1][0], f)
        else:
            seq.append((f, f))
    lengths = [b - a + 1 for seq in runs.values() for a, b in seq if a > 0 and b < frames - 1]
    assert np.mean(lengths) == pytest.approx(1.0 / -np.expm1(-1.0 / tau), rel=0.1)
    assert activation_rate_for_density(0.5, 40.0, 10_000, tau, frame_locked=True) * 10_000 == \
        pytest.approx(0.5 * 40.0 * -np.expm1(-1.0 / tau))
