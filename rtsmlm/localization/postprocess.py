"""From the network's output maps to a localization table (DECODE's spatial integration).

The network spreads the detection probability of one emitter over the pixel it sits in and, when it lies
near a pixel border, that pixel's neighbours. Spatial integration turns the map into discrete detections:

1. candidates are pixels whose p is the maximum of their 3x3 neighbourhood and above
   ``candidate_threshold``. Exact ties (an emitter on a pixel border, p split evenly) are broken in raster
   order: a pixel must be strictly greater than its neighbours above/left of it and at least equal to the
   ones below/right, so a plateau of equal values yields one candidate, not two;
2. each candidate's score is p summed over the pixel and its 4-connected neighbours (the probability mass
   of one emitter);
3. pixels that are not maxima but have p above ``split_threshold`` are candidates of their own with the
   same summed score, so two emitters in adjacent pixels are both reported — unless such a pixel's
   read-out position (pixel centre + predicted offset) lies within ``MERGE_RADIUS_PX`` of an adjacent
   maximum's: then both pixels describe the same molecule and only the maximum is kept;
4. candidates with score > ``p_threshold`` become localizations read out at the candidate pixel;
5. with ``residual_threshold`` > 0, a second pass looks beside each detection for an emitter the maxima
   missed. The p map is an expected count (DECODE's count loss): a detection explains at most one emitter's
   worth of p over its pixel and 4-connected neighbours (all of it when its score is ≤ 1, a share 1/score
   when more) and leaves the rest, the residual. A pixel within ``RESIDUAL_REACH_PX`` of a detection that is
   the maximum of its 3x3 residual neighbourhood, with a 3x3 residual sum above ``residual_threshold`` and the
   p threshold, is a detection of its own, read out at its pixel and scored with that sum: the partner of a
   close pair (1–2 px) that the network gave more than one emitter's mass but a single maximum. Only beside
   a detection: residual mass far from any is what the first pass already turned down.

The brightness floor (``model.min_photons``) is applied after this, across frames
(:mod:`rtsmlm.localization.brightness_floor`).

The heavy part (masks, sums, gathering) runs in torch on the device of ``out`` (GPU when the network runs
there); only the selected rows are copied to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rtsmlm.core.locs import LOC_DTYPE, in_field
from rtsmlm.localization.net import (
    CH_BG,
    CH_P,
    CH_PHOT,
    CH_SIG_PHOT,
    CH_SIG_X,
    CH_SIG_Y,
    CH_SIG_Z,
    CH_X,
    CH_Y,
    CH_Z,
    N_OUT_CHANNELS,
)

MERGE_RADIUS_PX = 0.5
"""A split candidate reading out closer than this to an adjacent maximum is the same emitter. Two real
emitters this close (50 nm at 100 nm pixels, well under the PSF width) cannot be told apart anyway."""
RESIDUAL_REACH_PX = 2
"""How far (pixels, in rows and columns) from a first-pass detection a residual detection may lie: its
partner of a close pair is 1–2 px away."""

STRIP_PIXELS = 4 * 2**20
"""Above this many pixels a batch is post-processed in strips of rows (bounded float32 temporaries)."""
STRIP_HALO = 4
"""Rows of context around a strip: a detection depends on its neighbours' maxima, which depend on theirs; a
residual detection on the detections up to 2 rows away, which depend on p 2 rows further."""

# Neighbour offsets (row, column) before and after a pixel in raster order; used for tie-breaking.
_EARLIER = ((-1, -1), (-1, 0), (-1, 1), (0, -1))
_LATER = ((0, 1), (1, -1), (1, 0), (1, 1))


def _neighbour_max(padded: torch.Tensor, offsets: tuple[tuple[int, int], ...], h: int, w: int) -> torch.Tensor:
    """Element-wise maximum over the given neighbour offsets of a map padded by one pixel."""
    shifted = [padded[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w] for di, dj in offsets]
    result = shifted[0]
    for s in shifted[1:]:
        result = torch.maximum(result, s)
    return result


def _is_local_max(t: torch.Tensor) -> torch.Tensor:
    """Pixels of ``(B, H, W)`` that are the maximum of their 3x3 neighbourhood, exact ties broken in raster
    order: strictly greater than the neighbours before them, at least equal to those after (a plateau of equal
    values yields one pixel)."""
    h, w = t.shape[-2], t.shape[-1]
    padded = F.pad(t, (1, 1, 1, 1), value=float("-inf"))
    return (t > _neighbour_max(padded, _EARLIER, h, w)) & (t >= _neighbour_max(padded, _LATER, h, w))


def _four_neighbour_sum(t: torch.Tensor) -> torch.Tensor:
    """Each pixel plus its up, down, left and right neighbours (zero beyond the edge), as five shifted adds in
    that fixed order, not a convolution: the same sum on every device (a cuDNN convolution may use TF32 and any
    order) and no kernel tensor to copy to the GPU per call."""
    zero = F.pad(t, (1, 1, 1, 1))
    return t + zero[..., :-2, 1:-1] + zero[..., 2:, 1:-1] + zero[..., 1:-1, :-2] + zero[..., 1:-1, 2:]


_READ_OUT_COLUMNS = ("x", "y", "z", "photons", "bg", "sigma_x", "sigma_y", "sigma_z", "sigma_photons", "p")
"""The table columns read out of the maps, in the order :meth:`Postprocessor._localize` stacks them."""


class Postprocessor:
    """Turns ``(B, 10, H, W)`` network output maps into localizations (``rtsmlm.core.locs.LOC_DTYPE``).

    Args:
        pixel_size_nm: camera pixel size in the sample plane, nm.
        photon_scale, z_scale, bg_scale: the scales the network was trained with (from its checkpoint):
            photons = channel * photon_scale, z (nm) = channel * z_scale, background (photons/pixel) =
            channel * bg_scale.
        p_threshold: minimum integrated probability of a detection.
        candidate_threshold: minimum p of a local maximum to be considered at all.
        split_threshold: p above which a non-maximum pixel is a detection of its own (adjacent emitters).
        has_z: False for a 2D model: its untrained z head is not read out, ``z`` and ``sigma_z`` are 0.
        residual_threshold: residual p mass (3x3 sum) beside a detection above which it is a second emitter
            (step 5 of the module docstring); 0 = no residual pass.
    """

    def __init__(
        self,
        pixel_size_nm: float,
        photon_scale: float,
        z_scale: float,
        bg_scale: float,
        p_threshold: float = 0.6,
        candidate_threshold: float = 0.3,
        split_threshold: float = 0.6,
        has_z: bool = True,
        residual_threshold: float = 0.0,
    ) -> None:
        for name, value in (
            ("pixel_size_nm", pixel_size_nm),
            ("photon_scale", photon_scale),
            ("z_scale", z_scale),
            ("bg_scale", bg_scale),
        ):
            if not value > 0:
                raise ValueError(f"Postprocessor {name} must be a positive number, got {value!r}.")
        for name, value in (
            ("candidate_threshold", candidate_threshold),
            ("split_threshold", split_threshold),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Postprocessor {name} must lie in [0, 1], got {value!r}.")
        if not p_threshold >= 0.0:
            raise ValueError(f"Postprocessor p_threshold must be >= 0, got {p_threshold!r}.")
        if not residual_threshold >= 0.0:
            raise ValueError(f"Postprocessor residual_threshold must be >= 0, got {residual_threshold!r}.")
        self.pixel_size_nm = float(pixel_size_nm)
        self.photon_scale = float(photon_scale)
        self.z_scale = float(z_scale)
        self.bg_scale = float(bg_scale)
        self.p_threshold = float(p_threshold)
        self.candidate_threshold = float(candidate_threshold)
        self.split_threshold = float(split_threshold)
        self.has_z = bool(has_z)
        self.residual_threshold = float(residual_threshold)

    def with_thresholds(self, p_threshold: float, candidate_threshold: float,
                        residual_threshold: float | None = None) -> "Postprocessor":
        """The same read-out with other detection thresholds (to score several on one set of maps); the
        residual threshold stays this one's unless given."""
        residual = self.residual_threshold if residual_threshold is None else residual_threshold
        return Postprocessor(self.pixel_size_nm, self.photon_scale, self.z_scale, self.bg_scale, p_threshold,
                             candidate_threshold, self.split_threshold, self.has_z, residual)

    def detection_map(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(detected, score)``: a ``(B, H, W)`` bool mask of detection pixels and the ``(B, H, W)``
        integrated probability (p summed over each pixel and its 4-connected neighbours)."""
        p = out[:, CH_P]
        is_max = _is_local_max(p) & (p > self.candidate_threshold)
        score = _four_neighbour_sum(p)
        split = ~is_max & (p > self.split_threshold)
        maxima = is_max & (score > self.p_threshold)
        split = split & (score > self.p_threshold) & ~self._same_emitter_as_neighbour(out, split, maxima)
        detected = maxima | split
        if self.residual_threshold > 0.0:
            residual, residual_score = self._residual_detections(out, detected, score)
            detected = detected | residual
            score = torch.where(residual, residual_score, score)
        return detected, score

    def _residual_detections(self, out: torch.Tensor, detected: torch.Tensor,
                             score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(residual, mass)``: pixels that are detections of the residual pass (step 5 of the module
        docstring) and the 3x3 residual sum that scores them."""
        p = out[:, CH_P]
        h, w = p.shape[-2], p.shape[-1]
        # Each detection explains p over its 4-neighbour cross, at most one emitter's worth.
        share = torch.where(detected, 1.0 / score.clamp_min(1.0), torch.zeros_like(p))
        residual = p * (1.0 - _four_neighbour_sum(share).clamp_max(1.0))
        is_max = _is_local_max(residual)
        zero = F.pad(residual, (1, 1, 1, 1))
        mass = sum(zero[..., 1 + di : 1 + di + h, 1 + dj : 1 + dj + w] for di in (-1, 0, 1) for dj in (-1, 0, 1))
        reach = 2 * RESIDUAL_REACH_PX + 1
        beside = F.max_pool2d(detected[:, None].to(p.dtype), reach, 1, RESIDUAL_REACH_PX)[:, 0] > 0
        found = is_max & ~detected & beside & (mass > max(self.residual_threshold, self.p_threshold))
        found &= ~self._same_emitter_as_neighbour(out, found, detected)
        return found, mass

    @staticmethod
    def _same_emitter_as_neighbour(out: torch.Tensor, split: torch.Tensor, maxima: torch.Tensor) -> torch.Tensor:
        """Split pixels whose read-out position is within ``MERGE_RADIUS_PX`` of that of an adjacent
        maximum: both pixels point at the same molecule (a duplicate), whereas a true adjacent pair of
        emitters points at two different places."""
        h, w = out.shape[-2], out.shape[-1]
        cols = torch.arange(w, device=out.device, dtype=out.dtype) + 0.5
        rows = torch.arange(h, device=out.device, dtype=out.dtype) + 0.5
        x = out[:, CH_X] + cols  # read-out position of every pixel, in pixels
        y = out[:, CH_Y] + rows[:, None]
        far = torch.full_like(x, float("inf"))
        x_max = F.pad(torch.where(maxima, x, far), (1, 1, 1, 1), value=float("inf"))
        y_max = F.pad(torch.where(maxima, y, far), (1, 1, 1, 1), value=float("inf"))
        duplicate = torch.zeros_like(split)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if di == 0 and dj == 0:
                    continue
                nx = x_max[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
                ny = y_max[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
                duplicate |= (x - nx) ** 2 + (y - ny) ** 2 < MERGE_RADIUS_PX**2
        return split & duplicate

    def __call__(self, out: torch.Tensor, frame_indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Localizations of a batch of output maps; row ``b`` of ``out`` belongs to frame
        ``frame_indices[b]``. Rows are ordered by batch row, then raster order of the pixel."""
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out))
        if out.ndim != 4 or out.shape[1] != N_OUT_CHANNELS:
            raise ValueError(
                f"Postprocessor expects network output of shape (B, {N_OUT_CHANNELS}, H, W), got {tuple(out.shape)}."
            )
        frames = np.asarray(
            frame_indices.cpu().numpy() if isinstance(frame_indices, torch.Tensor) else frame_indices, dtype=np.int64
        ).reshape(-1)
        if len(frames) != out.shape[0]:
            raise ValueError(
                f"Postprocessor got {len(frames)} frame indices for a batch of {out.shape[0]} output maps."
            )
        h = out.shape[-2]
        if out.shape[0] * out.shape[-2] * out.shape[-1] > STRIP_PIXELS and h > 2 * STRIP_HALO + 1:
            # A huge frame (4096²): strips of rows with a halo the detection cannot see past, so the
            # float32 temporaries stay small; the same localizations, in the same order.
            rows_per = max(1, STRIP_PIXELS // out.shape[-1])
            parts = []
            for k in range(out.shape[0]):
                for r0 in range(0, h, rows_per):
                    r1 = min(h, r0 + rows_per)
                    lo, hi = max(0, r0 - STRIP_HALO), min(h, r1 + STRIP_HALO)
                    part, det_rows = self._localize(out[k:k + 1, :, lo:hi], frames[k:k + 1], row_offset=lo)
                    parts.append(part[(det_rows >= r0) & (det_rows < r1)])  # the strip's own rows only
            locs = np.concatenate(parts) if parts else np.empty(0, LOC_DTYPE)
        else:
            locs = self._localize(out, frames)[0]
        return self._inside(locs, out.shape[-2:])

    def _inside(self, locs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The localizations inside the frame: a border pixel's read-out offset reaches up to a pixel past the
        edge, and a position outside the frame is no emitter of this frame's."""
        keep = in_field(locs, (shape[0] * self.pixel_size_nm, shape[1] * self.pixel_size_nm))
        return locs if keep.all() else locs[keep]

    def _localize(self, out: torch.Tensor, frames: np.ndarray, row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Localizations of ``out`` (rows offset by ``row_offset`` in the frame) and each one's detection
        pixel row."""
        with torch.no_grad():
            out = out.float()  # bf16/fp16 engines: do the arithmetic in float32
            detected, score = self.detection_map(out)
            b, i, j = detected.nonzero(as_tuple=True)
            values = out.permute(0, 2, 3, 1)[b, i, j]  # (N, 10)
            frame_i = i + row_offset  # the pixel row in the whole frame
            px = self.pixel_size_nm
            columns = torch.stack(
                [
                    (j.to(values.dtype) + 0.5 + values[:, CH_X]) * px,
                    (frame_i.to(values.dtype) + 0.5 + values[:, CH_Y]) * px,
                    values[:, CH_Z] * self.z_scale,
                    values[:, CH_PHOT] * self.photon_scale,
                    values[:, CH_BG] * self.bg_scale,
                    values[:, CH_SIG_X] * px,
                    values[:, CH_SIG_Y] * px,
                    values[:, CH_SIG_Z] * self.z_scale,
                    values[:, CH_SIG_PHOT] * self.photon_scale,
                    score[b, i, j].clamp_max(1.0),
                    # Batch row and pixel row ride along as floats (exact below 2**24) so that one
                    # device-to-host copy, one synchronisation, brings everything.
                    b.to(values.dtype),
                    frame_i.to(values.dtype),
                ],
                dim=1,
            )
            host = columns.cpu().numpy()
            n = len(_READ_OUT_COLUMNS)
            rows = host[:, n].astype(np.int64)
            det_rows = host[:, n + 1].astype(np.int64)
        locs = np.empty(len(rows), dtype=LOC_DTYPE)
        locs["frame"] = frames[rows]
        for k, name in enumerate(_READ_OUT_COLUMNS):
            locs[name] = host[:, k]
        if not self.has_z:
            locs["z"] = 0.0
            locs["sigma_z"] = 0.0
        return locs, det_rows
