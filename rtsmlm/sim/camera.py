"""Simulated cameras: the presets and per-pixel maps the simulator draws, as
:class:`~rtsmlm.core.camera.CameraModel` (whose :meth:`~rtsmlm.core.camera.CameraModel.expose` is the
noise model: photons → 16-bit counts).

EMCCD: Poisson photo-electrons (QE) plus spurious charge → gamma-distributed EM gain → Gaussian read
noise → ADU (e⁻/ADU, baseline). sCMOS: Poisson photo-electrons → per-pixel gain (e⁻/ADU), offset and
read-noise variance maps drawn like a real chip's calibration.
"""

from __future__ import annotations

import numpy as np

from rtsmlm.core.camera import ADU_MAX, CameraModel

__all__ = ["ADU_MAX", "SCMOS_PRESET", "camera_from_config", "emccd", "scmos_random_maps"]


def emccd(pixel_size_nm: float = 100.0, qe: float = 1.0, spurious_charge: float = 0.0015, em_gain: float = 100.0,
          read_noise_e: float = 74.4, e_per_adu: float = 45.0, baseline_adu: float = 100.0,
          exposure_ms: float = 10.0) -> CameraModel:
    """An EMCCD without pixel maps (the embedded default camera's numbers)."""
    return CameraModel("emccd", pixel_size_nm, baseline_adu, e_per_adu, em_gain, qe, read_noise_e, exposure_ms,
                       spurious_charge=spurious_charge)


def scmos_random_maps(shape: tuple[int, int], seed: int, *, baseline_adu: float = 100.0,
                      offset_sigma_adu: float = 2.0, e_per_adu: float = 0.5, gain_sigma: float = 0.03,
                      read_noise_e: float = 1.6, pixel_size_nm: float = 100.0, qe: float = 0.8,
                      exposure_ms: float = 10.0) -> CameraModel:
    """An sCMOS with per-pixel maps drawn like a real chip's calibration: normal offsets and gains,
    log-normal read noise."""
    rng = np.random.default_rng(seed)
    offset = (baseline_adu + rng.normal(0.0, offset_sigma_adu, shape)).astype(np.float32)
    gain = (e_per_adu * (1.0 + rng.normal(0.0, gain_sigma, shape))).astype(np.float32)
    noise_e = read_noise_e * rng.lognormal(0.0, 0.35, shape)
    var = ((noise_e / gain) ** 2).astype(np.float32)
    return CameraModel("scmos", pixel_size_nm, float(np.mean(offset)), float(np.mean(gain)), 1.0, qe,
                       float(np.sqrt(np.mean(var)) * np.mean(gain)), exposure_ms, offset, gain, var)


SCMOS_PRESET = {"model": "scmos", "qe": 0.8, "e_per_adu": 0.5, "em_gain": 1.0, "read_noise_e": 1.6,
                "baseline_adu": 100.0, "spurious_charge": 0.0}
"""Camera keys `rtsmlm simulate --camera scmos` sets (a typical back-illuminated sCMOS)."""


def camera_from_config(cam_cfg, shape: tuple[int, int]) -> CameraModel:
    """The camera a :class:`rtsmlm.core.config.CameraConfig` describes, for frames of ``shape``."""
    if cam_cfg.model == "emccd":
        return emccd(cam_cfg.pixel_size_nm, cam_cfg.qe, cam_cfg.spurious_charge, cam_cfg.em_gain,
                     cam_cfg.read_noise_e, cam_cfg.e_per_adu, cam_cfg.baseline_adu, cam_cfg.exposure_ms)
    return scmos_random_maps(shape, cam_cfg.scmos_map_seed, baseline_adu=cam_cfg.baseline_adu,
                             offset_sigma_adu=cam_cfg.scmos_offset_sigma_adu,
                             e_per_adu=cam_cfg.e_per_adu, gain_sigma=cam_cfg.scmos_gain_sigma,
                             read_noise_e=cam_cfg.read_noise_e, pixel_size_nm=cam_cfg.pixel_size_nm,
                             qe=cam_cfg.qe, exposure_ms=cam_cfg.exposure_ms)
