"""What a conditioned model is told besides the frames: the PSF width and the camera's noise.

A broad model (one network for many microscopes) otherwise has to guess the PSF width from blurred,
overlapping spots and the noise model from the background's texture — guesses that fail on dense or dim
fields. A conditioned model gets them as extra input channels of every frame, built here from the run's
config (``psf.sigma_nm``, the camera — written by ``rtsmlm calibrate``) at inference, and from each
training sample's drawn PSF and camera in training: one function for both, so the two never differ.

Channels (each normalised to about −1…1 over the broad model's training range):

=================  =========================================================================================
``psf_sigma``      PSF σ in camera pixels: (σ − 1.35) / 0.65 (σ 0.7–2.0 px → −1…1); in-focus σ for a 3D PSF
``noise_excess``   +1 for an EMCCD (excess-noise factor 2: variance twice the photon count), −1 for sCMOS
``read_noise``     read-noise σ in photons, per pixel when the camera has sCMOS maps:
                   log1p(σ_read) − 1 (0.07–3.3 photons → −0.9…0.5; a hot pixel of 20 photons → 2)
=================  =========================================================================================
"""

from __future__ import annotations

import numpy as np

from rtsmlm.core.camera import CameraModel

CHANNELS = ("psf_sigma", "noise_excess", "read_noise")
"""Every conditioning channel this code can build, in the order a model stores them."""

SETS = {"none": (), "psf_noise": CHANNELS}
"""``train.conditioning`` values and the channels they give a model."""


def read_noise_photons(camera: CameraModel) -> np.ndarray | float:
    """Read-noise σ in photons: per pixel for an sCMOS with a variance map (ADU²), else one number."""
    per_photon_e = camera.em_gain * camera.qe  # electrons out of the register per detected photon
    if camera.variance_map is not None:
        gain = camera.gain_map if camera.gain_map is not None else camera.e_per_adu
        return np.sqrt(camera.variance_map) * gain / per_photon_e
    return camera.read_noise_e / per_photon_e


def channels(names: tuple[str, ...] | list[str], *, sigma_px: float, camera: CameraModel,
             shape: tuple[int, int]) -> np.ndarray:
    """``(len(names), H, W)`` float32 conditioning maps for frames of ``shape`` (empty when no names)."""
    out = np.empty((len(names), *shape), np.float32)
    for i, name in enumerate(names):
        if name == "psf_sigma":
            out[i] = (float(sigma_px) - 1.35) / 0.65
        elif name == "noise_excess":
            out[i] = 1.0 if camera.model == "emccd" else -1.0
        elif name == "read_noise":
            noise = np.asarray(read_noise_photons(camera), np.float64)
            if noise.ndim and noise.shape != tuple(shape):
                raise ValueError(f"the camera's read-noise map is {noise.shape} but the frames are {tuple(shape)}")
            out[i] = np.log1p(np.maximum(noise, 0.0)) - 1.0
        else:
            raise ValueError(f"unknown conditioning channel {name!r}; known: {', '.join(CHANNELS)}")
    return out
