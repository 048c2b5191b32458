"""Issue 14's precision and close-pair figures for one or more models, beside Picasso, in one run.

Run: python benchmarks/bench_broad.py --models broad_2d[,broad_2d+mle,broad_2d+no-residual,PATH…] [--sections crlb pairs dense temporal]
                                      [--frames 1000] [--no-picasso] [--json out.json]

(The camera matrix — six unseen cameras × densities — is ``benchmarks/bench_cameras.py --models …``.)

1. ``crlb`` — precision against the Cramér–Rao bound on **single-frame emitters** (on for one frame only,
   not visible in either neighbour: no temporal help), isolated (0.1 emitters/µm², and no other true emitter
   within 6 px in the frame), at least 4 px from the edges, for both noise models: the default EMCCD (EM gain 100, excess-noise factor 2) and an sCMOS
   (rtsmlm's preset, per-pixel maps), 100 nm pixels, σ 130 nm, background 20 and 100 photons/px,
   brightness 3000 ± 2500 photons (clipped ≥ 1). Per photon bin (edges 500…20,000): per-axis RMSE / √CRLB
   (Fisher bound, Mortensen Eq. 6, with the camera's excess noise). Target ≤ 1.1 in every bin ≥ 500.
2. ``pairs`` — recall by the distance of each true emitter to its nearest neighbour in the same frame
   (< 1 px, 1–2 px, 2–3 px, ≥ 3 px and all), 1 emitter/µm², EMCCD, background 50. Target ≥ 0.8 at 1–2 px.
   Beside it, the 1–2 px emitters by their photons in the frame (with the isolated emitters of the same
   brightness) and the pairs whose partners both have ≥ 1000 photons.
4. ``temporal`` — what refinement costs where the network sees an emitter in several frames: the default
   camera at 0.1 emitters/µm², background 50, default brightness and on-time (600 frames); per-axis RMSE of
   matched emitters ≥ 1000 photons, ≥ 4 px from the edges, split into single-frame and multi-frame ones,
   each model as given (e.g. ``default,default+mle,default+fuse``), beside Jaccard over all true emitters.
3. ``dense`` — Jaccard over all true emitters at 3 and 6 emitters/µm² (EMCCD, background 50): each model
   against Picasso MLE (net-gradient threshold chosen by a scan on a separate movie). Target: + 0.2. For a
   model given both as ``M`` and ``M+no-residual``, what the second detection pass added: how many, how many
   matched, their RMSE and reported σ beside the first pass's.

Matching: 250 nm tolerance, all true emitters (rtsmlm.analysis.metrics.match). Models run with the
movie's camera and PSF σ in their config (what ``rtsmlm calibrate`` writes), torch fp32, one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as acc  # noqa: E402  (simulation, scoring, CRLB rows and Picasso helpers)

from rtsmlm.core import config as rconfig  # noqa: E402
from rtsmlm.core.jsonio import to_jsonable  # noqa: E402
from rtsmlm.sim.camera import SCMOS_PRESET  # noqa: E402

CRLB_EDGES = (500.0, 1000.0, 2000.0, 4000.0, 8000.0, 20000.0)
PAIR_BINS_PX = (0.0, 1.0, 2.0, 3.0, math.inf)
PAIR_PHOTON_EDGES = (0.0, 500.0, 1000.0, 2000.0, math.inf)
TARGET_CRLB = 1.1
ISOLATION_PX = 6.0
TARGET_PAIR_RECALL = 0.8
TARGET_DENSE_MARGIN = 0.2


def movie_config(*, camera: str, seed: int, size: int, density: float, bg: float, single_frame: bool,
                 photons: tuple[float, float] = (2500.0, 1000.0)) -> rconfig.Config:
    cam = dict(SCMOS_PRESET) if camera == "scmos" else {"model": "emccd"}
    sim = {"seed": seed, "size": size, "density": density, "bg_photons": bg, "photons_mean": photons[0],
           "photons_sigma": photons[1], "structure": "uniform"}
    if single_frame:
        sim["mean_on_frames"] = 0.7  # most blinks within one frame; the mask keeps those seen in one frame only
    return rconfig.from_dict({"camera": cam, "psf": {"sigma_nm": 130.0}, "sim": sim})


def crlb_section(localizers: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    print("\n1. Precision of single-frame isolated emitters: per-axis RMSE / √CRLB (Fisher) per photon bin "
          f"(target ≤ {TARGET_CRLB})")
    bins = [f"{lo / 1000:g}–{hi / 1000:g}k" for lo, hi in zip(CRLB_EDGES[:-1], CRLB_EDGES[1:])]
    print(f"{'camera, bg':18s} {'model':16s} {'JI all':>7s} " + " ".join(f"{b:>12s}" for b in bins))
    out = []
    for k, (camera, bg) in enumerate((("emccd", 20.0), ("emccd", 100.0), ("scmos", 20.0), ("scmos", 100.0))):
        cfg = movie_config(camera=camera, seed=31000 + k, size=args.size, density=0.1, bg=bg, single_frame=True,
                           photons=(3000.0, 2500.0))
        movie = acc.simulate_movie(cfg, f"{camera} bg {bg:g}", args.frames)
        for label, loc in localizers.items():
            pred, _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
            s, m_all, _ = acc.score(pred, movie.truth, 250.0, None)
            rows = crlb_table(m_all, movie)
            cells = [f"{r['ratio_fisher']:.2f} (n{r['n']})" if r["n"] else "—" for r in rows]
            print(f"{camera + ', ' + format(bg, 'g'):18s} {label[:16]:16s} {s['all']['jaccard']:7.3f} "
                  + " ".join(f"{c:>12s}" for c in cells), flush=True)
            worst = max((r["ratio_fisher"] for r in rows if r["n"] >= 20), default=math.nan)
            out.append({"camera": camera, "bg": bg, "model": label, "jaccard": s["all"]["jaccard"], "rows": rows,
                        "worst_ratio_bins_n_ge_20": worst, "met": bool(worst <= TARGET_CRLB)})
    return out


def crlb_table(m_all: Any, movie: Any) -> list[dict[str, Any]]:
    """Per photon bin: per-axis RMSE / √CRLB of the matched single-frame emitters that are isolated (no
    other true emitter within ``ISOLATION_PX`` in the frame) and ≥ 4 px from the edges."""
    from rtsmlm.analysis.metrics import precision_vs_crlb

    truth = movie.truth
    keep = (acc.interior_mask(truth, movie.frames.shape[1:], movie.pixel_size_nm, 4.0)
            & acc.single_frame_mask(truth) & (acc.nearest_neighbour_px(truth, movie.pixel_size_nm) >= ISOLATION_PX))
    rows = precision_vs_crlb(acc.restrict_match(m_all, keep), truth["photons"][keep], movie.bound_bg_photons,
                             movie.psf_sigma_nm, movie.pixel_size_nm, movie.excess_noise, bins=list(CRLB_EDGES))
    return rows or [{"n": 0, "ratio_fisher": math.nan}] * (len(CRLB_EDGES) - 1)


def found_mask(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """True for each true emitter matched by a prediction (250 nm tolerance)."""
    from rtsmlm.analysis.metrics import match

    found = np.zeros(len(truth), bool)
    found[match(pred, truth, tolerance_nm=250.0).truth_index] = True
    return found


def recall(found: np.ndarray, sel: np.ndarray) -> float:
    """The found fraction of the emitters ``sel`` picks (nan for none)."""
    return float(found[sel].mean()) if sel.any() else math.nan


def recall_by_distance(found: np.ndarray, nn: np.ndarray) -> list[dict[str, Any]]:
    """Recall per bin of the nearest-neighbour distance ``nn`` (px), then over all emitters."""
    rows = []
    for lo, hi in zip(PAIR_BINS_PX[:-1], PAIR_BINS_PX[1:]):
        sel = (nn >= lo) & (nn < hi)
        rows.append({"lo_px": lo, "hi_px": hi, "n": int(sel.sum()), "recall": recall(found, sel)})
    everyone = np.ones(len(found), bool)
    rows.append({"lo_px": 0.0, "hi_px": math.inf, "n": len(found), "recall": recall(found, everyone)})
    return rows


def _picasso(movie: Any, tune_cfg: rconfig.Config, frames: int) -> np.ndarray:
    tune = acc.simulate_movie(tune_cfg, "tune", frames)
    ng, _ = acc.tune_picasso(tune, 250.0, 0.0, 7)
    return acc.run_picasso(movie.frames, movie.camera, ng)


def pairs_section(localizers: dict[str, Any], args: argparse.Namespace, use_picasso: bool) -> list[dict[str, Any]]:
    print(f"\n2. Recall by nearest-neighbour distance, 1 emitter/µm², EMCCD, bg 50 (target ≥ {TARGET_PAIR_RECALL} "
          "at 1–2 px)")
    heads = ["<1 px", "1–2 px", "2–3 px", "≥3 px", "all"]
    print(f"{'model':16s} " + " ".join(f"{h:>14s}" for h in heads))
    cfg = movie_config(camera="emccd", seed=32000, size=args.size, density=1.0, bg=50.0, single_frame=False)
    movie = acc.simulate_movie(cfg, "pairs", args.pair_frames)
    preds = {label: acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)[0]
             for label, loc in localizers.items()}
    if use_picasso:
        tune_cfg = movie_config(camera="emccd", seed=32500, size=args.size, density=1.0, bg=50.0, single_frame=False)
        preds["picasso"] = _picasso(movie, tune_cfg, max(20, args.pair_frames // 3))
    out = []
    nn, partner = acc.nearest_neighbour(movie.truth, movie.pixel_size_nm)
    photons = np.asarray(movie.truth["photons"], np.float64)
    for label, pred in preds.items():
        found = found_mask(pred, movie.truth)
        rows = recall_by_distance(found, nn)
        print(f"{label[:16]:16s} " + " ".join(f"{r['recall']:.3f} (n{r['n']})".rjust(14) for r in rows), flush=True)
        out.append({"model": label, "rows": rows, "met": bool(rows[1]["recall"] >= TARGET_PAIR_RECALL),
                    "by_photons": pair_recall_by_photons(found, nn, partner, photons)})
    print("\n   the 1–2 px emitters by their photons in the frame (a partner on for part of the frame is dim), and "
          "the isolated (≥ 3 px) emitters of the same brightness beside them")
    heads = [f"{lo / 1000:g}–{hi / 1000:g}k" if math.isfinite(hi) else f"≥{lo / 1000:g}k"
             for lo, hi in zip(PAIR_PHOTON_EDGES[:-1], PAIR_PHOTON_EDGES[1:])] + ["both ≥1k"]
    print(f"{'model':16s} " + " ".join(f"{h:>20s}" for h in heads))
    for row in out:
        cells = [f"{b['recall']:.3f} (n{b['n']}) / {b['isolated_recall']:.3f}" for b in row["by_photons"]["bins"]]
        both = row["by_photons"]["both_bright"]
        cells.append(f"{both['recall']:.3f} (n{both['n']})")
        print(f"{row['model'][:16]:16s} " + " ".join(c.rjust(20) for c in cells), flush=True)
    return out


def pair_recall_by_photons(found: np.ndarray, nn: np.ndarray, partner: np.ndarray,
                           photons: np.ndarray) -> dict[str, Any]:
    """Recall of the emitters 1–2 px from their nearest neighbour (``nn``, px; ``partner``, its row) per bin
    of their own photons, beside the isolated (≥ 3 px) emitters' recall in the same bin; and of the 1–2 px
    pairs whose partners both have ≥ 1000 photons. Sub-populations of the pairs row, not a replacement for it."""
    close, isolated = (nn >= 1.0) & (nn < 2.0), nn >= 3.0
    bins = []
    for lo, hi in zip(PAIR_PHOTON_EDGES[:-1], PAIR_PHOTON_EDGES[1:]):
        in_bin = (photons >= lo) & (photons < hi)
        bins.append({"lo": lo, "hi": hi, "n": int((close & in_bin).sum()), "recall": recall(found, close & in_bin),
                     "isolated_recall": recall(found, isolated & in_bin)})
    both = close & (photons >= 1000.0) & (photons[np.maximum(partner, 0)] >= 1000.0)
    return {"bins": bins, "both_bright": {"n": int(both.sum()), "recall": recall(found, both)}}


def dense_section(localizers: dict[str, Any], args: argparse.Namespace, use_picasso: bool) -> list[dict[str, Any]]:
    from rtsmlm.analysis.metrics import evaluate, match, metrics_from_match

    print(f"\n3. High density, EMCCD, bg 50: Jaccard / lateral RMSE nm, all true emitters (target: Picasso + "
          f"{TARGET_DENSE_MARGIN})")
    out = []
    for k, density in enumerate((3.0, 6.0)):
        cfg = movie_config(camera="emccd", seed=33000 + k, size=args.size, density=density, bg=50.0, single_frame=False)
        movie = acc.simulate_movie(cfg, f"dense {density:g}", args.dense_frames)
        row: dict[str, Any] = {"density": density, "models": {}}
        preds, matches = {}, {}
        for label, loc in localizers.items():
            preds[label], _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
            matches[label] = match(preds[label], movie.truth, tolerance_nm=250.0)
            row["models"][label] = metrics_from_match(matches[label])
        row["second_pass"] = second_pass_rows(preds, matches)
        if use_picasso:
            tune_cfg = movie_config(camera="emccd", seed=33500 + k, size=args.size, density=density, bg=50.0,
                                    single_frame=False)
            row["models"]["picasso"] = evaluate(_picasso(movie, tune_cfg, max(20, args.dense_frames // 3)),
                                                movie.truth, tolerance_nm=250.0)
        print(f"{density:g}/µm²: " + "; ".join(f"{label} {m['jaccard']:.3f} / {m['rmse_lat_nm']:.1f}"
                                                for label, m in row["models"].items()), flush=True)
        for label, r in row["second_pass"].items():
            print(f"   {label}'s second detection pass: {r['added']} localizations added, {r['matched']} of them "
                  f"matched, their lateral RMSE {r['rmse_added_nm']:.1f} nm (the first pass's {r['rmse_first_nm']:.1f}); "
                  f"median σx reported {r['sigma_added_nm']:.1f} nm (first pass {r['sigma_first_nm']:.1f})", flush=True)
        out.append(row)
    return out


def second_pass_rows(preds: dict[str, np.ndarray], matches: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each model run both as ``M`` and ``M+no-residual``: what the second detection pass
    (``model.residual_threshold``) added — the rows of ``M``'s table that ``M+no-residual``'s lacks (the pass keeps
    every first-pass row bit for bit) — how many of them match a true emitter, and their lateral RMSE and median
    reported σx beside the first pass's, in ``M``'s matching (``matches``) of its whole table."""
    out = {}
    for label, pred in preds.items():
        first = preds.get(label + "+no-residual")
        if first is None:
            continue
        added = added_by_second_pass(pred, first)
        m = matches[label]
        err = np.hypot(m.dx, m.dy)
        new = added[m.pred_index]
        out[label] = {"added": int(added.sum()), "matched": int(new.sum()),
                      "rmse_added_nm": float(np.sqrt(np.mean(err[new] ** 2))) if new.any() else math.nan,
                      "rmse_first_nm": float(np.sqrt(np.mean(err[~new] ** 2))) if (~new).any() else math.nan,
                      "sigma_added_nm": float(np.median(pred["sigma_x"][added])) if added.any() else math.nan,
                      "sigma_first_nm": float(np.median(pred["sigma_x"][~added])) if (~added).any() else math.nan}
    return out


def added_by_second_pass(pred: np.ndarray, first: np.ndarray) -> np.ndarray:
    """True for the rows of ``pred`` (a model's table) that ``first`` (the same model with ``+no-residual``) lacks:
    what the second detection pass added (it keeps every first-pass row bit for bit)."""
    first_rows = {tuple(r) for r in first[["frame", "x", "y"]].tolist()}
    return np.array([tuple(r) not in first_rows for r in pred[["frame", "x", "y"]].tolist()], bool)


def temporal_section(localizers: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    print("\n4. Emitters seen in one frame vs several (default camera, 0.1/µm², bg 50, ≥ 1000 photons): per-axis RMSE nm")
    cfg = rconfig.from_dict({"sim": {"seed": 77, "size": args.size, "density": 0.1, "bg_photons": 50.0,
                                     "structure": "uniform"}})
    movie = acc.simulate_movie(cfg, "temporal", args.temporal_frames)
    single = acc.single_frame_mask(movie.truth)
    interior = acc.interior_mask(movie.truth, movie.frames.shape[1:], movie.pixel_size_nm, 4.0)
    bright = np.asarray(movie.truth["photons"], np.float64) >= 1000.0
    out = []
    for label, loc in localizers.items():
        pred, _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
        s, m_all, _ = acc.score(pred, movie.truth, 250.0, None)
        row: dict[str, Any] = {"model": label, "jaccard": s["all"]["jaccard"]}
        for name, keep in (("single_frame", single), ("multi_frame", ~single)):
            m = acc.restrict_match(m_all, keep & interior & bright)
            row[name] = {"n": len(m.dx), "rmse_axis_nm": float(np.sqrt(np.mean(np.r_[m.dx, m.dy] ** 2)))}
        print(f"{label[:16]:16s} JI all {row['jaccard']:.3f}; single-frame {row['single_frame']['rmse_axis_nm']:.2f} nm "
              f"(n{row['single_frame']['n']}); multi-frame {row['multi_frame']['rmse_axis_nm']:.2f} nm "
              f"(n{row['multi_frame']['n']})", flush=True)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="broad_2d")
    ap.add_argument("--sections", nargs="+", default=["crlb", "pairs", "dense"], choices=["crlb", "pairs", "dense", "temporal"])
    ap.add_argument("--frames", type=int, default=1000, help="frames per CRLB movie")
    ap.add_argument("--pair-frames", type=int, default=300)
    ap.add_argument("--dense-frames", type=int, default=100)
    ap.add_argument("--temporal-frames", type=int, default=600)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--no-picasso", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    base, backend_cfg = acc.reference_backend()
    localizers = acc.open_model_specs(args.models.split(","), backend_cfg, base.model)
    why_not = None if args.no_picasso else acc.picasso_available()
    use_picasso = not args.no_picasso and why_not is None
    print(f"load average {os.getloadavg()[0]:.1f}; models {', '.join(localizers)}; Picasso: "
          f"{'yes' if use_picasso else 'no (' + (why_not or '--no-picasso') + ')'}")
    result: dict[str, Any] = {"models": args.models.split(","), "time": time.time()}
    if "crlb" in args.sections:
        result["crlb"] = crlb_section(localizers, args)
    if "pairs" in args.sections:
        result["pairs"] = pairs_section(localizers, args, use_picasso)
    if "dense" in args.sections:
        result["dense"] = dense_section(localizers, args, use_picasso)
    if "temporal" in args.sections:
        result["temporal"] = temporal_section(localizers, args)
    if args.json:
        args.json.write_text(json.dumps(to_jsonable(result), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
