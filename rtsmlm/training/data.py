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

from rtsmlm.core.config import Config
from rtsmlm.localization import conditioning
from rtsmlm.localization.scales import Scales
from rtsmlm.sim.camera import camera_from_config, emccd, scmos_random_maps
from rtsmlm.sim.psf import GaussianPSF, psf_from_config
from rtsmlm.sim.simulator import smooth_background

EDGE_MARGIN_PX = 3.0
"""Emitters are also placed this far outside the patch so the net learns partial PSFs at the border."""
PAIR_DISTANCE_PX = (0.5, 2.5)
"""``train.pair_fraction``: partners are placed this far (px, uniform) from their event. Uniformly placed
emitters at 1 per µm² are rarely this close, yet pairs 1–2 px apart are where a network falls back to
reporting one molecule (issue 14: recall 0.56 at 1–2 px against 0.85 for isolated ones)."""


@dataclass
class Batch:
    frames: np.ndarray  # (B, T, P, P) float32 network input; (B, T, C, P, P) with conditioning channels
    em_xyzn: np.ndarray  # (B, M, 4) float32: x, y (px), z / z_scale, photons / photon_scale
    em_mask: np.ndarray  # (B, M) bool
    bg: np.ndarray  # (B, P, P) float32 background / bg_scale (central frame)


class TrainingSimulator:
    """Draws batches of simulated windows; deterministic for a given seed."""

    def __init__(self, cfg: Config, seed: int, scales: Scales | None = None) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.P = cfg.train.patch_size
        self.T = cfg.train.window
        self.px = cfg.camera.pixel_size_nm
        self.psf = psf_from_config(cfg.psf, self.px)
        self.camera = camera_from_config(cfg.camera, (self.P, self.P))
        self.scales = scales if scales is not None else Scales.from_config(cfg)
        self.z_range = cfg.psf.z_range_nm if cfg.psf.model != "gaussian" else 0.0
        # Fraction of the training done (set by the training loop each step): the broad model's density
        # range opens up over the first third (a curriculum: dense fields from the start kept the
        # detection head from ever learning in 16k steps).
        self.progress = 1.0

    def _log_uniform(self, lo: float, hi: float) -> float:
        lo = max(lo, 1e-3)
        return float(np.exp(self.rng.uniform(np.log(lo), np.log(max(hi, lo)))))

    def _broad_camera(self):
        """A random camera for the broad model: EMCCD or sCMOS (per-pixel maps). In photon terms only the
        noise shape matters (the localizer converts ADU to photons with the run's camera), so the ADU per
        photon is drawn where real cameras are set up (0.3–5), which keeps 1000 photons/px of background
        and bright emitters below 16-bit saturation."""
        rng, P = self.rng, self.P
        adu_per_photon = self._log_uniform(0.3, 5.0)
        if rng.random() < 0.5:
            em_gain = self._log_uniform(30.0, 300.0)
            return emccd(self.px, qe=1.0, spurious_charge=rng.uniform(0.0, 0.01), em_gain=em_gain,
                         read_noise_e=rng.uniform(20.0, 100.0), e_per_adu=em_gain / adu_per_photon,
                         baseline_adu=100.0)
        return scmos_random_maps((P, P), int(rng.integers(1 << 31)), baseline_adu=100.0,
                                 offset_sigma_adu=rng.uniform(0.0, 3.0), e_per_adu=1.0 / adu_per_photon,
                                 gain_sigma=rng.uniform(0.0, 0.05), read_noise_e=self._log_uniform(0.7, 3.0),
                                 pixel_size_nm=self.px, qe=1.0)

    def _events(self, density: float):
        """Blinking events of one sample: positions (px, nm), start, duration, brightness."""
        t, sim, rng, P, T = self.cfg.train, self.cfg.sim, self.rng, self.P, self.T
        span = P + 2 * EDGE_MARGIN_PX
        area_um2 = (span * self.px / 1e3) ** 2
        if t.on_frames_max > 0:
            tau = self._log_uniform(t.on_frames_min, t.on_frames_max)
        else:
            tau = sim.mean_on_frames
        lead = 4.0 * tau  # events starting this long before the window can still be on in it
        rate = density * area_um2 / (tau + 1.0)  # events per frame
        n = rng.poisson(rate * (T + lead))
        x = rng.uniform(-EDGE_MARGIN_PX, P + EDGE_MARGIN_PX, n)
        y = rng.uniform(-EDGE_MARGIN_PX, P + EDGE_MARGIN_PX, n)
        z = rng.uniform(-self.z_range, self.z_range, n) if self.z_range > 0 else np.zeros(n)
        start = rng.uniform(-lead, T, n)
        dur = rng.exponential(tau, n)
        if sim.frame_locked:  # switching between frames only: whole frames on (as sim.photophysics, frame_locked)
            start = np.floor(start)
            dur = np.ceil(dur)
        if t.broad:
            # Each sample has its own brightness band somewhere in the log range, so dim-only, bright-only
            # and mixed fields are all seen.
            lo = self._log_uniform(t.photons_min, t.photons_max)
            hi = min(lo * self._log_uniform(1.0, 10.0), t.photons_max)
            bright = rng.uniform(lo, hi, n)
        else:
            bright = rng.uniform(t.photons_min, t.photons_max, n)
        if t.pair_fraction > 0:
            x, y, z, start, dur, bright = self._add_partners(x, y, z, start, dur, bright, tau)
        return x, y, z, start, dur, bright

    def _add_partners(self, x, y, z, start, dur, bright, tau: float):
        """Give ``train.pair_fraction`` of the events a partner ``PAIR_DISTANCE_PX`` away that starts within
        a frame of it (so both are on together), lasts its own exponential time and has a brightness
        drawn from the same sample's band. Only called when the fraction is > 0: the random stream of
        configs without pairs is unchanged."""
        rng = self.rng
        has = rng.random(len(x)) < self.cfg.train.pair_fraction
        k = int(has.sum())
        dist = rng.uniform(*PAIR_DISTANCE_PX, k)
        angle = rng.uniform(0.0, 2.0 * np.pi, k)
        z_new = rng.uniform(-self.z_range, self.z_range, k) if self.z_range > 0 else np.zeros(k)
        start_new = start[has] + rng.uniform(-1.0, 1.0, k)
        dur_new = rng.exponential(tau, k)
        bright_new = bright[rng.integers(0, len(bright), k)]  # the sample's band, independent of the partner
        return (np.concatenate([x, x[has] + dist * np.cos(angle)]), np.concatenate([y, y[has] + dist * np.sin(angle)]),
                np.concatenate([z, z_new]), np.concatenate([start, start_new]), np.concatenate([dur, dur_new]),
                np.concatenate([bright, bright_new]))

    def sample(self):
        """One window: (T, P, P) float32 input ((T, C, P, P) with conditioning channels), central-frame
        emitters (n, 4), background (P, P)."""
        t, rng, P, T = self.cfg.train, self.rng, self.P, self.T
        if t.broad:
            # Sparse fields more often than dense ones (mean a third of the range): every density is
            # seen, and the many easy samples keep the detection signal strong early in training.
            opened = min(1.0, 0.3 + self.progress / 0.5)
            density = t.density_min + opened * (t.density_max - t.density_min) * rng.random() ** 2
        else:
            density = rng.uniform(t.density_min, t.density_max)
        x, y, z, start, dur, bright = self._events(density)
        if t.broad:
            bg_level = self._log_uniform(max(t.bg_min, 0.1), t.bg_max)
            camera = self._broad_camera()
            psf = GaussianPSF(rng.uniform(t.sigma_min_px, t.sigma_max_px))
        else:
            bg_level = rng.uniform(t.bg_min, t.bg_max)
            camera, psf = self.camera, self.psf
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
            img = psf.render(x[on], y[on], z[on], photons, (P, P)) + bg
            adu = camera.expose(img, rng)
            frames[f] = self.scales.network_input(camera.to_photons(adu))
            if f == centre:
                xs, ys, zs = x[on], y[on], z[on]
                # Targets are the patch's emitters, and with ``train.edge_target_px`` those just beyond it:
                # an emitter 0.2 px inside the edge and one 0.2 px outside look alike, and a net trained on
                # inside targets only gives both p ≈ 0.5 (measured 2026-12-05: the default model found 0.76 of
                # the bright emitters within 25 nm of a 64² frame's edge, 0.99 inside).
                e = t.edge_target_px
                inside = (xs >= -e) & (xs < P + e) & (ys >= -e) & (ys < P + e)
                if t.broad and t.min_target_snr > 0:
                    # Over four decades of brightness and background many emitters (a blink caught for a
                    # sliver of the frame, 100 photons on 1000/px of background) are invisible to any
                    # method; as targets they only add noise to the count and mixture terms. Keep those
                    # a fitter could see: SNR = N / sqrt(N + 4πσ²·b) (Thompson-style, shot noise).
                    snr = photons / np.sqrt(photons + 4.0 * np.pi * psf.sigma_px**2 * bg_level + 1e-9)
                    inside &= snr >= t.min_target_snr
                target = np.column_stack([xs[inside], ys[inside], zs[inside] / self.scales.z_scale,
                                          photons[inside] / self.scales.photon_scale]).astype(np.float32)
        if self.scales.conditioning:
            # The PSF and camera of this sample, as the localizer tells them to the model from a run's config.
            cond = conditioning.channels(self.scales.conditioning, sigma_px=psf.sigma_px, camera=camera,
                                         shape=(P, P))
            frames = np.concatenate([frames[:, None], np.broadcast_to(cond, (T, *cond.shape))], axis=1)
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
