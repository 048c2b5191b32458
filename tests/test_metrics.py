"""Matching, summary metrics, CRLB formulas and precision-vs-CRLB on constructed cases."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rtsmlm.analysis.metrics import (
    crlb_fisher_lateral_nm,
    crlb_lateral_nm,
    crlb_mle_lateral_nm,
    evaluate,
    match,
    precision_vs_crlb,
)
from rtsmlm.core.jsonio import to_jsonable
from rtsmlm.core.locs import LOC_DTYPE


def table(rows: list[tuple[int, float, float]] | list[tuple[int, float, float, float]]) -> np.ndarray:
    """A LOC_DTYPE table from (frame, x, y[, z]) rows; other columns NaN."""
    out = np.zeros(len(rows), dtype=LOC_DTYPE)
    for name in LOC_DTYPE.names[1:]:
        out[name] = np.nan
    for i, row in enumerate(rows):
        out["frame"][i], out["x"][i], out["y"][i] = row[0], row[1], row[2]
        if len(row) > 3:
            out["z"][i] = row[3]
    return out


# --------------------------------------------------------------------------------------------------
# Matching and summary metrics


def test_known_tp_fp_fn_offsets_give_exact_rmse_bias_and_jaccard() -> None:
    truth = table([(0, 1000, 1000), (0, 5000, 5000), (1, 2000, 2000), (2, 3000, 3000)])
    pred = table([
        (0, 1003, 1004),   # matches truth 0, offset (3, 4) → 5 nm
        (0, 5006, 4992),   # matches truth 1, offset (6, -8) → 10 nm
        (1, 2600, 2000),   # 600 nm from truth 2: false positive; truth 2 is a false negative
        (3, 3000, 3000),   # no truth in frame 3: false positive (truth 3 is in frame 2: false negative)
    ])
    r = evaluate(pred, truth, tolerance_nm=250.0)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 2)
    assert (r["n_pred"], r["n_true"]) == (4, 4)
    assert r["jaccard"] == pytest.approx(2 / 6)
    assert r["rmse_lat_nm"] == pytest.approx(math.sqrt((25 + 100) / 2))
    assert r["bias_x_nm"] == pytest.approx(4.5)
    assert r["bias_y_nm"] == pytest.approx(-2.0)
    # The tables are 2D (z NaN): no axial figures.
    assert math.isnan(r["rmse_ax_nm"]) and math.isnan(r["bias_z_nm"])

    m = match(pred, truth)
    assert m.pred_index.tolist() == [0, 1] and m.truth_index.tolist() == [0, 1]
    assert m.dx.tolist() == pytest.approx([3, 6]) and m.dy.tolist() == pytest.approx([4, -8])


def test_efficiency_on_hand_computed_cases() -> None:
    truth = table([(0, 1000, 1000), (1, 1000, 1000)])
    # Perfect detection, every offset exactly 5 nm: E = 100 − sqrt(0 + 5²) = 95.
    pred = table([(0, 1003, 1004), (1, 997, 996)])
    assert evaluate(pred, truth)["efficiency_lat"] == pytest.approx(95.0)
    # Exact positions, one false positive and one false negative: JI = 1/3, RMSE 0 → E = 100/3.
    pred = table([(0, 1000, 1000), (1, 9000, 9000)])
    r = evaluate(pred, truth)
    assert r["jaccard"] == pytest.approx(1 / 3)
    assert r["efficiency_lat"] == pytest.approx(100 / 3)


def test_axial_rmse_and_bias_when_z_present() -> None:
    truth = table([(0, 1000, 1000, 0.0), (0, 4000, 4000, 100.0)])
    pred = table([(0, 1000, 1000, 30.0), (0, 4000, 4000, 60.0)])  # dz = +30, −40
    r = evaluate(pred, truth)
    assert r["rmse_ax_nm"] == pytest.approx(math.sqrt((900 + 1600) / 2))
    assert r["bias_z_nm"] == pytest.approx(-5.0)
    assert r["efficiency_ax"] == pytest.approx(100 - 0.5 * r["rmse_ax_nm"])


def test_optimal_assignment_beats_greedy_nearest_first() -> None:
    # Greedy pairs the globally closest pair (pred 60 ↔ truth 100, 40 nm) first and then has nothing
    # within tolerance for pred 160; the optimal assignment pairs 60↔0 and 160↔100 (60 nm each).
    truth = table([(0, 1000, 1000), (0, 1100, 1000)])
    pred = table([(0, 1060, 1000), (0, 1160, 1000)])
    m = match(pred, truth, tolerance_nm=70.0)
    assert m.tp == 2
    assert sorted(zip(m.pred_index.tolist(), m.truth_index.tolist())) == [(0, 0), (1, 1)]
    assert np.abs(m.dx).tolist() == pytest.approx([60.0, 60.0])


def test_among_maximal_matchings_the_smallest_total_distance_wins() -> None:
    truth = table([(0, 0, 0), (0, 100, 0)])
    pred = table([(0, 40, 0), (0, 140, 0)])  # 40+40 = 80 nm beats 60+140 = 200 nm
    m = match(pred, truth, tolerance_nm=250.0)
    assert dict(zip(m.pred_index.tolist(), m.truth_index.tolist())) == {0: 0, 1: 1}


def test_tolerance_is_inclusive_and_nan_never_matches() -> None:
    truth = table([(0, 0, 0), (1, 0, 0), (2, 0, 0)])
    pred = table([(0, 150, 200), (1, 150, 200.01), (2, np.nan, 0)])  # 250 nm, just over, NaN
    m = match(pred, truth, tolerance_nm=250.0)
    assert m.pred_index.tolist() == [0]


def test_use_z_matches_on_3d_distance() -> None:
    truth = table([(0, 0, 0, 0.0)])
    pred = table([(0, 100, 0, 300.0)])  # lateral 100 nm, 3D 316 nm
    assert match(pred, truth, tolerance_nm=250.0).tp == 1
    assert match(pred, truth, tolerance_nm=250.0, use_z=True).tp == 0
    assert match(pred, truth, tolerance_nm=400.0, use_z=True).tp == 1
    assert match(pred, truth, tolerance_nm=400.0, use_z=True, tolerance_ax_nm=200.0).tp == 0


def _brute_force(p: np.ndarray, t: np.ndarray, tol: float) -> tuple[int, float]:
    """Most pairs within ``tol`` and their smallest summed distance, by trying every assignment."""
    d = np.hypot(p[:, None, 0] - t[None, :, 0], p[:, None, 1] - t[None, :, 1])
    best = (0, 0.0)
    small, large = (p, t) if len(p) <= len(t) else (t, p)
    for perm in itertools.permutations(range(len(large)), len(small)):
        pairs = [(i, j) if len(p) <= len(t) else (j, i) for i, j in enumerate(perm)]
        ok = [d[i, j] for i, j in pairs if d[i, j] <= tol]
        cand = (len(ok), -sum(ok))
        if cand > (best[0], -best[1]):
            best = (len(ok), sum(ok))
    return best


def test_matching_is_optimal_against_brute_force_on_random_frames() -> None:
    rng = np.random.default_rng(7)
    rows_p, rows_t = [], []
    for frame in range(60):
        n_p, n_t = rng.integers(0, 6), rng.integers(0, 6)
        centre = rng.uniform(0, 1000, 2)
        rows_p += [(frame, *(centre + rng.normal(0, 100, 2))) for _ in range(n_p)]
        rows_t += [(frame, *(centre + rng.normal(0, 100, 2))) for _ in range(n_t)]
    pred, truth = table(rows_p), table(rows_t)
    m = match(pred, truth, tolerance_nm=120.0)
    dist = np.hypot(m.dx, m.dy)
    assert np.all(dist <= 120.0)
    assert len(set(m.pred_index.tolist())) == m.tp and len(set(m.truth_index.tolist())) == m.tp
    assert np.array_equal(pred["frame"][m.pred_index], truth["frame"][m.truth_index])
    total_pairs, total_dist = 0, 0.0
    for frame in range(60):
        p = np.stack([pred["x"], pred["y"]], 1)[pred["frame"] == frame].astype(float)
        t = np.stack([truth["x"], truth["y"]], 1)[truth["frame"] == frame].astype(float)
        if len(p) and len(t):
            n, s = _brute_force(p, t, 120.0)
            total_pairs += n
            total_dist += s
    assert m.tp == total_pairs
    assert dist.sum() == pytest.approx(total_dist, rel=1e-9)


def test_matching_does_not_depend_on_row_order() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    truth = table([(int(f), x, y) for f, x, y in zip(rng.integers(0, 100, n), rng.uniform(0, 5000, n),
                                                      rng.uniform(0, 5000, n))])
    pred = truth.copy()
    pred["x"] += rng.normal(0, 30, n).astype(np.float32)
    shuffled = rng.permutation(n)
    a = evaluate(pred, truth)
    b = evaluate(pred[shuffled], truth[rng.permutation(n)])
    assert a["tp"] == b["tp"] and a["rmse_lat_nm"] == pytest.approx(b["rmse_lat_nm"])


def test_empty_inputs_and_json_safety() -> None:
    empty = table([])
    r = evaluate(empty, table([(0, 1, 1)]))
    assert (r["tp"], r["fp"], r["fn"], r["jaccard"]) == (0, 0, 1, 0.0)
    assert math.isnan(r["rmse_lat_nm"])
    safe = to_jsonable(r)
    assert safe["rmse_lat_nm"] is None and safe["rmse_ax_nm"] is None
    json.dumps(safe, allow_nan=False)  # valid strict JSON
    assert math.isnan(evaluate(empty, empty)["jaccard"])


def test_missing_column_is_named() -> None:
    bad = np.zeros(2, dtype=[("frame", "i8"), ("x", "f4")])
    with pytest.raises(ValueError, match="'y'"):
        match(bad, table([(0, 1, 1)]))


# --------------------------------------------------------------------------------------------------
# CRLB


TYPICAL = [(1000, 50), (2500, 75), (5000, 75), (1000, 150), (5000, 150), (500, 20)]


@pytest.mark.parametrize("photons,bg", TYPICAL)
def test_mortensen_formula_agrees_with_numerical_fisher_at_typical_values(photons: float, bg: float) -> None:
    fisher = crlb_fisher_lateral_nm(photons, bg, 130.0, 100.0)
    assert crlb_lateral_nm(photons, bg, 130.0, 100.0) == pytest.approx(fisher, rel=0.10)
    # Eq. 6 is the MLE bound itself: it matches the numerical Fisher information closely.
    assert crlb_mle_lateral_nm(photons, bg, 130.0, 100.0) == pytest.approx(fisher, rel=0.01)
    # Eq. 5 (least squares) can never be below the bound.
    assert crlb_lateral_nm(photons, bg, 130.0, 100.0) >= fisher


def test_without_background_precision_scales_as_one_over_sqrt_photons() -> None:
    s, a = 130.0, 100.0
    sa2 = s * s + a * a / 12
    for n in (100.0, 1000.0, 10000.0):
        assert crlb_lateral_nm(n, 0.0, s, a) == pytest.approx(math.sqrt(16 / 9 * sa2 / n))
        assert crlb_mle_lateral_nm(n, 0.0, s, a) == pytest.approx(math.sqrt(sa2 / n))
    for f in (crlb_lateral_nm, crlb_mle_lateral_nm, crlb_fisher_lateral_nm):
        assert f(4000.0, 0.0, s, a) / f(1000.0, 0.0, s, a) == pytest.approx(0.5, rel=1e-6)
    # The exact bound sits close to σ_a/√N without background (the pixelation model's approximation).
    assert crlb_fisher_lateral_nm(1000.0, 0.0, s, a) == pytest.approx(math.sqrt(sa2 / 1000.0), rel=0.02)


def test_background_dominated_limit_and_monotonicity() -> None:
    # For b ≫ N the background term dominates: var ∝ b/N², so precision ∝ sqrt(b)/N.
    r = crlb_lateral_nm(100.0, 4e6, 130.0, 100.0) / crlb_lateral_nm(200.0, 1e6, 130.0, 100.0)
    assert r == pytest.approx(4.0, rel=1e-3)
    photons = np.array([200.0, 500.0, 1000.0, 5000.0])
    for f in (crlb_lateral_nm, crlb_mle_lateral_nm):
        assert np.all(np.diff(f(photons, 50.0, 130.0, 100.0)) < 0)
        assert np.all(np.diff(f(1000.0, np.array([0.0, 10.0, 100.0, 1000.0]), 130.0, 100.0)) > 0)


def test_excess_noise_doubles_the_variance() -> None:
    for f in (crlb_lateral_nm, crlb_mle_lateral_nm, crlb_fisher_lateral_nm):
        assert f(2000.0, 60.0, 130.0, 100.0, excess_noise=2.0) == pytest.approx(
            math.sqrt(2.0) * f(2000.0, 60.0, 130.0, 100.0))


def test_crlb_broadcasts_over_arrays() -> None:
    photons = np.array([500.0, 2500.0])
    bg = np.array([0.0, 75.0])
    out = crlb_mle_lateral_nm(photons, bg, 130.0, 100.0)
    assert out.shape == (2,)
    assert out[1] == pytest.approx(crlb_mle_lateral_nm(2500.0, 75.0, 130.0, 100.0))


# --------------------------------------------------------------------------------------------------
# Precision against the CRLB per photon bin


def test_precision_vs_crlb_recovers_an_injected_noise_factor() -> None:
    rng = np.random.default_rng(11)
    n = 20000
    truth = table([(int(i // 20), 500.0 + 300.0 * (i % 20), 3000.0) for i in range(n)])
    photons = rng.uniform(400.0, 8000.0, n)
    bg = 60.0
    # Localizations scattered with exactly 1.3 × the per-axis Fisher bound of each emitter.
    sd = 1.3 * crlb_mle_lateral_nm(photons, bg, 130.0, 100.0)
    pred = truth.copy()
    pred["x"] = truth["x"] + rng.normal(0.0, 1.0, n) * sd
    pred["y"] = truth["y"] + rng.normal(0.0, 1.0, n) * sd
    m = match(pred, truth)
    assert m.tp == n
    rows = precision_vs_crlb(m, photons, bg, 130.0, 100.0, bins=5)
    assert len(rows) == 5
    assert sum(r["n"] for r in rows) == n
    for r in rows:
        assert r["photons_lo"] <= r["photons_mean"] <= r["photons_hi"]
        assert r["ratio_fisher"] == pytest.approx(1.3, rel=0.06)
        assert r["rmse_lat_nm"] == pytest.approx(math.sqrt((r["rmse_x_nm"] ** 2 + r["rmse_y_nm"] ** 2) / 2))
        assert r["crlb_lat_nm"] >= r["crlb_fisher_lat_nm"]
    # More photons, better precision.
    assert [r["rmse_lat_nm"] for r in rows] == sorted((r["rmse_lat_nm"] for r in rows), reverse=True)


def test_precision_vs_crlb_with_explicit_edges_and_per_emitter_background() -> None:
    truth = table([(i, 1000.0, 1000.0) for i in range(4)])
    pred = table([(0, 1003.0, 1000.0), (1, 1000.0, 996.0), (2, 1000.0, 1000.0), (3, 1010.0, 1000.0)])
    m = match(pred, truth)
    photons = np.array([100.0, 150.0, 1000.0, 1500.0])
    bg = np.array([10.0, 10.0, 50.0, 50.0])
    rows = precision_vs_crlb(m, photons, bg, 130.0, 100.0, bins=[0.0, 500.0, 2000.0, 4000.0])
    assert [r["n"] for r in rows] == [2, 2, 0]
    assert rows[0]["rmse_x_nm"] == pytest.approx(math.sqrt(9 / 2))
    assert rows[0]["rmse_y_nm"] == pytest.approx(math.sqrt(16 / 2))
    expected = math.sqrt(np.mean(crlb_lateral_nm(photons[:2], bg[:2], 130.0, 100.0) ** 2))
    assert rows[0]["crlb_lat_nm"] == pytest.approx(expected)
    assert math.isnan(rows[2]["rmse_lat_nm"])
    with pytest.raises(ValueError, match="truth_photons"):
        precision_vs_crlb(m, photons[:3], 50.0, 130.0, 100.0)


# --------------------------------------------------------------------------------------------------
# evaluate_files: the JSON of `rtsmlm evaluate`


def test_evaluate_files_with_crlb_table_and_plot(tmp_path: Path) -> None:
    from rtsmlm.analysis.evaluate import evaluate_files
    from rtsmlm.io.locfiles import write_csv, write_picasso_hdf5

    rng = np.random.default_rng(5)
    n = 4000
    truth = table([(int(i // 10), 400.0 + 500.0 * (i % 10), 2000.0) for i in range(n)])
    truth["photons"] = rng.uniform(500.0, 6000.0, n)
    truth["z"] = 0.0
    sd = crlb_mle_lateral_nm(truth["photons"], 40.0, 130.0, 100.0)
    pred = truth.copy()
    pred["x"] += (rng.normal(0.0, 1.0, n) * sd).astype(np.float32)
    pred["y"] += (rng.normal(0.0, 1.0, n) * sd).astype(np.float32)
    pred["sigma_x"] = pred["sigma_y"] = sd
    extra = table([(0, 30000.0, 30000.0)])  # one false positive far away
    pred = np.concatenate([pred, extra])
    truth_path = write_csv(tmp_path / "truth.csv", truth)
    locs_path, _ = write_picasso_hdf5(tmp_path / "locs.hdf5", pred, 100.0, 400, 400, psf_sigma_nm=130.0)

    result = evaluate_files(locs_path, truth_path, pixel_size_nm=100.0, sigma_nm=130.0, bg=40.0,
                            plot_path=tmp_path / "crlb.png", photon_bins=4)
    text = json.dumps(result, allow_nan=False)  # strict JSON, as the CLI prints it
    assert json.loads(text)["tp"] == n
    assert (result["tp"], result["fp"], result["fn"], result["n_pred"]) == (n, 1, 0, n + 1)
    assert result["jaccard"] == pytest.approx(n / (n + 1))
    assert result["rmse_ax_nm"] == 0.0  # both tables have z = 0
    assert len(result["crlb"]) == 4 and sum(r["n"] for r in result["crlb"]) == n
    for row in result["crlb"]:
        assert row["ratio_fisher"] == pytest.approx(1.0, rel=0.08)
    assert "per axis" in result["crlb_convention"]
    png = Path(result["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_files_skips_crlb_without_photons(tmp_path: Path, shared_data: Path) -> None:
    from rtsmlm.analysis.evaluate import evaluate_files
    from rtsmlm.io.locfiles import read_locs, write_csv

    truth_path = shared_data / "storm-analysis-test" / "truth.csv"
    pred = read_locs(truth_path)
    pred["x"] += 6.0
    pred["y"] -= 8.0
    locs_path = write_csv(tmp_path / "shifted.csv", pred, style="thunderstorm")
    result = evaluate_files(locs_path, truth_path, pixel_size_nm=160.0, sigma_nm=160.0, bg=10.0,
                            tolerance_nm=160.0, plot_path=tmp_path / "none.png")
    assert (result["tp"], result["fp"], result["fn"]) == (2000, 0, 0)
    assert result["rmse_lat_nm"] == pytest.approx(10.0, abs=1e-3)
    assert result["bias_x_nm"] == pytest.approx(6.0, abs=1e-3)
    assert result["efficiency_lat"] == pytest.approx(90.0, abs=1e-3)
    assert result["crlb"] is None and "no photon counts" in result["crlb_note"]
    assert result["plot"] is None and not (tmp_path / "none.png").exists()


def test_crlb_in_frame_is_the_single_emitter_bound_alone_and_larger_at_an_edge_or_beside_a_neighbour() -> None:
    from rtsmlm.analysis.metrics import crlb_fisher_3d_nm, crlb_in_frame_nm
    from rtsmlm.sim.psf import AstigmaticPSF

    psf = AstigmaticPSF(1.3, 300.0, 400.0)
    alone = crlb_in_frame_nm([32.5], [32.5], [200.0], [2000.0], 50.0, psf.sigmas, (64, 64), 100.0, 2.0)
    # crlb_fisher_3d_nm puts the emitter at a pixel centre on a ±6 px region: the same model.
    np.testing.assert_allclose(alone, crlb_fisher_3d_nm(2000.0, 50.0, psf.sigmas, 200.0, 100.0, 2.0), rtol=1e-6)
    edge = crlb_in_frame_nm([0.7], [32.5], [200.0], [2000.0], 50.0, psf.sigmas, (64, 64), 100.0, 2.0)
    assert edge[0] > 1.5 * alone[0] and edge[2] > alone[2]  # half the spot is off the sensor
    far = crlb_in_frame_nm([32.5, 44.5], [32.5, 32.5], [200.0, 300.0], [2000.0] * 2, 50.0, psf.sigmas, (64, 64), 100.0, 2.0)
    near = crlb_in_frame_nm([32.5, 34.5], [32.5, 32.5], [200.0, 300.0], [2000.0] * 2, 50.0, psf.sigmas, (64, 64), 100.0, 2.0)
    np.testing.assert_allclose(far, alone, rtol=0.02)  # 12 px away: no overlap, no cost
    assert near[0] > 2.0 * alone[0] and near[2] > 1.2 * alone[2]  # 2 px apart along x: x suffers most
