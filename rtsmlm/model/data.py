"""Training samples simulated on the fly with the same physics as the embedded camera.

A sample is a window of T consecutive frames of a P×P patch. Blinking events start at random times
before or inside the window and last an exponential time, so an emitter can span frames and be dim in
a frame it only partly overlaps — exactly as in :mod:`rtsmlm.sim.photophysics`. Each sample draws its
own density, brightness range and background level from the training config's ranges; PSF and camera
are the configured ones. Targets are the emitters of the central frame and its background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtsmlm.config import Config
from rtsmlm.sim.camera import camera_from_config
from rtsmlm.sim.psf import psf_from_config
from rtsmlm.sim.simulator import smooth_background

EDGE_MARGIN_PX = 3.0
"""Emitters are also placed this far outside the patch so the net learns partial PSFs at the border."""


@dataclass(frozen=True)
class Scales:
    """Normalisation of the network's input and outputs; stored in every checkpoint."""

    input_scale: float  # network input = photons / input_scale
    photon_scale: float
    bg_scale: float
    z_scale: float

    @classmethod
    def from_config(cls, cfg: Config) -> "Scales":
        t = cfg.train
        return cls(input_scale=max(t.bg_max, 1.0), photon_scale=1.2 * t.photons_max,
                   bg_scale=2.0 * t.bg_max, z_scale=max(cfg.psf.z_range_nm, 1.0))


@dataclass
class Batch:
    frames: np.ndarray  # (B, T, P, P) float32 network input (photons / input_scale)
    em_xyzn: np.ndarray  # (B, M, 4) float32: x, y (px), z / z_scale, photons / photon_scale
    em_mask: np.ndarray  # (B, M) bool
    bg: np.ndarray  # (B, P, P) float32 background / bg_scale (central frame)


class TrainingSimulator:
    """Draws batches of simulated windows; deterministic for a given seed."""

    def __init__(self, cfg: Config, seed: int) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.P = cfg.train.patch_size
        self.T = cfg.train.window
        self.px = cfg.camera.pixel_size_nm
        self.psf = psf_from_config(cfg.psf, self.px)
        self.camera = camera_from_config(cfg.camera, (self.P, self.P))
        self.camera_model = self.camera.model()
        self.scales = Scales.from_config(cfg)
        self.z_range = cfg.psf.z_range_nm if cfg.psf.model != "gaussian" else 0.0

    def _events(self, density: float):
        """Blinking events of one sample: positions (px, nm), start, duration, brightness."""
        t, sim, rng, P, T = self.cfg.train, self.cfg.sim, self.rng, self.P, self.T
        span = P + 2 * EDGE_MARGIN_PX
        area_um2 = (span * self.px / 1e3) ** 2
        tau = sim.mean_on_frames
        lead = 4.0 * tau  # events starting this long before the window can still be on in it
        rate = density * area_um2 / (tau + 1.0)  # events per frame
        n = rng.poisson(rate * (T + lead))
        x = rng.uniform(-EDGE_MARGIN_PX, P + EDGE_MARGIN_PX, n)
        y = rng.uniform(-EDGE_MARGIN_PX, P + EDGE_MARGIN_PX, n)
        z = rng.uniform(-self.z_range, self.z_range, n) if self.z_range > 0 else np.zeros(n)
        start = rng.uniform(-lead, T, n)
        dur = rng.exponential(tau, n)
        bright = rng.uniform(t.photons_min, t.photons_max, n)
        return x, y, z, start, dur, bright

    def sample(self):
        """One window: (T, P, P) float32 input, central-frame emitters (n, 4), background (P, P)."""
        t, rng, P, T = self.cfg.train, self.rng, self.P, self.T
        density = rng.uniform(t.density_min, t.density_max)
        x, y, z, start, dur, bright = self._events(density)
        bg_level = rng.uniform(t.bg_min, t.bg_max)
        if rng.random() < 0.5:
            bg = smooth_background(rng, (P, P), bg_level, modulation=rng.uniform(0.0, 0.4), n_blobs=2)
        else:
            bg = np.full((P, P), bg_level)
        frames = np.empty((T, P, P), np.float32)
        centre = T // 2
        target = np.empty((0, 4), np.float32)
        for f in range(T):
            overlap = np.clip(np.minimum(start + dur, f + 1) - np.maximum(start, f), 0.0, 1.0)
            on = overlap > 0
            photons = bright[on] * overlap[on]
            img = self.psf.render(x[on], y[on], z[on], photons, (P, P)) + bg
            adu = self.camera.expose(img, rng)
            frames[f] = self.camera_model.to_photons(adu) / self.scales.input_scale
            if f == centre:
                xs, ys, zs = x[on], y[on], z[on]
                inside = (xs >= 0) & (xs < P) & (ys >= 0) & (ys < P)
                target = np.column_stack([xs[inside], ys[inside], zs[inside] / self.scales.z_scale,
                                          photons[inside] / self.scales.photon_scale]).astype(np.float32)
        return frames, target, (bg / self.scales.bg_scale).astype(np.float32)

    def batch(self, size: int) -> Batch:
        samples = [self.sample() for _ in range(size)]
        m = max(1, max(len(s[1]) for s in samples))
        em = np.zeros((size, m, 4), np.float32)
        mask = np.zeros((size, m), bool)
        for i, (_, tgt, _) in enumerate(samples):
            em[i, : len(tgt)] = tgt
            mask[i, : len(tgt)] = True
        return Batch(np.stack([s[0] for s in samples]), em, mask, np.stack([s[2] for s in samples]))
