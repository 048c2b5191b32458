"""The brightness floor (``model.min_photons``), waived for detections an adjacent frame confirms.

A broad model, trained down to 100 photons, scores noise blobs on a high background as likely dim emitters;
where the movie's emitters are much brighter than that, ``rtsmlm calibrate`` sets a floor on the read-out
photons that drops them (:mod:`rtsmlm.analysis.thresholds`). But a bright molecule is dim too in the frames
it switches on or off in (on for a part of the exposure), and a plain floor drops those frames' detections
with the noise. Noise blobs do not repeat at one place from frame to frame; a molecule does. So a detection
under the floor is kept when a detection at or above it lies within :data:`CONFIRM_RADIUS_PX` in the
previous or the next frame. Measured on the camera matrix of ``benchmarks/bench_cameras.py`` (README,
"Brightness floor"), it never cost a cell and recovered most of what the floor lost on the sparse, high-background one.

A frame's verdict needs the next frame's detections: while a floor is set, :class:`BrightnessFloor` holds a
sequence's newest frame back until the next arrives or the sequence ends — one frame of latency, and none
without a floor. The refiner's split check (:mod:`rtsmlm.localization.refine`) asks the same question of the
adjacent frames (:func:`repeated_next_door`), so with it the newest frame is held too.
"""

from __future__ import annotations

import numpy as np

from rtsmlm.core.locs import LOC_DTYPE, concat

__all__ = ["CONFIRM_RADIUS_PX", "BrightnessFloor", "context_frames", "kept_by_floor", "repeated_next_door"]

CONFIRM_RADIUS_PX = 1.0
"""How close (camera pixels) a detection at or above the floor in an adjacent frame must be to waive the
floor: a dim localization's error is a fraction of a pixel, and two molecules this close in consecutive
frames are rare at the densities where a floor is chosen (0.5 px and 1 px measured alike)."""


def context_frames(window: int, min_photons: float, hold: bool = False) -> int:
    """Frames beyond each end of a stretch of a movie that a localization of the stretch alone must read for its
    frames to come out as in one pass over the whole movie (a batch chunk, a catch-up of skipped frames): half
    the model's window, and one more with a floor or another check that reads the adjacent frames'
    detections (``hold``: the refiner's split check) — those must come from their whole windows."""
    return int(window) // 2 + (1 if min_photons > 0 or hold else 0)


def repeated_next_door(locs: np.ndarray, table: np.ndarray, radius_nm: float) -> np.ndarray:
    """Which rows of ``locs`` have a row of ``table`` (LOC_DTYPE tables) within ``radius_nm`` in the frame
    before or after theirs: a molecule repeats at its place from frame to frame, a noise blob does not."""
    found = np.zeros(len(locs), bool)
    if not len(locs) or not len(table):
        return found
    from scipy.spatial import cKDTree

    # Frames far apart along a third axis: one tree answers "a row in frame f ± 1 within the radius".
    apart = 4.0 * radius_nm + 1.0
    def points(rows: np.ndarray, shift: int = 0) -> np.ndarray:
        return np.column_stack([rows["x"], rows["y"], (rows["frame"] + shift).astype(np.float64) * apart]
                               ).astype(np.float64)

    tree = cKDTree(points(table))
    for shift in (-1, 1):
        distance, _ = tree.query(points(locs, shift), distance_upper_bound=radius_nm)
        found |= np.isfinite(distance)
    return found


def kept_by_floor(locs: np.ndarray, min_photons: float, radius_nm: float) -> np.ndarray:
    """Which rows of ``locs`` (a LOC_DTYPE table of consecutive frames) the floor keeps: those read out at
    ``min_photons`` or brighter, and those with such a row within ``radius_nm`` in the frame before or after."""
    bright = locs["photons"] >= min_photons
    keep = bright.copy()
    dim = np.flatnonzero(~bright)
    if len(dim) and bright.any():
        keep[dim] = repeated_next_door(locs[dim], locs[bright], radius_nm)
    return keep


class BrightnessFloor:
    """The floor applied to a stream of localizations, one sequence of consecutive frames at a time.

    Args:
        min_photons: the floor (photons); 0 = none, and every localization passes (at once, unless ``hold``).
        radius_nm: :data:`CONFIRM_RADIUS_PX` in nm (the camera's pixel size).
        hold: hold the newest frame back even without a floor, so that what comes out has both adjacent frames'
            localizations in :attr:`neighbours` (the refiner's split check reads them).

    Called from the localizer's thread: :meth:`push` with each batch of finished frames, :meth:`finish` at the
    end of a sequence (a gap in the frames, the end of the run).
    """

    def __init__(self, min_photons: float, radius_nm: float, hold: bool = False) -> None:
        if not min_photons >= 0.0:
            raise ValueError(f"min_photons must be >= 0, got {min_photons!r}.")
        self.min_photons = float(min_photons)
        self.radius_nm = float(radius_nm)
        self.hold = bool(hold)
        # The sequence's last released frame (its rows confirm the held frame's) and its newest frame, held
        # until the next one is finished; None before the sequence's first frame.
        self._decided, self._decided_frame = np.empty(0, LOC_DTYPE), None
        self._held, self._held_frame = np.empty(0, LOC_DTYPE), None
        self.released_through = -1
        """The last frame whose localizations have all been returned (-1: none yet)."""
        self.neighbours = np.empty(0, LOC_DTYPE)
        """All localizations (before the floor) of the frames around the last return: those of the returned
        frames and of the frames before and after them that the sequence has."""

    def push(self, locs: np.ndarray, through: int) -> np.ndarray:
        """The kept localizations of the frames before ``through`` not yet returned; ``locs`` holds the
        localizations of the frames finished since the last push, up to and including ``through``."""
        if self.min_photons <= 0.0 and not self.hold:
            self.released_through = through
            return locs
        if through < 0 or (self._held_frame is not None and through <= self._held_frame):
            return locs[:0]  # no frame finished since the last push
        window = concat([self._decided, self._held, locs])
        self.neighbours = window
        keep = self._kept(window)
        frames = window["frame"]
        decide = frames < through
        if self._decided_frame is not None:
            decide &= frames > self._decided_frame
        self._decided, self._decided_frame = window[frames == through - 1], through - 1
        self._held, self._held_frame = window[frames == through], through
        self.released_through = through - 1
        return window[decide & keep]

    def finish(self) -> np.ndarray:
        """End of a sequence: the held frame's kept localizations (its confirmation can come only from the
        frame before); the next push starts a new sequence."""
        out = np.empty(0, LOC_DTYPE)
        if self._held_frame is not None:
            window = concat([self._decided, self._held])
            self.neighbours = window
            keep = self._kept(window)
            out = window[(window["frame"] == self._held_frame) & keep]
            self.released_through = self._held_frame
        self._decided, self._decided_frame = np.empty(0, LOC_DTYPE), None
        self._held, self._held_frame = np.empty(0, LOC_DTYPE), None
        return out

    def _kept(self, window: np.ndarray) -> np.ndarray:
        if self.min_photons <= 0.0:
            return np.ones(len(window), bool)
        return kept_by_floor(window, self.min_photons, self.radius_nm)
