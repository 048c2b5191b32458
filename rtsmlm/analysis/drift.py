"""Online drift correction: causal block-wise intersection maximization, and a global refinement.

The method follows AIM (adaptive intersection maximization, Ma et al., Science Advances 2024), made
causal and incremental for a live acquisition:

* Localizations are grouped into time blocks (``DriftConfig.block_frames`` frames, extended until the
  block holds ``DriftConfig.min_block_locs`` localizations).
* The first block defines the reference position: its drift is 0 by definition.
* Each later block is scored against a reference built from all *earlier* drift-corrected
  localizations (a fine count map, ``bin_nm`` bins; the block itself is never in it) over a grid of
  shifts centred on the drift predicted from the previous blocks. The score of a shift is the number
  of reference localizations in the bins the shifted block lands on. When the best shift sits on the
  edge of the grid the search is widened. The integer peak is refined to sub-bin precision by
  re-scoring around the current estimate with the block moved by the continuous shift and fitting a
  2-D quadratic, until the update vanishes (at the fixed point the score is symmetric, so binning does
  not bias the estimate).
* Each block is also measured in up to four consecutive parts (refined from the block's shift), and
  its even- and odd-frame halves are measured separately: their difference tells the noise of the
  measurements. Per-frame drift comes from all part measurements so far through a smoother with a
  random-walk prior (the drift per frame is piecewise linear; noise and random-walk variance are
  estimated from the data), which interpolates smoothly between blocks and resolves the drift within
  them. Beyond the last measurement the recent trend is continued.
* Fiducials (emitters localized in most frames of the first block) are tracked; where seen, they give
  the block's drift and the intersection estimate is kept alongside for comparison.
* :meth:`OnlineDrift.finalize` refines the whole run: finer blocks, each scored against all other
  localizations (leave-one-block-out), combined with the per-frame fiducial tracks when present, through
  the same smoother; two passes, the second against the reference the first one corrected.

Drift is the SAMPLE's displacement in nm: a structure at ``x0`` appears at ``x0 + dx``, so the
corrected coordinate is ``x_dc = x - dx`` (the simulator's ``drift.csv`` uses the same sign).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from rtsmlm.core.config import DriftConfig
from rtsmlm.core.locs import with_drift_columns
from rtsmlm.io.tables import DriftTrajectory, read_drift_csv, write_drift_csv

log = logging.getLogger("rtsmlm.analysis.drift")

__all__ = [
    "DriftBlocks",
    "DriftTrajectory",
    "FiducialInfo",
    "OnlineDrift",
    "read_drift_csv",
    "write_drift_csv",
]

_PAGE_BINS = 512          # side of one page of the reference count map, in bins
MAX_REFERENCE_BINS = 8192  # largest side of the reference count map, in bins (memory bound)
_MIN_HALO_BINS = 48       # widest search radius (bins) one scoring call can cover
_COARSE_POINTS = 4000     # points used for the integer-bin shift search
_SUB_BLOCKS = 4           # online blocks are also measured in up to this many consecutive parts
_SUB_BLOCK_LOCS = 1000    # ... each with at least this many localizations
_REFINE_RADIUS = 2        # the sub-bin fit uses the 5x5 scores around the current estimate
_FIDUCIAL_RADIUS_NM = 80.0  # tracking radius around a fiducial's expected position
_FIDUCIAL_DETECT_NM = 40.0  # a fiducial's localizations in the first block lie this close together
_FIDUCIAL_MIN_ON = 0.7      # a fiducial is localized in at least this fraction of the first block's frames
_FIDUCIAL_KEEP_ON = 0.25    # ... and stays in use while seen in this fraction of a block's frames


# --------------------------------------------------------------------------------------------------
# Public data


@dataclass(frozen=True)
class DriftBlocks:
    """The online per-block estimates, one entry per completed block (arrays of equal length).

    ``dx``/``dy`` are the values used (fiducials when tracked, else intersection maximization);
    ``dx_aim``/``dy_aim`` and ``dx_fid``/``dy_fid`` are the two measurements (NaN when not made).
    ``peak_contrast`` is (best score - median score) / best score of the shift search (0..1; near 0 means
    no structure was matched). ``update_ms`` is the wall time spent estimating and adding the block,
    ``update_cpu_ms`` the CPU time of the calling thread for it (the same, minus waiting for a busy CPU).
    """

    first_frame: np.ndarray
    last_frame: np.ndarray
    centre_frame: np.ndarray
    n_locs: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    dx_aim: np.ndarray
    dy_aim: np.ndarray
    dx_fid: np.ndarray
    dy_fid: np.ndarray
    peak_contrast: np.ndarray
    search_radius_nm: np.ndarray
    update_ms: np.ndarray
    update_cpu_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.dx)


@dataclass(frozen=True)
class FiducialInfo:
    """Fiducial markers found in the first block and how they were used.

    ``positions_nm`` is (n, 2) as (x, y) in the first block's frame; ``on_fraction`` is the fraction of the
    first block's frames in which each was localized; ``blocks_used`` counts online blocks whose drift came
    from fiducials; ``aim_vs_fiducial_rms_nm`` compares the two online measurements where both exist.
    """

    n: int
    positions_nm: np.ndarray
    on_fraction: np.ndarray
    blocks_used: int
    aim_vs_fiducial_rms_nm: float
    used_in_final: bool

    def describe(self) -> dict:
        """JSON-friendly summary for the run summary."""
        return {
            "n": self.n,
            "positions_nm": [[round(float(a), 1), round(float(b), 1)] for a, b in self.positions_nm],
            "on_fraction": [round(float(v), 3) for v in self.on_fraction],
            "blocks_used": self.blocks_used,
            "aim_vs_fiducial_rms_nm": (None if not math.isfinite(self.aim_vs_fiducial_rms_nm)
                                       else round(self.aim_vs_fiducial_rms_nm, 3)),
            "used_in_final": self.used_in_final,
        }


# --------------------------------------------------------------------------------------------------
# The reference: a count map on a fine grid, paged so memory follows the area that holds localizations


class _PagedCountMap:
    """Localization counts on a ``bin_nm`` grid over the field (plus a margin for drift).

    The grid is cut into square pages allocated on first use, so a large, sparsely filled field costs
    memory only where localizations are. Each page also stores a halo of its neighbours' bins, which lets
    the scores of all shifts up to ``halo`` bins be read as one window per localization (one fancy index
    into a sliding-window view) instead of one lookup per localization and shift.
    """

    def __init__(self, extent_nm: tuple[float, float], bin_nm: float, margin_nm: float, halo: int) -> None:
        self.bin = float(bin_nm)
        self.origin = -float(margin_nm)
        self.ny = int(math.ceil((extent_nm[0] + 2 * margin_nm) / bin_nm))
        self.nx = int(math.ceil((extent_nm[1] + 2 * margin_nm) / bin_nm))
        self.halo = int(halo)
        # a page wider than two halos keeps every point within the core or halo of at most 2x2 pages
        self.page = max(2 * self.halo + 1, min(_PAGE_BINS, max(self.ny, self.nx)))
        self.side = self.page + 2 * self.halo
        self.table = np.zeros((-(-self.ny // self.page), -(-self.nx // self.page)), dtype=np.int64)
        # page 0 is the shared all-zero page every unallocated table entry points to
        self._pages = np.zeros((2, self.side, self.side), dtype=np.float32)
        self._n_pages = 1
        self.total = 0.0

    def _bins(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        by = np.floor((np.asarray(y, dtype=np.float64) - self.origin) / self.bin).astype(np.int64)
        bx = np.floor((np.asarray(x, dtype=np.float64) - self.origin) / self.bin).astype(np.int64)
        inside = (by >= 0) & (by < self.ny) & (bx >= 0) & (bx < self.nx)
        return by, bx, inside

    def _allocate(self, ty: np.ndarray, tx: np.ndarray) -> None:
        keys = np.unique(ty * self.table.shape[1] + tx)
        need = self._n_pages + len(keys)
        if need > len(self._pages):
            grown = np.zeros((max(need, 2 * len(self._pages)), self.side, self.side), dtype=np.float32)
            grown[: self._n_pages] = self._pages[: self._n_pages]
            self._pages = grown
        self.table.reshape(-1)[keys] = np.arange(self._n_pages, need)
        self._n_pages = need

    def add(self, y: np.ndarray, x: np.ndarray, weight: float = 1.0) -> None:
        """Add ``weight`` at each (y, x) nm; points outside the map are ignored."""
        self.add_cells(self.cells(y, x), weight)

    def cells(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Storage positions of the points' bins (every page copy, halos included) and the point count.

        Pages the points touch are allocated here; pass the result to :meth:`add_cells`, as often as
        needed (a block is taken out of the reference and put back with the same cells).
        """
        by, bx, inside = self._bins(y, x)
        by, bx = by[inside], bx[inside]
        if len(by) == 0:
            return np.zeros(0, dtype=np.int64), 0
        p, h, s = self.page, self.halo, self.side
        ty_lo, ty_hi = (by - h) // p, (by + h) // p
        tx_lo, tx_hi = (bx - h) // p, (bx + h) // p
        parts = []
        # a point lies in the core or halo of at most 2x2 pages (halo < page)
        for ty, ysel in ((ty_lo, None), (ty_hi, ty_hi != ty_lo)):
            for tx, xsel in ((tx_lo, None), (tx_hi, tx_hi != tx_lo)):
                if ysel is None and xsel is None:
                    m = slice(None)  # the page of the bin itself, always inside the table
                else:
                    m = (ty >= 0) & (ty < self.table.shape[0]) & (tx >= 0) & (tx < self.table.shape[1])
                    if ysel is not None:
                        m &= ysel
                    if xsel is not None:
                        m &= xsel
                    if not m.any():
                        continue
                mty, mtx = ty[m], tx[m]
                slots = self.table[mty, mtx]
                if (slots == 0).any():
                    self._allocate(mty[slots == 0], mtx[slots == 0])
                    slots = self.table[mty, mtx]
                parts.append((slots * s + by[m] - mty * p + h) * s + bx[m] - mtx * p + h)
        return np.concatenate(parts), len(by)

    def add_cells(self, cells: tuple[np.ndarray, int], weight: float = 1.0) -> None:
        """Add ``weight`` per point at positions from :meth:`cells`."""
        flat, n = cells
        if n == 0:
            return
        # np.add.at is fast with an array of values (a scalar takes a slow path)
        np.add.at(self._pages.reshape(-1), flat, np.full(len(flat), weight, dtype=np.float32))
        self.total += weight * n

    def window_sums(self, y: np.ndarray, x: np.ndarray, radius: int) -> np.ndarray:
        """``out[i, j] = sum over points of count[bin(y) + i - radius, bin(x) + j - radius]``."""
        if radius > self.halo:
            raise ValueError(f"search radius of {radius} bins exceeds the map halo of {self.halo} bins")
        size = 2 * radius + 1
        out = np.zeros((size, size), dtype=np.float64)
        by, bx, inside = self._bins(y, x)
        by, bx = by[inside], bx[inside]
        slots = self.table[by // self.page, bx // self.page]
        used = slots > 0  # points on unallocated pages see only zeros
        slots, by, bx = slots[used], by[used], bx[used]
        if len(slots) == 0:
            return out
        ly = by % self.page + self.halo - radius
        lx = bx % self.page + self.halo - radius
        view = np.lib.stride_tricks.sliding_window_view(self._pages[: self._n_pages], (size, size), axis=(1, 2))
        chunk = max(1, 4_000_000 // (size * size))  # bounds the temporary windows to ~16 MB
        for i in range(0, len(slots), chunk):
            sl = slice(i, i + chunk)
            out += view[slots[sl], ly[sl], lx[sl]].sum(axis=0, dtype=np.float64)
        return out


# --------------------------------------------------------------------------------------------------
# Shift search


def _quadratic_fit_matrix(radius: int) -> np.ndarray:
    v, u = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    design = np.column_stack([np.ones(v.size), v.ravel(), u.ravel(), v.ravel() ** 2, u.ravel() ** 2,
                              (v * u).ravel()])
    return np.linalg.pinv(design)


_QFIT = _quadratic_fit_matrix(_REFINE_RADIUS)


def _subbin_peak(scores: np.ndarray) -> tuple[float, float]:
    """Offset (rows, cols) in bins of the maximum of a 2-D quadratic fitted to a (2r+1)^2 score patch."""
    c = _QFIT @ scores.ravel()
    _, by_, bx_, ayy, axx, axy = c
    hess = np.array([[2 * ayy, axy], [axy, 2 * axx]])
    if np.linalg.det(hess) > 0 and hess[0, 0] < 0:
        dv, du = np.linalg.solve(hess, [-by_, -bx_])
    else:  # not a clean maximum: one parabola per axis through the centre row/column
        r = scores.shape[0] // 2
        col, row = scores[:, r], scores[r, :]
        dv = _parabola(col[r - 1], col[r], col[r + 1])
        du = _parabola(row[r - 1], row[r], row[r + 1])
    return float(np.clip(dv, -1.0, 1.0)), float(np.clip(du, -1.0, 1.0))


def _parabola(a: float, b: float, c: float) -> float:
    den = a - 2 * b + c
    return 0.0 if den >= 0 else 0.5 * (a - c) / den


def _scores(ref: _PagedCountMap, y: np.ndarray, x: np.ndarray, sy: float, sx: float, radius: int) -> np.ndarray:
    """Score of residual shifts around (sy, sx) nm: ``out[radius + k, radius + l]`` for (k, l) bins."""
    # sum over points of ref[bin(p - s) - k] == window_sums(p - s)[radius - k]: flip both axes
    return ref.window_sums(y - sy, x - sx, radius)[::-1, ::-1]


def _smooth3(a: np.ndarray) -> np.ndarray:
    """A small separable [1, 2, 1] smoothing: sparse early references give speckled score maps."""
    p = np.pad(a, 1, mode="edge")
    p = p[:-2] + 2 * p[1:-1] + p[2:]
    return (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 16.0


@dataclass(frozen=True)
class _Shift:
    dy: float
    dx: float
    contrast: float
    radius_bins: int


def _find_shift(ref: _PagedCountMap, y: np.ndarray, x: np.ndarray, guess: tuple[float, float],
                radius: int, max_radius: int, refine_steps: int = 6) -> _Shift:
    """The shift (nm) that maximizes the intersection of the points with the reference, near ``guess``.

    ``radius == 0`` skips the integer-bin search: the guess is already within a bin of the peak (a part
    of a block whose whole shift is known) and only the sub-bin refinement runs.
    """
    sy, sx = guess
    contrast = 0.0
    if len(y) == 0 or ref.total == 0:
        return _Shift(sy, sx, 0.0, radius)
    b = ref.bin
    if radius == 0:
        return _refine(ref, y, x, sy, sx, refine_steps, radius)
    # the coarse search only has to land within a bin of the peak: a subsample is plenty and keeps the
    # cost of wide searches bounded; the sub-bin refinement below uses every point
    step = max(1, len(y) // _COARSE_POINTS)
    cy, cx = y[::step], x[::step]
    for _ in range(6):
        raw = _scores(ref, cy, cx, sy, sx, radius)
        sm = _smooth3(raw)
        iy, ix = np.unravel_index(int(np.argmax(sm)), sm.shape)
        best = float(sm[iy, ix])
        contrast = 0.0 if best <= 0 else (best - float(np.median(sm))) / best
        sy += (iy - radius) * b
        sx += (ix - radius) * b
        on_edge = min(iy, ix) <= 0 or max(iy, ix) >= 2 * radius
        if not on_edge or radius >= max_radius:
            break
        radius = min(2 * radius, max_radius)  # the peak may lie beyond: recentre there and look wider
    if contrast <= 0:
        return _Shift(guess[0], guess[1], 0.0, radius)
    if step > 1:  # converge on the subsample first; the full set then needs a step or two
        coarse = _refine(ref, cy, cx, sy, sx, refine_steps, radius, contrast)
        sy, sx = coarse.dy, coarse.dx
    return _refine(ref, y, x, sy, sx, refine_steps, radius, contrast)


def _refine(ref: _PagedCountMap, y: np.ndarray, x: np.ndarray, sy: float, sx: float, steps: int,
            radius: int, contrast: float | None = None) -> _Shift:
    """Sub-bin refinement: re-score around the current shift and move to the fitted peak until it stays."""
    for _ in range(steps):
        local = _scores(ref, y, x, sy, sx, _REFINE_RADIUS)
        if contrast is None:  # no coarse search ran: judge the peak on the local scores
            best = float(local.max())
            contrast = 0.0 if best <= 0 else (best - float(np.median(local))) / best
            if contrast <= 0:
                return _Shift(sy, sx, 0.0, radius)
        dv, du = _subbin_peak(local)
        sy += dv * ref.bin
        sx += du * ref.bin
        if max(abs(dv), abs(du)) < 0.01:
            break
    return _Shift(sy, sx, contrast or 0.0, radius)


# --------------------------------------------------------------------------------------------------
# Fiducials


def _detect_fiducials(frames: np.ndarray, x: np.ndarray, y: np.ndarray, n_frames: int,
                      radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) positions and on-fractions of emitters localized in most frames of a block."""
    from scipy.spatial import cKDTree

    if len(x) == 0 or n_frames < 10:
        return np.zeros((0, 2)), np.zeros(0)
    need = _FIDUCIAL_MIN_ON * n_frames
    # cheap pre-filter: a fiducial's points lie in the 3x3 radius-sized cells around its centre cell
    cy = np.floor(y / radius).astype(np.int64)
    cx = np.floor(x / radius).astype(np.int64)
    cy -= cy.min() - 1
    cx -= cx.min() - 1
    width = int(cx.max()) + 2
    keys = cy * width + cx
    cells, counts = np.unique(keys, return_counts=True)
    offsets = np.array([dy * width + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    window = np.zeros_like(counts)
    for off in offsets:
        pos = np.minimum(np.searchsorted(cells, cells + off), len(cells) - 1)
        hit = cells[pos] == cells + off
        window[hit] += counts[pos[hit]]
    dense = cells[window >= need]
    if len(dense) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    sel = np.isin(keys, np.unique((dense[:, None] + offsets[None, :]).ravel()))
    frames, x, y = frames[sel], x[sel], y[sel]
    pts = np.column_stack([x, y])
    tree = cKDTree(pts)
    counts = tree.query_ball_point(pts, radius, return_length=True)
    cand = np.flatnonzero(counts >= need)
    positions, fractions = [], []
    taken = np.zeros(len(x), dtype=bool)
    for i in cand[np.argsort(-counts[cand], kind="stable")]:
        if taken[i]:
            continue
        near = np.asarray(tree.query_ball_point(pts[i], radius), dtype=np.int64)
        centre = np.median(pts[near], axis=0)
        near = np.asarray(tree.query_ball_point(centre, radius), dtype=np.int64)
        taken[np.asarray(tree.query_ball_point(centre, 2 * radius), dtype=np.int64)] = True
        on = len(np.unique(frames[near])) / n_frames
        if on >= _FIDUCIAL_MIN_ON:
            positions.append(np.median(pts[near], axis=0))
            fractions.append(on)
    if not positions:
        return np.zeros((0, 2)), np.zeros(0)
    return np.array(positions), np.array(fractions)


def _nearest_per_frame(frames: np.ndarray, dist2: np.ndarray, within: np.ndarray) -> np.ndarray:
    """Indices of the point nearest to the track in each frame, among points ``within`` the radius."""
    idx = np.flatnonzero(within)
    if len(idx) == 0:
        return idx
    order = np.lexsort((dist2[idx], frames[idx]))
    idx = idx[order]
    _, first = np.unique(frames[idx], return_index=True)
    return idx[first]


# --------------------------------------------------------------------------------------------------
# Per-frame smoother


def _fit_drift(n_frames: int, obs: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]],
               q: float, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame drift from block-average observations under a random-walk prior.

    ``obs`` holds, per observation, the frames it averages over and their weights (summing to 1), the
    measured (dx, dy) and its variance (nm^2). ``q`` is the random-walk variance per frame (nm^2). The
    drift is piecewise linear between knots every ``step`` frames; the solution minimises
    sum (m - A d)^2 / var + sum (d_k+1 - d_k)^2 / (q step) (a Whittaker smoother).
    """
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import splu

    n_knots = (n_frames - 1) // step + 2
    rows, cols, vals = [], [], []
    mx, my, w = np.empty(len(obs)), np.empty(len(obs)), np.empty(len(obs))
    for i, (fr, fw, (ox, oy), var) in enumerate((o[0], o[1], o[2:4], o[4]) for o in obs):
        k = fr // step
        t = (fr - k * step) / step
        rows.append(np.full(2 * len(fr), i))
        cols.append(np.concatenate([k, k + 1]))
        vals.append(np.concatenate([fw * (1 - t), fw * t]))
        mx[i], my[i], w[i] = ox, oy, 1.0 / var
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(obs), n_knots)).tocsr()
    diff = diags([-np.ones(n_knots - 1), np.ones(n_knots - 1)], [0, 1], shape=(n_knots - 1, n_knots))
    system = (a.T @ diags(w) @ a + diff.T @ diff / (q * step) + diags(np.full(n_knots, 1e-9))).tocsc()
    lu = splu(system)
    kx = lu.solve(a.T @ (w * mx))
    ky = lu.solve(a.T @ (w * my))
    f = np.arange(n_frames)
    k = f // step
    t = (f - k * step) / step
    return kx[k] * (1 - t) + kx[k + 1] * t, ky[k] * (1 - t) + ky[k + 1] * t


def _split_by_frames(frames: np.ndarray, parts: int) -> list[slice]:
    """``parts`` consecutive slices of frame-sorted points with about equal counts, never splitting a frame."""
    n = len(frames)
    cuts = [0]
    for i in range(1, parts):
        c = int(np.searchsorted(frames, frames[min(n - 1, i * n // parts)], side="left"))
        if cuts[-1] < c < n:
            cuts.append(c)
    cuts.append(n)
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def _half_split_d2(halves: list[_Shift]) -> float:
    """Squared distance between the shifts of a block's even- and odd-frame halves (its noise, x4 per axis)."""
    a, b = halves
    if a.contrast <= 0 or b.contrast <= 0:
        return float("nan")
    return (a.dx - b.dx) ** 2 + (a.dy - b.dy) ** 2


def _random_walk_variance(centres: np.ndarray, spans: np.ndarray, mx: np.ndarray, my: np.ndarray,
                          var: np.ndarray) -> float:
    """Random-walk variance per frame (nm^2, per axis) from successive block measurements.

    For adjacent block averages of a random walk, E[(m_b+1 - m_b)^2] = q (gap - (T_b + T_b+1)/6) plus the
    two measurement variances; the squared differences (not their variance) are used so steady trends
    count as motion too. The largest 5 % are dropped so a failed block does not inflate q.
    """
    if len(centres) < 3:
        return 1.0
    d2 = (np.diff(mx) ** 2 + np.diff(my) ** 2) / 2
    excess = d2 - (var[1:] + var[:-1])
    tau = np.maximum(np.diff(centres) - (spans[1:] + spans[:-1]) / 6, 0.5)
    keep = d2 <= np.quantile(d2, 0.95)
    q = float(np.sum(excess[keep]) / np.sum(tau[keep]))
    return max(q, 1e-4)


# --------------------------------------------------------------------------------------------------


class OnlineDrift:
    """Causal, block-wise drift estimation during acquisition, and its global refinement at the end.

    Feed localization batches in frame order with :meth:`add` (from one thread; reads from others are
    safe). ``extent_nm`` is the field of view (height, width) in nm. Constructor keywords beyond the
    config tune the final refinement and the fiducial tracker.
    """

    def __init__(self, cfg: DriftConfig | None = None, extent_nm: tuple[float, float] = (6400.0, 6400.0), *,
                 final_block_frames: int | None = None, final_min_block_locs: int | None = None,
                 fiducial_radius_nm: float = _FIDUCIAL_RADIUS_NM, use_fiducials: bool = True) -> None:
        self.cfg = cfg if cfg is not None else DriftConfig()
        h, w = (float(v) for v in extent_nm)
        if not (h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
            raise ValueError(f"drift extent_nm must be two positive sizes (height, width) in nm, got {extent_nm!r}")
        self.extent_nm = (h, w)
        self.final_block_frames = final_block_frames or max(1, self.cfg.block_frames // 8)
        self.final_min_block_locs = final_min_block_locs or max(50, self.cfg.min_block_locs // 8)
        self.fiducial_radius_nm = float(fiducial_radius_nm)
        self.use_fiducials = use_fiducials
        # The reference count map must fit in memory: a 4096² camera (410 µm) at 10 nm bins would need
        # 1.7 G bins; coarser bins keep it at MAX_REFERENCE_BINS a side (the shift is still refined
        # below a bin by the score's interpolation).
        self.bin_nm = max(self.cfg.bin_nm, max(h, w) / MAX_REFERENCE_BINS)
        if self.bin_nm > self.cfg.bin_nm:
            log.warning("drift: %.1f nm reference bins instead of drift.bin_nm = %g for a %.0f µm field",
                        self.bin_nm, self.cfg.bin_nm, max(h, w) / 1e3)
        b = self.bin_nm
        self._radius0 = max(2, int(math.ceil(self.cfg.search_nm / b)))
        self._halo = max(_MIN_HALO_BINS, min(4 * self._radius0, 256))
        self._radius0 = min(self._radius0, self._halo)
        self._margin_nm = max(2000.0, 4 * self.cfg.search_nm)
        self._ref = self._new_map()
        self._lock = threading.RLock()
        import scipy.sparse.linalg  # noqa: F401  (imported here, not in the first blocks' update time)
        import scipy.spatial  # noqa: F401
        # localizations of the block being collected: (frame, x, y) chunks in arrival order
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_pending = 0
        self._horizon = -1          # frames up to here are complete
        self._block_start = 0
        self._rows: list[dict] = []
        self._centres = np.zeros(0)
        self._dx = np.zeros(0)
        self._dy = np.zeros(0)
        self._traj: tuple | None = None  # per-frame online drift, last measured frame, trend per frame
        self._final: DriftTrajectory | None = None
        self._fid_pos = np.zeros((0, 2))
        self._fid_on = np.zeros(0)
        self._fid_blocks = 0
        self._fid_in_final = False
        self._applied: dict[str, np.ndarray] = {"dx": np.full(0, np.nan), "dy": np.full(0, np.nan)}
        self.version = 0
        """Increments whenever the drift estimate changes (a block completes, or :meth:`finalize`)."""

    def _new_map(self) -> _PagedCountMap:
        return _PagedCountMap(self.extent_nm, self.bin_nm, self._margin_nm, self._halo)

    # ---------------------------------------------------------------------------------------- online

    def add(self, locs: np.ndarray, last_frame: int | None = None) -> bool:
        """Take a batch of localizations (frame order across batches); True when a block completed.

        ``last_frame`` is the last frame the batch covers (``LocBatch.last_frame``), so empty frames at its
        end count as analysed; without it every batch is taken to cover its frames completely.
        """
        frames, x, y = _columns(locs)
        with self._lock:
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.all():
                frames, x, y = frames[ok], x[ok], y[ok]
            if len(frames):
                order = np.argsort(frames, kind="stable")
                self._pending.append((frames[order], x[order], y[order]))
                self._n_pending += len(frames)
                self._horizon = max(self._horizon, int(frames[order[-1]]))
            if last_frame is not None:
                self._horizon = max(self._horizon, int(last_frame))
            changed = False
            while (block := self._take_block(self._horizon)) is not None:
                self._process_block(*block)
                changed = True
            return changed

    def _merged_pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self._pending) != 1:
            if not self._pending:
                return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
            parts = list(zip(*self._pending))
            merged = tuple(np.concatenate(p) for p in parts)
            order = np.argsort(merged[0], kind="stable")
            self._pending = [tuple(m[order] for m in merged)]
        return self._pending[0]

    def _take_block(self, horizon: int, force: bool = False) -> tuple | None:
        if self._n_pending == 0:
            return None
        if force and self._n_pending < max(20, self.cfg.min_block_locs // 4):
            # too few for an estimate of their own: they keep the last block's drift
            self._pending, self._n_pending = [], 0
            return None
        frames, x, y = self._merged_pending()
        end = self._block_start + self.cfg.block_frames - 1
        n_min = self.cfg.min_block_locs
        n_in = int(np.searchsorted(frames, end, side="right"))
        if n_in < n_min:
            if self._n_pending < n_min and not force:
                return None
            end = int(frames[min(n_min, self._n_pending) - 1])  # extend until enough localizations
        if end > horizon and not force:
            return None
        n_in = int(np.searchsorted(frames, end, side="right"))
        block = (frames[:n_in], x[:n_in], y[:n_in], self._block_start, max(end, int(frames[n_in - 1])))
        self._pending = [(frames[n_in:], x[n_in:], y[n_in:])]
        self._n_pending -= n_in
        self._block_start = block[4] + 1
        return block

    def _process_block(self, frames: np.ndarray, x: np.ndarray, y: np.ndarray, first: int, last: int) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        k = len(self._rows)
        n_frames = last - first + 1
        centre = float(frames.mean())
        row = dict(first_frame=first, last_frame=last, centre_frame=centre, n_locs=len(frames),
                   dx_aim=np.nan, dy_aim=np.nan, dx_fid=np.nan, dy_fid=np.nan, peak_contrast=np.nan,
                   search_radius_nm=np.nan, half_d2=np.nan, source="reference")
        subs: list[tuple[np.ndarray, float, float]] = []
        if k == 0:
            dx = dy = 0.0
            if self.use_fiducials:
                self._fid_pos, self._fid_on = _detect_fiducials(frames, x, y, n_frames, _FIDUCIAL_DETECT_NM)
            is_fid = self._fiducial_mask(x, y, 0.0, 0.0)
        else:
            gx, gy = self._predict(centre)
            is_fid = self._fiducial_mask(x, y, gx, gy)
            keep = ~is_fid
            ky, kx, kf = y[keep], x[keep], frames[keep]
            shift = _find_shift(self._ref, ky, kx, (gy, gx), self._radius0, self._halo)
            row.update(dx_aim=shift.dx, dy_aim=shift.dy, peak_contrast=shift.contrast,
                       search_radius_nm=shift.radius_bins * self.bin_nm, source="aim")
            dx, dy = shift.dx, shift.dy
            if shift.contrast <= 0:
                dx, dy = gx, gy  # nothing matched (empty reference or block): keep the prediction
                row["source"] = "prediction"
            else:
                row["half_d2"] = _half_split_d2(
                    [_find_shift(self._ref, ky[h], kx[h], (dy, dx), 0, self._halo, refine_steps=2)
                     for h in ((kf % 2) == 0, (kf % 2) == 1)])
                # consecutive sub-blocks, refined from the block's shift, resolve the drift within it
                for part in _split_by_frames(kf, max(1, min(_SUB_BLOCKS, len(kf) // _SUB_BLOCK_LOCS))):
                    sub = _find_shift(self._ref, ky[part], kx[part], (dy, dx), 0, self._halo, refine_steps=3)
                    if sub.contrast > 0:
                        subs.append((kf[part], sub.dx, sub.dy))
            fid = self._fiducial_shift(frames, x, y, gx, gy, n_frames)
            if fid is not None:
                row.update(dx_fid=fid[0], dy_fid=fid[1], source="fiducials", half_d2=fid[2])
                dx, dy = fid[0], fid[1]
                self._fid_blocks += 1
                subs = []
                for part in _split_by_frames(frames, _SUB_BLOCKS):
                    pf = frames[part]
                    sub = self._fiducial_shift(pf, x[part], y[part], dx, dy, int(pf[-1] - pf[0] + 1))
                    if sub is not None:
                        subs.append((pf, sub[0], sub[1]))
        if not subs:
            subs = [(frames, dx, dy)]
        row["subs"] = [(*np.unique(f, return_counts=True), sx, sy) for f, sx, sy in subs]
        row.update(dx=dx, dy=dy)
        self._rows.append(row)
        self._centres = np.append(self._centres, centre)
        self._dx = np.append(self._dx, dx)
        self._dy = np.append(self._dy, dy)
        self._traj = None
        self.version += 1
        keep = ~is_fid
        ddx, ddy = self._drift_at_online(frames[keep])
        self._ref.add(y[keep] - ddy, x[keep] - ddx)
        row["update_ms"] = (time.perf_counter() - t0) * 1e3
        row["update_cpu_ms"] = (time.thread_time() - c0) * 1e3

    def _predict(self, centre: float) -> tuple[float, float]:
        """Drift expected at ``centre``: linear extrapolation of the last two blocks."""
        if len(self._dx) < 2:
            return float(self._dx[-1]), float(self._dy[-1])
        span = self._centres[-1] - self._centres[-2]
        a = (centre - self._centres[-1]) / span if span > 0 else 0.0
        a = min(a, 2.0)
        return (float(self._dx[-1] + a * (self._dx[-1] - self._dx[-2])),
                float(self._dy[-1] + a * (self._dy[-1] - self._dy[-2])))

    def _fiducial_mask(self, x: np.ndarray, y: np.ndarray, dx: float, dy: float) -> np.ndarray:
        mask = np.zeros(len(x), dtype=bool)
        r2 = self.fiducial_radius_nm ** 2
        for fx, fy in self._fid_pos:
            mask |= (x - dx - fx) ** 2 + (y - dy - fy) ** 2 <= r2
        return mask

    def _fiducial_shift(self, frames, x, y, gx, gy, n_frames) -> tuple[float, float, float] | None:
        """Mean displacement (dx, dy) of the tracked fiducials in this block and the squared difference
        between its even- and odd-frame halves, or None when no fiducial is seen often enough."""
        shifts, halves = [], []
        r2 = self.fiducial_radius_nm ** 2
        for fx, fy in self._fid_pos:
            d2 = (x - gx - fx) ** 2 + (y - gy - fy) ** 2
            idx = _nearest_per_frame(frames, d2, d2 <= r2)
            if len(idx) < max(4, _FIDUCIAL_KEEP_ON * n_frames):
                continue  # bleached or lost
            ex, ey = x[idx] - fx, y[idx] - fy
            mx, my = np.median(ex), np.median(ey)
            spread = 3 * max(1.0, 1.4826 * float(np.median(np.hypot(ex - mx, ey - my))))
            good = np.hypot(ex - mx, ey - my) <= spread
            ex, ey, ef = ex[good], ey[good], frames[idx][good]
            shifts.append((ex.mean(), ey.mean()))
            even = ef % 2 == 0
            if even.any() and (~even).any():
                halves.append((ex[even].mean() - ex[~even].mean(), ey[even].mean() - ey[~even].mean()))
        if not shifts:
            return None
        s = np.mean(shifts, axis=0)
        h = np.mean(halves, axis=0) if halves else np.array([np.nan, np.nan])
        return float(s[0]), float(s[1]), float(h[0] ** 2 + h[1] ** 2)

    # ------------------------------------------------------------------------------------ estimates

    def _drift_at_online(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.asarray(frames, dtype=np.float64)
        n = len(self._centres)
        if n == 0:
            return np.zeros_like(f), np.zeros_like(f)
        if n == 1:
            return np.full_like(f, self._dx[0]), np.full_like(f, self._dy[0])
        if n == 2:  # too few blocks to learn the noise levels: a straight line between the centres
            fc = np.clip(f, self._centres[0], self._centres[-1])
            return np.interp(fc, self._centres, self._dx), np.interp(fc, self._centres, self._dy)
        if self._traj is None:
            self._traj = self._smooth_online()
        tx, ty, last, vx, vy = self._traj
        fi = np.clip(f.astype(np.int64), 0, last)
        # beyond the last measurement the recent trend continues: frames of the block being collected are
        # corrected (and drawn) closer to where the next estimate will put them
        ahead = np.maximum(f - last, 0.0)
        return tx[fi] + vx * ahead, ty[fi] + vy * ahead

    def _smooth_online(self) -> tuple[np.ndarray, np.ndarray, int, float, float]:
        """Per-frame drift from the block estimates so far (random-walk smoother, block 0 averaging 0),
        the frame of the last measurement and the drift per frame over the last block before it."""
        rows = self._rows
        n_locs = np.array([r["n_locs"] for r in rows], dtype=np.float64)
        var = np.full(len(rows), np.nan)
        for source in ("aim", "fiducials"):
            sel = np.array([r["source"] == source and np.isfinite(r["half_d2"]) for r in rows])
            if sel.any():
                d2 = np.array([r["half_d2"] for r in rows])[sel]
                c = max(float(np.median(d2 / 2 * n_locs[sel])) / 4 / 0.455, 1e-4)
                is_src = np.array([r["source"] == source for r in rows])
                var[is_src] = c / n_locs[is_src]
        fallback = float(np.nanmedian(var)) if np.isfinite(var).any() else 1.0
        var[~np.isfinite(var)] = fallback  # the first block, and blocks kept at their prediction
        n_frames = int(max(self._horizon, rows[-1]["last_frame"])) + 1
        obs = []
        for r, c_per_loc in zip(rows, var * n_locs):
            for uf, uc, sx, sy in r["subs"]:
                obs.append((uf, uc / uc.sum(), sx, sy, c_per_loc / uc.sum()))
        centres = np.array([np.dot(o[0], o[1]) for o in obs])
        spans = np.array([o[0][-1] - o[0][0] + 1 for o in obs], dtype=np.float64)
        q = _random_walk_variance(centres, spans, np.array([o[2] for o in obs]), np.array([o[3] for o in obs]),
                                  np.array([o[4] for o in obs]))
        step = max(1, min(self.cfg.block_frames // 8, 16))
        tx, ty = _fit_drift(n_frames, obs, q, step)
        # the first block is the reference: its mean drift is 0 by definition
        f0, c0 = rows[0]["subs"][0][:2]
        w0 = c0 / c0.sum()
        tx, ty = tx - float(np.dot(w0, tx[f0])), ty - float(np.dot(w0, ty[f0]))
        last = int(round(centres[-1]))  # the last measurement's centre: no information beyond it
        span = max(1, min(last, self.cfg.block_frames))
        return tx, ty, last, (tx[last] - tx[last - span]) / span, (ty[last] - ty[last - span]) / span

    def drift_at(self, frames: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Drift (dx, dy) in nm at the given frames: the final trajectory once finalized, else online."""
        f = np.atleast_1d(np.asarray(frames))
        with self._lock:
            if self._final is not None:
                fi = np.clip(f.astype(np.int64), 0, len(self._final.frames) - 1)
                return self._final.dx[fi], self._final.dy[fi]
            return self._drift_at_online(f)

    def correct(self, locs: np.ndarray) -> np.ndarray:
        """A copy of ``locs`` with ``x_dc = x - dx(frame)``, ``y_dc = y - dy(frame)`` (raw x, y kept)."""
        out = with_drift_columns(locs)
        if out is locs:
            out = locs.copy()
        with self._lock:
            dx, dy = self.drift_at(out["frame"])
            out["x_dc"] = out["x"] - dx
            out["y_dc"] = out["y"] - dy
            if len(out):
                self._remember_applied(out["frame"], dx, dy)
        return out

    def _remember_applied(self, frames: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> None:
        top = int(frames.max()) + 1
        if top > len(self._applied["dx"]):
            size = max(top, 2 * len(self._applied["dx"]))
            for key in ("dx", "dy"):
                grown = np.full(size, np.nan)
                grown[: len(self._applied[key])] = self._applied[key]
                self._applied[key] = grown
        self._applied["dx"][frames] = dx
        self._applied["dy"][frames] = dy

    def stale_frames(self, tol_nm: float) -> np.ndarray:
        """Frames corrected by :meth:`correct` whose drift has since moved by more than ``tol_nm``.

        Their localizations can be taken off a canvas with :meth:`as_applied` and drawn again with
        :meth:`correct`, which costs far less than re-rendering everything when only recent frames moved.
        """
        with self._lock:
            seen = np.flatnonzero(np.isfinite(self._applied["dx"]))
            if len(seen) == 0:
                return seen
            dx, dy = self.drift_at(seen)
            moved = np.hypot(dx - self._applied["dx"][seen], dy - self._applied["dy"][seen])
            return seen[moved > tol_nm]

    def as_applied(self, locs: np.ndarray) -> np.ndarray:
        """A copy of ``locs`` with ``x_dc``/``y_dc`` as :meth:`correct` last computed them for their frames.

        Frames never corrected get the raw coordinates.
        """
        out = with_drift_columns(locs)
        if out is locs:
            out = locs.copy()
        with self._lock:
            f = np.asarray(out["frame"], dtype=np.int64)
            known = f < len(self._applied["dx"])
            dx = np.zeros(len(f))
            dy = np.zeros(len(f))
            dx[known] = np.nan_to_num(self._applied["dx"][f[known]])
            dy[known] = np.nan_to_num(self._applied["dy"][f[known]])
            out["x_dc"] = out["x"] - dx
            out["y_dc"] = out["y"] - dy
        return out

    def max_change_nm(self) -> float:
        """Largest change (nm) of the drift, over frames already corrected by :meth:`correct`, since then.

        The live view re-renders from the stored localizations when this exceeds a fraction of its pixel.
        """
        with self._lock:
            seen = np.flatnonzero(np.isfinite(self._applied["dx"]))
            if len(seen) == 0:
                return 0.0
            dx, dy = self.drift_at(seen)
            return float(np.max(np.hypot(dx - self._applied["dx"][seen], dy - self._applied["dy"][seen])))

    def block_estimates(self) -> DriftBlocks:
        """The online per-block estimates so far."""
        with self._lock:
            keys = [f.name for f in DriftBlocks.__dataclass_fields__.values()]
            cols = {k: np.array([r[k] for r in self._rows]) for k in keys}
            for k in ("first_frame", "last_frame", "n_locs"):
                cols[k] = cols[k].astype(np.int64)
            for k in keys:
                if cols[k].dtype != np.int64:
                    cols[k] = cols[k].astype(np.float64)
            return DriftBlocks(**cols)

    @property
    def reference_locs(self) -> int:
        """Number of localizations in the reference map (all completed blocks, fiducials excluded)."""
        return int(self._ref.total)

    @property
    def fiducials(self) -> FiducialInfo:
        """Fiducials found in the first block and how they were used."""
        with self._lock:
            aim = np.array([[r["dx_aim"], r["dy_aim"], r["dx_fid"], r["dy_fid"]] for r in self._rows]).reshape(-1, 4)
            both = np.isfinite(aim).all(axis=1)
            rms = (float(np.sqrt(np.mean((aim[both, 0] - aim[both, 2]) ** 2 + (aim[both, 1] - aim[both, 3]) ** 2)))
                   if both.any() else float("nan"))
            return FiducialInfo(len(self._fid_pos), self._fid_pos.copy(), self._fid_on.copy(), self._fid_blocks,
                                rms, self._fid_in_final)

    # ------------------------------------------------------------------------------------- finalize

    def finalize(self, all_locs: np.ndarray, n_frames: int | None = None, passes: int = 2) -> DriftTrajectory:
        """Refine the drift over the whole run and return it per frame, 0 at frame 0.

        ``all_locs`` are all localizations of the run (raw ``x``, ``y``); when :meth:`add` was never called
        they are first run through the online estimator. Afterwards :meth:`drift_at` and :meth:`correct`
        use the refined drift.
        """
        frames, x, y = _columns(all_locs)
        ok = np.isfinite(x) & np.isfinite(y)
        frames, x, y = frames[ok], x[ok], y[ok]
        order = np.argsort(frames, kind="stable")
        frames, x, y = frames[order], x[order], y[order]
        with self._lock:
            self._final = None
            if not self._rows and self._n_pending == 0 and len(frames):
                self.add(np.rec.fromarrays([frames, x, y], names="frame,x,y"))
            while (block := self._take_block(self._horizon, force=True)) is not None:
                self._process_block(*block)
            last = int(frames[-1]) if len(frames) else 0
            n_frames = max(n_frames or 0, last + 1, self._horizon + 1, 1)
            grid = np.arange(n_frames)
            dx, dy = self._drift_at_online(grid)
            if len(frames) >= 2 * self.final_min_block_locs:
                for _ in range(passes):
                    dx, dy = self._refine_pass(frames, x, y, dx, dy, n_frames)
            dx = dx - dx[0]
            dy = dy - dy[0]
            self._final = DriftTrajectory(grid, dx, dy)
            self.version += 1
            return self._final

    def _fine_blocks(self, frames: np.ndarray) -> list[tuple[int, int]]:
        """(start, stop) index ranges of frame-sorted localizations, each one fine refinement block."""
        bounds = []
        start = 0
        n = len(frames)
        while start < n:
            end_frame = frames[start] + self.final_block_frames - 1
            stop = int(np.searchsorted(frames, end_frame, side="right"))
            stop = max(stop, min(n, start + self.final_min_block_locs))
            if stop < n:  # never split one frame across blocks
                stop = int(np.searchsorted(frames, frames[stop - 1], side="right"))
            bounds.append((start, stop))
            start = stop
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < self.final_min_block_locs // 2:
            bounds[-2] = (bounds[-2][0], bounds.pop()[1])  # a tiny tail joins its neighbour
        return bounds

    def _refine_pass(self, frames, x, y, dx, dy, n_frames) -> tuple[np.ndarray, np.ndarray]:
        xc, yc = x - dx[frames], y - dy[frames]
        fid_obs = self._fiducial_tracks(frames, x, y, dx, dy)
        is_fid = np.zeros(len(frames), dtype=bool)
        for idx, _, _ in fid_obs:
            is_fid[idx] = True
        ref = self._new_map()
        ref.add(yc[~is_fid], xc[~is_fid])
        radius = max(3, int(math.ceil(30.0 / self.bin_nm)))
        blocks = []
        for start, stop in self._fine_blocks(frames):
            sel = np.arange(start, stop)
            sel = sel[~is_fid[sel]]
            if len(sel) < 20:
                continue
            by, bx, bf = yc[sel], xc[sel], frames[sel]
            cells = ref.cells(by, bx)
            ref.add_cells(cells, -1.0)  # leave the block out of its own reference
            shift = _find_shift(ref, by, bx, (0.0, 0.0), radius, self._halo)
            half_d2 = _half_split_d2(
                [_find_shift(ref, by[h], bx[h], (shift.dy, shift.dx), 0, self._halo, refine_steps=2)
                 for h in ((bf % 2) == 0, (bf % 2) == 1)])
            ref.add_cells(cells, 1.0)
            if shift.contrast <= 0:
                continue
            uf, uc = np.unique(bf, return_counts=True)
            base_x = float(np.mean(dx[bf]))
            base_y = float(np.mean(dy[bf]))
            blocks.append((uf, uc / uc.sum(), base_x + shift.dx, base_y + shift.dy, len(sel),
                           float(uf.mean()), float(uf[-1] - uf[0] + 1), half_d2))
        obs = []
        if blocks:
            n_locs = np.array([b[4] for b in blocks], dtype=np.float64)
            # var(half difference) = 4 c / n per axis (each half has n/2 localizations): pooled robustly
            d2 = np.array([b[7] for b in blocks])
            ok = np.isfinite(d2)
            c = float(np.median(d2[ok] / 2 * n_locs[ok])) / 4 / 0.455 if ok.any() else 1.0
            c = max(c, 1e-3)
            var = c / n_locs
            centres = np.array([b[5] for b in blocks])
            spans = np.array([b[6] for b in blocks])
            mx = np.array([b[2] for b in blocks])
            my = np.array([b[3] for b in blocks])
            q = _random_walk_variance(centres, spans, mx, my, var)
            obs = [(b[0], b[1], b[2], b[3], v) for b, v in zip(blocks, var)]
        else:
            q = 1.0
        for idx, fvar, per_frame in fid_obs:
            for f, ox, oy in per_frame:
                obs.append((np.array([f]), np.ones(1), ox, oy, fvar))
        if fid_obs:
            self._fid_in_final = True
            if not blocks:  # the random walk seen by the fiducials alone
                allf = np.concatenate([np.array([p[0] for p in pf]) for _, _, pf in fid_obs])
                allx = np.concatenate([np.array([p[1] for p in pf]) for _, _, pf in fid_obs])
                ally = np.concatenate([np.array([p[2] for p in pf]) for _, _, pf in fid_obs])
                o = np.argsort(allf, kind="stable")
                q = _random_walk_variance(allf[o].astype(float), np.ones(len(o)), allx[o], ally[o],
                                          np.full(len(o), fid_obs[0][1]))
        if not obs:
            return dx, dy
        step = max(1, min(self.final_block_frames // 8, 16))
        new_dx, new_dy = _fit_drift(n_frames, obs, q, step)
        return self._reject_outliers(obs, new_dx, new_dy, q, step, n_frames)

    @staticmethod
    def _reject_outliers(obs, dx, dy, q, step, n_frames):
        """Refit without observations more than 5 sigma from the fit (a block matched to the wrong place)."""
        z = np.array([((o[2] - np.dot(o[1], dx[o[0]])) ** 2 + (o[3] - np.dot(o[1], dy[o[0]])) ** 2) / o[4]
                      for o in obs])
        bad = z > 2 * 25.0
        if bad.any() and (~bad).sum() >= 2:
            obs = [o for o, b in zip(obs, bad) if not b]
            return _fit_drift(n_frames, obs, q, step)
        return dx, dy

    def _fiducial_tracks(self, frames, x, y, dx, dy) -> list[tuple[np.ndarray, float, list]]:
        """Per fiducial: its localization indices, the per-frame noise variance and (frame, dx, dy) points."""
        if not self.use_fiducials or len(self._fid_pos) == 0:
            return []
        tracks = []
        r2 = self.fiducial_radius_nm ** 2
        xc, yc = x - dx[frames], y - dy[frames]
        for fx, fy in self._fid_pos:
            d2 = (xc - fx) ** 2 + (yc - fy) ** 2
            idx = _nearest_per_frame(frames, d2, d2 <= r2)
            if len(idx) < 10:
                continue
            # the fiducial's position in the drift-free frame, then its displacement in each frame
            px, py = np.median(xc[idx]), np.median(yc[idx])
            ox, oy = x[idx] - px, y[idx] - py
            res = np.concatenate([xc[idx] - px, yc[idx] - py])
            var = max(float(np.median(res ** 2)) / 0.455, 0.01)
            tracks.append((idx, var, list(zip(frames[idx].tolist(), ox.tolist(), oy.tolist()))))
        return tracks


def _columns(locs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names = getattr(getattr(locs, "dtype", None), "names", None) or ()
    missing = [c for c in ("frame", "x", "y") if c not in names]
    if missing:
        raise ValueError(f"localization table lacks the column(s) {', '.join(missing)}; "
                         f"expected rtsmlm.core.locs.LOC_DTYPE, got fields {names}")
    return (np.asarray(locs["frame"], dtype=np.int64), np.asarray(locs["x"], dtype=np.float64),
            np.asarray(locs["y"], dtype=np.float64))
