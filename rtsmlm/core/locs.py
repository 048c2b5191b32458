"""The localization table schema and the append-only localization stream.

Units and origin follow DESIGN.md: nanometres, origin at the top-left corner of the top-left pixel,
x along columns, 0-based frames. Columns are added, never renamed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

LOC_DTYPE = np.dtype(
    [
        ("frame", "<i8"),
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("photons", "<f4"),
        ("bg", "<f4"),
        ("sigma_x", "<f4"),
        ("sigma_y", "<f4"),
        ("sigma_z", "<f4"),
        ("sigma_photons", "<f4"),
        ("p", "<f4"),
    ]
)
"""One localization. ``bg`` is photons per pixel; ``sigma_*`` are the network's predicted uncertainties
(nm for positions, photons for ``sigma_photons``); ``p`` is the detection probability."""

DRIFT_COLUMNS = ("x_dc", "y_dc")
LOC_DTYPE_DC = np.dtype(LOC_DTYPE.descr + [("x_dc", "<f4"), ("y_dc", "<f4")])
"""The table of a drift-corrected run: the raw columns plus drift-corrected ``x_dc``, ``y_dc`` (nm)."""
LOC_DTYPE_DC_Z = np.dtype(LOC_DTYPE_DC.descr + [("z_dc", "<f4")])
"""The table of a drift-corrected 3D run whose axial (focus) drift was estimated: also ``z_dc`` (nm)."""
TABLE_DTYPES = (LOC_DTYPE, LOC_DTYPE_DC, LOC_DTYPE_DC_Z)


def table_dtype(names: tuple[str, ...] | list[str] | None) -> np.dtype:
    """Which of :data:`TABLE_DTYPES` a table with these columns is (the richest whose extra columns it has)."""
    names = set(names or ())
    if all(c in names for c in DRIFT_COLUMNS):
        return LOC_DTYPE_DC_Z if "z_dc" in names else LOC_DTYPE_DC
    return LOC_DTYPE


def empty(n: int = 0, dtype: np.dtype = LOC_DTYPE) -> np.ndarray:
    """A zero-filled localization table with ``n`` rows."""
    return np.zeros(n, dtype=dtype)


def concat(tables: list[np.ndarray], dtype: np.dtype = LOC_DTYPE) -> np.ndarray:
    """Concatenate localization tables (an empty list gives an empty table)."""
    if not tables:
        return empty(0, dtype)
    return np.concatenate(tables)


def in_field(locs: np.ndarray, extent_nm: tuple[float, float], margin_nm: float = 0.0) -> np.ndarray:
    """Which localizations lie at least ``margin_nm`` inside a field of ``extent_nm`` (height, width), the
    DESIGN.md frame: x, y from the top-left corner of the top-left pixel."""
    h, w = extent_nm
    x, y = locs["x"], locs["y"]
    return (x >= margin_nm) & (x < w - margin_nm) & (y >= margin_nm) & (y < h - margin_nm)


def with_drift_columns(locs: np.ndarray, z: bool = False) -> np.ndarray:
    """Return ``locs`` with ``x_dc``/``y_dc`` columns (and ``z_dc`` when ``z``), initialised to the raw
    coordinates."""
    want = LOC_DTYPE_DC_Z if z or "z_dc" in (locs.dtype.names or ()) else LOC_DTYPE_DC
    if locs.dtype == want:
        return locs
    out = np.empty(len(locs), dtype=want)
    for name in want.names:
        raw = name[:-3] if name.endswith("_dc") else name
        out[name] = locs[name] if name in (locs.dtype.names or ()) else locs[raw]
    return out


@dataclass(frozen=True)
class LocBatch:
    """Localizations of a contiguous range of frames, as appended by the localizer.

    ``first_frame``..``last_frame`` (inclusive) are the frames this batch covers, including frames with no
    localization, so listeners can tell "analysed, nothing found" from "not analysed yet". ``late``
    batches come after the acquisition, from frames the live localizer skipped or lost and analysed
    from the raw recording (catch-up): their frames are older than those of earlier batches.
    """

    seq: int
    first_frame: int
    last_frame: int
    locs: np.ndarray
    late: bool = False


class LocalizationStream:
    """Append-only, thread-safe store of localization batches.

    One writer (the localizer) appends; any number of readers take cheap snapshots or iterate batches
    from their own position. Batches are never mutated after they are appended, so readers can hold
    them without copying.

    ``retain=False`` keeps memory flat over an unbounded run: readers registered with
    :meth:`add_reader` report with :meth:`consumed` how far they got, and batches every registered reader
    has consumed are dropped (:meth:`snapshot` then holds only what is still retained).
    """

    def __init__(self, *, retain: bool = True) -> None:
        self._batches: list[LocBatch] = []
        self._offset = 0  # sequence number of self._batches[0]
        self._n_locs = 0
        self._closed = False
        self._retain = retain
        self._positions: dict[str, int] = {}
        self._cond = threading.Condition()

    def add_reader(self, name: str) -> None:
        """Register a reader whose :meth:`consumed` reports decide what may be dropped (retain=False)."""
        with self._cond:
            self._positions[name] = self._offset

    def remove_reader(self, name: str) -> None:
        """Reader ``name`` takes no more batches (it failed or was abandoned): keep none for it."""
        self.consumed(name, 1 << 62)

    def consumed(self, name: str, seq: int) -> None:
        """Reader ``name`` is done with every batch below sequence number ``seq``."""
        with self._cond:
            self._positions[name] = max(self._positions.get(name, 0), seq)
            if self._retain or not self._positions:
                return
            drop = min(self._positions.values()) - self._offset
            if drop > 0:
                del self._batches[:drop]
                self._offset += drop

    def append(self, first_frame: int, last_frame: int, locs: np.ndarray, *, late: bool = False) -> LocBatch:
        """Append the localizations found in frames ``first_frame..last_frame`` (``late``: see LocBatch)."""
        if locs.dtype != LOC_DTYPE:
            raise TypeError(f"localization batch has dtype {locs.dtype}, expected rtsmlm.core.locs.LOC_DTYPE")
        with self._cond:
            if self._closed:
                raise RuntimeError("the localization stream is closed")
            batch = LocBatch(self._offset + len(self._batches), first_frame, last_frame, locs, late)
            self._batches.append(batch)
            self._n_locs += len(locs)
            self._cond.notify_all()
        return batch

    def close(self) -> None:
        """Mark the end of the run; readers waiting in :meth:`batches_since` return."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def n_batches(self) -> int:
        return self._offset + len(self._batches)

    @property
    def n_locs(self) -> int:
        return self._n_locs

    def batches_since(self, seq: int, timeout: float | None = None) -> list[LocBatch]:
        """Batches with sequence number ≥ ``seq``; waits up to ``timeout`` s if there are none yet.

        Returns an empty list on timeout or when the stream is closed with nothing new.
        """
        with self._cond:
            if seq >= self.n_batches and not self._closed and timeout != 0:
                self._cond.wait_for(lambda: seq < self.n_batches or self._closed, timeout)
            if seq < self._offset:
                raise ValueError(f"batches before {self._offset} were dropped (asked from {seq}): register "
                                 "the reader with add_reader before the first batch")
            return self._batches[seq - self._offset:]

    def snapshot(self) -> np.ndarray:
        """All localizations so far, as one table (a copy)."""
        with self._cond:
            batches = list(self._batches)
        return concat([b.locs for b in batches])


class LocSpill:
    """Append-only localization table on an anonymous temporary file (gone when closed or when the
    process dies), with the newest ``tail_locs`` rows also in memory."""

    def __init__(self, tail_locs: int = 200_000, dtype: np.dtype = LOC_DTYPE) -> None:
        import tempfile

        self.dtype = np.dtype(dtype)
        self._fh = tempfile.TemporaryFile(prefix="rtsmlm-locs-")
        self.n = 0
        self._tail: list[np.ndarray] = []
        self._tail_n = 0
        self._tail_locs = tail_locs

    def append(self, locs: np.ndarray) -> None:
        self._fh.write(np.ascontiguousarray(locs, dtype=self.dtype).tobytes())
        self.n += len(locs)
        self._tail.append(locs)
        self._tail_n += len(locs)
        while len(self._tail) > 1 and self._tail_n - len(self._tail[0]) >= self._tail_locs:
            self._tail_n -= len(self._tail.pop(0))

    def all(self) -> np.ndarray:
        """Every row so far (read back from the file: a transient copy)."""
        self._fh.flush()
        self._fh.seek(0)
        out = np.fromfile(self._fh, dtype=self.dtype, count=self.n)
        self._fh.seek(0, 2)
        return out

    def close(self) -> None:
        self._fh.close()

    def frames_between(self, lo: int, hi: int, *, skip_newest: bool = False) -> np.ndarray:
        """Rows of frames lo..hi of every batch (but the newest with ``skip_newest``); from memory when the
        in-memory tail reaches back far enough, else from the file."""
        batches = self._tail[:-1] if skip_newest else self._tail
        first_in_tail = next((int(b["frame"][0]) for b in batches if len(b)), None)
        # The file only when rows older than the in-memory tail exist and may be wanted.
        if self._tail_n < self.n and (first_in_tail is None or first_in_tail > lo):
            table = self.all()
            if skip_newest and self._tail:
                table = table[: len(table) - len(self._tail[-1])]
            return table[(table["frame"] >= lo) & (table["frame"] <= hi)]
        return concat([b for b in batches if len(b) and b["frame"][-1] >= lo and b["frame"][0] <= hi])
