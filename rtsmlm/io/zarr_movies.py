"""OME-Zarr movies: read a time series chunk by chunk, write one for tests and conversions.

An OME-Zarr image (NGFF 0.4 in a zarr v2 store, or 0.5 in a zarr v3 store) is a folder: its
``multiscales`` metadata names the axes and the full-resolution array. rtsmlm reads the first (full
resolution) dataset; every axis but x and y must be time or of size 1 (one channel, one plane), and
the frames are the time axis. The pixel size comes from the dataset's ``scale`` transformation and the
axes' units. Frames are read from the store as they are needed — a Dask worker reading its chunk of a
movie reads only that chunk's zarr chunks, never the whole movie.

``zarr`` is imported only here, when an OME-Zarr movie is opened or written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.core.errors import SourceError

__all__ = ["is_ome_zarr", "open_ome_zarr_array", "write_ome_zarr"]

_UNIT_NM = {"nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6, "meter": 1e9, "angstrom": 0.1}


def is_ome_zarr(path: Path) -> bool:
    """A folder that holds a zarr group (v2 ``.zattrs``/``.zgroup`` or v3 ``zarr.json``)."""
    return path.is_dir() and any((path / name).is_file() for name in (".zattrs", ".zgroup", "zarr.json"))


def _multiscales(attrs: dict[str, Any], where: Path) -> dict[str, Any]:
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms or not isinstance(ms, list) or not isinstance(ms[0], dict):
        raise SourceError(f"{where}: a zarr group without OME 'multiscales' metadata (not an OME-Zarr image)")
    return ms[0]


def open_ome_zarr_array(path: Path) -> tuple[Any, tuple[int, int], int, float | None, dict[str, Any]]:
    """The full-resolution array of an OME-Zarr image as (array viewed as (t, y, x), (height, width),
    n_frames, pixel size in nm or None, metadata). The array is sliced lazily (zarr reads on access)."""
    try:
        import zarr
    except ImportError as e:
        raise SourceError(f"{path}: reading OME-Zarr needs the zarr package (pip install zarr)") from e
    try:
        group = zarr.open_group(str(path), mode="r")
        ms = _multiscales(dict(group.attrs), path)
        dataset = ms["datasets"][0]
        array = group[dataset["path"]]
    except SourceError:
        raise
    except Exception as e:  # zarr raises many types on damaged stores
        raise SourceError(f"{path}: not a readable OME-Zarr image ({type(e).__name__}: {e})") from e
    axes = [a if isinstance(a, dict) else {"name": str(a)} for a in ms.get("axes", [])]
    names = [str(a.get("name", "")).lower() for a in axes] or (["t", "y", "x"][-array.ndim:])
    if len(names) != array.ndim or names[-2:] != ["y", "x"]:
        raise SourceError(f"{path}: OME-Zarr axes {names} do not end in y, x for an array of shape {array.shape}")
    shape = tuple(int(n) for n in array.shape)
    extra = [(name, n) for name, n in zip(names[:-2], shape[:-2]) if name != "t" and n != 1]
    if extra:
        raise SourceError(f"{path}: OME-Zarr axes {dict(extra)} have more than one plane; rtsmlm reads one "
                          "channel and one z plane per frame (export that channel/plane)")
    index = tuple(slice(None) if name == "t" else 0 for name in names[:-2])
    n_frames = shape[names.index("t")] if "t" in names else 1
    pixel_nm = None
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            unit = str(axes[-1].get("unit", "")).lower()  # no unit: the scale is not a calibration
            if unit in _UNIT_NM:
                pixel_nm = float(transform["scale"][-1]) * _UNIT_NM[unit]
    metadata = {k: v for k, v in dict(group.attrs).items() if k not in ("multiscales", "ome")}
    return _TimeView(array, index), (shape[-2], shape[-1]), int(n_frames), pixel_nm, metadata


class _TimeView:
    """An n-d zarr array seen as (t, y, x): the other leading axes are fixed at their one plane."""

    def __init__(self, array: Any, index: tuple[Any, ...]) -> None:
        self._array = array
        self._index = index
        self.dtype = np.dtype(array.dtype)
        self._has_t = any(isinstance(i, slice) for i in index)

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if not self._has_t:  # a single image without a time axis is a one-frame movie
            if key not in (0, slice(0, 1)):
                raise IndexError(key)
            frame = np.asarray(self._array[tuple(0 for _ in self._index)])
            return frame if isinstance(key, int) else frame[np.newaxis]
        full = tuple(key if isinstance(i, slice) else i for i in self._index)
        return np.asarray(self._array[full])


def write_ome_zarr(path: str | os.PathLike[str], frames: np.ndarray, pixel_size_nm: float | None, *,
                   chunk_frames: int = 64, metadata: dict[str, Any] | None = None) -> Path:
    """Write an (n, height, width) movie as an OME-Zarr 0.4 image (zarr v2 store, axes t, y, x), in
    chunks of ``chunk_frames`` whole frames; ``metadata`` (JSON types) goes into the group attributes."""
    import zarr

    p = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"{p}: frames must be (n, height, width), got shape {frames.shape}")
    group = zarr.open_group(str(p), mode="w-", zarr_format=2)
    array = group.create_array("0", shape=frames.shape, dtype=frames.dtype,
                               chunks=(min(chunk_frames, max(len(frames), 1)), *frames.shape[1:]))
    array[:] = frames
    px_um = (pixel_size_nm or 1000.0) / 1000.0
    unit = {"unit": "micrometer"} if pixel_size_nm else {}
    group.attrs.update({
        **(metadata or {}),
        "multiscales": [{
            "version": "0.4",
            "axes": [{"name": "t", "type": "time"}, {"name": "y", "type": "space", **unit},
                     {"name": "x", "type": "space", **unit}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, px_um, px_um]}]}],
        }],
    })
    return p
