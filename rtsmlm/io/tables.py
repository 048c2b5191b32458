"""The small CSV tables other tools read: ground truth and drift, each with its save/load pair.

* ``ground_truth.csv`` — ``frame,x,y,z,photons`` (0-based frames, nm): the simulator's emitters.
* ``drift.csv`` — ``frame,dx,dy`` (0-based frames, nm, the sample's displacement; ``x_dc = x - dx``), and
  ``dz`` after them for a 3D run (axial drift; ``z - dz`` is the corrected depth): the estimated drift of a
  run, or the simulated one (``ground_truth_drift.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

TRUTH_HEADER = "frame,x,y,z,photons"
DRIFT_HEADER = "frame,dx,dy"


class DriftTrajectory(NamedTuple):
    """Per-frame drift: ``frames`` (int64, 0-based) and ``dx``, ``dy`` (nm, the sample's displacement);
    ``dz`` (nm) for a 3D run whose axial drift was estimated (or simulated), else None."""

    frames: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray | None = None


def write_truth_rows(fh: IO[str], truth: np.ndarray) -> None:
    """Append ground-truth rows (fields frame, x, y, z, photons) to an open text file whose header
    (:data:`TRUTH_HEADER`) is already written."""
    if len(truth):
        np.savetxt(fh, np.column_stack([truth["frame"], truth["x"], truth["y"], truth["z"],
                                        truth["photons"]]), fmt=["%d", "%.2f", "%.2f", "%.2f", "%.1f"],
                   delimiter=",")


def _check_header(path: Path, what: str, expected: str) -> None:
    """The file exists and starts with the ``expected`` columns (more may follow), or one clear error."""
    try:
        with path.open(encoding="utf-8") as fh:
            header = fh.readline().strip().replace(" ", "")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} does not exist") from None
    want = expected.split(",")
    if header.split(",")[: len(want)] != want:
        raise ValueError(f"{path}: expected the header {expected!r}, got {header!r}")


def read_truth_csv(path: str | Path) -> np.ndarray:
    """Read ``ground_truth.csv`` into a structured array with fields frame, x, y, z, photons."""
    path = Path(path)
    _check_header(path, "ground-truth", TRUTH_HEADER)
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, usecols=range(5)).reshape(-1, 5)
    out = np.zeros(len(data), dtype=[("frame", "<i8"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("photons", "<f4")])
    for k, name in enumerate(out.dtype.names):
        out[name] = data[:, k]
    return out


def write_drift_csv(path: str | Path, frames: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                    dz: np.ndarray | None = None) -> Path:
    """Write ``frame,dx,dy`` (0-based frames, nm), and ``dz`` when given."""
    frames = np.asarray(frames, dtype=np.int64)
    columns = [np.asarray(dx, dtype=np.float64), np.asarray(dy, dtype=np.float64)]
    if dz is not None:
        columns.append(np.asarray(dz, dtype=np.float64))
    if any(c.shape != frames.shape for c in columns) or frames.ndim != 1:
        raise ValueError(f"drift for {path}: frames, dx, dy (and dz) must be 1-D arrays of one length, got "
                         f"{frames.shape}, {', '.join(str(c.shape) for c in columns)}")
    path = Path(path)
    header = DRIFT_HEADER + (",dz" if dz is not None else "")
    np.savetxt(path, np.column_stack([frames, *columns]), fmt=["%d"] + ["%.4f"] * len(columns), delimiter=",",
               header=header, comments="")
    return path


def read_drift_csv(path: str | Path) -> DriftTrajectory:
    """Read a ``frame,dx,dy[,dz]`` file (a run's estimate or the simulated truth)."""
    path = Path(path)
    _check_header(path, "drift", DRIFT_HEADER)
    with path.open(encoding="utf-8") as fh:
        names = fh.readline().strip().replace(" ", "").split(",")
    has_z = len(names) > 3 and names[3] == "dz"
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, usecols=(0, 1, 2, 3) if has_z else (0, 1, 2))
    return DriftTrajectory(data[:, 0].astype(np.int64), data[:, 1].copy(), data[:, 2].copy(),
                           data[:, 3].copy() if has_z else None)
