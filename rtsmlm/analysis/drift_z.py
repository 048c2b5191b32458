"""Axial (focus) drift of a 3D run, from its localizations, after the lateral drift is known.

A label that blinks at different times is localized at (nearly) the same lateral position each time; its z
differs between the two times by the change of the axial drift (plus the localization's z noise). So the
lateral neighbours (within ``radius_nm`` after lateral drift correction) of a time block's localizations in
the rest of the run, taken pairwise, have z differences that pile up at the block's axial drift relative to
the others'. Each block's drift is the mode of that pile — the maximum of a Gaussian-kernel score (the
kernel half the robust spread of the differences) over a grid of shifts, refined by a parabola (the 1-D form of the intersection maximization the lateral drift
uses) — found leave-one-block-out against the other blocks corrected with the current estimates, three
passes. Per-frame drift is the block estimates interpolated linearly, continued along a line fitted to
the outermost blocks, and 0 at frame 0 (the lateral drift's convention).
"""

from __future__ import annotations

import numpy as np

SEARCH_NM = 400.0
"""Largest axial drift of a block relative to the rest that is searched."""
MAX_LOCS = 200_000
"""At most this many localizations (a random subset) are paired."""


def _mode(diffs: np.ndarray, centre: float, search_nm: float, kernel_nm: float) -> float | None:
    """The shift with the highest Gaussian-kernel score of ``diffs`` within ``centre ± search_nm``: the
    differences are binned at 1 nm, the histogram smoothed by the kernel, its peak refined by a parabola."""
    lo, hi = centre - search_nm - 4 * kernel_nm, centre + search_nm + 4 * kernel_nm
    diffs = diffs[(diffs > lo) & (diffs < hi)]
    if len(diffs) < 20:
        return None
    hist, edges = np.histogram(diffs, bins=int(np.ceil(hi - lo)), range=(lo, hi))
    half = int(np.ceil(4 * kernel_nm))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / kernel_nm) ** 2)
    scores = np.convolve(hist.astype(np.float64), kernel, mode="same")
    bin_centres = 0.5 * (edges[:-1] + edges[1:])
    inside = np.abs(bin_centres - centre) <= search_nm
    k = int(np.flatnonzero(inside)[np.argmax(scores[inside])])
    if 0 < k < len(scores) - 1:
        a, b, c = scores[k - 1], scores[k], scores[k + 1]
        denom = a - 2 * b + c
        if denom < 0:
            return float(bin_centres[k] + 0.5 * (a - c) / denom)
    return float(bin_centres[k])


def estimate_z_drift(frames: np.ndarray, x_nm: np.ndarray, y_nm: np.ndarray, z_nm: np.ndarray, n_frames: int,
                     *, blocks: int = 20, min_block_locs: int = 4000, radius_nm: float = 30.0,
                     kernel_nm: float = 0.0, search_nm: float = SEARCH_NM, passes: int = 3) -> np.ndarray | None:
    """Per-frame axial drift (nm, ``n_frames`` values) from laterally drift-corrected localizations, or None
    when the run has too few 3D localizations for it. At most ``blocks`` time blocks, each of at least
    ``min_block_locs`` localizations (enough pairs for a block's estimate to be good to a few nm)."""
    from scipy.spatial import cKDTree

    frames = np.asarray(frames, np.int64)
    ok = np.isfinite(z_nm) & np.isfinite(x_nm) & np.isfinite(y_nm)
    if ok.sum() > MAX_LOCS:  # the pairs grow with the square of the local density: a random subset suffices
        keep = np.random.default_rng(0).choice(np.flatnonzero(ok), MAX_LOCS, replace=False)
        ok = np.zeros(len(ok), bool)
        ok[keep] = True
    frames, x, y, z = frames[ok], np.asarray(x_nm, np.float64)[ok], np.asarray(y_nm, np.float64)[ok], \
        np.asarray(z_nm, np.float64)[ok]
    n_blocks = int(min(blocks, len(frames) // max(min_block_locs, 1)))
    if n_blocks < 2:
        return None
    order = np.argsort(frames, kind="stable")
    frames, x, y, z = frames[order], x[order], y[order], z[order]
    # Blocks of equal localization counts (a bleaching sample has fewer late on).
    edges = np.linspace(0, len(frames), n_blocks + 1).astype(np.int64)
    block = np.repeat(np.arange(n_blocks), np.diff(edges))
    centres = np.array([frames[edges[b]:edges[b + 1]].mean() for b in range(n_blocks)])
    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(radius_nm, output_type="ndarray")
    first, second = block[pairs[:, 0]], block[pairs[:, 1]]
    across = first != second  # differences across time blocks only
    pairs, first, second = pairs[across], first[across], second[across]
    if len(pairs) < 20 * n_blocks:
        return None
    shift = np.zeros(n_blocks)
    if kernel_nm <= 0:
        # As wide as half the spread of the pairs' z differences (robust σ): a 3D model's axial precision
        # varies with depth, brightness and background; the kernel follows it.
        d_all = z[pairs[:, 0]] - z[pairs[:, 1]]
        spread = 1.4826 * np.median(np.abs(d_all - np.median(d_all)))
        kernel_nm = float(np.clip(0.5 * spread, 15.0, 150.0))
    for _ in range(passes):
        new = shift.copy()
        for b in range(n_blocks):
            a_in, b_in = first == b, second == b
            # z of this block's localization minus its partner's, the partner corrected by its block's drift.
            d = np.concatenate([z[pairs[a_in, 0]] - (z[pairs[a_in, 1]] - shift[second[a_in]]),
                                z[pairs[b_in, 1]] - (z[pairs[b_in, 0]] - shift[first[b_in]])])
            m = _mode(d, shift[b], search_nm, kernel_nm)
            if m is not None:
                new[b] = m
        shift = new - new.mean()
    t = np.arange(n_frames, dtype=np.float64)
    dz = np.interp(t, centres, shift)
    # Beyond the first and last block centres the drift goes on along a line through the outermost blocks
    # (a flat end would put frame 0 half a block's drift off); frame 0's value — the anchor every frame is
    # measured from — comes from that line too, fitted to several blocks so one block's noise does not
    # shift the whole trajectory.
    k = min(4, n_blocks)
    head = np.polyfit(centres[:k], shift[:k], 1)
    tail = np.polyfit(centres[-k:], shift[-k:], 1)
    dz[t < centres[0]] = np.polyval(head, t[t < centres[0]])
    dz[t > centres[-1]] = np.polyval(tail, t[t > centres[-1]])
    return dz - np.polyval(head, 0.0)
