"""Localization accuracy metrics against ground truth, and the Cramér–Rao lower bound (CRLB).

Conventions (DESIGN.md): nanometres, origin at the top-left corner of the top-left pixel, 0-based frames.
Offsets are always *prediction minus truth*.

Matching follows the SMLM Challenge 2016 (Sage et al., Nat. Methods 16:387, 2019): within each frame,
predictions and true emitters are paired by an optimal assignment that first maximises the number of pairs
closer than the tolerance and then minimises their summed distance; pairs beyond the tolerance are not
matches. Unpaired predictions are false positives, unpaired true emitters false negatives.

Three lateral precision bounds for a pixelated 2D Gaussian PSF under Poisson noise are provided, all per
axis (the standard deviation of x alone, which equals that of y):

* :func:`crlb_lateral_nm` — Mortensen et al. 2010 (Nat. Methods 7:377) Eq. 5,
  var = (σ_a²/N)·(16/9 + 8π σ_a² b/(N a²)), σ_a² = σ² + a²/12. Strictly this is the precision of a
  least-squares fit; with no background it is 4/3 × the true bound, at typical background (b ≳ 20
  photons/px for N ≲ 5000) within ~10 % of it.
* :func:`crlb_mle_lateral_nm` — Mortensen Eq. 6, the precision of maximum likelihood, which attains the
  bound; closed form through the dilogarithm.
* :func:`crlb_fisher_lateral_nm` — the bound itself, by numerical Fisher information of the
  pixel-integrated (erf) Gaussian with parameters (x, y, N, b). Agrees with Eq. 6 to < 1 %.

Each is multiplied by the excess-noise factor F (2 for an EMCCD with EM gain, 1 otherwise) on the variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Match",
    "match",
    "evaluate",
    "metrics_from_match",
    "crlb_lateral_nm",
    "crlb_mle_lateral_nm",
    "crlb_fisher_lateral_nm",
    "precision_vs_crlb",
]


# --------------------------------------------------------------------------------------------------
# Matching


@dataclass(frozen=True)
class Match:
    """The result of pairing predictions with true emitters.

    ``pred_index[k]`` and ``truth_index[k]`` are row indices into the original ``pred`` and ``truth``
    tables of the k-th pair; ``dx``, ``dy``, ``dz`` (nm, float64) are prediction minus truth for that
    pair (``dz`` is NaN where either table has no finite z).
    """

    pred_index: np.ndarray
    truth_index: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray
    n_pred: int
    n_true: int
    tolerance_nm: float
    use_z: bool

    @property
    def tp(self) -> int:
        """True positives: matched pairs."""
        return int(len(self.pred_index))

    @property
    def fp(self) -> int:
        """False positives: predictions left unpaired."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """False negatives: true emitters left unpaired."""
        return self.n_true - self.tp


def _column(table: np.ndarray, name: str, what: str) -> np.ndarray:
    names = table.dtype.names or ()
    if name not in names:
        raise ValueError(f"the {what} table has no '{name}' column (columns: {', '.join(names)})")
    return np.asarray(table[name], dtype=np.float64)


def _z_or_nan(table: np.ndarray) -> np.ndarray:
    if "z" in (table.dtype.names or ()):
        return np.asarray(table["z"], dtype=np.float64)
    return np.full(len(table), np.nan)


def _rank_within(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The rank of each row's value among the distinct values of the rows in its group (0-based)."""
    order = np.lexsort((values, groups))
    g, v = groups[order], values[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    distinct = np.cumsum(new_group | np.r_[True, v[1:] != v[:-1]]) - 1
    local = distinct - distinct[new_group][np.cumsum(new_group) - 1]
    out = np.empty(len(values), np.int64)
    out[order] = local
    return out


def match(pred: np.ndarray, truth: np.ndarray, tolerance_nm: float = 250.0, use_z: bool = False,
          tolerance_ax_nm: float | None = None) -> Match:
    """Pair predictions with true emitters frame by frame (optimal assignment, SMLM Challenge style).

    ``pred`` and ``truth`` are structured arrays with at least ``frame``, ``x``, ``y`` (nm) and, for
    ``use_z``, ``z``. The cost is the lateral distance, or the 3D distance when ``use_z``; a pair is a
    match when that distance is ≤ ``tolerance_nm`` (and, if given, ``|dz|`` ≤ ``tolerance_ax_nm``).
    Among all assignments the one with the most matches is chosen, ties broken by the smallest summed
    distance. Rows with non-finite coordinates never match.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if not tolerance_nm > 0:
        raise ValueError(f"tolerance_nm must be positive, got {tolerance_nm!r}")
    if use_z and not (("z" in (pred.dtype.names or ())) and ("z" in (truth.dtype.names or ()))):
        raise ValueError("use_z=True needs a 'z' column in both the prediction and the truth tables")
    tol = float(tolerance_nm)
    px, py = _column(pred, "x", "prediction"), _column(pred, "y", "prediction")
    tx, ty = _column(truth, "x", "truth"), _column(truth, "y", "truth")
    pz, tz = _z_or_nan(pred), _z_or_nan(truth)

    def points(table: np.ndarray, x: np.ndarray, y: np.ndarray,
               z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The frame becomes one more coordinate, scaled so that points of different frames are always
        # farther apart than the tolerance: one spatial search then finds every same-frame candidate.
        cols = [x, y] + ([z] if use_z else []) + [np.asarray(table["frame"], np.float64) * (4.0 * tol)]
        pts = np.stack(cols, axis=1) if len(x) else np.zeros((0, len(cols)))
        rows = np.flatnonzero(np.all(np.isfinite(pts), axis=1))  # NaN rows never match
        return pts[rows], rows

    p_pts, p_rows = points(pred, px, py, pz)
    t_pts, t_rows = points(truth, tx, ty, tz)
    if len(p_pts) and len(t_pts):
        cand = cKDTree(p_pts).sparse_distance_matrix(cKDTree(t_pts), tol, output_type="ndarray")
        ci, cj, cd = p_rows[cand["i"]], t_rows[cand["j"]], cand["v"].astype(np.float64)
    else:
        ci = cj = np.zeros(0, np.int64)
        cd = np.zeros(0)
    if tolerance_ax_nm is not None:
        ok = np.abs(pz[ci] - tz[cj]) <= tolerance_ax_nm
        ci, cj, cd = ci[ok], cj[ok], cd[ok]

    # The assignment problem splits into the connected components of the candidate graph. In a
    # component with one prediction or one true emitter (nearly all of them) at most one pair can be
    # made: its shortest candidate. Only components with several of each go to the solver.
    n_p, n_t = len(pred), len(truth)
    graph = coo_matrix((np.ones(len(ci)), (ci, n_p + cj)), shape=(n_p + n_t, n_p + n_t))
    n_comp, label = connected_components(graph, directed=False)
    comp = label[ci]
    has_p = np.zeros(n_p, dtype=bool)
    has_p[ci] = True
    has_t = np.zeros(n_t, dtype=bool)
    has_t[cj] = True
    preds_per = np.bincount(label[:n_p][has_p], minlength=n_comp)
    truths_per = np.bincount(label[n_p:][has_t], minlength=n_comp)
    star = (preds_per[comp] == 1) | (truths_per[comp] == 1)
    s_idx = np.flatnonzero(star)
    s_idx = s_idx[np.lexsort((cd[s_idx], comp[s_idx]))]  # by component, then distance
    first = s_idx[np.r_[True, comp[s_idx][1:] != comp[s_idx][:-1]]] if len(s_idx) else s_idx
    pairs_p = [ci[first]]
    pairs_t = [cj[first]]
    multi = np.flatnonzero(~star)
    if len(multi):
        multi = multi[np.argsort(comp[multi], kind="stable")]
        # Each edge's row and column inside its component's cost matrix, computed for all at once.
        r_loc = _rank_within(comp[multi], ci[multi])
        c_loc = _rank_within(comp[multi], cj[multi])
        bounds = np.flatnonzero(np.diff(comp[multi])) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(multi)]):
            edges, r, c = multi[lo:hi], r_loc[lo:hi], c_loc[lo:hi]
            n_rows, n_cols = int(r.max()) + 1, int(c.max()) + 1
            # A forbidden pair costs more than any complete set of allowed pairs, so the assignment
            # first maximises the number of allowed pairs, then minimises their summed distance.
            cost = np.full((n_rows, n_cols), tol * (min(n_rows, n_cols) + 1) + 1.0)
            cost[r, c] = cd[edges]
            allowed = np.zeros((n_rows, n_cols), dtype=bool)
            allowed[r, c] = True
            rows, cols = np.empty(n_rows, np.int64), np.empty(n_cols, np.int64)
            rows[r], cols[c] = ci[edges], cj[edges]
            ar, ac = linear_sum_assignment(cost)
            keep = allowed[ar, ac]
            pairs_p.append(rows[ar[keep]])
            pairs_t.append(cols[ac[keep]])

    pred_index = np.concatenate(pairs_p).astype(np.int64)
    truth_index = np.concatenate(pairs_t).astype(np.int64)
    # Report pairs in the order of the predictions.
    by_pred = np.argsort(pred_index, kind="stable")
    pred_index, truth_index = pred_index[by_pred], truth_index[by_pred]
    return Match(
        pred_index=pred_index,
        truth_index=truth_index,
        dx=px[pred_index] - tx[truth_index],
        dy=py[pred_index] - ty[truth_index],
        dz=pz[pred_index] - tz[truth_index],
        n_pred=n_p,
        n_true=n_t,
        tolerance_nm=tol,
        use_z=use_z,
    )


# --------------------------------------------------------------------------------------------------
# Summary metrics


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def metrics_from_match(m: Match) -> dict[str, Any]:
    """Jaccard, RMSE, efficiency and bias of a :class:`Match` (see :func:`evaluate` for the keys)."""
    tp, fp, fn = m.tp, m.fp, m.fn
    denom = tp + fp + fn
    jaccard = tp / denom if denom else math.nan
    rmse_lat = math.sqrt(_mean(m.dx**2 + m.dy**2)) if tp else math.nan
    dz = m.dz[np.isfinite(m.dz)]
    rmse_ax = math.sqrt(_mean(dz**2)) if len(dz) else math.nan
    # SMLM Challenge 2016 efficiency: distance from the ideal point (JI = 100 %, RMSE = 0) with
    # α = 1 nm⁻¹ laterally and 0.5 nm⁻¹ axially.
    efficiency_lat = 100.0 - math.sqrt((100.0 - 100.0 * jaccard) ** 2 + (1.0 * rmse_lat) ** 2)
    efficiency_ax = 100.0 - math.sqrt((100.0 - 100.0 * jaccard) ** 2 + (0.5 * rmse_ax) ** 2)
    return {
        "jaccard": jaccard,
        "rmse_lat_nm": rmse_lat,
        "rmse_ax_nm": rmse_ax,
        "efficiency_lat": efficiency_lat,
        "efficiency_ax": efficiency_ax,
        "n_pred": m.n_pred,
        "n_true": m.n_true,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "bias_x_nm": _mean(m.dx),
        "bias_y_nm": _mean(m.dy),
        "bias_z_nm": _mean(dz),
        "tolerance_nm": m.tolerance_nm,
    }


def evaluate(pred: np.ndarray, truth: np.ndarray, tolerance_nm: float = 250.0,
             use_z: bool = False) -> dict[str, Any]:
    """Match ``pred`` to ``truth`` (:func:`match`) and summarise.

    Keys: ``jaccard`` = TP/(TP+FP+FN) (a fraction); ``rmse_lat_nm`` = sqrt(mean(dx²+dy²)) over matches
    (the radial RMSE, √2 × the per-axis one); ``rmse_ax_nm`` = sqrt(mean(dz²)) over matches with finite
    z in both tables (NaN when there are none); ``efficiency_lat`` = 100 − sqrt((100 − 100·JI)² +
    (1 nm⁻¹·RMSE_lat)²) and ``efficiency_ax`` with α = 0.5 nm⁻¹ (SMLM Challenge 2016, in %);
    ``n_pred``, ``n_true``, ``tp``, ``fp``, ``fn``; ``bias_x_nm``, ``bias_y_nm``, ``bias_z_nm`` = mean
    offset prediction − truth; ``tolerance_nm``. Undefined values are NaN (None in JSON: :func:`rtsmlm.core.jsonio.to_jsonable`).
    """
    return metrics_from_match(match(pred, truth, tolerance_nm=tolerance_nm, use_z=use_z))


# --------------------------------------------------------------------------------------------------
# Cramér–Rao lower bound


def _pixelated_sigma2(sigma_nm: Any, pixel_nm: Any) -> np.ndarray:
    return np.asarray(sigma_nm, dtype=np.float64) ** 2 + np.asarray(pixel_nm, dtype=np.float64) ** 2 / 12.0


def crlb_lateral_nm(photons: Any, bg_per_px: Any, sigma_nm: Any, pixel_nm: Any,
                    excess_noise: float = 1.0) -> np.ndarray | float:
    """Per-axis lateral precision (nm) of a pixelated 2D Gaussian, Mortensen et al. 2010 Eq. 5.

    σ_a² = σ² + a²/12; var = F·(σ_a²/N)·(16/9 + 8π σ_a² b/(N a²)), with N photons, b background
    photons per pixel, σ the PSF standard deviation, a the pixel size and F the excess-noise factor
    (2 for an EMCCD with EM gain, 1 otherwise). Returns sqrt(var) for one axis; broadcasts over arrays
    (a float for scalar inputs). This is the least-squares precision: without background it is 4/3 of
    the true bound (:func:`crlb_mle_lateral_nm`, :func:`crlb_fisher_lateral_nm`).
    """
    n = np.asarray(photons, dtype=np.float64)
    b = np.asarray(bg_per_px, dtype=np.float64)
    a2 = np.asarray(pixel_nm, dtype=np.float64) ** 2
    sa2 = _pixelated_sigma2(sigma_nm, pixel_nm)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = excess_noise * sa2 / n * (16.0 / 9.0 + 8.0 * np.pi * sa2 * b / (n * a2))
        out = np.sqrt(var)
    return float(out) if out.ndim == 0 else out


def crlb_mle_lateral_nm(photons: Any, bg_per_px: Any, sigma_nm: Any, pixel_nm: Any,
                        excess_noise: float = 1.0) -> np.ndarray | float:
    """Per-axis lateral CRLB (nm) of a pixelated 2D Gaussian, Mortensen et al. 2010 Eq. 6 (MLE).

    var = F·(σ_a²/N)·[1 + ∫₀¹ ln t / (1 + t/τ) dt]⁻¹ with τ = 2π σ_a² b/(N a²); the integral equals
    τ·Li₂(−1/τ). Without background var = F·σ_a²/N. Broadcasts like :func:`crlb_lateral_nm`.
    """
    from scipy.special import spence

    n = np.asarray(photons, dtype=np.float64)
    b = np.asarray(bg_per_px, dtype=np.float64)
    a2 = np.asarray(pixel_nm, dtype=np.float64) ** 2
    sa2 = _pixelated_sigma2(sigma_nm, pixel_nm)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tau = 2.0 * np.pi * sa2 * b / (n * a2)
        # Li₂(z) = spence(1 − z); τ → 0 (no background) makes the integral vanish.
        integral = np.where(tau > 0, tau * spence(1.0 + 1.0 / np.where(tau > 0, tau, 1.0)), 0.0)
        var = excess_noise * sa2 / n / (1.0 + integral)
        out = np.sqrt(var)
    return float(out) if out.ndim == 0 else out


def crlb_fisher_lateral_nm(photons: float, bg_per_px: float, sigma_nm: float, pixel_nm: float,
                           excess_noise: float = 1.0, offset_px: tuple[float, float] = (0.0, 0.0),
                           roi_half_px: int | None = None) -> float:
    """Per-axis lateral CRLB (nm, x axis) from the numerical Fisher information of the erf PSF model.

    Model: μ_k = N·Ex_k·Ey_k + b on a (2h+1)² pixel region centred on the emitter's pixel, with
    Ex_k = ½[erf((x_k + a/2 − x₀)/(√2σ)) − erf((x_k − a/2 − x₀)/(√2σ))]; Poisson noise; unknowns
    (x₀, y₀, N, b). ``offset_px`` places the emitter relative to the pixel centre; ``roi_half_px``
    defaults to ceil(5σ/a). Returns sqrt(F·[I⁻¹]ₓₓ).
    """
    from scipy.special import erf

    s, a = float(sigma_nm), float(pixel_nm)
    half = int(math.ceil(5.0 * s / a)) if roi_half_px is None else int(roi_half_px)
    centres = np.arange(-half, half + 1, dtype=np.float64) * a

    def profile(x0: float) -> tuple[np.ndarray, np.ndarray]:
        lo = (centres - a / 2 - x0) / (math.sqrt(2.0) * s)
        hi = (centres + a / 2 - x0) / (math.sqrt(2.0) * s)
        e = 0.5 * (erf(hi) - erf(lo))
        de = (np.exp(-lo**2) - np.exp(-hi**2)) / (math.sqrt(2.0 * math.pi) * s)  # ∂e/∂x₀
        return e, de

    ex, dex = profile(offset_px[0] * a)
    ey, dey = profile(offset_px[1] * a)
    n, b = float(photons), float(bg_per_px)
    mu = n * np.outer(ey, ex) + b
    jac = [n * np.outer(ey, dex), n * np.outer(dey, ex), np.outer(ey, ex), np.ones_like(mu)]
    fisher = np.array([[np.sum(ji * jj / mu) for jj in jac] for ji in jac])
    return float(math.sqrt(excess_noise * np.linalg.inv(fisher)[0, 0]))


def crlb_fisher_3d_nm(photons: float, bg_per_px: float, sigmas_px: Any, z_nm: float, pixel_nm: float,
                      excess_noise: float = 1.0, roi_half_px: int = 6) -> tuple[float, float, float]:
    """Per-axis CRLB (x, y, z in nm) of a 3D PSF whose x/y widths depend on z (an astigmatic Gaussian).

    ``sigmas_px(z)`` returns (sigma_x, sigma_y) in pixels at depth z nm (e.g.
    :meth:`rtsmlm.sim.psf.AstigmaticPSF.sigmas`). Model: μ_k = N·Ex_k(x₀, σx(z))·Ey_k(y₀, σy(z)) + b,
    pixel-integrated, Poisson noise times ``excess_noise``; unknowns (x₀, y₀, z, N, b); the Fisher matrix
    from central finite differences of μ, the emitter at a pixel centre of a (2·``roi_half_px`` + 1)² region:
    :func:`crlb_in_frame_nm` of one emitter alone.
    """
    centre = roi_half_px + 0.5
    return crlb_in_frame_nm([centre], [centre], [z_nm], [photons], bg_per_px, sigmas_px,
                            (2 * roi_half_px + 1, 2 * roi_half_px + 1), pixel_nm, excess_noise, roi_half_px)


def crlb_in_frame_nm(x_px: np.ndarray, y_px: np.ndarray, z_nm: np.ndarray, photons: np.ndarray, bg_per_px: float,
                     sigmas_px: Any, frame_shape: tuple[int, int], pixel_nm: float, excess_noise: float = 1.0,
                     roi_half_px: int = 6) -> tuple[float, float, float]:
    """Per-axis CRLB (x, y, z in nm) of the first of several emitters of one frame, all of them unknown.

    The bound an emitter actually has where it is: its neighbours' positions, depths and photons are
    estimated with it (their overlapping light costs information), and pixels beyond the frame's edge do not
    exist (a spot cut off by the edge is less informative). Model: μ = Σ_j N_j·Ex(x_j, σx(z_j))·Ey(y_j, σy(z_j))
    + b on the pixels within ``roi_half_px`` of any of the emitters, clipped to ``frame_shape``; Poisson noise
    times ``excess_noise``; unknowns (x, y, z, N) of every emitter and b; Fisher matrix from central finite
    differences. Positions in pixels (pixel j spans [j, j+1)); ``sigmas_px(z)`` as in :func:`crlb_fisher_3d_nm`.
    Alone and far from the edges it is :func:`crlb_fisher_3d_nm`.
    """
    from scipy.special import erf

    x_px, y_px = np.atleast_1d(np.asarray(x_px, float)), np.atleast_1d(np.asarray(y_px, float))
    z_nm, photons = np.atleast_1d(np.asarray(z_nm, float)), np.atleast_1d(np.asarray(photons, float))
    h, w = frame_shape
    r0 = max(0, int(math.floor(y_px.min())) - roi_half_px)
    r1 = min(h, int(math.floor(y_px.max())) + roi_half_px + 1)
    c0 = max(0, int(math.floor(x_px.min())) - roi_half_px)
    c1 = min(w, int(math.floor(x_px.max())) + roi_half_px + 1)
    rows, cols = np.arange(r0, r1, dtype=np.float64), np.arange(c0, c1, dtype=np.float64)

    def axis(edges: np.ndarray, c: float, s: float) -> np.ndarray:
        return 0.5 * (erf((edges + 1.0 - c) / (math.sqrt(2.0) * s)) - erf((edges - c) / (math.sqrt(2.0) * s)))

    def mu(q: np.ndarray) -> np.ndarray:
        out = np.full((len(rows), len(cols)), q[-1])
        for x0, y0, z, n in q[:-1].reshape(-1, 4):
            sx, sy = (float(v) for v in sigmas_px(np.asarray(z)))
            out += n * np.outer(axis(rows, y0, sy), axis(cols, x0, sx))
        return out

    q0 = np.concatenate([np.column_stack([x_px, y_px, z_nm, photons]).ravel(), [float(bg_per_px)]])
    steps = np.concatenate([np.column_stack([np.full(len(x_px), 1e-3), np.full(len(x_px), 1e-3),
                                             np.full(len(x_px), 0.5), 1e-3 * np.maximum(photons, 1.0)]).ravel(),
                            [1e-3 * max(float(bg_per_px), 1.0)]])
    jac = []
    for k in range(len(q0)):
        dq = np.zeros(len(q0))
        dq[k] = steps[k]
        jac.append(((mu(q0 + dq) - mu(q0 - dq)) / (2 * steps[k])).ravel())
    jac = np.array(jac)
    fisher = (jac / mu(q0).ravel()) @ jac.T
    cov = excess_noise * np.linalg.pinv(fisher)
    return (float(math.sqrt(max(cov[0, 0], 0.0))) * pixel_nm, float(math.sqrt(max(cov[1, 1], 0.0))) * pixel_nm,
            float(math.sqrt(max(cov[2, 2], 0.0))))


# --------------------------------------------------------------------------------------------------
# Precision versus CRLB per photon bin


def precision_vs_crlb(m: Match, truth_photons: np.ndarray, bg: Any, sigma_nm: float, pixel_nm: float,
                      excess_noise: float = 1.0, bins: int | Sequence[float] = 8) -> list[dict[str, Any]]:
    """Measured per-axis lateral RMSE against the per-axis CRLB, in bins of true photon count.

    ``truth_photons`` holds the true photons of every truth row (indexed like the truth table); ``bg``
    is background photons per pixel, a scalar or one value per truth row. ``bins`` is a number of
    equal-count bins over the matched emitters' photons, or explicit bin edges (last bin closed).

    Convention — everything is **per axis**: ``rmse_x_nm`` = sqrt(mean dx²), ``rmse_y_nm`` likewise,
    ``rmse_lat_nm`` = sqrt((mean dx² + mean dy²)/2) (the radial RMSE of :func:`evaluate` divided by √2);
    ``crlb_lat_nm`` = sqrt(mean over the bin of the :func:`crlb_lateral_nm` variance) (Mortensen Eq. 5)
    and ``crlb_fisher_lat_nm`` the same with :func:`crlb_mle_lateral_nm` (Eq. 6, the Fisher bound);
    ``ratio`` = rmse_lat_nm / crlb_lat_nm and ``ratio_fisher`` = rmse_lat_nm / crlb_fisher_lat_nm.
    Each row also has ``photons_lo``, ``photons_hi``, ``photons_mean`` and ``n`` (matches in the bin).
    """
    photons_all = np.asarray(truth_photons, dtype=np.float64)
    if len(photons_all) != m.n_true:
        raise ValueError(f"truth_photons has {len(photons_all)} values but the match has {m.n_true} "
                         "truth rows")
    photons = photons_all[m.truth_index]
    bg_arr = np.asarray(bg, dtype=np.float64)
    bg_pair = bg_arr[m.truth_index] if bg_arr.ndim else np.full(len(photons), float(bg_arr))
    finite = np.isfinite(photons) & (photons > 0) & np.isfinite(bg_pair)
    photons, bg_pair = photons[finite], bg_pair[finite]
    dx, dy = m.dx[finite], m.dy[finite]
    if len(photons) == 0:
        return []
    if isinstance(bins, (int, np.integer)):
        edges = np.unique(np.quantile(photons, np.linspace(0.0, 1.0, int(bins) + 1)))
        if len(edges) == 1:
            edges = np.array([edges[0], edges[0]])
    else:
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) < 0):
            raise ValueError(f"bins must be a count or increasing bin edges, got {bins!r}")
    var_m5 = np.asarray(crlb_lateral_nm(photons, bg_pair, sigma_nm, pixel_nm, excess_noise)) ** 2
    var_m6 = np.asarray(crlb_mle_lateral_nm(photons, bg_pair, sigma_nm, pixel_nm, excess_noise)) ** 2
    which = np.clip(np.searchsorted(edges, photons, side="right") - 1, 0, len(edges) - 2)
    inside = (photons >= edges[0]) & (photons <= edges[-1])
    rows: list[dict[str, Any]] = []
    for k in range(len(edges) - 1):
        sel = inside & (which == k)
        n = int(sel.sum())
        msx, msy = _mean(dx[sel] ** 2), _mean(dy[sel] ** 2)
        rmse_lat = math.sqrt((msx + msy) / 2.0) if n else math.nan
        crlb5 = math.sqrt(_mean(var_m5[sel])) if n else math.nan
        crlb6 = math.sqrt(_mean(var_m6[sel])) if n else math.nan
        rows.append({
            "photons_lo": float(edges[k]),
            "photons_hi": float(edges[k + 1]),
            "photons_mean": _mean(photons[sel]),
            "n": n,
            "rmse_x_nm": math.sqrt(msx) if n else math.nan,
            "rmse_y_nm": math.sqrt(msy) if n else math.nan,
            "rmse_lat_nm": rmse_lat,
            "crlb_lat_nm": crlb5,
            "crlb_fisher_lat_nm": crlb6,
            "ratio": rmse_lat / crlb5 if n else math.nan,
            "ratio_fisher": rmse_lat / crlb6 if n else math.nan,
        })
    return rows
