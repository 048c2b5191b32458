"""Localization accuracy of the model against issue 3's targets, on fresh simulated data and a real movie.

Run (the default run; ~10 min on an idle 2-core CPU, longer while something else trains):

    python benchmarks/bench_accuracy.py --json accuracy.json --plot accuracy_crlb.png

Other models: ``--model PATH`` (default 'default', the shipped model), ``--storm-model PATH`` (default
rtsmlm/models/storm_analysis; the section is skipped with a message when it is missing). Sizes:
``--low-frames``, ``--high-frames``, ``--size``; ``--no-picasso`` skips the classical fitter.

What it measures (all coordinates nm, DESIGN.md convention; matching = rtsmlm.analysis.metrics.match, SMLM
Challenge 2016 style, tolerance 250 nm on simulations):

1. Low density — two movies of the default camera (EMCCD, EM gain 100, 100 nm pixels, PSF σ 130 nm) at
   0.1 emitters/µm² with background 50 and 100 photons/px, seed 12345 and 12346 (training used seed 1
   and its own generator). Brightness is the simulator's default (per-emitter, Gaussian 2500 ± 1000
   photons, clipped); emitters switching on or off inside a frame emit only part of it there.
   *Evaluated population*: metrics are reported for all ground truth and for the emitters with
   ≥ ``--min-photons`` (1000) photons in the frame. Predictions are matched against **all** ground
   truth first; a prediction paired with an excluded (dim) emitter then counts neither as TP nor FP, and
   excluded emitters are never FN. Targets are judged on that population.
   *Precision vs CRLB*: per photon bin (edges 1000…5000), per-axis RMSE against √CRLB per axis, with
   Mortensen 2010 Eq. 5 and the Fisher bound (Mortensen Eq. 6, :func:`rtsmlm.analysis.metrics.crlb_mle_lateral_nm`,
   equal to the numerical Fisher information of the pixelated Gaussian to < 1 %; a numerical
   :func:`rtsmlm.analysis.metrics.crlb_fisher_lateral_nm` value at the bin's mean photons is printed as a
   cross-check), excess-noise factor F = 2 (EMCCD). **The 1.2× target is judged against the Fisher bound,
   the physical limit**; Eq. 5 (the least-squares precision, ~4 % larger here) is shown for reference.
   The CRLB table uses matched emitters at least ``--crlb-border-px`` (4) pixels from the frame edge,
   where the bound of an untruncated PSF applies; Jaccard uses every emitter. The bound is that of one
   frame; the network sees a window of frames, so an emitter that is also on in a neighbouring frame can be
   localized better than it (and a learned prior can shrink errors further). Columns n1/RMSE1 repeat the
   figure for emitters visible in no neighbouring frame, where only the prior can help.
2. High density — movies at 1 and 2 emitters/µm² (background 75, default brightness), the model versus
   Picasso (``picasso.localize.localize_frames``: net-gradient identification + ``gaussmle`` MLE fit with
   the camera's baseline, e⁻/ADU, EM gain and QE; pixel coordinates converted with
   x_nm = (x_px + 0.5) · pixel_size). Picasso's minimum net gradient is chosen fairly: a scan of values on
   a separate movie of the same kind (seed + 100), the value with the best Jaccard on the evaluated
   population is used on the benchmark movie.
3. storm-analysis test movie (../shared/data/storm-analysis-test: 10 frames, 256², 160 nm pixels, gain 1,
   baseline 100; truth has no photons): matched with a 1-pixel (160 nm) tolerance as the 3D-DAOSTORM
   reference (Jaccard 0.989, RMSE ≈ 10 nm); the default model (transfer check) and the storm-analysis
   model.

RMSE convention: ``rmse_lat_nm`` is radial, sqrt(mean(dx²+dy²)) (rtsmlm.analysis.metrics.evaluate); the CRLB
table is per axis (radial / √2). The model runs with config.toml's thresholds (p 0.6, candidate 0.3)
unless ``--config`` says otherwise, through the same StreamingLocalizer as a live run, torch fp32 on the
CPU by default (``--backend``, ``--precision``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.acquisition.source import CameraModel
from rtsmlm.analysis.metrics import Match, crlb_fisher_lateral_nm, match, metrics_from_match, precision_vs_crlb
from rtsmlm.core import config as rconfig
from rtsmlm.core.jsonio import to_jsonable
from rtsmlm.core.locs import LOC_DTYPE

REPO_ROOT = Path(__file__).resolve().parent.parent
STORM_DIR = REPO_ROOT.parent / "shared" / "data" / "storm-analysis-test"
STORM_CONFIG = REPO_ROOT / "configs" / "storm_analysis_camera.toml"
DEFAULT_STORM_MODEL = str(REPO_ROOT / "rtsmlm" / "models" / "storm_analysis")

# Issue 3's targets.
TARGET_CRLB_FACTOR = 1.2
TARGET_LOW_JACCARD = 0.95
TARGET_HIGH_JACCARD = 0.6
TARGET_HIGH_MARGIN = 0.2
STORM_REFERENCE = {"method": "3D-DAOSTORM (fixed-sigma 2D Gaussian)", "jaccard": 0.989, "rmse_lat_nm": 10.0}
CRLB_EDGES = (1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 4000.0, 5000.0)
PICASSO_NET_GRADIENTS = (300.0, 500.0, 800.0, 1200.0, 1800.0, 2700.0, 4000.0)


# --------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Movie:
    """A simulated movie with its ground truth and the physics needed to judge it."""

    name: str
    frames: np.ndarray  # (n, H, W) uint16
    truth: np.ndarray  # rtsmlm.sim.TRUTH_DTYPE
    camera: CameraModel
    seed: int
    density: float  # emitters per µm² per frame (simulator setting)
    bg_photons: float  # per pixel
    psf_sigma_nm: float
    excess_noise: float  # (2 for an EMCCD with EM gain, 1 otherwise) / QE

    @property
    def pixel_size_nm(self) -> float:
        return self.camera.pixel_size_nm

    @property
    def bound_bg_photons(self) -> float:
        """The background the CRLB counts, photons per pixel: the sample's, plus the camera's read noise and
        spurious charge as the Poisson background that adds the same variance (an sCMOS's read noise belongs in
        its bound, Huang et al. 2013; left out, the bound of the benchmarks' sCMOS, 1.8 e⁻ RMS, was 2–5 % too low at background 20)."""
        cam = self.camera
        read_in_e = cam.read_noise_e / cam.em_gain  # referred to the detector, before the gain register
        return self.bg_photons + (read_in_e ** 2 / cam.excess_noise + cam.spurious_charge) / cam.qe


def simulate_movie(cfg: rconfig.Config, name: str, n_frames: int) -> Movie:
    """Run the simulator of ``cfg`` (seed, size, density, background from ``cfg.sim``) for ``n_frames``."""
    from rtsmlm.sim import Simulator

    sim = Simulator(cfg)
    frames, truth = sim.movie(n_frames)
    camera = sim.camera
    # Photons are detected with probability QE: in photon units the shot noise is 1/QE times stronger.
    return Movie(name, frames, truth, camera, sim.seed, cfg.sim.density, cfg.sim.bg_photons,
                 cfg.psf.sigma_nm, camera.excess_noise / camera.qe)


def sim_config(base: rconfig.Config, *, seed: int, size: int, density: float, bg: float) -> rconfig.Config:
    """``base`` with the simulator's seed, frame size, density and background replaced."""
    sim = rconfig.replace(base.sim, seed=seed, size=size, density=density, bg_photons=bg, structure="uniform")
    return rconfig.replace(base, sim=rconfig.to_dict(sim))


def snapshot_checkpoint(checkpoint: str, into: Path) -> tuple[str, Any]:
    """Copy a checkpoint that a training run may overwrite into ``into``; return (prefix, metadata).

    The weights and metadata are copied and the metadata re-read afterwards: when training replaced them
    in between (their steps differ), the copy is repeated, so the step reported is that of the weights run.
    """
    from rtsmlm.localization.checkpoint import load_meta, resolve

    src = resolve(checkpoint)
    into.mkdir(parents=True, exist_ok=True)
    for _attempt in range(5):
        before = load_meta(src)
        dst = into / src.name
        shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
        shutil.copyfile(src.with_suffix(".safetensors"), dst.with_suffix(".safetensors"))
        if load_meta(src).step == before.step == load_meta(dst).step:
            return str(dst), before
        time.sleep(1.0)  # a checkpoint was being written: let the trainer finish its two renames
    raise RuntimeError(f"checkpoint {src} kept changing while it was copied; try again")


def model_info(checkpoint: str, meta: Any) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "step": meta.step, "trained_for_camera": meta.camera,
            "trained_psf_sigma_nm": meta.psf.get("sigma_nm"), "validation": meta.metrics}


# --------------------------------------------------------------------------------------------------
# Scoring


def restrict_match(m: Match, keep_truth: np.ndarray) -> Match:
    """The match restricted to the true emitters where ``keep_truth`` is True.

    Pairs whose true emitter is excluded are dropped together with their prediction (neither TP nor FP);
    excluded emitters are not false negatives; unpaired predictions stay false positives. ``truth_index``
    of the result indexes the kept rows (``truth[keep_truth]``).
    """
    keep_truth = np.asarray(keep_truth, dtype=bool)
    if len(keep_truth) != m.n_true:
        raise ValueError(f"keep_truth has {len(keep_truth)} entries but the match has {m.n_true} truth rows")
    paired_kept = keep_truth[m.truth_index]
    new_index = np.cumsum(keep_truth) - 1
    n_dropped = int(np.count_nonzero(~paired_kept))
    return Match(pred_index=m.pred_index[paired_kept], truth_index=new_index[m.truth_index[paired_kept]],
                 dx=m.dx[paired_kept], dy=m.dy[paired_kept], dz=m.dz[paired_kept],
                 n_pred=m.n_pred - n_dropped, n_true=int(np.count_nonzero(keep_truth)),
                 tolerance_nm=m.tolerance_nm, use_z=m.use_z)


def score(pred: np.ndarray, truth: np.ndarray, tolerance_nm: float,
          min_photons: float | None) -> tuple[dict[str, Any], Match, Match]:
    """Metrics on all ground truth and on the evaluated population (photons ≥ ``min_photons``).

    Returns ({"all": metrics, "population": metrics, ...}, full match, population match). Without photon
    counts (``min_photons`` None) the population is all ground truth.
    """
    m_all = match(pred, truth, tolerance_nm=tolerance_nm)
    if min_photons is None:
        keep = np.ones(len(truth), dtype=bool)
    else:
        keep = np.asarray(truth["photons"], dtype=np.float64) >= min_photons
    m_pop = restrict_match(m_all, keep)
    out = {"all": metrics_from_match(m_all), "population": metrics_from_match(m_pop),
           "population_rule": "all ground truth" if min_photons is None else f"photons >= {min_photons:g}",
           "n_pred_matched_to_excluded": m_all.n_pred - m_pop.n_pred,
           "errors_all": error_anatomy(pred, truth, m_all)}
    return out, m_all, m_pop


def frame_counts(pred: np.ndarray, truth: np.ndarray, m: Match, n_frames: int) -> np.ndarray:
    """(n_frames, 3): true positives, false positives and false negatives of match ``m`` per frame."""
    tp = np.bincount(np.asarray(truth["frame"], np.int64)[m.truth_index], minlength=n_frames)
    n_pred = np.bincount(np.asarray(pred["frame"], np.int64), minlength=n_frames)
    n_true = np.bincount(np.asarray(truth["frame"], np.int64), minlength=n_frames)
    return np.column_stack([tp, n_pred - tp, n_true - tp])[:n_frames]


def jaccard_difference_interval(a: np.ndarray, b: np.ndarray, *, block: int = 10, draws: int = 2000,
                                seed: int = 0) -> tuple[float, float, float]:
    """Jaccard of per-frame counts ``a`` minus that of ``b`` (both from :func:`frame_counts` on the same movie),
    with its 95 % interval from a paired bootstrap over blocks of ``block`` frames (an emitter stays on for a
    few frames, so frames are not independent; both models are resampled with the same blocks). With fewer than
    10 blocks the interval means little and is NaN."""
    def jaccard(c: np.ndarray) -> np.ndarray:
        return c[..., 0] / np.maximum(c.sum(axis=-1), 1)

    n_blocks = len(a) // block
    d = float(jaccard(a.sum(axis=0)) - jaccard(b.sum(axis=0)))
    if n_blocks < 10:
        return d, math.nan, math.nan
    per_block_a = a[:n_blocks * block].reshape(n_blocks, block, 3).sum(axis=1)
    per_block_b = b[:n_blocks * block].reshape(n_blocks, block, 3).sum(axis=1)
    pick = np.random.default_rng(seed).integers(0, n_blocks, size=(draws, n_blocks))
    diff = jaccard(per_block_a[pick].sum(axis=1)) - jaccard(per_block_b[pick].sum(axis=1))
    low, high = np.percentile(diff, [2.5, 97.5])
    return d, float(low), float(high)


def error_anatomy(pred: np.ndarray, truth: np.ndarray, m: Match) -> dict[str, Any]:
    """Where the errors of a match lie: false positives next to a true emitter (duplicates of an emitter
    already matched) and false negatives next to another true emitter (an unresolved close pair)."""
    from scipy.spatial import cKDTree

    def points(t: np.ndarray) -> np.ndarray:
        # Frames far apart in a third coordinate: one tree answers same-frame nearest-neighbour queries.
        return np.column_stack([t["x"], t["y"], np.asarray(t["frame"], np.float64) * 1e9]).astype(np.float64)

    fp = np.setdiff1d(np.arange(m.n_pred), m.pred_index)
    fn = np.setdiff1d(np.arange(m.n_true), m.truth_index)
    out: dict[str, Any] = {"fp": len(fp), "fn": len(fn)}
    if len(truth) and len(fp):
        d_fp, _ = cKDTree(points(truth)).query(points(pred[fp]))
        out["fp_within_50nm_of_truth"] = int(np.count_nonzero(d_fp < 50.0))
        out["fp_nearest_truth_nm_median"] = float(np.median(d_fp))
    if len(truth) > 1 and len(fn):
        d_fn, _ = cKDTree(points(truth)).query(points(truth[fn]), k=2)
        out["fn_with_emitter_within_300nm"] = int(np.count_nonzero(d_fn[:, 1] < 300.0))
        out["fn_nearest_emitter_nm_median"] = float(np.median(d_fn[:, 1]))
    return out


def interior_mask(truth: np.ndarray, shape: tuple[int, int], pixel_nm: float, border_px: float) -> np.ndarray:
    """True for emitters at least ``border_px`` pixels from every edge of a frame of ``shape``."""
    h, w = shape
    b = border_px * pixel_nm
    x, y = np.asarray(truth["x"], np.float64), np.asarray(truth["y"], np.float64)
    return (x >= b) & (x <= w * pixel_nm - b) & (y >= b) & (y <= h * pixel_nm - b)


def nearest_neighbour_px(truth: np.ndarray, pixel_nm: float) -> np.ndarray:
    """Distance (px) of every true emitter to the nearest other true emitter in the same frame (inf if alone)."""
    return nearest_neighbour(truth, pixel_nm)[0]


def nearest_neighbour(truth: np.ndarray, pixel_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """(distance in px, row index) of every true emitter's nearest other true emitter in the same frame
    (inf and -1 if alone)."""
    from scipy.spatial import cKDTree

    pts = np.column_stack([truth["x"], truth["y"], np.asarray(truth["frame"], np.float64) * 1e9])
    if len(pts) < 2:
        return np.full(len(pts), np.inf), np.full(len(pts), -1)
    d, k = cKDTree(pts).query(pts, k=2)
    nn, partner = d[:, 1] / pixel_nm, k[:, 1]
    alone = nn > 1e6
    nn[alone], partner[alone] = np.inf, -1
    return nn, partner


def single_frame_mask(truth: np.ndarray) -> np.ndarray:
    """True for emitters that are not also visible in the previous or next frame.

    The network sees a window of frames, so an emitter that stays on collects photons from its neighbours
    and can beat the single-frame CRLB; these emitters cannot (beyond a learned prior). Without drift a
    label keeps exactly the same true coordinates, which identifies it across frames.
    """
    frames = np.asarray(truth["frame"], np.int64)
    keys = [(float(x), float(y)) for x, y in zip(truth["x"], truth["y"])]
    seen = set(zip(frames.tolist(), keys))
    return np.array([(f - 1, k) not in seen and (f + 1, k) not in seen for f, k in zip(frames.tolist(), keys)],
                    dtype=bool)


def crlb_rows(m_all: Match, movie: Movie, min_photons: float, border_px: float,
              edges: tuple[float, ...] = CRLB_EDGES) -> list[dict[str, Any]]:
    """Per-photon-bin precision vs CRLB of the interior matched emitters, with the target verdict."""
    truth = movie.truth
    keep = (np.asarray(truth["photons"], np.float64) >= min_photons) & interior_mask(
        truth, movie.frames.shape[1:], movie.pixel_size_nm, border_px)
    m = restrict_match(m_all, keep)
    rows = precision_vs_crlb(m, truth["photons"][keep], movie.bound_bg_photons, movie.psf_sigma_nm,
                             movie.pixel_size_nm, movie.excess_noise, bins=list(edges))
    single = keep & single_frame_mask(truth)
    rows_single = precision_vs_crlb(restrict_match(m_all, single), truth["photons"][single], movie.bound_bg_photons,
                                    movie.psf_sigma_nm, movie.pixel_size_nm, movie.excess_noise, bins=list(edges))
    # precision_vs_crlb gives no rows at all when nothing matched: pad so every bin is annotated.
    rows_single = rows_single or [{"n": 0, "rmse_lat_nm": math.nan, "ratio_fisher": math.nan}] * len(rows)
    for r, r1 in zip(rows, rows_single):
        r["bg_photons"] = movie.bg_photons
        r["bound_bg_photons"] = movie.bound_bg_photons
        r["n_single_frame"] = r1["n"]
        r["rmse_lat_single_frame_nm"] = r1["rmse_lat_nm"]
        r["ratio_fisher_single_frame"] = r1["ratio_fisher"]
        if r["n"]:
            r["crlb_fisher_numeric_at_mean_nm"] = crlb_fisher_lateral_nm(
                r["photons_mean"], movie.bound_bg_photons, movie.psf_sigma_nm, movie.pixel_size_nm, movie.excess_noise)
            limit = TARGET_CRLB_FACTOR * r["crlb_fisher_lat_nm"]
            r["target_nm"] = limit
            r["margin_nm"] = limit - r["rmse_lat_nm"]  # > 0: better than the target
            r["verdict"] = "PASS" if r["rmse_lat_nm"] <= limit else "MISS"
        else:
            r["verdict"] = "no data"
    return rows


# --------------------------------------------------------------------------------------------------
# Localizers


def run_model(localizer: Any, frames: np.ndarray, camera: CameraModel,
              psf_sigma_nm: float | None = None) -> tuple[np.ndarray, float]:
    """The network's localizations of ``frames`` (an OfflineLocalizer) and the seconds they took;
    ``psf_sigma_nm`` is the PSF a conditioned model is told (the movie's config)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the camera-mismatch warning of a transfer check is expected
        locs = localizer.localize(frames, camera, psf_sigma_nm=psf_sigma_nm)
    return locs, time.perf_counter() - t0


def open_model(checkpoint: str, backend_cfg: Any, model_cfg: rconfig.ModelConfig) -> Any:
    """An OfflineLocalizer for ``checkpoint`` with the config's detection thresholds."""
    from rtsmlm.localization.offline import OfflineLocalizer

    return OfflineLocalizer(checkpoint, backend_cfg, model_cfg.p_threshold, model_cfg.candidate_threshold,
                            model_cfg.refine, residual_threshold=model_cfg.residual_threshold,
                            merge_splits=model_cfg.merge_splits)


def reference_backend() -> tuple[rconfig.Config, Any]:
    """The default config and the backend the accuracy benchmarks run every model on: torch fp32 on one CPU
    thread, torch's own pool set to one as well, so figures compare across runs and machines."""
    import torch

    torch.set_num_threads(1)
    base = rconfig.load(None)
    return base, rconfig.replace(base.backend, name="torch", device="cpu", precision="fp32", threads=1)


SPEC_OPTIONS = ("mle", "fuse", "no-residual", "no-merge", "flips2", "flips4", "bf16")


def split_model_spec(spec: str) -> tuple[str, list[str]]:
    """(checkpoint, options) of a benchmark's model spec
    ``PATH[+mle|+fuse][+no-merge][+no-residual][+flips2|+flips4][+bf16]``;
    an unknown option is one sentence naming it."""
    path, *options = spec.split("+")
    unknown = [o for o in options if o not in SPEC_OPTIONS]
    if unknown:
        raise SystemExit(f"model spec {spec!r}: unknown option {unknown[0]!r} (one of {', '.join(SPEC_OPTIONS)})")
    return path, options


def open_model_specs(specs: list[str], backend_cfg: Any, model_cfg: rconfig.ModelConfig) -> dict[str, Any]:
    """{label: OfflineLocalizer} of several model specs (:func:`open_model_spec`); two specs with one label
    (checkpoints of one file name in different folders) are refused in one sentence instead of one silently
    replacing the other in the tables."""
    localizers: dict[str, Any] = {}
    for spec in specs:
        label = model_spec_label(spec)
        if label in localizers:
            raise SystemExit(f"model spec {spec!r} has the label {label!r} of an earlier one: give the checkpoints "
                             "distinct file names.")
        localizers[label] = open_model_spec(spec, backend_cfg, model_cfg)[1]
    return localizers


def model_spec_label(spec: str) -> str:
    """A model spec's label in the tables: the checkpoint's file name and the options."""
    path, options = split_model_spec(spec)
    return "+".join([Path(path).name if "/" in path else path, *options])


def open_model_spec(spec: str, backend_cfg: Any, model_cfg: rconfig.ModelConfig) -> tuple[str, Any]:
    """(label, OfflineLocalizer) of a benchmark's model spec: a shipped name or checkpoint path, optionally
    ``+mle`` / ``+fuse`` for that refinement (model.refine; ``+no-merge``: without its split check,
    model.merge_splits = false), ``+no-residual`` for the first detection pass
    only (model.residual_threshold = 0), ``+flips2`` / ``+flips4`` for test-time flips
    (backend.test_time_flips) and ``+bf16`` for torch's bf16 autocast on the CPU (backend.precision; what
    ``precision = "auto"`` runs on a CPU with native bf16) instead of the reference fp32. The label is the
    checkpoint's file name and the options."""
    path, options = split_model_spec(spec)
    refine = next((o for o in options if o in ("mle", "fuse")), "off")
    residual = 0.0 if "no-residual" in options else model_cfg.residual_threshold
    flips = next((int(o.removeprefix("flips")) for o in options if o.startswith("flips")), 1)
    precision = "bf16" if "bf16" in options else backend_cfg.precision
    backend = rconfig.replace(backend_cfg, test_time_flips=flips, precision=precision)
    model = rconfig.replace(model_cfg, refine=refine, residual_threshold=residual,
                            merge_splits="no-merge" not in options)
    return model_spec_label(spec), open_model(path, backend, model)


def picasso_available() -> str | None:
    """None when Picasso's localize module imports, else the reason it does not."""
    import logging

    # Picasso imports an audio library that logs a warning on machines without sound: not our concern.
    logging.getLogger("playsound3").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import picasso.localize  # noqa: F401
    except Exception as e:  # ImportError, or a dependency failing at import time
        return (f"picasso.localize cannot be imported ({type(e).__name__}: {e}); install picassosr and its "
                "dependencies (pip install picassosr) for the classical-fitter comparison")
    return None


def picasso_camera_info(camera: CameraModel) -> dict[str, float]:
    """The camera as Picasso's ``localize_frames`` takes it."""
    return {"Baseline": camera.baseline_adu, "Sensitivity": camera.e_per_adu, "Gain": camera.em_gain,
            "Qe": camera.qe, "Pixelsize": camera.pixel_size_nm}


@contextlib.contextmanager
def picasso_quiet():
    """Picasso prints notes (CPU utilisation, audio backends) and warns about deprecations: keep the
    benchmark's table readable."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def run_picasso(frames: np.ndarray, camera: CameraModel, net_gradient: float, box: int = 7) -> np.ndarray:
    """Picasso's identification (minimum net gradient) + MLE Gaussian fit, as a LOC_DTYPE table in nm."""
    from picasso import localize as plocalize

    params = {"Min. Net Gradient": float(net_gradient), "Box Size": int(box)}
    with picasso_quiet():
        df = plocalize.localize_frames(frames, None, params, camera_info=picasso_camera_info(camera),
                                       fitting_method="gaussmle")
    out = np.zeros(len(df), LOC_DTYPE)
    if len(df) == 0:
        return out
    px = camera.pixel_size_nm
    out["frame"] = df["frame"].to_numpy()
    # Picasso puts pixel centres at integer coordinates; rtsmlm's origin is the top-left pixel corner.
    out["x"] = (df["x"].to_numpy(np.float64) + 0.5) * px
    out["y"] = (df["y"].to_numpy(np.float64) + 0.5) * px
    out["z"] = np.nan
    out["photons"] = df["photons"].to_numpy()
    out["bg"] = df["bg"].to_numpy()
    out["sigma_x"] = df["lpx"].to_numpy() * px
    out["sigma_y"] = df["lpy"].to_numpy() * px
    out["sigma_z"] = np.nan
    out["sigma_photons"] = np.nan
    out["p"] = 1.0
    valid = np.isfinite(out["x"]) & np.isfinite(out["y"])
    return out[valid]


def tune_picasso(movie: Movie, tolerance_nm: float, min_photons: float, box: int,
                 candidates: tuple[float, ...] = PICASSO_NET_GRADIENTS) -> tuple[float, list[dict[str, Any]]]:
    """The minimum net gradient with the best population Jaccard on ``movie`` (a tuning movie)."""
    scan = []
    for ng in candidates:
        locs = run_picasso(movie.frames, movie.camera, ng, box)
        s, _, _ = score(locs, movie.truth, tolerance_nm, min_photons)
        scan.append({"net_gradient": ng, "jaccard": s["population"]["jaccard"],
                     "jaccard_all": s["all"]["jaccard"], "rmse_lat_nm": s["population"]["rmse_lat_nm"],
                     "n_pred": s["population"]["n_pred"]})
    best = max(scan, key=lambda r: -1.0 if r["jaccard"] is None or math.isnan(r["jaccard"]) else r["jaccard"])
    return best["net_gradient"], scan


# --------------------------------------------------------------------------------------------------
# Sections


def low_density(base: rconfig.Config, args: argparse.Namespace, localizer: Any, log=print) -> dict[str, Any]:
    """Section 1: low density at each background, with precision vs CRLB."""
    movies, results = [], []
    for k, bg in enumerate(args.bg):
        cfg = sim_config(base, seed=args.seed + k, size=args.size, density=args.low_density, bg=bg)
        movie = simulate_movie(cfg, f"low density {args.low_density:g}/µm², bg {bg:g}", args.low_frames)
        locs, seconds = run_model(localizer, movie.frames, movie.camera, cfg.psf.sigma_nm)
        s, m_all, _ = score(locs, movie.truth, args.tolerance_nm, args.min_photons)
        s.update(movie=movie.name, seed=movie.seed, frames=len(movie.frames), size=args.size,
                 density_per_um2=movie.density, bg_photons=bg, model_seconds=seconds,
                 crlb=crlb_rows(m_all, movie, args.min_photons, args.crlb_border_px))
        s["jaccard_verdict"] = verdict(s["population"]["jaccard"] >= TARGET_LOW_JACCARD)
        results.append(s)
        movies.append(movie)
        log(f"  [{movie.name}: {len(movie.frames)} frames, {len(movie.truth)} true emitters, "
            f"model {seconds:.0f} s]")
    crlb_ok = all(r["verdict"] == "PASS" for s in results for r in s["crlb"] if r["n"])
    return {"movies": results, "crlb_verdict": verdict(crlb_ok),
            "jaccard_verdict": verdict(all(s["jaccard_verdict"] == "PASS" for s in results)),
            "crlb_params": {"excess_noise": movies[0].excess_noise, "psf_sigma_nm": movies[0].psf_sigma_nm,
                            "pixel_size_nm": movies[0].pixel_size_nm, "border_px": args.crlb_border_px,
                            "photon_edges": list(CRLB_EDGES), "judged_against": "crlb_fisher_lat_nm "
                            "(Fisher bound, Mortensen Eq. 6)", "factor": TARGET_CRLB_FACTOR}}


def high_density(base: rconfig.Config, args: argparse.Namespace, localizer: Any, log=print) -> dict[str, Any]:
    """Section 2: high density, the model against Picasso (tuned on a separate seed)."""
    why_not = "--no-picasso given" if args.no_picasso else picasso_available()
    results = []
    for k, density in enumerate(args.high_density):
        cfg = sim_config(base, seed=args.seed + 10 + k, size=args.size, density=density, bg=args.high_bg)
        movie = simulate_movie(cfg, f"high density {density:g}/µm², bg {args.high_bg:g}", args.high_frames)
        locs, seconds = run_model(localizer, movie.frames, movie.camera, cfg.psf.sigma_nm)
        s, _, _ = score(locs, movie.truth, args.tolerance_nm, args.min_photons)
        entry: dict[str, Any] = {"movie": movie.name, "seed": movie.seed, "frames": len(movie.frames),
                                 "size": args.size, "density_per_um2": density, "bg_photons": args.high_bg,
                                 "model": s, "model_seconds": seconds}
        entry["jaccard_verdict"] = verdict(s["population"]["jaccard"] >= TARGET_HIGH_JACCARD)
        if why_not is None:
            tune_cfg = sim_config(base, seed=args.seed + 100 + k, size=args.size, density=density, bg=args.high_bg)
            tune_movie = simulate_movie(tune_cfg, "tuning", args.picasso_tune_frames)
            t0 = time.perf_counter()
            best, scan = tune_picasso(tune_movie, args.tolerance_nm, args.min_photons, args.picasso_box)
            t1 = time.perf_counter()
            p_locs = run_picasso(movie.frames, movie.camera, best, args.picasso_box)
            t2 = time.perf_counter()
            ps, _, _ = score(p_locs, movie.truth, args.tolerance_nm, args.min_photons)
            entry["picasso"] = ps
            entry["picasso_settings"] = {"net_gradient": best, "box": args.picasso_box, "fit": "gaussmle",
                                         "tuned_on_seed": tune_movie.seed,
                                         "tuning_frames": len(tune_movie.frames), "scan": scan}
            entry["picasso_seconds"] = {"tuning": t1 - t0, "benchmark_movie": t2 - t1}
            margin = s["population"]["jaccard"] - ps["population"]["jaccard"]
            entry["margin_vs_picasso"] = margin
            entry["margin_verdict"] = verdict(margin >= TARGET_HIGH_MARGIN)
        else:
            entry["picasso"] = None
            entry["picasso_note"] = f"Picasso comparison skipped: {why_not}"
            entry["margin_verdict"] = "not measured"
        results.append(entry)
        log(f"  [{movie.name}: {len(movie.frames)} frames, {len(movie.truth)} true emitters, "
            f"model {seconds:.0f} s]")
    return {"movies": results, "picasso_note": why_not}


def storm_movie(args: argparse.Namespace, localizers: dict[str, Any], log=print) -> dict[str, Any]:
    """Section 3: the storm-analysis test movie with each available model."""
    from rtsmlm.acquisition.source import CameraModel
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.io.movies import open_movie

    movie_path = args.storm_dir / "test.dax"
    truth_path = args.storm_dir / "truth.csv"
    if not (movie_path.is_file() and truth_path.is_file()):
        return {"skipped": f"the storm-analysis test data is not at {args.storm_dir}"}
    with open_movie(movie_path) as reader:
        frames = np.stack(list(reader))
    truth = read_locs(truth_path)
    camera = CameraModel.from_config(rconfig.load(STORM_CONFIG).camera)
    out: dict[str, Any] = {"movie": str(movie_path), "frames": len(frames), "shape": list(frames.shape[1:]),
                           "n_true": len(truth), "camera": camera.describe(), "tolerance_nm": args.storm_tolerance_nm,
                           "reference": STORM_REFERENCE, "models": {}}
    for label, localizer in localizers.items():
        if isinstance(localizer, str):
            out["models"][label] = {"skipped": localizer}
            continue
        locs, seconds = run_model(localizer, frames, camera, rconfig.load(STORM_CONFIG).psf.sigma_nm)
        s, _, _ = score(locs, truth, args.storm_tolerance_nm, None)
        metrics = s["all"]
        metrics["rmse_per_axis_nm"] = metrics["rmse_lat_nm"] / math.sqrt(2.0) if metrics["tp"] else math.nan
        metrics["model_seconds"] = seconds
        metrics["errors"] = s["errors_all"]
        metrics["step"] = localizer.step
        metrics["verdict"] = verdict(metrics["jaccard"] >= STORM_REFERENCE["jaccard"]
                                     and metrics["rmse_lat_nm"] <= STORM_REFERENCE["rmse_lat_nm"])
        out["models"][label] = metrics
        log(f"  [storm-analysis movie, {label}: model {seconds:.0f} s]")
    return out


def write_plots(low: dict[str, Any], plot: Path, step: int) -> list[str]:
    """One RMSE-vs-CRLB PNG per low-density movie: ``plot`` with ``_bgN`` added to its name."""
    from rtsmlm.analysis.evaluate import plot_precision_vs_crlb

    paths = []
    for s in low["movies"]:
        path = plot.with_name(f"{plot.stem}_bg{s['bg_photons']:g}{plot.suffix or '.png'}")
        plot_precision_vs_crlb(to_jsonable(s["crlb"]), path, title=f"{s['movie']}, model step {step}")
        paths.append(str(path))
    return paths


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --------------------------------------------------------------------------------------------------
# Printing


def _f(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def print_report(result: dict[str, Any]) -> None:
    print()
    for label in ("model", "storm_model"):
        info = result.get(label)
        if isinstance(info, dict):
            print(f"{label}: {info['checkpoint']} (step {info['step']}, validation {info['validation']})")
        elif info:
            print(f"{label}: {info}")
    low = result.get("low_density")
    if low:
        print("\n== Low density (targets: Jaccard >= 0.95; per-axis RMSE <= 1.2 x sqrt(CRLB) per photon bin) ==")
        print(f"{'movie':36s} {'population':>15s} {'JI':>6s} {'RMSE':>6s} {'n_pred':>7s} {'n_true':>7s} "
              f"{'TP':>6s} {'FP':>5s} {'FN':>5s}")
        for s in low["movies"]:
            for key in ("all", "population"):
                r = s[key]
                rule = "all truth" if key == "all" else s["population_rule"]
                print(f"{s['movie']:36s} {rule:>15s} {_f(r['jaccard']):>6s} {_f(r['rmse_lat_nm'], '.1f'):>6s} "
                      f"{r['n_pred']:7d} {r['n_true']:7d} {r['tp']:6d} {r['fp']:5d} {r['fn']:5d}")
            print(f"{'':36s} Jaccard target 0.95 on {s['population_rule']}: {s['jaccard_verdict']} "
                  f"({s['population']['jaccard'] - TARGET_LOW_JACCARD:+.3f}); "
                  f"{s['n_pred_matched_to_excluded']} predictions matched dim emitters (not counted)")
        p = low["crlb_params"]
        print(f"\nPrecision vs CRLB per photon bin (per axis, nm; F = {p['excess_noise']:g}, PSF sigma "
              f"{p['psf_sigma_nm']:g} nm, pixel {p['pixel_size_nm']:g} nm; emitters >= {p['border_px']:g} px "
              f"from the edge). Judged against the Fisher bound (Mortensen Eq. 6, the physical limit);")
        print("Eq. 5 (least-squares precision) and the numerical Fisher bound at the bin mean for reference; n1/RMSE1:")
        print("emitters not visible in the neighbouring frames (the network's window cannot add photons to them).")
        print(f"{'bg':>4s} {'photons':>11s} {'mean':>6s} {'n':>5s} {'RMSE x':>7s} {'RMSE y':>7s} {'RMSE':>6s} "
              f"{'Fisher':>7s} {'numFI':>6s} {'Eq.5':>6s} {'/Fish':>6s} {'/Eq5':>6s} {'1.2xF':>6s} {'margin':>7s}  verdict"
              f"  {'n1':>4s} {'RMSE1':>6s} {'/Fish':>6s}")
        for s in low["movies"]:
            for r in s["crlb"]:
                print(f"{r['bg_photons']:4.0f} {r['photons_lo']:5.0f}-{r['photons_hi']:<5.0f} "
                      f"{_f(r['photons_mean'], '.0f'):>6s} {r['n']:5d} {_f(r['rmse_x_nm'], '.2f'):>7s} "
                      f"{_f(r['rmse_y_nm'], '.2f'):>7s} {_f(r['rmse_lat_nm'], '.2f'):>6s} "
                      f"{_f(r['crlb_fisher_lat_nm'], '.2f'):>7s} {_f(r.get('crlb_fisher_numeric_at_mean_nm'), '.2f'):>6s} "
                      f"{_f(r['crlb_lat_nm'], '.2f'):>6s} {_f(r['ratio_fisher'], '.2f'):>6s} {_f(r['ratio'], '.2f'):>6s} "
                      f"{_f(r.get('target_nm'), '.2f'):>6s} {_f(r.get('margin_nm'), '+.2f'):>7s}  {r['verdict']:7s}"
                      f"  {r['n_single_frame']:4d} {_f(r['rmse_lat_single_frame_nm'], '.2f'):>6s} "
                      f"{_f(r['ratio_fisher_single_frame'], '.2f'):>6s}")
        print(f"Low density: Jaccard {low['jaccard_verdict']}, RMSE vs CRLB {low['crlb_verdict']}")
        for path in result.get("plots", []):
            print(f"plot: {path}")
    high = result.get("high_density")
    if high:
        print("\n== High density (targets: Jaccard >= 0.6 and >= Picasso + 0.2) ==")
        print(f"{'movie':30s} {'method':24s} {'population':>15s} {'JI':>6s} {'RMSE':>6s} {'n_pred':>7s} "
              f"{'n_true':>7s} {'TP':>6s} {'FP':>6s} {'FN':>6s}")
        for e in high["movies"]:
            methods = [("model", e["model"])]
            if e.get("picasso"):
                ps = e["picasso_settings"]
                methods.append((f"Picasso gaussmle ng={ps['net_gradient']:g}", e["picasso"]))
            for name, s in methods:
                for key in ("all", "population"):
                    r = s[key]
                    rule = "all truth" if key == "all" else s["population_rule"]
                    print(f"{e['movie']:30s} {name:24s} {rule:>15s} {_f(r['jaccard']):>6s} "
                          f"{_f(r['rmse_lat_nm'], '.1f'):>6s} {r['n_pred']:7d} {r['n_true']:7d} {r['tp']:6d} "
                          f"{r['fp']:6d} {r['fn']:6d}")
            line = f"{'':30s} Jaccard >= 0.6: {e['jaccard_verdict']}"
            if e.get("picasso"):
                line += f"; model - Picasso = {e['margin_vs_picasso']:+.3f} (>= 0.2: {e['margin_verdict']})"
                scan = ", ".join(f"{r['net_gradient']:g}: {_f(r['jaccard'])}" for r in e["picasso_settings"]["scan"])
                line += (f"\n{'':30s} Picasso net-gradient scan on seed {e['picasso_settings']['tuned_on_seed']} "
                         f"({e['picasso_settings']['tuning_frames']} frames), population JI: {scan}")
            else:
                line += f"; {e['picasso_note']}"
            print(line)
    storm = result.get("storm")
    if storm:
        print("\n== storm-analysis test movie (reference 3D-DAOSTORM: Jaccard 0.989, RMSE ~10 nm; judged on the "
              "radial RMSE) ==")
        if "skipped" in storm:
            print(f"skipped: {storm['skipped']}")
        else:
            print(f"{storm['movie']}: {storm['frames']} frames {storm['shape'][0]}x{storm['shape'][1]}, "
                  f"{storm['n_true']} true emitters, tolerance {storm['tolerance_nm']:g} nm")
            print(f"{'model':14s} {'step':>6s} {'JI':>6s} {'RMSE':>6s} {'/axis':>6s} {'n_pred':>7s} {'TP':>6s} "
                  f"{'FP':>5s} {'FN':>5s} {'bias x':>7s} {'bias y':>7s}  verdict")
            for label, r in storm["models"].items():
                if "skipped" in r:
                    print(f"{label:14s} skipped: {r['skipped']}")
                    continue
                print(f"{label:14s} {r['step']:6d} {_f(r['jaccard']):>6s} {_f(r['rmse_lat_nm'], '.1f'):>6s} "
                      f"{_f(r['rmse_per_axis_nm'], '.1f'):>6s} {r['n_pred']:7d} {r['tp']:6d} {r['fp']:5d} "
                      f"{r['fn']:5d} {_f(r['bias_x_nm'], '+.1f'):>7s} {_f(r['bias_y_nm'], '+.1f'):>7s}  {r['verdict']}")
                e = r["errors"]
                print(f"{'':14s} errors: {e.get('fp_within_50nm_of_truth', 0)}/{e['fp']} FP within 50 nm of a "
                      f"true emitter (duplicates), {e.get('fn_with_emitter_within_300nm', 0)}/{e['fn']} FN with "
                      f"another emitter within 300 nm (close pairs)")
    print(f"\ntotal {result['seconds']:.0f} s")


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="checkpoint for the default camera (default: shipped)")
    ap.add_argument("--storm-model", default=DEFAULT_STORM_MODEL,
                    help="checkpoint for the storm-analysis camera (default: rtsmlm/models/storm_analysis in "
                         "this repository; the section says so and skips it when missing)")
    ap.add_argument("--config", default=None, help="config.toml whose [model] thresholds and camera are used")
    ap.add_argument("--seed", type=int, default=12345, help="first simulation seed (the training seed is 1)")
    ap.add_argument("--size", type=int, default=64, help="simulated frame size (pixels)")
    ap.add_argument("--low-frames", type=int, default=1000, help="frames per low-density movie")
    ap.add_argument("--low-density", type=float, default=0.1)
    ap.add_argument("--bg", type=float, nargs="+", default=[50.0, 100.0], help="backgrounds of the low-density movies")
    ap.add_argument("--high-frames", type=int, default=200, help="frames per high-density movie")
    ap.add_argument("--high-density", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--high-bg", type=float, default=75.0)
    ap.add_argument("--min-photons", type=float, default=1000.0, help="evaluated population: photons >= this")
    ap.add_argument("--tolerance-nm", type=float, default=250.0)
    ap.add_argument("--crlb-border-px", type=float, default=4.0)
    ap.add_argument("--no-picasso", action="store_true", help="skip the classical fitter")
    ap.add_argument("--picasso-box", type=int, default=7)
    ap.add_argument("--picasso-tune-frames", type=int, default=50)
    ap.add_argument("--storm-dir", type=Path, default=STORM_DIR)
    ap.add_argument("--storm-tolerance-nm", type=float, default=160.0)
    ap.add_argument("--sections", nargs="+", default=["low", "high", "storm"], choices=["low", "high", "storm"])
    ap.add_argument("--backend", default="torch", choices=["auto", "torch", "onnxruntime", "tensorrt"])
    ap.add_argument("--precision", default="fp32", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    ap.add_argument("--plot", type=Path, default=None,
                    help="RMSE-vs-CRLB PNG; one per background, named FILE_bgN.png")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Run the selected sections; returns the JSON-ready result (also used by the smoke test)."""
    from rtsmlm.localization.checkpoint import CheckpointError, resolve

    t_start = time.perf_counter()
    base = rconfig.load(args.config)
    backend_cfg = rconfig.replace(base.backend, name=args.backend, precision=args.precision, threads=args.threads)
    result: dict[str, Any] = {"command": " ".join(["python", *sys.argv]),
                              "model_thresholds": {"p_threshold": base.model.p_threshold,
                                                   "candidate_threshold": base.model.candidate_threshold},
                              "targets": {"low_jaccard": TARGET_LOW_JACCARD, "crlb_factor": TARGET_CRLB_FACTOR,
                                          "high_jaccard": TARGET_HIGH_JACCARD, "high_margin": TARGET_HIGH_MARGIN,
                                          "storm": STORM_REFERENCE},
                              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="rtsmlm_bench_acc_") as tmp:
        tmp_dir = Path(tmp)
        ckpt, meta = snapshot_checkpoint(args.model, tmp_dir / "model")
        result["model"] = model_info(args.model, meta)
        log(f"model {args.model}: step {meta.step}")
        model = open_model(ckpt, backend_cfg, base.model)
        result["backend"] = model.backend.describe()
        if "low" in args.sections:
            log("low density ...")
            result["low_density"] = low_density(base, args, model, log)
            if args.plot is not None:
                result["plots"] = write_plots(result["low_density"], args.plot, meta.step)
        if "high" in args.sections:
            log("high density ...")
            result["high_density"] = high_density(base, args, model, log)
        if "storm" in args.sections:
            log("storm-analysis movie ...")
            localizers: dict[str, Any] = {"default model": model}
            storm_prefix = resolve(args.storm_model)
            if storm_prefix.with_suffix(".json").is_file() and storm_prefix.with_suffix(".safetensors").is_file():
                try:
                    storm_ckpt, storm_meta = snapshot_checkpoint(args.storm_model, tmp_dir / "storm")
                    localizers["storm model"] = open_model(storm_ckpt, backend_cfg, base.model)
                    result["storm_model"] = model_info(args.storm_model, storm_meta)
                except CheckpointError as e:
                    localizers["storm model"] = result["storm_model"] = f"cannot load {args.storm_model}: {e}"
            else:
                localizers["storm model"] = result["storm_model"] = (
                    f"no checkpoint at {storm_prefix} (.json + .safetensors); "
                    "pass --storm-model PATH once it is trained")
            result["storm"] = storm_movie(args, localizers, log)
    result["seconds"] = time.perf_counter() - t_start
    return to_jsonable(result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
