"""Camera movies on disk: one reader for every supported format, and the writers of recorded runs.

Readers (:func:`open_movie`):

- TIFF: multi-page TIFF, BigTIFF, OME-TIFF, ImageJ hyperstacks, Micro-Manager TIFF stacks (tifffile).
  Uncompressed contiguous data is memory mapped; other layouts are read page by page. Hyperstack axes
  other than Y and X (T, Z, C, ...) are flattened in file order into one frame axis.
- Picasso ``.raw`` with its ``.yaml`` sidecar (keys ``Width``, ``Height``, ``Frames``, ``Data Type``,
  ``Byte Order``).
- Zhuang-lab ``.dax`` with its ``.inf`` text header (``frame dimensions = W x H``, ``number of
  frames = N``, ``data type = 16 bit integers (binary, big endian)``).
- OME-Zarr images (a ``.zarr`` folder; :mod:`rtsmlm.io.zarr_movies`), read chunk by chunk.

Every reader returns frames as (rows, columns) = (y, x) arrays in native byte order: pixel (row i,
column j) covers x in [j·p, (j+1)·p) nm and y in [i·p, (i+1)·p) nm (DESIGN.md).

Writers: :func:`write_tiff_movie` (a finished movie as an ImageJ TIFF that Fiji opens calibrated) and
the streaming :class:`MovieWriter` implementations a live run records raw frames with:
:class:`RawMovieWriter` (Picasso ``.raw`` + ``.yaml``) and :class:`TiffMovieWriter` (BigTIFF). Both
survive a killed process: every frame appended before the last :meth:`MovieWriter.flush` is readable.

Metadata travels as one JSON "envelope" ``{"rtsmlm_movie": 1, "pixel_size_nm": ..., "metadata":
{...}}``: in the ImageJ ``Info`` property (Fiji shows it under Image > Show Info) for
:func:`write_tiff_movie`, in a private TIFF tag for :class:`TiffMovieWriter`; Picasso sidecars carry the
metadata keys at the top level of the YAML document and the pixel size as ``Pixelsize`` (nm).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rtsmlm.core.errors import SourceError
from rtsmlm.core.jsonio import to_jsonable
from rtsmlm.io.paths import check_new_file

__all__ = [
    "MovieReader",
    "MovieWriter",
    "RawMovieWriter",
    "TiffMovieWriter",
    "open_movie",
    "open_movie_writer",
    "write_tiff_movie",
    "RTSMLM_TIFF_TAG",
]

log = logging.getLogger("rtsmlm.io.movies")

RTSMLM_TIFF_TAG = 65101
"""Private TIFF tag (ASCII, first page only) holding the JSON envelope of :class:`TiffMovieWriter`."""

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")
_ENVELOPE_KEY = "rtsmlm_movie"
# Picasso's structural keys; everything else in the sidecar is metadata.
_PICASSO_KEYS = ("Byte Order", "Data Type", "Frames", "Height", "Width")
_PICASSO_PIXEL_KEYS = ("Pixelsize", "Pixel Size", "pixel_size_nm")
# Length units of OME and ImageJ calibrations, in nm.
_UNIT_NM = {"nm": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3,
            "mm": 1e6, "cm": 1e7, "m": 1e9, "å": 0.1, "angstrom": 0.1, "pm": 1e-3}
# A calibration outside this range is a default (72 dpi) or a unit mix-up, not a microscope pixel.
_PLAUSIBLE_PIXEL_NM = (1.0, 100_000.0)


# --------------------------------------------------------------------------------------------------
# Reader


class MovieReader:
    """Random access to the frames of one movie file; build it with :func:`open_movie`.

    ``shape`` is (height, width) = (rows, columns) = (y, x); ``dtype`` is native byte order;
    ``pixel_size_nm`` is None when the file does not say; ``metadata`` holds what the file records
    besides the pixels (camera settings when present, under the field names of
    :class:`rtsmlm.acquisition.source.CameraModel` for files this package wrote). ``recovered`` is True when
    the file is the remains of a writer that was killed and the frames were recovered from it.
    Reads are thread-safe; every :meth:`read` returns a new array the caller owns.
    """

    def __init__(self, path: Path, *, fmt: str, shape: tuple[int, int], n_frames: int,
                 dtype: np.dtype, pixel_size_nm: float | None, metadata: dict[str, Any],
                 array: np.ndarray | None = None,
                 read_page: Callable[[int], np.ndarray] | None = None,
                 on_close: Callable[[], None] | None = None, recovered: bool = False) -> None:
        self.path = path
        self.format = fmt
        self.shape = shape
        self.n_frames = n_frames
        self.dtype = dtype.newbyteorder("=")
        self.pixel_size_nm = pixel_size_nm
        self.metadata = metadata
        self.recovered = recovered
        self._array = array
        self._read_page = read_page
        self._on_close = on_close
        self._lock = threading.Lock()
        self._closed = False

    def read(self, i: int) -> np.ndarray:
        """Frame ``i`` (0-based) as a (height, width) array in native byte order."""
        if self._closed:
            raise ValueError(f"{self.path}: the movie is closed")
        if not 0 <= i < self.n_frames:
            raise IndexError(f"{self.path}: frame {i} does not exist (the movie has {self.n_frames} frames)")
        try:
            with self._lock:
                if self._array is not None:
                    return np.array(self._array[i], dtype=self.dtype)
                assert self._read_page is not None
                page = self._read_page(i)
        except Exception as e:  # decoders raise their own types; the caller needs the file and frame
            raise SourceError(f"{self.path}: cannot read frame {i}: {e}") from e
        return np.ascontiguousarray(page.reshape(self.shape), dtype=self.dtype)

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start``..``stop - 1`` as one (n, height, width) array: one slice of a mapped or chunked
        (OME-Zarr) file, so a worker reading its part of a movie reads only that part."""
        if not 0 <= start <= stop <= self.n_frames:
            raise IndexError(f"{self.path}: frames {start}..{stop - 1} are not all in the movie "
                             f"({self.n_frames} frames)")
        if self._array is None:
            return np.stack([self.read(i) for i in range(start, stop)]) if stop > start else \
                np.zeros((0, *self.shape), self.dtype)
        if self._closed:
            raise ValueError(f"{self.path}: the movie is closed")
        try:
            with self._lock:
                return np.array(self._array[start:stop], dtype=self.dtype)
        except Exception as e:
            raise SourceError(f"{self.path}: cannot read frames {start}..{stop - 1}: {e}") from e

    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.n_frames):
            yield self.read(i)

    def close(self) -> None:
        """Release the file (idempotent). Arrays returned by :meth:`read` stay valid."""
        if self._closed:
            return
        self._closed = True
        self._array = None
        self._read_page = None
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> MovieReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MovieReader({str(self.path)!r}, format={self.format!r}, n_frames={self.n_frames}, "
                f"shape={self.shape}, dtype={self.dtype.name}, pixel_size_nm={self.pixel_size_nm})")


def open_movie(path: str | os.PathLike[str]) -> MovieReader:
    """Open a movie file for reading; the format follows the file name (see the module docstring).

    A ``.yaml`` or ``.inf`` sidecar path opens its ``.raw`` or ``.dax`` movie. Raises
    :class:`~rtsmlm.acquisition.source.SourceError` with one sentence naming the file and the problem when the
    file is missing, unreadable, truncated or inconsistent with its header.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".yaml"):
        p = p.with_suffix(".raw")
    elif name.endswith(".inf"):
        p = p.with_suffix(".dax")
    suffix = p.suffix.lower()
    from rtsmlm.io.zarr_movies import is_ome_zarr

    if is_ome_zarr(p):
        return _open_ome_zarr(p)
    if p.is_dir():
        raise SourceError(f"{p}: is a folder, not a movie file (for NDTiff or image-sequence folders, "
                          "export a multi-page TIFF first)")
    if not p.is_file():
        raise SourceError(f"{p}: movie file does not exist")
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(p)
    if suffix == ".raw":
        return _open_picasso_raw(p)
    if suffix == ".dax":
        return _open_dax(p)
    raise SourceError(f"{p}: unsupported movie format {p.suffix!r} (supported: .tif/.tiff/.ome.tif, "
                      ".raw with .yaml, .dax with .inf, OME-Zarr folders)")


def _open_ome_zarr(path: Path) -> MovieReader:
    from rtsmlm.io.zarr_movies import open_ome_zarr_array

    array, shape, n_frames, pixel_size_nm, metadata = open_ome_zarr_array(path)
    return MovieReader(path, fmt="ome-zarr", shape=shape, n_frames=n_frames, dtype=array.dtype,
                       pixel_size_nm=pixel_size_nm, metadata=_jsonable(metadata, str(path)), array=array)


# ---- raw binary formats ---------------------------------------------------------------------------


def _open_raw_binary(path: Path, *, fmt: str, header: str, dtype: np.dtype, n_frames: int,
                     height: int, width: int, pixel_size_nm: float | None,
                     metadata: dict[str, Any]) -> MovieReader:
    """Memory-map headerless frames; the file may be longer than the header says, never shorter."""
    if height <= 0 or width <= 0 or n_frames < 0:
        raise SourceError(f"{path}: {header} gives an invalid size: {n_frames} frames of {width}x{height}")
    expected = n_frames * height * width * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise SourceError(f"{path}: file has {size} bytes but {header} says {n_frames} frames of "
                          f"{width}x{height} {dtype.name} ({expected} bytes)")
    # A longer file is the normal state of a recording whose writer was killed between flushes: the
    # header names the frames known to be complete, and those are the movie.
    array = (np.memmap(path, dtype=dtype, mode="r", shape=(n_frames, height, width))
             if n_frames else np.zeros((0, height, width), dtype))
    return MovieReader(path, fmt=fmt, shape=(height, width), n_frames=n_frames, dtype=dtype,
                       pixel_size_nm=pixel_size_nm, metadata=metadata, array=array)


def _open_picasso_raw(path: Path) -> MovieReader:
    import yaml

    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        raise SourceError(f"{path}: the Picasso sidecar {sidecar.name} is missing")
    try:
        docs = list(yaml.safe_load_all(sidecar.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SourceError(f"{sidecar}: not a readable YAML file ({e})") from e
    info = docs[0] if docs else None
    if not isinstance(info, dict):
        raise SourceError(f"{sidecar}: the first YAML document is not a mapping of keys to values")
    for key in ("Width", "Height", "Frames"):
        if key not in info:
            raise SourceError(f"{sidecar}: key '{key}' is missing")
        if isinstance(info[key], bool) or not isinstance(info[key], int):
            raise SourceError(f"{sidecar}: key '{key}' must be an integer, got {info[key]!r}")
    type_name = info.get("Data Type", "uint16")
    try:
        dtype = np.dtype(str(type_name))
    except TypeError:
        raise SourceError(f"{sidecar}: 'Data Type' {type_name!r} is not a numpy type name") from None
    order = str(info.get("Byte Order", "<"))
    if order not in ("<", ">", "="):
        raise SourceError(f"{sidecar}: 'Byte Order' must be '<' or '>', got {order!r}")
    dtype = dtype.newbyteorder(order)
    pixel_size_nm = None
    for key in _PICASSO_PIXEL_KEYS:
        if key in info:
            pixel_size_nm = _positive_float(info[key], f"{sidecar}: '{key}'")
            break
    metadata = {k: v for k, v in info.items() if k not in _PICASSO_KEYS and k not in _PICASSO_PIXEL_KEYS}
    return _open_raw_binary(path, fmt="picasso-raw", header=sidecar.name, dtype=dtype,
                            n_frames=info["Frames"], height=info["Height"], width=info["Width"],
                            pixel_size_nm=pixel_size_nm, metadata=metadata)


_INF_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


def _open_dax(path: Path) -> MovieReader:
    sidecar = path.with_suffix(".inf")
    if not sidecar.is_file():
        raise SourceError(f"{path}: the .dax header {sidecar.name} is missing")
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SourceError(f"{sidecar}: cannot read the header ({e})") from e
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            entries[key.strip()] = value.strip()
    lower = {k.lower(): v for k, v in entries.items()}
    if "frame dimensions" not in lower:
        raise SourceError(f"{sidecar}: line 'frame dimensions = W x H' is missing")
    m = _INF_SIZE.match(lower["frame dimensions"])
    if m is None:
        raise SourceError(f"{sidecar}: 'frame dimensions' must look like '256 x 256', "
                          f"got {lower['frame dimensions']!r}")
    # storm-analysis writes width first: "frame dimensions = <x size> x <y size>".
    width, height = int(m.group(1)), int(m.group(2))
    data_type = lower.get("data type", "16 bit integers (binary, little endian)").lower()
    if "16 bit" not in data_type:
        raise SourceError(f"{sidecar}: unsupported 'data type' {lower['data type']!r} "
                          "(only 16 bit integers are defined for .dax)")
    dtype = np.dtype(">u2" if "big endian" in data_type else "<u2")
    frame_bytes = width * height * 2
    if "number of frames" in lower:
        try:
            n_frames = int(lower["number of frames"])
        except ValueError:
            raise SourceError(f"{sidecar}: 'number of frames' must be an integer, "
                              f"got {lower['number of frames']!r}") from None
    else:
        # storm-analysis accepts headers without a count and takes it from the file size.
        size = path.stat().st_size
        if frame_bytes and size % frame_bytes:
            raise SourceError(f"{path}: file has {size} bytes, not a whole number of {width}x{height} "
                              f"frames, and {sidecar.name} gives no 'number of frames'")
        n_frames = size // frame_bytes if frame_bytes else 0
    return _open_raw_binary(path, fmt="dax", header=sidecar.name, dtype=dtype, n_frames=n_frames,
                            height=height, width=width, pixel_size_nm=None, metadata=entries)


# ---- TIFF -----------------------------------------------------------------------------------------


class _LogCapture(logging.Handler):
    """Collects tifffile's warnings while a file is parsed: they are how it reports damaged files."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._thread = threading.get_ident()  # files opened by other threads at the same time are not ours

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self.messages.append(record.getMessage())


_DAMAGE_WORDS = ("invalid page offset", "invalid value offset", "corrupted", "failed to reshape",
                 "failed to read", "out of range")


def _open_tiff(path: Path) -> MovieReader:
    import tifffile

    capture = _LogCapture()
    tiff_log = logging.getLogger("tifffile")
    tiff_log.addHandler(capture)
    # Its damage reports become part of our one-sentence error; they must not also reach the terminal.
    # The level too: another library (Picasso) may have silenced tifffile's logger process-wide.
    propagate, tiff_log.propagate = tiff_log.propagate, False
    level = tiff_log.level
    tiff_log.setLevel(logging.WARNING)
    tif = None
    try:
        try:
            tif = tifffile.TiffFile(path)
            n_pages = len(tif.pages)
            series = tif.series[0] if tif.series else None
            reader = _tiff_reader(path, tif, series, n_pages, capture.messages)
        except SourceError:
            raise
        except Exception as e:  # tifffile raises many types on damaged files
            raise SourceError(f"{path}: not a readable TIFF file ({type(e).__name__}: {e})") from e
    except BaseException:
        if tif is not None:
            tif.close()
        raise
    finally:
        tiff_log.removeHandler(capture)
        tiff_log.propagate = propagate
        tiff_log.setLevel(level)
    for message in capture.messages:
        log.warning("%s: %s", path, message)
    return reader


def _tiff_reader(path: Path, tif: Any, series: Any, n_pages: int, warnings: list[str]) -> MovieReader:
    size = path.stat().st_size
    first = tif.pages[0]
    envelope = _tiff_envelope(tif)
    state = envelope.get("state") if envelope else None
    if envelope is not None and state in ("o", "c") and n_pages == 1:
        return _recover_killed_tiff(path, tif, first, envelope, size)

    if series is None:
        raise SourceError(f"{path}: the TIFF file holds no image")
    axes = str(series.axes)
    shape = tuple(int(n) for n in series.shape)
    if "S" in axes or len(shape) < 2 or not axes.endswith("YX"):
        raise SourceError(f"{path}: frames have axes {axes!r} and shape {shape}; only single-channel "
                          "(grey-level) frames with Y and X as the last two axes are supported")
    height, width = shape[-2:]
    n_frames = math.prod(shape[:-2])
    dtype = np.dtype(series.dtype)
    fmt = "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff"

    declared, declared_by = _declared_frames(tif)
    damage = [m for m in warnings if any(w in m.lower() for w in _DAMAGE_WORDS)]
    if declared is not None and declared != n_frames and tif.is_imagej:
        # ImageJ itself reads only the first page's index and takes the other frames as contiguous
        # after it; do the same when tifffile lost the later pages, so a file ImageJ opens opens here.
        return _imagej_contiguous(path, tif, envelope, declared, size)
    if declared is not None and declared != n_frames:
        raise SourceError(f"{path}: its {declared_by} says {declared} frames of {width}x{height} but only "
                          f"{n_frames} can be read from the file's {size} bytes (truncated or damaged)")
    # A writer killed between linking a new page and writing it leaves the last page pointer at the end of
    # the file ("invalid page offset"): its envelope says so, and the complete pages are kept below.
    if declared is None and damage and state not in ("o", "c"):
        raise SourceError(f"{path}: the TIFF structure is damaged or the file is truncated "
                          f"({size} bytes; tifffile: {damage[0]})")

    file_dtype = dtype.newbyteorder(tif.byteorder)
    frame_bytes = height * width * dtype.itemsize
    dataoffset = series.dataoffset
    array = read_page = None
    if dataoffset is not None and n_frames > 0:
        end = dataoffset + n_frames * frame_bytes
        if end > size:
            raise SourceError(f"{path}: file has {size} bytes but its TIFF header describes {n_frames} "
                              f"frames of {width}x{height} {dtype.name} ending at byte {end} "
                              "(truncated)")
        array = np.memmap(path, dtype=file_dtype, mode="r", offset=dataoffset,
                          shape=(n_frames, height, width))
    else:
        pages = list(series.pages)
        if state in ("o", "c"):
            # A page-per-frame file of a killed writer: keep the leading pages whose data are complete.
            complete = 0
            for page in pages:
                if page is None or max((o + c for o, c in zip(page.dataoffsets, page.databytecounts)),
                                       default=0) > size:
                    break
                complete += 1
            if complete < len(pages):
                log.warning("%s: %d of %d pages complete (the writer was killed)", path, complete, len(pages))
            pages, n_frames = pages[:complete], complete
        if len(pages) != n_frames or any(p is None for p in pages):
            raise SourceError(f"{path}: {n_frames} frames are described but only "
                              f"{sum(p is not None for p in pages)} pages are present (truncated or damaged)")
        for i, page in enumerate(pages):
            # Multi-file OME datasets keep pages in companion files: check each against its own file.
            holder = page.parent.filehandle
            end = max((o + c for o, c in zip(page.dataoffsets, page.databytecounts)), default=0)
            if end > holder.size:
                raise SourceError(f"{holder.path}: file has {holder.size} bytes but frame {i} is stored "
                                  f"up to byte {end} (truncated)")

        def read_page(i: int) -> np.ndarray:
            return tif.asarray(series=0, key=i)

    pixel_size_nm, metadata = _tiff_calibration(tif, envelope)
    return MovieReader(path, fmt=fmt, shape=(height, width), n_frames=n_frames, dtype=dtype,
                       pixel_size_nm=pixel_size_nm, metadata=metadata, array=array, read_page=read_page,
                       on_close=tif.close)


def _imagej_contiguous(path: Path, tif: Any, envelope: dict[str, Any] | None, declared: int,
                       size: int) -> MovieReader:
    """An ImageJ stack read as ImageJ reads it: ``declared`` frames contiguous from the first page's data."""
    first = tif.pages[0]
    height, width = int(first.imagelength), int(first.imagewidth)
    dtype = np.dtype(first.dtype)
    if first.compression != 1 or first.samplesperpixel != 1 or not first.is_contiguous:
        raise SourceError(f"{path}: its ImageJ header says {declared} frames of {width}x{height} but only "
                          f"{len(tif.pages)} pages can be read from the file's {size} bytes "
                          "(truncated or damaged)")
    offset = int(first.dataoffsets[0])
    end = offset + declared * height * width * dtype.itemsize
    if end > size:
        raise SourceError(f"{path}: file has {size} bytes but its ImageJ header says {declared} frames of "
                          f"{width}x{height} {dtype.name} from byte {offset}, which needs {end} bytes "
                          "(truncated)")
    array = np.memmap(path, dtype=dtype.newbyteorder(tif.byteorder), mode="r", offset=offset,
                      shape=(declared, height, width))
    pixel_size_nm, metadata = _tiff_calibration(tif, envelope)
    return MovieReader(path, fmt="imagej-tiff", shape=(height, width), n_frames=declared, dtype=dtype,
                       pixel_size_nm=pixel_size_nm, metadata=metadata, array=array, on_close=tif.close)


def _recover_killed_tiff(path: Path, tif: Any, first: Any, envelope: dict[str, Any],
                         size: int) -> MovieReader:
    """Frames of a :class:`TiffMovieWriter` file whose process died before it wrote the page index.

    tifffile writes a contiguous series as the first page (IFD + data) followed by raw frame data, and
    adds the other pages' IFDs only when the writer is closed. The frames are therefore contiguous
    after the first page's data offset, and every complete frame in the file can be mapped.
    """
    height, width = int(first.imagelength), int(first.imagewidth)
    dtype = np.dtype(first.dtype)
    if first.compression != 1 or first.samplesperpixel != 1 or not first.is_contiguous:
        raise SourceError(f"{path}: the file of a killed writer cannot be recovered (its first page is "
                          "compressed or not contiguous)")
    offset = int(first.dataoffsets[0])
    frame_bytes = height * width * dtype.itemsize
    n_complete = (size - offset) // frame_bytes
    flushed = int(envelope.get("flushed_frames", 0))
    # After "closing" every frame was flushed and the bytes past them may be page index, not frames.
    n_frames = min(n_complete, flushed) if envelope.get("state") == "c" else n_complete
    log.warning("%s: recovered %d frames from a writer that did not finish (%d flushed)",
                path, n_frames, flushed)
    array = np.memmap(path, dtype=dtype.newbyteorder(tif.byteorder), mode="r", offset=offset,
                      shape=(n_frames, height, width)) if n_frames else np.zeros((0, height, width), dtype)
    pixel_size_nm, metadata = _tiff_calibration(tif, envelope)
    return MovieReader(path, fmt="tiff", shape=(height, width), n_frames=n_frames, dtype=dtype,
                       pixel_size_nm=pixel_size_nm, metadata=metadata, array=array, on_close=tif.close,
                       recovered=True)


def _tiff_envelope(tif: Any) -> dict[str, Any] | None:
    """The rtsmlm JSON envelope from the private tag or the ImageJ ``Info`` property, if any."""
    candidates = []
    tag = tif.pages[0].tags.get(RTSMLM_TIFF_TAG)
    if tag is not None:
        candidates.append(tag.value)
    if tif.is_imagej and tif.imagej_metadata:
        candidates.append(tif.imagej_metadata.get("Info"))
    for text in candidates:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str):
            continue
        try:
            value = json.loads(text.strip().rstrip("\x00"))
        except ValueError:
            continue
        if isinstance(value, dict) and _ENVELOPE_KEY in value:
            return value
    return None


def _declared_frames(tif: Any) -> tuple[int | None, str]:
    """The frame count the file's own metadata declares, to detect truncation; None when it declares none."""
    if tif.is_imagej and tif.imagej_metadata and "images" in tif.imagej_metadata:
        return int(tif.imagej_metadata["images"]), "ImageJ header"
    if tif.is_shaped and tif.shaped_metadata:
        shape = tif.shaped_metadata[0].get("shape")
        if isinstance(shape, list) and len(shape) >= 2:
            return math.prod(int(n) for n in shape[:-2]), "tifffile header"
    if tif.is_ome and tif.ome_metadata:
        pixels = _ome_pixels(tif.ome_metadata)
        if pixels is not None:
            return math.prod(int(pixels.get(k, 1)) for k in ("SizeT", "SizeZ", "SizeC")), "OME-XML"
    return None, ""


def _ome_pixels(xml: str) -> ElementTree.Element | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    return next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def _length_nm(value: Any, unit: str) -> float | None:
    """``value`` in ``unit`` converted to nm, or None when it is not a plausible pixel size."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    scale = _UNIT_NM.get(unit.strip().lower().replace("\u00b5", "µ").replace("\\u00b5", "µ"))
    if scale is None or not math.isfinite(v) or v <= 0:
        return None
    nm = v * scale
    return nm if _PLAUSIBLE_PIXEL_NM[0] <= nm <= _PLAUSIBLE_PIXEL_NM[1] else None


def _resolution_nm(page: Any, unit: str) -> float | None:
    """Pixel size from the XResolution tag (pixels per ``unit``)."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if not num or not den:
        return None
    return _length_nm(den / num, unit)


def _tiff_calibration(tif: Any, envelope: dict[str, Any] | None) -> tuple[float | None, dict[str, Any]]:
    """Pixel size (nm) and metadata of a TIFF, from the most specific source the file has."""
    page = tif.pages[0]
    if envelope is not None:
        px = envelope.get("pixel_size_nm")
        metadata = envelope.get("metadata") or {}
        return (float(px) if px is not None else None), dict(metadata)
    metadata: dict[str, Any] = {}
    pixel_size_nm = None
    if tif.is_ome and tif.ome_metadata:
        pixels = _ome_pixels(tif.ome_metadata)
        if pixels is not None:
            pixel_size_nm = _length_nm(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
            metadata["ome"] = _ome_summary(tif.ome_metadata)
            plane = metadata["ome"].get("Plane", {})
            if "ExposureTime" in plane:
                unit = plane.get("ExposureTimeUnit", "s")
                factor = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "us": 1e-3}.get(unit)
                if factor is not None:
                    metadata["exposure_ms"] = float(plane["ExposureTime"]) * factor
    if tif.is_imagej and tif.imagej_metadata:
        ij = dict(tif.imagej_metadata)
        if pixel_size_nm is None and "unit" in ij:
            pixel_size_nm = _resolution_nm(page, str(ij["unit"]))
        structural = ("ImageJ", "images", "frames", "slices", "channels", "hyperstack", "mode", "loop",
                      "min", "max", "Ranges", "LUTs")
        metadata["imagej"] = {k: v for k, v in ij.items() if k not in structural and _is_plain(v)}
    if tif.is_micromanager and tif.micromanager_metadata:
        summary = tif.micromanager_metadata.get("Summary") or {}
        if pixel_size_nm is None and summary.get("PixelSize_um"):
            pixel_size_nm = _length_nm(summary["PixelSize_um"], "um")
        metadata["micromanager"] = {k: v for k, v in summary.items() if _is_plain(v)}
    if pixel_size_nm is None:
        unit_tag = page.tags.get("ResolutionUnit")
        if unit_tag is not None and int(unit_tag.value) == 3:  # centimetre; inches are mostly 72 dpi
            pixel_size_nm = _resolution_nm(page, "cm")
    return pixel_size_nm, metadata


def _ome_summary(xml: str) -> dict[str, dict[str, str]]:
    """Attributes of the first Pixels, Plane, Detector and DetectorSettings elements."""
    out: dict[str, dict[str, str]] = {}
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return out
    for el in root.iter():
        name = el.tag.rsplit("}", 1)[-1]
        if name in ("Pixels", "Plane", "Detector", "DetectorSettings") and name not in out:
            out[name] = dict(el.attrib)
    return out


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


# --------------------------------------------------------------------------------------------------
# Writers


def _jsonable(metadata: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """``metadata`` as plain JSON types (numpy scalars and arrays converted), or a clear error."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"{where}: metadata must be a dict, got {type(metadata).__name__}")

    try:
        return to_jsonable(metadata, strict=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where}: metadata cannot be stored ({e})") from None


def _pixel_size(value: float | None, where: str) -> float | None:
    if value is None:
        return None
    return _positive_float(value, f"{where}: pixel_size_nm", ValueError)


def _positive_float(value: Any, what: str, error: type[Exception] = SourceError) -> float:
    """``value`` as a finite positive float; ``error`` (naming ``what``) otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise error(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise error(f"{what} must be a positive number, got {value!r}")
    return v


_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def write_tiff_movie(path: str | os.PathLike[str], frames: np.ndarray | Sequence[np.ndarray],
                     pixel_size_nm: float | None, metadata: dict[str, Any] | None = None, *,
                     overwrite: bool = False) -> Path:
    """Write a finished movie as a multi-page ImageJ TIFF (a T stack) and return its path.

    ``frames`` is an (n, height, width) array, one (height, width) frame, or any sized sequence of
    frames (a :class:`MovieReader` too; frames are streamed, not stacked in memory). Fiji opens the file
    calibrated: XResolution/YResolution in pixels per µm and ``unit=um`` in the ImageJ description.
    ``pixel_size_nm`` and ``metadata`` (JSON-serialisable) are also stored as a JSON envelope in the
    ImageJ ``Info`` property, which :func:`open_movie` reads back exactly. ImageJ TIFFs hold uint8,
    uint16 or float32 pixels.
    """
    import tifffile

    p = Path(path)
    check_new_file(p, overwrite)
    px = _pixel_size(pixel_size_nm, str(p))
    md = _jsonable(metadata, str(p))
    if isinstance(frames, np.ndarray):
        data = frames[np.newaxis] if frames.ndim == 2 else frames
        if data.ndim != 3:
            raise ValueError(f"{p}: frames must be (n, height, width), got an array of shape {frames.shape}")
        n, shape, dtype = data.shape[0], data.shape[1:], data.dtype
        source: Any = data
    else:
        n = len(frames)
        if n == 0:
            raise ValueError(f"{p}: cannot write a movie of 0 frames")
        frame_iter = iter(frames)
        head = np.asarray(next(frame_iter))
        shape, dtype = head.shape, head.dtype
        if head.ndim != 2:
            raise ValueError(f"{p}: frame 0 has shape {head.shape}, expected (height, width)")

        def stream() -> Iterator[np.ndarray]:
            yield head
            for i, frame in enumerate(frame_iter, start=1):
                a = np.asarray(frame)
                if a.shape != shape or a.dtype != dtype:
                    raise ValueError(f"{p}: frame {i} is {a.shape} {a.dtype}, frame 0 is {shape} {dtype}")
                yield a

        source = stream()
    if n == 0:
        raise ValueError(f"{p}: cannot write a movie of 0 frames")
    if np.dtype(dtype).newbyteorder("=") not in _IMAGEJ_DTYPES:
        raise ValueError(f"{p}: ImageJ TIFFs hold uint8, uint16 or float32 pixels, got {np.dtype(dtype).name}"
                         " (convert the frames first)")
    envelope = {_ENVELOPE_KEY: 1, "pixel_size_nm": px, "metadata": md}
    ij_metadata: dict[str, Any] = {"axes": "TYX", "Info": json.dumps(envelope)}
    kwargs: dict[str, Any] = {}
    if px is not None:
        per_um = 1000.0 / px
        kwargs["resolution"] = (per_um, per_um)
        ij_metadata["unit"] = "um"
    tifffile.imwrite(p, source, shape=(n, *shape), dtype=dtype, imagej=True, metadata=ij_metadata,
                     photometric="minisblack", **kwargs)
    return p


@runtime_checkable
class MovieWriter(Protocol):
    """A streaming movie writer, fed by the raw recorder of a live run (one thread).

    Frames are appended in acquisition order; what was appended before the last :meth:`flush` survives
    the process being killed.
    """

    @property
    def frames_written(self) -> int:
        """Frames appended so far."""

    def append(self, frame: np.ndarray) -> None:
        """Add the next frame; called once per frame. All frames share the first frame's shape and dtype."""

    def flush(self) -> None:
        """Make every appended frame readable after a crash; called periodically (output.flush_interval_s)."""

    def close(self) -> None:
        """Flush and finish the file; called once at the end of the run (idempotent)."""


class _StreamingWriter:
    """Shape/dtype bookkeeping shared by the streaming writers."""

    def __init__(self, path: str | os.PathLike[str], pixel_size_nm: float | None,
                 metadata: dict[str, Any] | None, overwrite: bool, fsync: bool) -> None:
        self.path = Path(path)
        self.pixel_size_nm = _pixel_size(pixel_size_nm, str(self.path))
        self.metadata = _jsonable(metadata, str(self.path))
        self._overwrite = overwrite
        self._fsync = fsync
        self._shape: tuple[int, int] | None = None
        self._dtype: np.dtype | None = None
        self._n = 0
        self._n_flushed = 0
        self._closed = False
        check_new_file(self.path, overwrite)

    @property
    def frames_written(self) -> int:
        return self._n

    @property
    def frames_flushed(self) -> int:
        """Frames guaranteed to be readable if the process dies now."""
        return self._n_flushed

    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        a = np.asarray(frame)
        if a.ndim != 2:
            raise ValueError(f"{self.path}: frame {self._n} has shape {a.shape}, expected (height, width)")
        if self._shape is None:
            self._shape, self._dtype = (int(a.shape[0]), int(a.shape[1])), a.dtype.newbyteorder("=")
        elif a.shape != self._shape or a.dtype.newbyteorder("=") != self._dtype:
            raise ValueError(f"{self.path}: frame {self._n} is {a.shape} {a.dtype.name} but the movie is "
                             f"{self._shape} {self._dtype.name}")
        return a

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawMovieWriter(_StreamingWriter):
    """Picasso ``.raw`` (little-endian frames back to back) and its ``.yaml`` sidecar, written as frames come.

    :meth:`flush` pushes the frames to the operating system, then atomically replaces the sidecar with
    the current frame count, so after a kill the movie opens with every flushed frame (the ``.raw`` may
    hold more bytes; readers go by the sidecar). ``fsync=True`` also survives power loss, at a cost.
    ``metadata`` keys are stored at the top level of the YAML document.
    """

    def __init__(self, path: str | os.PathLike[str], *, pixel_size_nm: float | None = None,
                 metadata: dict[str, Any] | None = None, overwrite: bool = False,
                 fsync: bool = False) -> None:
        super().__init__(path, pixel_size_nm, metadata, overwrite, fsync)
        self.sidecar = self.path.with_suffix(".yaml")
        if self.sidecar == self.path:
            raise ValueError(f"{self.path}: a .raw movie cannot be named .yaml")
        clash = [k for k in self.metadata if k in _PICASSO_KEYS or k in _PICASSO_PIXEL_KEYS]
        if clash:
            raise ValueError(f"{self.path}: metadata key {clash[0]!r} is reserved by the Picasso header")
        check_new_file(self.sidecar, overwrite)
        self._fh = open(self.path, "wb")

    def append(self, frame: np.ndarray) -> None:
        a = self._check_frame(frame)
        first = self._n == 0
        self._fh.write(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")))
        self._n += 1
        if first:
            self._write_sidecar(0)  # the movie is readable (empty) from the first frame on

    def flush(self) -> None:
        if self._closed:
            return
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())
        if self._shape is not None:
            self._write_sidecar(self._n)
        self._n_flushed = self._n

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._fh.close()
        self._closed = True

    def _write_sidecar(self, n_frames: int) -> None:
        import yaml

        assert self._shape is not None and self._dtype is not None
        info: dict[str, Any] = {"Byte Order": "<", "Data Type": self._dtype.name, "Frames": n_frames,
                                "Height": self._shape[0], "Width": self._shape[1]}
        if self.pixel_size_nm is not None:
            info["Pixelsize"] = self.pixel_size_nm
        info.update(self.metadata)
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            yaml.safe_dump(info, f, sort_keys=False)
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.sidecar)  # atomic: a reader sees the old or the new header, never half


class TiffMovieWriter(_StreamingWriter):
    """BigTIFF, one page per frame, each page with its own IFD written with the frame (tifffile
    ``TiffWriter``, one ``write`` per frame, not a contiguous series).

    Because every page's IFD is on disk as soon as the frame is, a file whose writer was killed opens as
    one page per flushed frame in any TIFF reader (tifffile, Fiji/ImageJ, napari), not only in rtsmlm.
    Pixel size goes into the resolution tags (pixels per cm) and, with ``metadata``, into a JSON
    envelope in the private tag :data:`RTSMLM_TIFF_TAG` of the first page; the envelope records the
    writer state and the flushed frame count, so :func:`open_movie` drops a last page that the kill cut
    short. Files with no frame appended are not created.
    """

    _STATE_WIDTH = 20

    def __init__(self, path: str | os.PathLike[str], *, pixel_size_nm: float | None = None,
                 metadata: dict[str, Any] | None = None, overwrite: bool = False,
                 fsync: bool = False) -> None:
        super().__init__(path, pixel_size_nm, metadata, overwrite, fsync)
        self._tif: Any = None
        self._kwargs: dict[str, Any] = {}
        self._tail_offset = -1
        head = {_ENVELOPE_KEY: 1, "pixel_size_nm": self.pixel_size_nm, "metadata": self.metadata}
        self._envelope_head = json.dumps(head)[:-1]

    def _tail(self, state: str, n: int) -> str:
        # Fixed width, so it can be rewritten in place: the state letter and a space-padded count.
        return f', "state": "{state}", "flushed_frames": {n:<{self._STATE_WIDTH}d}}}'

    def append(self, frame: np.ndarray) -> None:
        import tifffile

        a = self._check_frame(frame)
        if self._tif is None:
            envelope = self._envelope_head + self._tail("o", 0)
            kwargs: dict[str, Any] = {}
            if self.pixel_size_nm is not None:
                per_cm = 1e7 / self.pixel_size_nm
                kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            self._tif = tifffile.TiffWriter(self.path, bigtiff=True, ome=False)
            self._kwargs = kwargs
            self._tif.write(a, contiguous=False, photometric="minisblack", metadata=None,
                            extratags=[(RTSMLM_TIFF_TAG, "s", 0, envelope, True)], **kwargs)
            self._tif.filehandle.flush()
            head = self.path.read_bytes()
            found = head.find(envelope.encode())
            if found < 0:  # pragma: no cover - tifffile always stores ASCII tags verbatim
                raise RuntimeError(f"{self.path}: cannot locate the metadata tag just written")
            self._tail_offset = found + len(self._envelope_head)
        else:
            self._tif.write(a, contiguous=False, photometric="minisblack", metadata=None, **self._kwargs)
        self._n += 1

    def _patch_state(self, state: str) -> None:
        fh = self._tif.filehandle
        end = fh.tell()
        fh.seek(self._tail_offset)
        fh.write(self._tail(state, self._n).encode())
        fh.seek(end)
        fh.flush()

    def flush(self) -> None:
        if self._closed or self._tif is None:
            return
        self._tif.filehandle.flush()  # frames first, then the count that vouches for them
        self._patch_state("o")
        if self._fsync:
            os.fsync(self._tif.filehandle.fileno())
        self._n_flushed = self._n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tif is None:
            return
        self._tif.filehandle.flush()
        self._patch_state("c")  # from here on, bytes after the frames are page index, not frames
        self._n_flushed = self._n
        self._tif.close()
        with open(self.path, "r+b") as f:
            f.seek(self._tail_offset)
            f.write(self._tail("d", self._n).encode())
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())


def open_movie_writer(path: str | os.PathLike[str], *, pixel_size_nm: float | None = None,
                      metadata: dict[str, Any] | None = None, overwrite: bool = False,
                      fsync: bool = False) -> MovieWriter:
    """The streaming writer for ``path``'s extension: ``.raw`` → Picasso, ``.tif``/``.tiff`` → BigTIFF."""
    suffix = Path(path).suffix.lower()
    if suffix == ".raw":
        return RawMovieWriter(path, pixel_size_nm=pixel_size_nm, metadata=metadata,
                              overwrite=overwrite, fsync=fsync)
    if suffix in TIFF_SUFFIXES:
        return TiffMovieWriter(path, pixel_size_nm=pixel_size_nm, metadata=metadata,
                               overwrite=overwrite, fsync=fsync)
    raise ValueError(f"{path}: no movie writer for {suffix!r} (use .raw or .tif)")
