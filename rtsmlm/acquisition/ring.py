"""The frame ring buffer between the camera and everything that consumes raw frames.

One writer (the producer thread pulling frames from a :class:`~rtsmlm.acquisition.source.Source`) copies each
frame into the next slot of a preallocated ``N × H × W`` array and returns at once: it never waits for a
reader, because a camera that waits drops frames in hardware where nobody can count them. Several
independent readers (the localizer, the raw recorder, ...) each keep their own cursor. A reader that falls
more than ``N`` frames behind loses the oldest ones; the buffer records exactly which source frame indices
each reader lost, so the run summary can say so (DESIGN.md: no silent loss).

Concurrency model
-----------------
* Bookkeeping (counters, cursors, slot sequence numbers, per-slot index and timestamp) changes only under
  one :class:`threading.Condition`; the pixel copies in and out happen *outside* it, so a slow copy by a
  reader never holds up the writer and vice versa.
* Each slot carries a sequence number, seqlock style: write number ``w`` marks its slot ``2w + 1`` (being
  written) before copying and ``2w + 2`` (stable) after. A reader that claimed write ``r`` copies the
  pixels and then checks that the slot still reads ``2r + 2``; if the writer started overwriting it
  meanwhile the copy may be torn, so the frame is counted as lost and never returned.
* When the writer is about to overwrite write ``w - N``, every reader whose cursor still points at it loses
  that frame: the writer appends the evicted frame's source index to the reader's loss record and moves
  the cursor on. A reader that already claimed the frame (is copying it) is not touched; it finds the
  torn sequence number itself, so each lost frame is counted exactly once.
* A reader has two positions: its *cursor* (next write not yet claimed) and its *release* mark (every
  write below it has been copied out). A claimed slot stays busy until the copy is done; only then does
  the release mark move and :meth:`RingBuffer.wait_for_space` see the slot as free. A producer that waits
  (a file replay) therefore never overwrites a slot a reader is still copying, whatever the pace, frame
  size or batch size; a live camera never waits, and a frame it overwrites mid-copy is counted as lost.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from rtsmlm.acquisition.source import Frame, Source

__all__ = ["ReaderStats", "RingBuffer", "RingClosed", "RingReader", "RingStats"]


class RingClosed(RuntimeError):
    """A frame was written to a ring buffer after :meth:`RingBuffer.close`."""


@dataclass(frozen=True)
class ReaderStats:
    """One reader's position: frames waiting for it, frames it got and frames it lost."""

    name: str
    fill: int
    fill_fraction: float
    n_read: int
    n_lost: int


@dataclass(frozen=True)
class RingStats:
    """A consistent snapshot of the ring buffer's counters."""

    capacity: int
    n_written: int
    closed: bool
    readers: tuple[ReaderStats, ...]


class RingBuffer:
    """Preallocated ring of ``n_slots`` frames of ``shape`` pixels, one writer, many readers.

    The writer calls :meth:`write` (or :meth:`write_frame`) for every frame and :meth:`close` at the end
    of the stream. Consumers call :meth:`add_reader` once each, before the writer starts if they must see
    every frame, and then :meth:`RingReader.read` / :meth:`RingReader.read_many` from their own thread.
    """

    def __init__(self, n_slots: int, shape: tuple[int, int], dtype: np.dtype | type = np.uint16) -> None:
        if int(n_slots) < 2:
            raise ValueError(f"ring buffer needs at least 2 slots, got n_slots={n_slots!r}")
        height, width = (int(s) for s in shape)
        if height < 1 or width < 1:
            raise ValueError(f"ring buffer frame shape must be positive, got shape={tuple(shape)!r}")
        self._n = int(n_slots)
        self._shape = (height, width)
        self._dtype = np.dtype(dtype)
        self._data = np.zeros((self._n, height, width), dtype=self._dtype)
        self._index = np.full(self._n, -1, dtype=np.int64)
        self._timestamp = np.zeros(self._n, dtype=np.float64)
        # Slot sequence numbers: 0 never written, 2w+1 while write w is copied in, 2w+2 once it is stable.
        self._seq = np.zeros(self._n, dtype=np.int64)
        self._n_written = 0  # writes published (readable)
        self._n_started = 0  # writes begun; exceeds _n_written by one while a copy-in is under way
        self._closed = False
        self._readers: dict[str, RingReader] = {}
        self._reader_tuple: tuple[RingReader, ...] = ()  # what the writer loops over, rebuilt on change
        self._cond = threading.Condition()

    @classmethod
    def for_source(cls, source: Source, n_slots: int) -> RingBuffer:
        """A ring sized for the frames ``source`` delivers (its shape and pixel type)."""
        return cls(n_slots, source.shape, source.dtype)

    # -- properties ------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Number of slots ``N``: how far a reader may fall behind before it loses frames."""
        return self._n

    @property
    def shape(self) -> tuple[int, int]:
        """Frame height and width in pixels."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """Pixel type of the stored frames."""
        return self._dtype

    @property
    def nbytes(self) -> int:
        """Memory held by the preallocated pixel slots."""
        return int(self._data.nbytes)

    @property
    def n_written(self) -> int:
        """Frames written so far (all of them, including those no reader kept)."""
        return self._n_written

    @property
    def closed(self) -> bool:
        """True once the writer called :meth:`close`."""
        return self._closed

    # -- readers ---------------------------------------------------------------------------------------

    def add_reader(self, name: str, *, from_oldest: bool = False) -> RingReader:
        """Attach a new independent reader called ``name``.

        It starts at the next frame written, or with ``from_oldest`` at the oldest frame still held.
        """
        with self._cond:
            if name in self._readers:
                raise ValueError(f"ring buffer already has a reader named {name!r}")
            start = max(0, self._n_started - self._n) if from_oldest else self._n_written
            reader = RingReader(self, name, start)
            self._readers[name] = reader
            self._reader_tuple = tuple(self._readers.values())
        return reader

    def remove_reader(self, reader: RingReader | str) -> None:
        """Detach a reader so the writer stops keeping its loss record; unknown names are an error."""
        name = reader if isinstance(reader, str) else reader.name
        with self._cond:
            if name not in self._readers:
                raise KeyError(f"ring buffer has no reader named {name!r}")
            del self._readers[name]
            self._reader_tuple = tuple(self._readers.values())

    @property
    def readers(self) -> tuple[RingReader, ...]:
        """The attached readers, in the order they were added."""
        return self._reader_tuple

    # -- writer ----------------------------------------------------------------------------------------

    def write(self, data: np.ndarray, index: int, timestamp: float) -> None:
        """Copy one frame into the next slot and publish it; never waits for a reader.

        ``index`` is the source's 0-based frame index (gaps allowed), ``timestamp`` its arrival time.
        Only one thread may write.
        """
        if data.shape != self._shape:
            raise ValueError(f"frame {index} has shape {data.shape}, the ring buffer holds {self._shape}")
        if data.dtype != self._dtype and not np.can_cast(data.dtype, self._dtype, "safe"):
            raise TypeError(f"frame {index} has pixel type {data.dtype}, which does not fit the ring "
                            f"buffer's {self._dtype} without loss")
        with self._cond:
            if self._closed:
                raise RingClosed(f"cannot write frame {index}: the ring buffer is closed")
            w = self._n_started
            slot = w % self._n
            evicted = w - self._n
            if evicted >= 0:
                # Readers still pointing at the frame about to be overwritten lose it. A reader cursor is
                # never below `evicted` (it was moved on at the previous eviction), so one check suffices.
                old_index = int(self._index[slot])
                for reader in self._reader_tuple:
                    if reader._cursor == evicted:
                        reader._record_loss(old_index)
                        reader._cursor = evicted + 1
                        reader._released = max(reader._released, evicted + 1)
            self._seq[slot] = 2 * w + 1
            self._n_started = w + 1
        # The copy runs without the lock: readers keep claiming and validating other slots meanwhile.
        np.copyto(self._data[slot], data, casting="safe")
        with self._cond:
            self._index[slot] = index
            self._timestamp[slot] = timestamp
            self._seq[slot] = 2 * w + 2
            self._n_written = w + 1
            self._cond.notify_all()

    def wait_for_space(self, timeout: float | None = None) -> bool:
        """Wait until the next :meth:`write` would overwrite no frame that a reader has not claimed.

        Only for producers that may wait — a recorded file replayed as fast as possible must lose
        nothing; a live camera never calls this. Returns False on timeout; True at once when closed.
        """
        def room() -> bool:
            evicted = self._n_started - self._n
            # _released, not _cursor: a slot claimed by a reader is free only once its copy is done.
            return self._closed or all(r._released > evicted for r in self._reader_tuple)

        with self._cond:
            return self._cond.wait_for(room, timeout)

    def write_frame(self, frame: Frame) -> None:
        """:meth:`write` for a :class:`~rtsmlm.acquisition.source.Frame` from a source."""
        self.write(frame.data, frame.index, frame.timestamp)

    def close(self) -> None:
        """Mark the end of the stream: readers drain what is left, then get ``None``/an empty list."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- display ---------------------------------------------------------------------------------------

    def peek_latest(self) -> Frame | None:
        """A copy of the newest complete frame, or None before the first write; moves no reader cursor.

        Meant for a display that only wants to show the latest frame. If the writer laps the ring during
        the copy, the copy is discarded and the then-newest frame is taken instead.
        """
        while True:
            with self._cond:
                if self._n_written == 0:
                    return None
                w = self._n_written - 1
                slot = w % self._n
                index = int(self._index[slot])
                timestamp = float(self._timestamp[slot])
            pixels = self._data[slot].copy()
            with self._cond:
                if self._seq[slot] == 2 * w + 2:
                    return Frame(index, timestamp, pixels)

    # -- stats -----------------------------------------------------------------------------------------

    def stats(self) -> RingStats:
        """Counters of the buffer and every reader, taken at one instant."""
        with self._cond:
            readers = tuple(r._stats_locked() for r in self._reader_tuple)
            return RingStats(self._n, self._n_written, self._closed, readers)

    # -- helpers for RingReader (called with the condition held unless noted) ---------------------------

    def _copy_out(self, first_write: int, count: int, out: np.ndarray) -> None:
        """Copy the pixels of writes ``first_write .. first_write+count-1`` into ``out`` (lock not held).

        At most two slices: the claimed run of slots may wrap around the end of the array once.
        """
        start = first_write % self._n
        head = min(count, self._n - start)
        np.copyto(out[:head], self._data[start:start + head])
        if head < count:
            np.copyto(out[head:count], self._data[:count - head])


class RingReader:
    """One consumer's cursor into a :class:`RingBuffer`; create it with :meth:`RingBuffer.add_reader`.

    Use it from one thread. Lost frames (overwritten before this reader got to them, or overwritten while
    it was copying them) are skipped and recorded in :attr:`lost_indices` / :attr:`n_lost`.
    """

    def __init__(self, ring: RingBuffer, name: str, start: int) -> None:
        self._ring = ring
        self.name = name
        self._cursor = start  # next write number this reader has not claimed
        self._released = start  # every write below this one is copied out (or lost): its slot is free
        self._n_read = 0
        self._n_lost = 0
        self._n_torn = 0
        # Lost source indices as [start, stop) runs (see add_to_runs).
        self._lost_runs: list[list[int]] = []
        self._skipped_runs: list[list[int]] = []
        self._n_skipped = 0

    # -- reading ---------------------------------------------------------------------------------------

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame (a copy), waiting up to ``timeout`` s (None: until one comes or the end).

        Returns None on timeout or at the end of the stream; :attr:`at_end` tells which.
        """
        frames = self.read_many(1, timeout)
        return frames[0] if frames else None

    def read_many(self, max_n: int, timeout: float | None = None) -> list[Frame]:
        """Up to ``max_n`` frames that are available now, in order, for batching.

        Waits up to ``timeout`` s (None: no limit) for the first one; never waits for more than what is
        already there. The frames' pixels are views into one freshly allocated ``k × H × W`` block.
        Returns an empty list on timeout or at the end of the stream.
        """
        if max_n < 1:
            raise ValueError(f"read_many needs max_n >= 1, got {max_n!r}")
        ring = self._ring
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with ring._cond:
                if not self._wait_for_frame(deadline):
                    return []
                first = self._cursor
                count = min(max_n, ring._n_written - first)
                slots = np.arange(first, first + count) % ring._n
                indices = ring._index[slots].copy()
                timestamps = ring._timestamp[slots].copy()
                self._cursor = first + count  # claimed: the writer no longer counts these as ours to lose
            block = np.empty((count, *ring._shape), dtype=ring._dtype)
            ring._copy_out(first, count, block)
            with ring._cond:
                # The copy is done: the slots are free for a waiting producer from now on.
                self._released = max(self._released, first + count)
                ring._cond.notify_all()
                expected = 2 * np.arange(first, first + count, dtype=np.int64) + 2
                intact = ring._seq[slots] == expected
                for i in np.flatnonzero(~intact):
                    self._record_loss(int(indices[i]))
                    self._n_torn += 1
                n_good = int(intact.sum())
                self._n_read += n_good
            if n_good:
                return [Frame(int(indices[i]), float(timestamps[i]), block[i]) for i in np.flatnonzero(intact)]
            # Everything claimed was overwritten during the copy: try again within the same deadline.

    def skip_if_stale(self, older_than: float, keep: int = 0) -> int:
        """When the oldest unclaimed frame's timestamp is before ``older_than``, skip every unclaimed frame but
        the newest ``keep``: a live reader that fell behind jumps to the present instead of working through a
        stale backlog. It skips the recent ones too, not only the stale: skipping just what crossed the bound
        would cut a gap of a frame or two at every call while the reader stays behind, and every gap costs a
        windowed localizer its edge frames' real neighbours (measured with copies as edge padding: 96 gaps in
        3000 frames, final Jaccard −0.012). ``keep`` leaves the localizer a sequence to work on rather than a
        lone frame, which has no neighbour at all. Skipped frames are recorded in :attr:`skipped_indices`,
        apart from lost ones; returns how many were skipped."""
        ring = self._ring
        with ring._cond:
            if self._cursor >= ring._n_written or ring._timestamp[self._cursor % ring._n] >= older_than:
                return 0
            end = max(self._cursor, ring._n_written - max(int(keep), 0))
            n = end - self._cursor
            for cursor in range(self._cursor, end):
                add_to_runs(self._skipped_runs, int(ring._index[cursor % ring._n]))
            self._cursor = end
            self._released = max(self._released, self._cursor)
            self._n_skipped += n
            ring._cond.notify_all()
        return n

    def __iter__(self) -> Iterator[Frame]:
        """Frames until the end of the stream, blocking between them."""
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def _wait_for_frame(self, deadline: float | None) -> bool:
        """With the condition held: wait until a frame is unread; False on timeout or end of stream."""
        ring = self._ring
        while self._cursor >= ring._n_written:
            if ring._closed:
                return False
            if deadline is None:
                ring._cond.wait()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not ring._cond.wait(remaining):
                    return self._cursor < ring._n_written
        return True

    # -- state -----------------------------------------------------------------------------------------

    @property
    def at_end(self) -> bool:
        """True when the stream is closed and this reader has nothing left to read."""
        with self._ring._cond:
            return self._ring._closed and self._cursor >= self._ring._n_written

    @property
    def fill(self) -> int:
        """Frames written but not yet read by this reader (at most the ring's capacity)."""
        with self._ring._cond:
            return self._ring._n_written - self._cursor

    @property
    def fill_fraction(self) -> float:
        """:attr:`fill` as a fraction of the capacity: 1.0 means the next write loses a frame."""
        return self.fill / self._ring._n

    @property
    def n_read(self) -> int:
        """Frames this reader received."""
        return self._n_read

    @property
    def n_lost(self) -> int:
        """Frames this reader lost (overwritten before or while it read them)."""
        return self._n_lost

    @property
    def n_torn(self) -> int:
        """Of :attr:`n_lost`, the frames overwritten while this reader was copying them."""
        return self._n_torn

    @property
    def lost_indices(self) -> np.ndarray:
        """The source frame indices this reader lost, ascending (int64)."""
        return self._indices(self._lost_runs)

    @property
    def n_skipped(self) -> int:
        """Frames this reader skipped on purpose (:meth:`skip_if_stale`); not counted in :attr:`n_lost`."""
        return self._n_skipped

    @property
    def skipped_indices(self) -> np.ndarray:
        """The source frame indices skipped by :meth:`skip_if_stale`, ascending (int64)."""
        return self._indices(self._skipped_runs)

    def _indices(self, runs: list[list[int]]) -> np.ndarray:
        """The indices of ``runs``, copied under the lock and expanded outside it (the writer needs it)."""
        with self._ring._cond:
            snapshot = [tuple(run) for run in runs]
        return expand_runs(snapshot)

    def stats(self) -> ReaderStats:
        """This reader's counters, taken at one instant."""
        with self._ring._cond:
            return self._stats_locked()

    def _stats_locked(self) -> ReaderStats:
        fill = self._ring._n_written - self._cursor
        return ReaderStats(self.name, fill, fill / self._ring._n, self._n_read, self._n_lost)

    def _record_loss(self, index: int) -> None:
        """With the condition held: add one lost source index."""
        self._n_lost += 1
        add_to_runs(self._lost_runs, index)

    def __repr__(self) -> str:
        return f"RingReader({self.name!r}, read={self._n_read}, lost={self._n_lost})"


def add_to_runs(runs: list[list[int]], index: int) -> None:
    """Add one index to [start, stop) runs (extends the last run when consecutive): a reader stalled
    for hours costs a few runs, not a Python int per frame, because source indices are mostly consecutive."""
    if runs and runs[-1][1] == index:
        runs[-1][1] = index + 1
    else:
        runs.append([index, index + 1])


def expand_runs(runs: list[tuple[int, ...]] | list[list[int]]) -> np.ndarray:
    if not runs:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs]))
