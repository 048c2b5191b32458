"""Photoswitching kinetics: activation → on → off or bleach, in continuous time, sampled per frame.

Each label is OFF, ON or BLEACHED. An OFF label activates at rate ``k_act · power`` per frame (Poisson
process: per-frame probability 1 − exp(−k)), at a uniformly random moment inside the frame; it then
stays on for an exponentially distributed time (mean ``mean_on_frames``) and emits
``brightness × (time on during the frame)`` photons in every frame it overlaps — so a molecule that
switches on late in a frame is dim in that frame. When it switches off it bleaches with probability
``bleach_probability``, otherwise it returns to OFF and can blink again.

``frame_locked``: molecules switch only between frames — on for the whole frames an exponential on-time of
mean ``mean_on_frames`` begun at a frame's start touches (at least one; geometric, mean 1 / (1 − e^(−1/τ))), at
full brightness in each. That is what synthetic benchmark movies do (the
storm-analysis test movie's emitters are each on for exactly one frame) and what excitation pulsed within the
exposure approaches; ``rtsmlm calibrate`` chooses it when a movie's spots say so.
"""

from __future__ import annotations

import math

import numpy as np

OFF, ON, BLEACHED = 0, 1, 2


class Photophysics:
    def __init__(self, n_labels: int, rng: np.random.Generator, *, k_act: float, mean_on_frames: float,
                 bleach_probability: float, photons_mean: float, photons_sigma: float,
                 frame_locked: bool = False) -> None:
        """``k_act``: activations per OFF label per frame at activation power 1."""
        self.rng = rng
        self.frame_locked = frame_locked
        self.k_act = k_act
        self.mean_on = mean_on_frames
        self.p_bleach = bleach_probability
        self.photons_mean = photons_mean
        self.photons_sigma = photons_sigma
        self.state = np.zeros(n_labels, dtype=np.int8)
        self.remaining = np.zeros(n_labels)  # on-time left, in frames, for ON labels
        self.brightness = np.zeros(n_labels)  # photons per frame while on
        self.n_activations = 0  # running count, for tests of the activation rate

    def _brightness(self, n: int) -> np.ndarray:
        b = self.rng.normal(self.photons_mean, self.photons_sigma, n)
        return np.maximum(b, 0.1 * self.photons_mean)

    def _switch_off(self, idx: np.ndarray) -> None:
        bleach = self.rng.random(len(idx)) < self.p_bleach
        self.state[idx] = np.where(bleach, BLEACHED, OFF)

    def step(self, power: float) -> tuple[np.ndarray, np.ndarray]:
        """Advance one frame at activation ``power``; return (label indices, photons) of emitting labels."""
        was_on = np.flatnonzero(self.state == ON)
        frac_on = np.minimum(self.remaining[was_on], 1.0)
        photons_on = self.brightness[was_on] * frac_on
        self.remaining[was_on] -= 1.0
        ended = was_on[self.remaining[was_on] <= 0]
        self._switch_off(ended)

        # Labels that switched off during this frame stay off until the next one.
        eligible = self.state == OFF
        eligible[ended] = False
        off = np.flatnonzero(eligible)
        p_act = 1.0 - np.exp(-self.k_act * max(power, 0.0))
        n_new = self.rng.binomial(len(off), p_act) if len(off) else 0
        new = self.rng.choice(off, size=n_new, replace=False) if n_new else np.empty(0, np.int64)
        self.n_activations += len(new)
        if self.frame_locked:
            t_start = np.zeros(len(new))
            duration = np.ceil(self.rng.exponential(self.mean_on, len(new)))
        else:
            t_start = self.rng.random(len(new))  # moment of activation within the frame
            duration = self.rng.exponential(self.mean_on, len(new))
        self.brightness[new] = self._brightness(len(new))
        frac_new = np.minimum(duration, 1.0 - t_start)
        photons_new = self.brightness[new] * frac_new
        self.state[new] = ON
        self.remaining[new] = duration - (1.0 - t_start)
        self._switch_off(new[self.remaining[new] <= 0])

        idx = np.concatenate([was_on, new])
        photons = np.concatenate([photons_on, photons_new])
        keep = photons > 0
        return idx[keep], photons[keep]

    @property
    def n_on(self) -> int:
        return int(np.count_nonzero(self.state == ON))

    @property
    def n_bleached(self) -> int:
        return int(np.count_nonzero(self.state == BLEACHED))


def activation_rate_for_density(density_per_um2: float, area_um2: float, n_labels: int,
                                mean_on_frames: float, frame_locked: bool = False) -> float:
    """Per-label activation rate (per frame, at power 1) giving ``density`` emitters visible per frame.

    A molecule activated at a random moment and on for τ frames (mean) is seen in τ + 1 frames on average,
    so visible per frame ≈ n_labels · k · (τ + 1) while the pool is mostly OFF; switching with the frames it is
    seen in 1 / (1 − e^(−1/τ)).
    """
    if n_labels == 0:
        return 0.0
    frames_seen = 1.0 / -math.expm1(-1.0 / mean_on_frames) if frame_locked else mean_on_frames + 1.0
    return density_per_um2 * area_um2 / (n_labels * frames_seen)
