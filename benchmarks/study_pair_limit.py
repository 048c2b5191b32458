"""How much does one frame say about a close pair? A likelihood study behind issue 14's close-pair target.

Run: python benchmarks/study_pair_limit.py [--model broad_2d] [--frames 300] [--dense-frames 100] [--parts 1 2 3]

The network misses ~40 % of emitters whose nearest neighbour is 1–2 px away (bench_broad.py ``pairs``). Could
a classical two-emitter fit — what multi-emitter fitters such as 3D-DAOSTORM do — recover them? For each such
missed emitter (1 emitter/µm², EMCCD, background 50, the pairs movie of bench_broad.py; its partner found by
the network; no third emitter within 5 px) this fits, to a 9×9 patch of the frame in photons with the known
PSF (Poisson likelihood with the excess noise, as ``model.refine``):

* one emitter (x, y, photons, background free), started at the partner's localization;
* two emitters, started at the **true** positions and photons (an oracle: the best start any method could
  have),

and prints the log-likelihood ratio 2ΔLL = 2 (LL₂ − LL₁). Beside it, the null: isolated single emitters
(0.1/µm², no other within 6 px, ≥ 4 px from the edges), two-emitter fit started with a second emitter 1.2 px
beside the true one with a fifth of its light, with the PSF σ exact and 10 % too narrow (a calibration error the range guard lets
through), at a mean brightness of 2500 and 8000 photons. A split test accepts when 2ΔLL exceeds a threshold
that the null rarely reaches.

Third, would a joint two-emitter fit place what the second detection pass (``model.residual_threshold``) adds
better than the network's read-out? On the dense movies of bench_broad.py (3 and 6 emitters/µm², EMCCD, bg 50),
each added row and its nearest first-pass row of the frame are fitted together (x, y, photons of both and a flat
background free, PSF σ known, the frame's other localizations' light fixed at the network's values, a 9×9 patch
around their midpoint); the table is matched to the truth again (250 nm) and the lateral RMSE of the added rows
and of their partners printed before and after, with the Jaccard over all true emitters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as acc  # noqa: E402
import bench_broad as bb  # noqa: E402

from rtsmlm.analysis.metrics import match, metrics_from_match  # noqa: E402
from rtsmlm.localization.refine import MLERefiner  # noqa: E402

HALF = 4  # 9×9 patches
THRESHOLDS = (10.0, 20.0, 50.0)


def fit_emitters(patch: torch.Tensor, corner: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, ns: torch.Tensor,
                 bg: torch.Tensor, sigma: float, excess: float, iterations: int = 15,
                 others: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fisher scoring of K emitters + a flat background on (n, P, P) patches of photons whose top-left pixel
    is ``corner`` (n, 2: row, col); xs, ys, ns (n, K); ``others`` (n, P, P): fixed light of emitters not fitted.
    Returns the log-likelihood at the end (n,) and the fitted positions xs, ys (n, K)."""
    offs = torch.arange(patch.shape[-1], dtype=torch.float32)
    rows, cols = corner[:, :1] + offs, corner[:, 1:] + offs
    data = patch.clamp_min(0.0) / excess
    sig = torch.full((len(xs),), sigma)
    k = xs.shape[1]
    for it in range(iterations + 1):
        model = bg[:, None, None].expand_as(data).clone()
        if others is not None:
            model = model + others
        jac = []
        for e in range(k):
            ex, dex, _ = MLERefiner._axis(cols, xs[:, e], sig)
            ey, dey, _ = MLERefiner._axis(rows, ys[:, e], sig)
            psf = ey[:, :, None] * ex[:, None, :]
            model = model + ns[:, e, None, None] * psf
            jac += [ns[:, e, None, None] * ey[:, :, None] * dex[:, None, :],
                    ns[:, e, None, None] * dey[:, :, None] * ex[:, None, :], psf]
        mu = (model / excess).clamp_min(1e-6)
        if it == iterations:
            return (data * torch.log(mu) - mu).sum(dim=(1, 2)), xs, ys
        jm = torch.stack(jac + [torch.ones_like(model)], dim=-1) / excess
        grad = ((data / mu - 1.0)[..., None] * jm).sum(dim=(1, 2))
        info = ((1.0 / mu)[..., None, None] * jm[..., :, None] * jm[..., None, :]).sum(dim=(1, 2))
        step = torch.nan_to_num(torch.linalg.solve(info + 1e-6 * torch.eye(jm.shape[-1]), grad[..., None])[..., 0])
        xs = xs + step[:, 0:3 * k:3].clamp(-0.3, 0.3)
        ys = ys + step[:, 1:3 * k:3].clamp(-0.3, 0.3)
        ns = (ns + step[:, 2:3 * k:3]).clamp_min(1.0)
        bg = (bg + step[:, -1]).clamp_min(0.0)
    raise AssertionError("unreachable")


def patches(photons: np.ndarray, frames: np.ndarray, x_px: np.ndarray, y_px: np.ndarray):
    """9×9 patches around (x, y) px (inside the frame) and their top-left corners."""
    h, w = photons.shape[1:]
    r0 = np.clip(np.floor(y_px).astype(int) - HALF, 0, h - 2 * HALF - 1)
    c0 = np.clip(np.floor(x_px).astype(int) - HALF, 0, w - 2 * HALF - 1)
    idx = np.arange(2 * HALF + 1)
    cut = photons[frames[:, None, None], r0[:, None, None] + idx[None, :, None], c0[:, None, None] + idx[None, None, :]]
    return torch.as_tensor(cut, dtype=torch.float32), torch.as_tensor(np.stack([r0, c0], 1), dtype=torch.float32)


def one_vs_two(photons, frames, start, second, sigma, excess):
    """2ΔLL of two emitters (started at ``start`` and ``second``: (x, y, photons) px arrays) over one (started
    at ``start`` with the two's summed photons)."""
    (x1, y1, n1), (x2, y2, n2) = start, second
    patch, corner = patches(photons, frames, x1, y1)
    bg = torch.as_tensor(np.maximum(np.median(patch.numpy(), axis=(1, 2)), 0.0), dtype=torch.float32)
    t = lambda *a: torch.as_tensor(np.stack(a, 1), dtype=torch.float32)  # noqa: E731
    ll1 = fit_emitters(patch, corner, t(x1), t(y1), t(n1 + n2), bg.clone(), sigma, excess)[0]
    ll2 = fit_emitters(patch, corner, t(x1, x2), t(y1, y2), t(n1, n2), bg.clone(), sigma, excess)[0]
    return (2.0 * (ll2 - ll1)).numpy()


def joint_fit_of_added_rows(loc: Any, loc_first: Any, frames: int) -> None:
    """Part 3 of the module docstring, for the dense movies of bench_broad.py."""
    for k, density in enumerate((3.0, 6.0)):
        cfg = bb.movie_config(camera="emccd", seed=33000 + k, size=64, density=density, bg=50.0, single_frame=False)
        movie = acc.simulate_movie(cfg, f"dense {density:g}", frames)
        px, sigma = movie.pixel_size_nm, cfg.psf.sigma_nm / movie.pixel_size_nm
        pred, _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
        first, _ = acc.run_model(loc_first, movie.frames, movie.camera, cfg.psf.sigma_nm)
        added = np.flatnonzero(bb.added_by_second_pass(pred, first))
        kept = np.setdiff1d(np.arange(len(pred)), added)
        x, y = pred["x"] / px, pred["y"] / px
        partner = np.empty(len(added), int)  # the nearest first-pass row of the same frame
        for i, a in enumerate(added):
            same = kept[pred["frame"][kept] == pred["frame"][a]]
            partner[i] = same[np.argmin(np.hypot(x[same] - x[a], y[same] - y[a]))]
        patch, corner = patches(movie.camera.to_photons(movie.frames), pred["frame"][added],
                                0.5 * (x[partner] + x[added]), 0.5 * (y[partner] + y[added]))
        offs = torch.arange(patch.shape[-1], dtype=torch.float32)
        others = torch.zeros_like(patch)
        for i, (a, b) in enumerate(zip(added, partner)):
            rest = np.flatnonzero(pred["frame"] == pred["frame"][a])
            rest = torch.as_tensor(rest[(rest != a) & (rest != b)])
            sig = torch.full((len(rest),), sigma)
            ex, _, _ = MLERefiner._axis((corner[i, 1] + offs).expand(len(rest), -1), torch.as_tensor(x[rest], dtype=torch.float32), sig)
            ey, _, _ = MLERefiner._axis((corner[i, 0] + offs).expand(len(rest), -1), torch.as_tensor(y[rest], dtype=torch.float32), sig)
            others[i] = (torch.as_tensor(pred["photons"][rest], dtype=torch.float32)[:, None, None]
                         * ey[:, :, None] * ex[:, None, :]).sum(0)
        t = lambda *a: torch.as_tensor(np.stack(a, 1), dtype=torch.float32)  # noqa: E731
        _, fx, fy = fit_emitters(patch, corner, t(x[partner], x[added]), t(y[partner], y[added]),
                                 t(pred["photons"][partner], pred["photons"][added]),
                                 torch.as_tensor(pred["bg"][partner], dtype=torch.float32), sigma,
                                 movie.excess_noise, others=others)
        fx, fy = fx.double().numpy(), fy.double().numpy()
        ok = np.isfinite(fx).all(1) & np.isfinite(fy).all(1)
        fitted = pred.copy()  # a partner of several added rows keeps the last of its fits
        for e, rows in enumerate((partner, added)):
            fitted["x"][rows[ok]] = fx[ok, e] * px
            fitted["y"][rows[ok]] = fy[ok, e] * px

        def rmse_and_jaccard(table: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
            """Lateral RMSE of ``rows`` among the matched ones, and the Jaccard over all true emitters."""
            m = match(table, movie.truth, tolerance_nm=250.0)
            sel = np.isin(m.pred_index, rows)
            return float(np.sqrt(np.mean(m.dx[sel] ** 2 + m.dy[sel] ** 2))), metrics_from_match(m)["jaccard"]

        (a0, j0), (a1, j1) = rmse_and_jaccard(pred, added), rmse_and_jaccard(fitted, added)
        (p0, _), (p1, _) = rmse_and_jaccard(pred, np.unique(partner)), rmse_and_jaccard(fitted, np.unique(partner))
        print(f"dense {density:g}/µm²: {len(added)} rows added by the second pass ({ok.sum()} fits finite); lateral "
              f"RMSE of the added rows {a0:.1f} → {a1:.1f} nm, of their partners {p0:.1f} → {p1:.1f} nm with the "
              f"joint fit; Jaccard {j0:.3f} → {j1:.3f}")


def summary(name: str, dll: np.ndarray) -> None:
    pct = np.percentile(dll, [10, 25, 50, 75, 90])
    print(f"{name:58s} n={len(dll):4d}  2ΔLL percentiles 10/25/50/75/90: "
          + " / ".join(f"{v:.1f}" for v in pct) + "; above " + ", ".join(
              f"{t:g}: {np.mean(dll > t):.2f}" for t in THRESHOLDS))


def missed_partners(label: str, loc: Any, frames: int) -> None:
    """Part 1: the missed partners of the pairs movie (bench_broad.py's), oracle two-emitter start."""
    from scipy.spatial import cKDTree

    cfg = bb.movie_config(camera="emccd", seed=32000, size=64, density=1.0, bg=50.0, single_frame=False)
    movie = acc.simulate_movie(cfg, "pairs", frames)
    px, sigma = movie.pixel_size_nm, cfg.psf.sigma_nm / movie.pixel_size_nm
    pred, _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
    photons = movie.camera.to_photons(movie.frames)
    truth = movie.truth
    m = match(pred, truth, tolerance_nm=250.0)
    pred_of = -np.ones(len(truth), int)
    pred_of[m.truth_index] = m.pred_index
    pts = np.column_stack([truth["x"], truth["y"], np.asarray(truth["frame"], float) * 1e9])
    dist, near = cKDTree(pts).query(pts, k=3)
    nn, partner, third = dist[:, 1] / px, near[:, 1], dist[:, 2] / px
    missed = np.flatnonzero((pred_of < 0) & (nn >= 1.0) & (nn < 2.0))
    clean = missed[(pred_of[partner[missed]] >= 0) & (third[missed] > 5.0)]
    print(f"model {label}; pairs movie: {len(missed)} emitters 1–2 px from their neighbour missed; {len(clean)} "
          "with the partner found and no third emitter within 5 px")
    loc_of = pred[pred_of[partner[clean]]]
    a, b = truth[partner[clean]], truth[clean]
    oracle = one_vs_two(photons, truth["frame"][clean], (loc_of["x"] / px, loc_of["y"] / px, loc_of["photons"]),
                        (b["x"] / px, b["y"] / px, b["photons"]), sigma, movie.excess_noise)
    # The two-emitter fit's first emitter starts at the partner's localization, the second at the truth.
    summary("missed partners at 1–2 px (oracle start for the 2nd)", oracle)
    ratio = np.minimum(a["photons"], b["photons"]) / np.maximum(a["photons"], b["photons"])
    print(f"   their photons: median {np.median(b['photons']):.0f}; dimmer/brighter of the pair: median {np.median(ratio):.2f}")


def null_of_isolated(frames: int) -> None:
    """Part 2: isolated single emitters, the second emitter started beside the true one."""
    from scipy.spatial import cKDTree

    for mean_photons in (2500.0, 8000.0):
        cfg0 = bb.movie_config(camera="emccd", seed=32100, size=64, density=0.1, bg=50.0, single_frame=False,
                               photons=(mean_photons, 0.4 * mean_photons))
        null = acc.simulate_movie(cfg0, "null", frames)
        px, sigma = null.pixel_size_nm, cfg0.psf.sigma_nm / null.pixel_size_nm
        ph0 = null.camera.to_photons(null.frames)
        t0 = null.truth
        pts0 = np.column_stack([t0["x"], t0["y"], np.asarray(t0["frame"], float) * 1e9])
        d0 = cKDTree(pts0).query(pts0, k=2)[0][:, 1] / px
        edge = np.minimum.reduce([t0["x"], t0["y"], 64 * px - t0["x"], 64 * px - t0["y"]]) / px
        keep = np.flatnonzero((d0 > 6.0) & (edge > 4.0) & (t0["photons"] > 100.0))
        t0 = t0[keep]
        x, y, n = t0["x"] / px, t0["y"] / px, t0["photons"]
        for scale in (1.0, 0.9):
            # A second emitter started 1.2 px beside the true one with a fifth of the light (left or right).
            dx = np.where(np.arange(len(x)) % 2, 1.2, -1.2)
            dll = one_vs_two(ph0, t0["frame"], (x, y, 0.8 * n), (x + dx, y, 0.2 * n), sigma * scale, null.excess_noise)
            summary(f"isolated singles, {mean_photons:.0f} photons, model σ {scale:.0%} of true", dll)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="broad_2d")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--dense-frames", type=int, default=100, help="frames of each dense movie (part 3)")
    ap.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3])
    args = ap.parse_args()
    base, backend_cfg = acc.reference_backend()
    _, loc = acc.open_model_spec(args.model, backend_cfg, base.model)
    if 1 in args.parts:
        missed_partners(args.model, loc, args.frames)
    if 2 in args.parts:
        null_of_isolated(args.frames)
    if 3 in args.parts:
        _, loc_first = acc.open_model_spec(args.model + "+no-residual", backend_cfg, base.model)
        joint_fit_of_added_rows(loc, loc_first, args.dense_frames)


if __name__ == "__main__":
    main()
