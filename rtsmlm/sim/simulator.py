"""The SMLM movie simulator: structure + photophysics + drift + PSF + background + camera.

Deterministic by seed. One :class:`Simulator` produces frames one at a time (the embedded camera) and
reports the ground truth of each frame: ``frame, x, y, z, photons`` (nm, 0-based, origin at the
top-left corner of the top-left pixel; photons = photons emitted during that frame).
"""

from __future__ import annotations

import numpy as np

import rtsmlm.sim.structures as structures
from rtsmlm.core.config import Config
from rtsmlm.sim.camera import camera_from_config
from rtsmlm.sim.drift import SimulatedDrift
from rtsmlm.sim.photophysics import Photophysics, activation_rate_for_density
from rtsmlm.sim.psf import psf_from_config

TRUTH_DTYPE = np.dtype([("frame", "<i8"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                        ("photons", "<f4")])


def smooth_background(rng: np.random.Generator, shape: tuple[int, int], level: float,
                      modulation: float = 0.5, n_blobs: int = 6) -> np.ndarray:
    """A static out-of-focus background: ``level`` photons/px modulated ±``modulation`` by broad blobs."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.zeros(shape)
    for _ in range(n_blobs):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(0.15, 0.4) * max(h, w)
        field += rng.uniform(0.5, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    field = (field - field.min()) / max(field.max() - field.min(), 1e-12)  # 0..1
    return level * (1.0 - modulation + 2.0 * modulation * field)


class Simulator:
    """Frames and ground truth of a simulated acquisition, one frame per :meth:`step`.

    ``activation_power`` may be changed between steps (the activation laser of a feedback loop); it
    scales the activation rate linearly, so the density of active emitters follows it.
    """

    def __init__(self, cfg: Config, seed: int | None = None, labels: np.ndarray | None = None) -> None:
        """``labels``: the sample's label positions ((n, 3) x, y, z in nm) instead of ``sim.structure``'s."""
        self.cfg = cfg
        sim = cfg.sim
        self.seed = sim.seed if seed is None else seed
        self.rng = np.random.default_rng(self.seed)
        self.shape = (sim.size, sim.size)
        self.pixel_size_nm = cfg.camera.pixel_size_nm
        extent = (sim.size * self.pixel_size_nm, sim.size * self.pixel_size_nm)
        self.extent_nm = extent
        self.margin_nm = sim.beyond_field_px * self.pixel_size_nm
        z_range = cfg.psf.z_range_nm if cfg.psf.model != "gaussian" else 0.0
        # The sample spans the field and the margin around it; sim.density holds per µm² over all of it.
        sample = (extent[0] + 2 * self.margin_nm, extent[1] + 2 * self.margin_nm)
        if labels is None:
            self.labels = structures.from_config(self.rng, sim, sample, z_range)
            self.labels[:, :2] -= self.margin_nm
        else:  # given labels (a map fitted to a movie) cover the field only
            self.labels, sample = np.asarray(labels, np.float64).reshape(-1, 3), extent
        area_um2 = sample[0] * sample[1] / 1e6
        k = activation_rate_for_density(sim.density, area_um2, len(self.labels), sim.mean_on_frames,
                                        sim.frame_locked)
        self.photophysics = Photophysics(len(self.labels), self.rng, k_act=k,
                                         mean_on_frames=sim.mean_on_frames,
                                         bleach_probability=sim.bleach_probability,
                                         photons_mean=sim.photons_mean, photons_sigma=sim.photons_sigma,
                                         frame_locked=sim.frame_locked)
        self.fiducials = np.column_stack([self.rng.uniform(0.1, 0.9, (sim.fiducials, 2)) * extent[::-1],
                                          np.zeros(sim.fiducials)])
        self.psf = psf_from_config(cfg.psf, self.pixel_size_nm)
        self.camera = camera_from_config(cfg.camera, self.shape)
        self.drift = SimulatedDrift(sim.drift, self.seed + 7919)
        if sim.bg_structured:
            self.background = smooth_background(self.rng, self.shape, sim.bg_photons)
        else:
            self.background = np.full(self.shape, sim.bg_photons)
        self.activation_power = sim.activation_power
        self.frame_index = 0

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """Simulate the next frame: (uint16 frame, ground truth rows of TRUTH_DTYPE)."""
        f = self.frame_index
        idx, photons = self.photophysics.step(self.activation_power)
        pos = self.labels[idx]
        if len(self.fiducials):
            pos = np.concatenate([pos, self.fiducials])
            photons = np.concatenate([photons, np.full(len(self.fiducials), self.cfg.sim.fiducial_photons)])
        dxy = self.drift.at(f)
        x = pos[:, 0] + dxy[0]
        y = pos[:, 1] + dxy[1]
        z = pos[:, 2] + self.drift.at_z(f) if self.drift.has_z else pos[:, 2]
        h, w = self.extent_nm
        m = self.margin_nm
        drawn = (x >= -m) & (x < w + m) & (y >= -m) & (y < h + m)
        x, y, z, photons = x[drawn], y[drawn], z[drawn], photons[drawn]
        expected = self.psf.render(x / self.pixel_size_nm, y / self.pixel_size_nm, z, photons, self.shape)
        frame = self.camera.expose(expected + self.background, self.rng)
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)  # the ground truth: emitters in the field only
        x, y, z, photons = x[inside], y[inside], z[inside], photons[inside]
        truth = np.empty(len(x), TRUTH_DTYPE)
        truth["frame"] = f
        truth["x"], truth["y"], truth["z"], truth["photons"] = x, y, z, photons
        self.frame_index += 1
        return frame, truth

    def movie(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n_frames`` frames ((n, H, W) uint16) and their ground truth as one TRUTH_DTYPE table."""
        frames = np.empty((n_frames, *self.shape), np.uint16)
        truth = []
        for i in range(n_frames):
            frames[i], t = self.step()
            truth.append(t)
        return frames, np.concatenate(truth) if truth else np.empty(0, TRUTH_DTYPE)

    def dark_frames(self, n_frames: int) -> np.ndarray:
        """``n_frames`` frames with the shutter closed: the camera's noise alone (to calibrate it)."""
        return np.stack([self.camera.expose(np.zeros(self.shape), self.rng) for _ in range(n_frames)])

    def drift_table(self, n_frames: int) -> np.ndarray:
        """(n, 3) array of frame, dx, dy (nm) for frames 0..n-1; (n, 4) with dz when the drift moves z."""
        d = self.drift.at(np.arange(n_frames))
        if self.drift.has_z:
            return np.column_stack([np.arange(n_frames), d, self.drift.at_z(np.arange(n_frames))])
        return np.column_stack([np.arange(n_frames), d])
