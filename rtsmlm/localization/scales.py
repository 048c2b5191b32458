"""How photons become the network's input and how its outputs are scaled back: stored in every
checkpoint, used by training and inference alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rtsmlm.core.config import Config

INPUT_TRANSFORMS = ("linear", "anscombe")
"""How photons become the network's input: ``linear`` = photons / input_scale (a model for one camera);
``anscombe`` = (2·sqrt(photons + 3/8) − 2·sqrt(3/8)) / input_scale, which makes shot noise about equally
strong at every background and compresses 1–1000 photons/px of background into one input range (the broad
model)."""

_ANSCOMBE_ZERO = 2.0 * np.sqrt(3.0 / 8.0)


@dataclass(frozen=True)
class Scales:
    """Normalisation of the network's input and outputs; stored in every checkpoint."""

    input_scale: float  # see INPUT_TRANSFORMS
    photon_scale: float
    bg_scale: float
    z_scale: float
    input_transform: str = "linear"
    # Extra input channels of every frame (rtsmlm.localization.conditioning.CHANNELS): what the model is
    # told about the PSF and the camera. Empty for a model that sees only the frames.
    conditioning: tuple[str, ...] = ()

    @property
    def in_channels(self) -> int:
        """Input channels of one frame: the photons plus the conditioning maps."""
        return 1 + len(self.conditioning)

    @classmethod
    def from_config(cls, cfg: Config) -> "Scales":
        t = cfg.train
        if t.input_transform == "anscombe":
            input_scale = max(2.0 * np.sqrt(max(t.bg_max, 1.0)), 1.0)
        else:
            input_scale = max(t.bg_max, 1.0)
        return cls(input_scale=float(input_scale), photon_scale=1.2 * t.photons_max,
                   bg_scale=2.0 * t.bg_max, z_scale=max(cfg.psf.z_range_nm, 1.0),
                   input_transform=t.input_transform, conditioning=_conditioning(t.conditioning))

    def network_input(self, photons):
        """Photons per pixel (numpy array or torch tensor) → the network's input, same type."""
        if self.input_transform == "anscombe":
            if isinstance(photons, np.ndarray):
                return (2.0 * np.sqrt(np.maximum(photons, 0.0) + 0.375) - _ANSCOMBE_ZERO) / self.input_scale
            return (2.0 * (photons.clamp(min=0.0) + 0.375).sqrt() - _ANSCOMBE_ZERO) / self.input_scale
        return photons / self.input_scale


def _conditioning(name: str) -> tuple[str, ...]:
    from rtsmlm.localization.conditioning import SETS

    return SETS[name]
