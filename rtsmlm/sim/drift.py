"""Smooth stage drift, zero at frame 0: lateral random walk + slow sinusoid + linear creep, and an axial
(focus) creep + random walk.

``dx, dy, dz`` at a frame is the sample's displacement in nm: a label at x0 is imaged at x0 + dx (z0 + dz).
"""

from __future__ import annotations

import numpy as np


class SimulatedDrift:
    """Drift generated on demand, deterministic by seed, for any number of frames."""

    _CHUNK = 4096

    def __init__(self, drift_cfg, seed: int) -> None:
        self.cfg = drift_cfg
        self.rng = np.random.default_rng(seed)
        self.phase = self.rng.uniform(0, 2 * np.pi, 2)
        self.direction = self.rng.normal(size=2)
        self.direction /= np.linalg.norm(self.direction)
        self._walk = np.zeros((0, 2))
        # The axial walk has its own generator: lateral drift stays what it was for a given seed.
        self._z_rng = np.random.default_rng([seed, 3])
        self._z_walk = np.zeros(0)

    def _extend(self, n: int) -> None:
        while len(self._walk) < n:
            steps = self.rng.normal(0.0, self.cfg.random_walk_nm_per_frame, (self._CHUNK, 2))
            start = self._walk[-1] if len(self._walk) else np.zeros(2)
            if not len(self._walk):
                steps[0] = 0.0
            self._walk = np.concatenate([self._walk, start + np.cumsum(steps, axis=0)])

    def at(self, frames: np.ndarray | int) -> np.ndarray:
        """(n, 2) array of (dx, dy) nm for the given frame indices (or (2,) for one frame)."""
        f = np.asarray(frames)
        flat = np.atleast_1d(f).astype(np.int64)
        if not self.cfg.enabled:
            out = np.zeros((len(flat), 2))
        else:
            self._extend(int(flat.max()) + 1 if len(flat) else 0)
            c = self.cfg
            w = 2 * np.pi / c.sinusoid_period_frames
            sin = c.sinusoid_amplitude_nm * (np.sin(w * flat[:, None] + self.phase) - np.sin(self.phase))
            lin = c.linear_nm_per_frame * flat[:, None] * self.direction[None, :]
            out = self._walk[flat] + sin + lin
        return out[0] if f.ndim == 0 else out

    def at_z(self, frames: np.ndarray | int) -> np.ndarray | float:
        """Axial drift dz (nm) for the given frame indices (a float for one frame)."""
        f = np.asarray(frames)
        flat = np.atleast_1d(f).astype(np.int64)
        c = self.cfg
        if not self.has_z:
            out = np.zeros(len(flat))
        else:
            top = int(flat.max()) + 1 if len(flat) else 0
            while len(self._z_walk) < top:
                steps = self._z_rng.normal(0.0, c.z_random_walk_nm_per_frame, self._CHUNK)
                if not len(self._z_walk):
                    steps[0] = 0.0
                start = self._z_walk[-1] if len(self._z_walk) else 0.0
                self._z_walk = np.concatenate([self._z_walk, start + np.cumsum(steps)])
            out = self._z_walk[flat] + c.z_nm_per_frame * flat
        return float(out[0]) if f.ndim == 0 else out

    @property
    def has_z(self) -> bool:
        """Whether this drift moves the sample in z."""
        c = self.cfg
        return bool(c.enabled and (c.z_nm_per_frame != 0.0 or c.z_random_walk_nm_per_frame != 0.0))
