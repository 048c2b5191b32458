"""Evaluate a localization file against ground truth: the JSON that ``rtsmlm evaluate`` prints.

Reads both files with :func:`rtsmlm.io.locfiles.read_locs` (any supported format), matches them with
:func:`rtsmlm.analysis.metrics.match`, summarises with :func:`rtsmlm.analysis.metrics.metrics_from_match`, and — when the
truth has photon counts and the camera/PSF parameters are known — compares the measured precision with
the CRLB per photon bin (:func:`rtsmlm.analysis.metrics.precision_vs_crlb`), optionally as a PNG plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rtsmlm.analysis.metrics import match, metrics_from_match, precision_vs_crlb
from rtsmlm.core.jsonio import to_jsonable
from rtsmlm.io.locfiles import read_locs

__all__ = ["evaluate_files", "plot_precision_vs_crlb"]

CRLB_CONVENTION = (
    "per axis: rmse_*_nm = sqrt(mean d^2) over matches in the bin (rmse_lat_nm averages the x and y "
    "mean squares), crlb_lat_nm = sqrt(mean CRLB variance) by Mortensen 2010 Eq. 5, crlb_fisher_lat_nm "
    "the same by Eq. 6 (= Fisher bound); photons are the true photons; top-level rmse_lat_nm is radial "
    "(sqrt(mean dx^2+dy^2)), i.e. sqrt(2) x per axis"
)


def evaluate_files(locs_path: str | Path, truth_path: str | Path, pixel_size_nm: float | None = None,
                   tolerance_nm: float = 250.0, sigma_nm: float | None = None, bg: float | None = None,
                   excess_noise: float | None = None, plot_path: str | Path | None = None,
                   photon_bins: int | Sequence[float] = 8, use_z: bool = False) -> dict[str, Any]:
    """Match ``locs_path`` against ``truth_path`` and return a JSON-ready dict (NaN → None).

    Keys: those of :func:`rtsmlm.analysis.metrics.evaluate` (``jaccard``, ``rmse_lat_nm``, ``rmse_ax_nm``,
    ``efficiency_lat``, ``n_pred``, ``n_true``, ``tp``, ``fp``, ``fn``, ``bias_*_nm``, ...), the two
    paths, and ``crlb``: a list of per-photon-bin rows (see :func:`rtsmlm.analysis.metrics.precision_vs_crlb`)
    with ``crlb_convention`` describing them, or None with ``crlb_note`` saying why it was skipped.

    The CRLB needs the truth's photons, ``pixel_size_nm``, ``sigma_nm`` (PSF standard deviation) and the
    background photons per pixel — the truth's ``bg`` column when it has one, else ``bg``.
    ``excess_noise`` is 2 for an EMCCD with EM gain, 1 otherwise (None means 1). ``plot_path`` writes a
    PNG of RMSE and CRLB against photons (needs matplotlib); ``plot`` in the result is its path, or None.
    """
    excess_noise = 1.0 if excess_noise is None else float(excess_noise)
    pred = read_locs(locs_path, pixel_size_nm)
    truth = read_locs(truth_path, pixel_size_nm)
    m = match(pred, truth, tolerance_nm=tolerance_nm, use_z=use_z)
    result: dict[str, Any] = metrics_from_match(m)
    result["locs_path"] = str(locs_path)
    result["truth_path"] = str(truth_path)

    truth_bg = np.asarray(truth["bg"], dtype=np.float64)
    bg_values: Any = truth_bg if len(truth_bg) and np.all(np.isfinite(truth_bg)) else bg
    missing = []
    if not np.any(np.isfinite(truth["photons"])):
        missing.append(f"the truth file {truth_path} has no photon counts")
    if pixel_size_nm is None:
        missing.append("pixel_size_nm is not given")
    if sigma_nm is None:
        missing.append("sigma_nm (PSF sigma) is not given")
    if bg_values is None:
        missing.append("bg (background photons per pixel) is not given and the truth has no bg column")
    if missing:
        result["crlb"] = None
        result["crlb_note"] = "CRLB comparison skipped: " + "; ".join(missing)
    else:
        result["crlb"] = precision_vs_crlb(m, truth["photons"], bg_values, float(sigma_nm),
                                           float(pixel_size_nm), excess_noise, photon_bins)
        result["crlb_convention"] = CRLB_CONVENTION
        result["crlb_params"] = {"pixel_size_nm": pixel_size_nm, "sigma_nm": sigma_nm,
                                 "bg": "truth column" if bg_values is truth_bg else bg,
                                 "excess_noise": excess_noise}
    result["plot"] = None
    if plot_path is not None:
        if result["crlb"]:
            result["plot"] = str(plot_precision_vs_crlb(result["crlb"], plot_path,
                                                        title=f"{Path(locs_path).name} vs truth"))
        else:
            result["plot_note"] = "no plot: there is no CRLB comparison to draw"
    return to_jsonable(result)


def plot_precision_vs_crlb(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Draw per-axis RMSE (x, y, lateral) and the CRLB against photons (log-log) into a PNG."""
    try:
        # The Agg canvas directly, not pyplot: no global backend switch inside a GUI process.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'rtsmlm[plot]'") from None

    rows = [r for r in rows if r["n"] and r.get("photons_mean") is not None]
    photons = np.array([r["photons_mean"] for r in rows], dtype=float)

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)

    fig = Figure(figsize=(6.0, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(photons, col("rmse_x_nm"), "o", ms=4, alpha=0.6, label="RMSE x")
    ax.plot(photons, col("rmse_y_nm"), "s", ms=4, alpha=0.6, label="RMSE y")
    ax.plot(photons, col("rmse_lat_nm"), "D-", ms=5, label="RMSE lateral (per axis)")
    ax.plot(photons, col("crlb_fisher_lat_nm"), "k-", label="√CRLB (Fisher, Mortensen Eq. 6)")
    ax.plot(photons, col("crlb_lat_nm"), "k--", label="Mortensen Eq. 5")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Plain numbers (3000, not 3×10³); minor ticks labelled only at 1, 2, 3, 5 × 10ⁿ so labels don't collide.
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    sparse = FuncFormatter(lambda value, _pos: f"{value:g}" if f"{value:g}"[0] in "1235" else "")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(sparse)
    ax.set_xlabel("true photons per emitter (bin mean)")
    ax.set_ylabel("precision per axis [nm]")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
