"""Online drift correction against the simulator's structures, blinking and drift."""

from __future__ import annotations

import numpy as np
import pytest

from rtsmlm.analysis.drift import OnlineDrift
from rtsmlm.core.config import DriftConfig, DriftSimConfig, replace
from rtsmlm.core.locs import LOC_DTYPE, LocalizationStream
from rtsmlm.io.tables import read_drift_csv, write_drift_csv
from rtsmlm.sim import structures
from rtsmlm.sim.drift import SimulatedDrift as SimDrift
from rtsmlm.sim.photophysics import Photophysics, activation_rate_for_density

EXTENT = (6400.0, 6400.0)
CFG = replace(DriftConfig(), block_frames=100, min_block_locs=1500)


def simulate(frames: int, seed: int, drift: np.ndarray, fiducials: int = 0, density: float = 1.2,
             precision_nm: float = 10.0):
    """Localizations of blinking filament labels moved by ``drift`` (frames x 2, nm).

    Returns the table and, per localization, the true (undrifted) label position.
    """
    rng = np.random.default_rng(seed)
    labels = structures.filaments(rng, EXTENT, 5, 150.0)
    k = activation_rate_for_density(density, EXTENT[0] * EXTENT[1] / 1e6, len(labels), 2.0)
    phys = Photophysics(len(labels), rng, k_act=k, mean_on_frames=2.0, bleach_probability=0.002,
                        photons_mean=2500.0, photons_sigma=500.0)
    fid = rng.uniform(0.2, 0.8, (fiducials, 2)) * np.array(EXTENT[::-1])
    tables, truths = [], []
    for f in range(frames):
        idx, _ = phys.step(1.0)
        xy = np.concatenate([labels[idx, :2], fid])
        sigma = np.concatenate([np.full(len(idx), precision_nm), np.full(fiducials, 2.0)])
        loc = np.zeros(len(xy), LOC_DTYPE)
        loc["frame"] = f
        loc["x"] = xy[:, 0] + drift[f, 0] + rng.normal(0, 1, len(xy)) * sigma
        loc["y"] = xy[:, 1] + drift[f, 1] + rng.normal(0, 1, len(xy)) * sigma
        loc["sigma_x"] = loc["sigma_y"] = sigma
        tables.append(loc)
        truths.append(xy)
    return np.concatenate(tables), np.concatenate(truths)


def sim_drift(frames: int, seed: int = 11) -> np.ndarray:
    cfg = DriftSimConfig(enabled=True, random_walk_nm_per_frame=0.3, sinusoid_amplitude_nm=80.0,
                         sinusoid_period_frames=3000.0, linear_nm_per_frame=0.05)
    return SimDrift(cfg, seed).at(np.arange(frames))


def feed(est: OnlineDrift, locs: np.ndarray, frames: int, batch_frames: int = 16) -> list[bool]:
    """Run the localizations through a LocalizationStream in batches, as the localizer would."""
    stream = LocalizationStream()
    results = []
    starts = np.searchsorted(locs["frame"], np.arange(0, frames + batch_frames, batch_frames))
    for i, first in enumerate(range(0, frames, batch_frames)):
        stream.append(first, min(frames, first + batch_frames) - 1, locs[starts[i]:starts[i + 1]])
    stream.close()
    for batch in stream.batches_since(0):
        results.append(est.add(batch.locs, batch.last_frame))
    return results


def rms(ex: np.ndarray, ey: np.ndarray) -> float:
    return float(np.sqrt(np.mean((ex - ex.mean()) ** 2 + (ey - ey.mean()) ** 2)))


@pytest.fixture(scope="module")
def run():
    frames = 2400
    drift = sim_drift(frames)
    locs, truth = simulate(frames, 5, drift)
    est = OnlineDrift(CFG, EXTENT)
    added = feed(est, locs, frames)
    return dict(frames=frames, drift=drift, locs=locs, truth=truth, est=est, added=added)


def test_online_estimate_follows_the_simulated_drift(run):
    est, drift, frames = run["est"], run["drift"], run["frames"]
    blocks = est.block_estimates()
    assert len(blocks) >= 10
    assert blocks.dx[0] == 0 and blocks.dy[0] == 0  # the first block is the reference
    dx, dy = est.drift_at(np.arange(frames))
    travel = np.ptp(drift, axis=0).max()
    error = rms(dx - drift[:, 0], dy - drift[:, 1])
    assert travel > 100  # the sample really moved
    assert error < 5.0
    # the mean drift over the first block is 0 by definition
    first = run["locs"]["frame"] <= blocks.last_frame[0]
    fx, fy = est.drift_at(run["locs"]["frame"][first])
    assert abs(fx.mean()) < 0.5 and abs(fy.mean()) < 0.5


def test_add_reports_each_completed_block_once(run):
    assert sum(run["added"]) <= len(run["est"].block_estimates())
    assert run["added"][0] is False  # 16 frames are not a block yet
    assert any(run["added"])
    blocks = run["est"].block_estimates()
    assert np.all(blocks.first_frame[1:] == blocks.last_frame[:-1] + 1)
    assert np.all(blocks.last_frame - blocks.first_frame + 1 >= CFG.block_frames)


def test_correction_undoes_the_drift_and_keeps_raw_coordinates(run):
    est, locs, truth = run["est"], run["locs"], run["truth"]
    dc = est.correct(locs)
    assert np.array_equal(dc["x"], locs["x"]) and np.array_equal(dc["y"], locs["y"])
    dx, dy = est.drift_at(locs["frame"])
    assert np.allclose(dc["x_dc"], locs["x"] - dx, atol=1e-2)  # x_dc = x - dx: dx is the sample's motion
    # relative to the true positions (up to the constant offset of the first block), the corrected
    # coordinates scatter by about the localization precision; the raw ones by the drift too
    raw = np.hypot(*(np.column_stack([locs["x"], locs["y"]]) - truth).T)
    ex, ey = dc["x_dc"] - truth[:, 0], dc["y_dc"] - truth[:, 1]
    corrected = np.hypot(ex - np.median(ex), ey - np.median(ey))
    assert np.median(corrected) < 15.0
    assert np.median(corrected) < 0.3 * np.median(raw)


def test_block_estimates_are_causal():
    """An estimate depends only on earlier data: feeding more later does not change earlier blocks."""
    frames = 1200
    drift = sim_drift(frames, seed=3)
    locs, _ = simulate(frames, 8, drift)
    half = OnlineDrift(CFG, EXTENT)
    feed(half, locs[locs["frame"] < 600], 600)
    full = OnlineDrift(CFG, EXTENT)
    feed(full, locs, frames)
    a, b = half.block_estimates(), full.block_estimates()
    n = len(a)
    assert n >= 3 and len(b) > n
    assert np.array_equal(a.dx, b.dx[:n]) and np.array_equal(a.dy, b.dy[:n])
    # the reference holds exactly the localizations of the completed blocks
    assert half.reference_locs == a.n_locs.sum()


def test_final_refinement_improves_on_the_online_estimate(run, tmp_path):
    est, drift, frames, locs = run["est"], run["drift"], run["frames"], run["locs"]
    online = rms(*(np.column_stack(est.drift_at(np.arange(frames))) - drift).T)
    final = est.finalize(locs, n_frames=frames)
    assert np.array_equal(final.frames, np.arange(frames))
    assert final.dx[0] == 0 and final.dy[0] == 0  # like the simulator's drift.csv
    err = rms(final.dx - drift[:, 0], final.dy - drift[:, 1])
    assert err < online
    assert err < 3.0
    # afterwards corrections use the refined drift
    dx, _ = est.drift_at(np.array([frames // 2]))
    assert dx[0] == pytest.approx(final.dx[frames // 2])
    path = write_drift_csv(tmp_path / "drift.csv", *final)
    assert path.read_text().splitlines()[0] == "frame,dx,dy"
    back = read_drift_csv(path)
    assert np.array_equal(back.frames, final.frames)
    assert np.allclose(back.dx, final.dx, atol=1e-4) and np.allclose(back.dy, final.dy, atol=1e-4)


def test_reads_the_simulators_drift_csv(tmp_path):
    table = np.column_stack([np.arange(50), sim_drift(50)])
    write_drift_csv(tmp_path / "drift.csv", table[:, 0], table[:, 1], table[:, 2])
    back = read_drift_csv(tmp_path / "drift.csv")
    assert np.array_equal(back.frames, np.arange(50))
    assert np.allclose(back.dx, table[:, 1], atol=1e-3) and np.allclose(back.dy, table[:, 2], atol=1e-3)


def test_a_jump_beyond_the_search_range_is_found_by_widening():
    frames = 1000
    drift = np.zeros((frames, 2))
    drift[500:] = [260.0, -180.0]  # a stage bump, far beyond search_nm = 100
    locs, _ = simulate(frames, 9, drift)
    est = OnlineDrift(CFG, EXTENT)
    feed(est, locs, frames)
    blocks = est.block_estimates()
    after = blocks.first_frame >= 500
    assert after.any()
    assert np.allclose(blocks.dx[after], 260.0, atol=3.0) and np.allclose(blocks.dy[after], -180.0, atol=3.0)
    assert blocks.search_radius_nm[after].max() > CFG.search_nm


def test_fiducials_are_found_tracked_and_reported():
    frames = 1200
    drift = sim_drift(frames, seed=5)
    locs, truth = simulate(frames, 12, drift, fiducials=2, density=0.6)
    est = OnlineDrift(CFG, EXTENT)
    feed(est, locs, frames)
    info = est.fiducials
    assert info.n == 2
    assert np.all(info.on_fraction > 0.9)
    true_fid = truth[-2:]
    for pos in info.positions_nm:  # found where a fiducial is (the first block's mean drift apart)
        assert np.min(np.hypot(*(true_fid - pos).T)) < 20.0
    assert info.blocks_used == len(est.block_estimates()) - 1
    assert info.aim_vs_fiducial_rms_nm < 5.0  # the two measurements agree
    final = est.finalize(locs, n_frames=frames)
    assert est.fiducials.used_in_final
    assert rms(final.dx - drift[:, 0], final.dy - drift[:, 1]) < 2.0
    assert est.fiducials.describe()["n"] == 2


def test_max_change_tells_when_to_rerender():
    frames = 800
    drift = sim_drift(frames, seed=2)
    locs, _ = simulate(frames, 4, drift)
    est = OnlineDrift(CFG, EXTENT)
    early = locs[locs["frame"] < 400]
    feed(est, early, 400)
    est.correct(early)
    assert est.max_change_nm() == 0.0
    version = est.version
    feed_rest = locs[locs["frame"] >= 400]
    est.add(feed_rest, frames - 1)
    assert est.version > version
    assert est.max_change_nm() > 0.0  # the estimate for frames already drawn has moved
    est.correct(locs)
    assert est.max_change_nm() == 0.0


def test_redrawing_stale_frames_matches_a_full_rerender():
    """The live view's cheap path: take back only the frames whose correction moved, draw them again."""
    from rtsmlm.analysis.render import Canvas

    frames = 900
    drift = sim_drift(frames, seed=6)
    locs, _ = simulate(frames, 2, drift)
    est = OnlineDrift(CFG, EXTENT)
    live = Canvas(EXTENT, 10.0, mode="gaussian", half_block_frames=CFG.block_frames)
    starts = np.searchsorted(locs["frame"], np.arange(0, frames + 50, 50))
    redrawn = 0
    for i in range(len(starts) - 1):
        batch = locs[starts[i]:starts[i + 1]]
        if est.add(batch, min(frames, 50 * (i + 1)) - 1):
            stale = est.stale_frames(tol_nm=1.0)
            if len(stale):
                drawn = locs[:starts[i]]
                moved = drawn[np.isin(drawn["frame"], stale)]
                before = est.as_applied(moved)
                assert np.array_equal(before["x_dc"], est.as_applied(moved)["x_dc"])
                live.add(before, weight=-1.0)
                live.add(est.correct(moved))
                redrawn += len(moved)
                assert len(est.stale_frames(tol_nm=1.0)) == 0
        live.add(est.correct(batch))
    assert 0 < redrawn < len(locs)  # some, not all, localizations were redrawn
    full = Canvas(EXTENT, 10.0, mode="gaussian", half_block_frames=CFG.block_frames)
    full.rerender(est.as_applied(locs))
    assert live.n_locs == full.n_locs and live.n_locs + live.n_outside == len(locs)
    assert np.allclose(live.image, full.image, atol=1e-4)


def test_finalize_works_offline_on_a_fresh_estimator(run):
    frames = 1200
    locs = run["locs"][run["locs"]["frame"] < frames]
    est = OnlineDrift(CFG, EXTENT)
    final = est.finalize(locs, n_frames=frames)
    drift = run["drift"][:frames]
    assert rms(final.dx - drift[:, 0], final.dy - drift[:, 1]) < 3.0
    assert len(est.block_estimates()) >= 5


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="extent_nm"):
        OnlineDrift(CFG, (0.0, 100.0))
    est = OnlineDrift(CFG, EXTENT)
    bad = np.zeros(3, dtype=[("frame", "<i8"), ("x", "<f4")])
    with pytest.raises(ValueError, match="lacks the column"):
        est.add(bad)
    with pytest.raises(ValueError, match="one length"):
        write_drift_csv("unused.csv", np.arange(3), np.zeros(2), np.zeros(3))


def test_reading_a_file_without_the_drift_header_names_it(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("frame,x,y\n0,1,2\n")
    with pytest.raises(ValueError, match="other.csv"):
        read_drift_csv(path)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_drift_csv(tmp_path / "missing.csv")


def test_empty_and_nan_batches_are_harmless():
    est = OnlineDrift(CFG, EXTENT)
    assert est.add(np.zeros(0, LOC_DTYPE), last_frame=10) is False
    junk = np.zeros(5, LOC_DTYPE)
    junk["x"] = np.nan
    assert est.add(junk) is False
    dx, dy = est.drift_at(np.arange(5))
    assert np.all(dx == 0) and np.all(dy == 0)
    assert est.correct(np.zeros(0, LOC_DTYPE)).dtype.names[-2:] == ("x_dc", "y_dc")


def test_ground_truth_csv_round_trips_and_a_wrong_header_is_named(tmp_path):
    from rtsmlm.io.tables import TRUTH_HEADER, read_truth_csv, write_truth_rows

    rows = np.zeros(3, dtype=[("frame", "<i8"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("photons", "<f4")])
    rows["frame"] = [0, 0, 4]
    rows["x"], rows["y"], rows["photons"] = [10.25, 20.5, 30.75], [1.5, 2.25, 3.0], [500.0, 1000.5, 2000.0]
    path = tmp_path / "ground_truth.csv"
    with path.open("w") as fh:
        fh.write(TRUTH_HEADER + "\n")
        write_truth_rows(fh, rows)
    back = read_truth_csv(path)
    assert np.array_equal(back["frame"], rows["frame"]) and np.allclose(back["x"], rows["x"])
    assert np.allclose(back["photons"], rows["photons"])
    path.write_text("frame,x,y\n0,1,2\n")
    with pytest.raises(ValueError, match="expected the header 'frame,x,y,z,photons'"):
        read_truth_csv(path)
