"""Camera noise models: expected photons per pixel → 16-bit counts (ADU).

EMCCD: photons → photo-electrons (Poisson, QE) plus spurious charge (clock-induced charge) → EM
register (gamma-distributed gain) → read noise (Gaussian, electrons) → ADU (e⁻/ADU, baseline) →
rounding and 16-bit clipping.
sCMOS: Poisson photo-electrons → per-pixel gain (e⁻/ADU), offset and read-noise variance maps →
rounding and clipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rtsmlm.sources.base import CameraModel

ADU_MAX = 65535


class Camera(Protocol):
    def expose(self, expected_photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One noisy uint16 frame from an image of expected photons per pixel."""

    def model(self) -> CameraModel:
        """The ADU → photon conversion a localizer needs for these frames."""


def _to_adu(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, ADU_MAX).astype(np.uint16)


@dataclass(frozen=True)
class EMCCD:
    pixel_size_nm: float = 100.0
    qe: float = 1.0
    spurious_charge: float = 0.0015
    em_gain: float = 100.0
    read_noise_e: float = 74.4
    e_per_adu: float = 45.0
    baseline_adu: float = 100.0
    exposure_ms: float = 10.0

    def expose(self, expected_photons, rng):
        electrons = rng.poisson(self.qe * expected_photons + self.spurious_charge)
        amplified = rng.gamma(shape=electrons, scale=self.em_gain)  # shape 0 gives 0
        amplified += rng.normal(0.0, self.read_noise_e, size=amplified.shape)
        return _to_adu(amplified / self.e_per_adu + self.baseline_adu)

    def mean_adu(self, expected_photons: np.ndarray) -> np.ndarray:
        """Expected ADU (before clipping) — for tests of the noise model."""
        electrons = self.qe * np.asarray(expected_photons) + self.spurious_charge
        return electrons * self.em_gain / self.e_per_adu + self.baseline_adu

    def model(self):
        return CameraModel("emccd", self.pixel_size_nm, self.baseline_adu, self.e_per_adu,
                           self.em_gain, self.qe, self.read_noise_e, self.exposure_ms)


@dataclass(frozen=True)
class SCMOS:
    """sCMOS with per-pixel offset (ADU), gain (e⁻/ADU) and read-noise variance (ADU²) maps."""

    offset_map: np.ndarray
    gain_map: np.ndarray
    variance_map: np.ndarray
    pixel_size_nm: float = 100.0
    qe: float = 0.8
    exposure_ms: float = 10.0

    @classmethod
    def random_maps(cls, shape: tuple[int, int], seed: int, *, baseline_adu: float = 100.0,
                    offset_sigma_adu: float = 2.0, e_per_adu: float = 0.5, gain_sigma: float = 0.03,
                    read_noise_e: float = 1.6, **kw) -> "SCMOS":
        """Maps drawn like a real chip's calibration: normal offsets and gains, log-normal noise."""
        rng = np.random.default_rng(seed)
        offset = baseline_adu + rng.normal(0.0, offset_sigma_adu, shape)
        gain = e_per_adu * (1.0 + rng.normal(0.0, gain_sigma, shape))
        noise_e = read_noise_e * rng.lognormal(0.0, 0.35, shape)
        var = (noise_e / gain) ** 2
        return cls(offset.astype(np.float32), gain.astype(np.float32), var.astype(np.float32), **kw)

    def expose(self, expected_photons, rng):
        electrons = rng.poisson(self.qe * expected_photons)
        adu = electrons / self.gain_map + self.offset_map
        adu = adu + rng.normal(0.0, 1.0, size=adu.shape) * np.sqrt(self.variance_map)
        return _to_adu(adu)

    def mean_adu(self, expected_photons: np.ndarray) -> np.ndarray:
        return self.qe * np.asarray(expected_photons) / self.gain_map + self.offset_map

    def model(self):
        return CameraModel("scmos", self.pixel_size_nm, float(np.mean(self.offset_map)),
                           float(np.mean(self.gain_map)), 1.0, self.qe,
                           float(np.sqrt(np.mean(self.variance_map)) * np.mean(self.gain_map)),
                           self.exposure_ms, self.offset_map, self.gain_map, self.variance_map)


SCMOS_PRESET = {"model": "scmos", "qe": 0.8, "e_per_adu": 0.5, "em_gain": 1.0, "read_noise_e": 1.6,
                "baseline_adu": 100.0, "spurious_charge": 0.0}
"""Camera keys `rtsmlm simulate --camera scmos` sets (a typical back-illuminated sCMOS)."""


def camera_from_config(cam_cfg, shape: tuple[int, int]) -> Camera:
    """Build the camera a :class:`rtsmlm.config.CameraConfig` describes, for frames of ``shape``."""
    if cam_cfg.model == "emccd":
        return EMCCD(cam_cfg.pixel_size_nm, cam_cfg.qe, cam_cfg.spurious_charge, cam_cfg.em_gain,
                     cam_cfg.read_noise_e, cam_cfg.e_per_adu, cam_cfg.baseline_adu, cam_cfg.exposure_ms)
    return SCMOS.random_maps(shape, cam_cfg.scmos_map_seed, baseline_adu=cam_cfg.baseline_adu,
                             offset_sigma_adu=cam_cfg.scmos_offset_sigma_adu,
                             e_per_adu=cam_cfg.e_per_adu, gain_sigma=cam_cfg.scmos_gain_sigma,
                             read_noise_e=cam_cfg.read_noise_e, pixel_size_nm=cam_cfg.pixel_size_nm,
                             qe=cam_cfg.qe, exposure_ms=cam_cfg.exposure_ms)
