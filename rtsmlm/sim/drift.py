"""Smooth lateral stage drift: random walk + slow sinusoid + linear creep, zero at frame 0.

``dx, dy`` at a frame is the sample's displacement in nm: a label at x0 is imaged at x0 + dx.
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
