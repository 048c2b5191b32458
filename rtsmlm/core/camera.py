"""The camera model shared by the simulator (photons → ADU) and the localizer (ADU → photons)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rtsmlm.core.errors import RtsmlmError

ADU_MAX = 65535


def _to_adu(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, ADU_MAX).astype(np.uint16)


@dataclass(frozen=True)
class CameraModel:
    """The one camera model: how photons become counts (ADU) and back.

    Forward (the simulator, :meth:`expose`): photons → photo-electrons (Poisson, ``qe``, plus spurious
    charge) → EM register (gamma-distributed gain, EMCCD) → read noise → ADU (``e_per_adu``, baseline,
    or the per-pixel sCMOS maps) → rounding and 16-bit clipping.
    Inverse (the localizer, :meth:`to_photons`): photo-electrons = (ADU - baseline) * e_per_adu / em_gain;
    photons = photo-electrons / qe. ``offset_map`` (ADU) / ``gain_map`` (e⁻/ADU) / ``variance_map``
    (read-noise variance, ADU²) are per-pixel sCMOS maps when known (else None).
    """

    model: str = "emccd"  # "emccd" | "scmos"
    pixel_size_nm: float = 100.0
    baseline_adu: float = 100.0
    e_per_adu: float = 45.0
    em_gain: float = 100.0
    qe: float = 1.0
    read_noise_e: float = 74.4
    exposure_ms: float = 10.0
    offset_map: np.ndarray | None = None
    gain_map: np.ndarray | None = None
    variance_map: np.ndarray | None = None
    spurious_charge: float = 0.0  # electrons per pixel and frame (clock-induced charge, EMCCD)

    @classmethod
    def from_config(cls, camera) -> "CameraModel":
        """The camera a :class:`rtsmlm.core.config.CameraConfig` describes (no pixel maps; EM gain 1 for sCMOS).

        Used where the frames do not say: files without camera metadata, camera properties
        Micro-Manager does not report."""
        em_gain = camera.em_gain if camera.model == "emccd" else 1.0
        offset = variance = gain = None
        if getattr(camera, "maps_file", ""):
            offset, variance, response = load_maps(camera.maps_file)
            if response is not None:
                if response.shape != offset.shape:
                    raise MapsError(f"camera.maps_file {camera.maps_file}: the response map is {response.shape}, "
                                    f"the offset map {offset.shape}")
                gain = (camera.e_per_adu / response).astype(np.float32)  # a brighter pixel: fewer e⁻ per ADU
        return cls(camera.model, camera.pixel_size_nm, camera.baseline_adu, camera.e_per_adu, em_gain,
                   camera.qe, camera.read_noise_e, camera.exposure_ms, offset_map=offset, gain_map=gain,
                   variance_map=variance)

    @property
    def excess_noise(self) -> float:
        """Excess-noise factor of the gain register: 2 for an EMCCD with EM gain, 1 otherwise."""
        return 2.0 if self.model == "emccd" and self.em_gain > 1.0 else 1.0

    # -- forward: photons → ADU (simulation) ---------------------------------------------------------

    def expose(self, expected_photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One noisy uint16 frame from an image of expected photons per pixel."""
        if self.model == "emccd" and self.gain_map is None:
            electrons = rng.poisson(self.qe * expected_photons + self.spurious_charge)
            amplified = rng.gamma(shape=electrons, scale=self.em_gain)  # shape 0 gives 0
            amplified += rng.normal(0.0, self.read_noise_e, size=amplified.shape)
            return _to_adu(amplified / self.e_per_adu + self.baseline_adu)
        electrons = rng.poisson(self.qe * expected_photons + self.spurious_charge)
        gain = self.gain_map if self.gain_map is not None else self.e_per_adu
        offset = self.offset_map if self.offset_map is not None else self.baseline_adu
        variance = (self.variance_map if self.variance_map is not None
                    else (self.read_noise_e / self.e_per_adu) ** 2)
        adu = electrons * self.em_gain / gain + offset
        adu = adu + rng.normal(0.0, 1.0, size=adu.shape) * np.sqrt(variance)
        return _to_adu(adu)

    def mean_adu(self, expected_photons: np.ndarray) -> np.ndarray:
        """Expected ADU (before clipping) of an image of expected photons per pixel."""
        electrons = self.qe * np.asarray(expected_photons) + self.spurious_charge
        gain = self.gain_map if self.gain_map is not None else self.e_per_adu
        offset = self.offset_map if self.offset_map is not None else self.baseline_adu
        return electrons * self.em_gain / gain + offset

    # -- inverse: ADU → photons (localization) --------------------------------------------------------

    def to_photons(self, adu: np.ndarray) -> np.ndarray:
        """Convert raw counts to photons (float32), pixel maps included when present."""
        offset = self.offset_map if self.offset_map is not None else self.baseline_adu
        gain = self.gain_map if self.gain_map is not None else self.e_per_adu
        scale = np.asarray(gain, dtype=np.float32) / np.float32(self.em_gain * self.qe)
        return (adu.astype(np.float32) - np.asarray(offset, dtype=np.float32)) * scale

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (maps reduced to their means)."""
        d = {k: getattr(self, k) for k in ("model", "pixel_size_nm", "baseline_adu", "e_per_adu",
                                           "em_gain", "qe", "read_noise_e", "exposure_ms")}
        d["has_pixel_maps"] = self.offset_map is not None
        return d


def save_maps(path: Any, offset_adu: np.ndarray, variance_adu2: np.ndarray,
              response: np.ndarray | None = None) -> None:
    """Write per-pixel sCMOS maps (``camera.maps_file``): offset, read-noise variance and, when measured, each
    pixel's response relative to the mean (its gain is ``camera.e_per_adu`` / response)."""
    arrays = {"offset_adu": np.asarray(offset_adu, np.float32), "variance_adu2": np.asarray(variance_adu2, np.float32)}
    if response is not None:
        arrays["response"] = np.asarray(response, np.float32)
    np.savez(path, **arrays)


def load_maps(path: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(offset map ADU, read-noise variance map ADU², relative response or None) from ``camera.maps_file``;
    one clear error otherwise."""
    from pathlib import Path

    p = Path(path).expanduser()
    try:
        with np.load(p) as data:
            offset, variance = data["offset_adu"].astype(np.float32), data["variance_adu2"].astype(np.float32)
            response = data["response"].astype(np.float32) if "response" in data.files else None
    except FileNotFoundError:
        raise MapsError(f"camera.maps_file {p} does not exist (write it with rtsmlm calibrate --dark)") from None
    except (KeyError, ValueError, OSError) as e:
        raise MapsError(f"camera.maps_file {p} is not an rtsmlm maps file (offset_adu, variance_adu2): {e}") from None
    if offset.ndim != 2 or offset.shape != variance.shape:
        raise MapsError(f"camera.maps_file {p}: the maps must be two 2-D arrays of one shape, got {offset.shape} "
                        f"and {variance.shape}")
    return offset, variance, response


class MapsError(RtsmlmError, ValueError):
    """A per-pixel maps file that cannot be used (the message names the file and the problem)."""
