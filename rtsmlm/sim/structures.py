"""Sample structures: label positions (x, y, z) in nm inside a field of view.

Every function takes a ``numpy.random.Generator`` and the field extent in nm and returns an (n, 3)
float64 array. The structure is fixed for a run; photophysics decides which labels emit when.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline


def uniform(rng: np.random.Generator, extent_nm: tuple[float, float], labels_per_um2: float,
            z_range_nm: float = 0.0) -> np.ndarray:
    """Labels scattered uniformly over the field (a Poisson number of them)."""
    h, w = extent_nm
    n = rng.poisson(labels_per_um2 * h * w / 1e6)
    pts = np.empty((n, 3))
    pts[:, 0] = rng.uniform(0, w, n)
    pts[:, 1] = rng.uniform(0, h, n)
    pts[:, 2] = rng.uniform(-z_range_nm, z_range_nm, n) if z_range_nm > 0 else 0.0
    return pts


def filaments(rng: np.random.Generator, extent_nm: tuple[float, float], count: int,
              labels_per_um: float, jitter_nm: float = 5.0, z_range_nm: float = 0.0) -> np.ndarray:
    """Microtubule-like filaments: smooth cubic splines crossing the field, labelled along their length.

    Each filament runs from one edge region to the opposite through 4 random control points, so it is
    gently curved (persistence length ≫ field size, like microtubules). Labels sit at a Poisson number
    of uniformly random arc positions, displaced by the linker/antibody size (Gaussian, ``jitter_nm``). In
    3D (``z_range_nm`` > 0) the filament's depth varies smoothly along it (a spline through random depths
    within ±0.8 ``z_range_nm`` at the control points), the labels jittered about it.
    """
    h, w = extent_nm
    out = []
    for _ in range(count):
        # Control points along a random direction through the field, with a perpendicular wiggle.
        angle = rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)])
        perp = np.array([-d[1], d[0]])
        centre = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
        half = 0.75 * np.hypot(h, w)
        t = np.linspace(-half, half, 5)
        wiggle = rng.normal(0.0, 0.08 * min(h, w), 5)
        ctrl = centre[None, :] + t[:, None] * d[None, :] + wiggle[:, None] * perp[None, :]
        spline = CubicSpline(t, ctrl, axis=0)
        s = np.linspace(-half, half, 4000)
        xy = spline(s)
        seg = np.hypot(*np.diff(xy, axis=0).T)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        n = rng.poisson(labels_per_um * arc[-1] / 1e3)
        pos = np.interp(rng.uniform(0, arc[-1], n), arc, np.arange(len(s)))
        xy_l = np.stack([np.interp(pos, np.arange(len(s)), xy[:, 0]),
                         np.interp(pos, np.arange(len(s)), xy[:, 1])], axis=1)
        xy_l += rng.normal(0.0, jitter_nm, xy_l.shape)
        if z_range_nm > 0:
            # In 3D a filament rises and falls smoothly along its length (a microtubule is one tube, not a
            # cloud of labels): z through the same control points, the labels jittered about it.
            z_ctrl = CubicSpline(t, rng.uniform(-0.8 * z_range_nm, 0.8 * z_range_nm, len(t)))
            z = np.interp(pos, np.arange(len(s)), z_ctrl(s)) + rng.normal(0.0, jitter_nm, len(pos))
            z = np.clip(z, -z_range_nm, z_range_nm)
        else:
            z = np.zeros(len(pos))
        keep = (xy_l[:, 0] >= 0) & (xy_l[:, 0] < w) & (xy_l[:, 1] >= 0) & (xy_l[:, 1] < h)
        out.append(np.column_stack([xy_l[keep], z[keep]]))
    return np.concatenate(out) if out else np.empty((0, 3))


def rings(rng: np.random.Generator, extent_nm: tuple[float, float], rings_per_um2: float,
          radius_nm: float = 53.0, corners: int = 8, labels_per_corner: int = 4,
          label_efficiency: float = 0.6, jitter_nm: float = 5.0, z_range_nm: float = 0.0) -> np.ndarray:
    """Nuclear-pore-like rings: ``corners``-fold symmetric, a few labels per corner, incomplete labelling."""
    h, w = extent_nm
    margin = 2 * radius_nm
    n_rings = rng.poisson(rings_per_um2 * h * w / 1e6)
    out = []
    for _ in range(n_rings):
        cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
        phase = rng.uniform(0, 2 * np.pi)
        ang = phase + 2 * np.pi * np.repeat(np.arange(corners), labels_per_corner) / corners
        keep = rng.random(len(ang)) < label_efficiency
        ang = ang[keep]
        xy = np.column_stack([cx + radius_nm * np.cos(ang), cy + radius_nm * np.sin(ang)])
        xy += rng.normal(0.0, jitter_nm, xy.shape)
        z = (rng.uniform(-z_range_nm, z_range_nm) if z_range_nm > 0 else 0.0) * np.ones(len(xy))
        out.append(np.column_stack([xy, z]))
    return np.concatenate(out) if out else np.empty((0, 3))


def from_map(rng: np.random.Generator, weights: np.ndarray, pixel_size_nm: float, labels_per_um2: float,
             z_range_nm: float = 0.0) -> np.ndarray:
    """Labels where a map of the field says the sample is: each pixel's share of the labels is its share of
    ``weights`` (H, W; ≥ 0), uniform within the pixel; as many labels on average as ``labels_per_um2`` over the
    whole field. Used to simulate a sample like one seen in a movie (its mean signal)."""
    w = np.clip(np.asarray(weights, np.float64), 0.0, None)
    h_px, w_px = w.shape
    total = w.sum()
    p = w.ravel() / total if total > 0 else np.full(w.size, 1.0 / w.size)
    n = rng.poisson(labels_per_um2 * h_px * w_px * (pixel_size_nm / 1000.0) ** 2)
    idx = rng.choice(w.size, size=n, p=p)
    pts = np.empty((n, 3))
    pts[:, 0] = (idx % w_px + rng.random(n)) * pixel_size_nm
    pts[:, 1] = (idx // w_px + rng.random(n)) * pixel_size_nm
    pts[:, 2] = rng.uniform(-z_range_nm, z_range_nm, n) if z_range_nm > 0 else 0.0
    return pts


def from_config(rng: np.random.Generator, sim_cfg, extent_nm: tuple[float, float],
                z_range_nm: float = 0.0) -> np.ndarray:
    """The structure a :class:`rtsmlm.core.config.SimConfig` names."""
    if sim_cfg.structure == "uniform":
        return uniform(rng, extent_nm, sim_cfg.labels_per_um2, z_range_nm)
    if sim_cfg.structure == "filaments":
        return filaments(rng, extent_nm, sim_cfg.filament_count, sim_cfg.labels_per_um,
                         sim_cfg.label_jitter_nm, z_range_nm)
    return rings(rng, extent_nm, sim_cfg.rings_per_um2, sim_cfg.ring_radius_nm,
                 jitter_nm=sim_cfg.label_jitter_nm, z_range_nm=z_range_nm)
