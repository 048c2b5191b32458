"""The simulated sample: label geometry (uniform, filaments, rings) and its motion (stage drift).

Geometric checks fit the structure back from the labels: filaments are locally straight with a
perpendicular scatter equal to the configured linker jitter, rings have the configured radius.
Tolerances are 5 standard errors of the fitted quantity, estimated from the fits themselves.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.cluster.hierarchy import fcluster, linkage

from rtsmlm.core import config
from rtsmlm.sim import structures
from rtsmlm.sim.drift import SimulatedDrift

Z = 5.0
EXTENT = (6400.0, 6400.0)  # (height, width) nm: 64 px of 100 nm


def test_uniform_labels_fill_the_field_at_the_configured_density() -> None:
    labels_per_um2 = 150.0
    pts = structures.uniform(np.random.default_rng(1), EXTENT, labels_per_um2)
    expected = labels_per_um2 * EXTENT[0] * EXTENT[1] / 1e6
    assert abs(len(pts) - expected) < Z * np.sqrt(expected)  # Poisson count
    assert pts.shape[1] == 3 and np.all(pts[:, 2] == 0.0)
    for axis, size in ((0, EXTENT[1]), (1, EXTENT[0])):
        assert stats.kstest(pts[:, axis], stats.uniform(0, size).cdf).pvalue > 1e-3
    z = structures.uniform(np.random.default_rng(1), EXTENT, 10.0, z_range_nm=400.0)[:, 2]
    assert z.min() >= -400.0 and z.max() <= 400.0
    assert stats.kstest(z, stats.uniform(-400.0, 800.0).cdf).pvalue > 1e-3


def segment_residual_variances(pts: np.ndarray, per_segment: int) -> np.ndarray:
    """Cut one filament's labels into consecutive runs along it and fit a straight line to each run.

    Returns each run's unbiased perpendicular variance (residual sum of squares / (m − 2)). Runs are
    disjoint, so their estimates are independent. Labels are ordered by their projection on the
    filament's principal axis: the filaments are gently curved, so that order follows the curve.
    """
    xy = pts[:, :2] - pts[:, :2].mean(axis=0)
    axis = np.linalg.svd(xy, full_matrices=False)[2][0]
    ordered = xy[np.argsort(xy @ axis)]
    out = []
    for start in range(0, len(ordered) - per_segment + 1, per_segment):
        seg = ordered[start:start + per_segment]
        centred = seg - seg.mean(axis=0)
        smallest_sv = np.linalg.svd(centred, compute_uv=False)[-1]
        out.append(smallest_sv ** 2 / (per_segment - 2))
    return np.array(out)


def test_filament_labels_lie_on_a_smooth_curve_with_the_configured_jitter() -> None:
    m = 30  # labels per fitted run: 150 nm of filament at 200 labels/µm
    # Without jitter the labels lie on the curve itself: over 150 nm it is straight to a small
    # fraction of a nanometre (a smooth curve, not a random walk).
    exact = structures.filaments(np.random.default_rng(2), EXTENT, count=1, labels_per_um=200.0, jitter_nm=0.0)
    curve_var = segment_residual_variances(exact, m)
    assert np.sqrt(curve_var.max()) < 1.0, np.sqrt(curve_var.max())
    # With jitter sigma, the perpendicular scatter about the local line is sigma.
    jitter = 8.0
    pts = structures.filaments(np.random.default_rng(2), EXTENT, count=1, labels_per_um=200.0,
                               jitter_nm=jitter)
    assert len(pts) > 20 * m
    var = segment_residual_variances(pts, m)
    # Each run's estimate is sigma²·chi²(m − 2)/(m − 2): sd sigma²·sqrt(2/(m − 2)); the curve's own
    # bend (measured above) adds at most its largest residual variance.
    se = jitter ** 2 * np.sqrt(2 / (m - 2)) / np.sqrt(len(var))
    assert abs(var.mean() - jitter ** 2) < Z * se + curve_var.max(), (np.sqrt(var.mean()), jitter)
    assert np.all((pts[:, 0] >= 0) & (pts[:, 0] < EXTENT[1]) & (pts[:, 1] >= 0) & (pts[:, 1] < EXTENT[0]))


def test_filament_labels_per_um_and_config_wiring() -> None:
    """Labels along a filament ≈ labels_per_um × its length in the field (a Poisson count)."""
    labels_per_um = 60.0
    total_labels, total_length_um = 0, 0.0
    for seed in range(6):
        pts = structures.filaments(np.random.default_rng(seed), EXTENT, count=1,
                                   labels_per_um=labels_per_um, jitter_nm=0.0)
        xy = pts[:, :2] - pts[:, :2].mean(axis=0)
        axis = np.linalg.svd(xy, full_matrices=False)[2][0]
        ordered = xy[np.argsort(xy @ axis)]
        # Path through the ordered labels, plus the mean gap (1/λ) missed beyond each end label.
        length_um = np.hypot(*np.diff(ordered, axis=0).T).sum() / 1e3 + 2 / labels_per_um
        total_labels += len(pts)
        total_length_um += length_um
    expected = labels_per_um * total_length_um
    assert abs(total_labels - expected) < Z * np.sqrt(expected), (total_labels, expected)

    cfg = config.load(overrides=['sim.structure="filaments"', "sim.filament_count=3",
                                 f"sim.labels_per_um={labels_per_um}", "sim.label_jitter_nm=7"])
    from_cfg = structures.from_config(np.random.default_rng(5), cfg.sim, EXTENT)
    direct = structures.filaments(np.random.default_rng(5), EXTENT, 3, labels_per_um, 7.0)
    assert np.array_equal(from_cfg, direct)


def fit_circle(xy: np.ndarray) -> tuple[float, float, float]:
    """Least-squares circle (Kåsa): centre x, centre y, radius."""
    a = np.column_stack([2 * xy[:, 0], 2 * xy[:, 1], np.ones(len(xy))])
    b = (xy ** 2).sum(axis=1)
    cx, cy, c = np.linalg.lstsq(a, b, rcond=None)[0]
    return float(cx), float(cy), float(np.sqrt(c + cx * cx + cy * cy))


def test_rings_have_the_configured_radius() -> None:
    radius, jitter = 80.0, 5.0
    cfg = config.load(overrides=['sim.structure="rings"', f"sim.ring_radius_nm={radius}",
                                 "sim.rings_per_um2=0.15", f"sim.label_jitter_nm={jitter}"])
    extent = (20_000.0, 20_000.0)
    pts = structures.from_config(np.random.default_rng(9), cfg.sim, extent)
    # Labels of one ring are within a diameter of each other; rings rarely come that close at this
    # density, and the median below is robust to the few that merge.
    groups = fcluster(linkage(pts[:, :2], method="single"), t=2 * radius + 4 * jitter, criterion="distance")
    radii = []
    for g in np.unique(groups):
        xy = pts[groups == g, :2]
        if len(xy) >= 6:
            radii.append(fit_circle(xy)[2])
    radii = np.array(radii)
    expected_rings = 0.15 * extent[0] * extent[1] / 1e6
    assert len(radii) > 0.5 * expected_rings
    # The algebraic fit measures the root-mean-square distance of the labels from the centre, which a
    # 2D Gaussian jitter sigma raises to sqrt(r² + 2·sigma²) ≈ r + sigma²/r.
    expected = np.sqrt(radius ** 2 + 2 * jitter ** 2)
    # Standard error of the median by bootstrap (the per-ring radii are not Gaussian: rings with few
    # labels scatter more).
    boot = np.random.default_rng(0).choice(radii, size=(2000, len(radii)), replace=True)
    se_median = np.median(boot, axis=1).std()
    assert abs(np.median(radii) - expected) < Z * se_median, (np.median(radii), expected, se_median)
    assert np.all(pts[:, 2] == 0.0)


def test_structures_are_deterministic_by_seed() -> None:
    cfg = config.load(overrides=['sim.structure="filaments"'])
    a = structures.from_config(np.random.default_rng(3), cfg.sim, EXTENT)
    b = structures.from_config(np.random.default_rng(3), cfg.sim, EXTENT)
    c = structures.from_config(np.random.default_rng(4), cfg.sim, EXTENT)
    assert np.array_equal(a, b)
    assert not (a.shape == c.shape and np.array_equal(a, c))


# ------------------------------------------------------------------------------------------ drift

def drift_cfg(**overrides: object) -> config.DriftSimConfig:
    return config.replace(config.DriftSimConfig(), enabled=True, **overrides)


def test_drift_starts_at_zero_and_is_deterministic_by_seed() -> None:
    cfg = drift_cfg()
    a = SimulatedDrift(cfg, seed=5).at(np.arange(6000))
    assert a.shape == (6000, 2)
    assert np.array_equal(a[0], [0.0, 0.0])
    assert np.array_equal(SimulatedDrift(cfg, seed=5).at(0), [0.0, 0.0])
    # Same seed, any order of queries (and across the generator's internal chunks): the same path.
    late_first = SimulatedDrift(cfg, seed=5)
    tail = late_first.at(np.arange(5000, 6000))
    head = late_first.at(np.arange(5000))
    assert np.array_equal(np.concatenate([head, tail]), a)
    assert not np.array_equal(SimulatedDrift(cfg, seed=6).at(np.arange(100)), a[:100])
    off = SimulatedDrift(config.DriftSimConfig(enabled=False), seed=5).at(np.arange(50))
    assert np.all(off == 0.0)


def test_drift_steps_are_the_configured_random_walk() -> None:
    """With only the random walk on, frame-to-frame steps are Gaussian with the configured sd."""
    sigma = 0.7
    cfg = drift_cfg(random_walk_nm_per_frame=sigma, sinusoid_amplitude_nm=0.0, linear_nm_per_frame=0.0)
    steps = np.diff(SimulatedDrift(cfg, seed=1).at(np.arange(20_001)), axis=0).ravel()
    n = len(steps)
    assert abs(steps.mean()) < Z * sigma / np.sqrt(n)
    # n·s²/σ² ~ chi²(n): sd of s²/σ² is sqrt(2/n).
    assert abs(np.mean(steps ** 2) / sigma ** 2 - 1.0) < Z * np.sqrt(2.0 / n)


def test_drift_without_random_walk_is_smooth_and_follows_sinusoid_plus_creep() -> None:
    amplitude, period, creep = 150.0, 2000.0, 0.05
    cfg = drift_cfg(random_walk_nm_per_frame=0.0, sinusoid_amplitude_nm=amplitude,
                    sinusoid_period_frames=period, linear_nm_per_frame=creep)
    d = SimulatedDrift(cfg, seed=2).at(np.arange(5000))
    step = np.hypot(*np.diff(d, axis=0).T)
    # Speed bound: the sinusoid moves at most A·2π/T per frame on each axis, the creep |v|.
    assert step.max() <= np.sqrt(2) * amplitude * 2 * np.pi / period + abs(creep) + 1e-9
    # Over a whole period the sinusoid returns; only the linear creep remains, of length |v|·T.
    assert np.hypot(*(d[int(period)] - d[0])) == pytest.approx(abs(creep) * period, rel=1e-9)
    accel = np.abs(np.diff(d, n=2, axis=0)).max()
    assert accel <= amplitude * (2 * np.pi / period) ** 2 + 1e-9  # no jumps: second difference bound


def test_3d_filaments_rise_and_fall_smoothly_along_their_length() -> None:
    """A filament is one tube in 3D: labels a few nm apart along it sit at nearly one depth, while the
    filament as a whole spans hundreds of nm (a label cloud with independent depths would defeat the axial
    drift estimate, which pairs lateral neighbours)."""
    from scipy.spatial import cKDTree

    pts = structures.filaments(np.random.default_rng(4), EXTENT, count=3, labels_per_um=100.0, jitter_nm=5.0,
                               z_range_nm=500.0)
    assert np.abs(pts[:, 2]).max() <= 500.0 and np.ptp(pts[:, 2]) > 200.0
    pairs = cKDTree(pts[:, :2]).query_pairs(15.0, output_type="ndarray")
    dz = np.abs(pts[pairs[:, 0], 2] - pts[pairs[:, 1], 2])
    assert len(pairs) > 100 and np.median(dz) < 15.0


def test_a_sample_beyond_the_field_lights_the_edge_but_stays_out_of_the_ground_truth():
    """sim.beyond_field_px: labels also in a margin around the field, at the same density; their light reaches
    the frame's edge pixels, their rows are not in the ground truth; 0 gives the same movie as before."""
    import numpy as np

    from rtsmlm.core import config as rconfig
    from rtsmlm.sim import Simulator

    base = ["sim.size=32", "sim.structure='uniform'", "sim.density=2.0", "sim.seed=5", "sim.bg_photons=0"]
    plain = Simulator(rconfig.load(None, base))
    same = Simulator(rconfig.load(None, [*base, "sim.beyond_field_px=0"]))
    a, ta = plain.movie(5)
    b, tb = same.movie(5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta, tb)
    wide = Simulator(rconfig.load(None, [*base, "sim.beyond_field_px=4"]))
    assert wide.labels[:, :2].min() < 0 and wide.labels[:, :2].max() > 32 * wide.pixel_size_nm
    frames, truth = wide.movie(200)
    w = 32 * wide.pixel_size_nm
    assert len(truth) and truth["x"].min() >= 0 and truth["x"].max() < w and truth["y"].max() < w
    # Emitters per frame in the field, as configured (2/µm² over 3.2 µm × 3.2 µm = 20.5), margin or not.
    assert abs(len(truth) / 200 - 2.0 * (w / 1000) ** 2) < 0.2 * 2.0 * (w / 1000) ** 2
    # Light from beyond: the edge columns get light from both sides, as their neighbours do; without the margin
    # only from one (their neighbours' columns, not the whole frame: a few labels' blinking makes it uneven).
    def edge_to_inside(sim, movie):
        photons = sim.camera.to_photons(movie)
        return photons[:, :, [0, -1]].mean() / photons[:, :, [1, 2, -3, -2]].mean()

    plain_sim = Simulator(rconfig.load(None, base))
    plain_ratio = edge_to_inside(plain_sim, plain_sim.movie(200)[0])
    assert plain_ratio < 0.85 < edge_to_inside(wide, frames)  # measured 0.78 and 0.98
