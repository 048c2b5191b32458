"""Micro-Manager multipage TIFF stacks while they grow: a follower that reads each frame once it is whole,
and a writer of the same layout (for tests, benchmarks and the simulator).

Micro-Manager's multi-dimensional acquisition writes ``NAME_MMStack_Pos0.ome.tif`` and, when a file
reaches its size limit (4 GB), continues in ``NAME_MMStack_Pos0_1.ome.tif``, ``_2``, … Layout of each
file (classic little-endian TIFF, https://micro-manager.org/Micro-Manager_File_Formats)::

    0   TIFF header (first IFD offset)
    8   index map offset header 54773648 + offset        (filled when the file is closed)
    16  display settings header 483765892 + offset       (filled when the file is closed)
    24  comments header 99384722 + offset
    32  summary header 2355492 + length + summary JSON   (planned frames, slices, channels, size)
    …   per image: IFD (its next-IFD field already points where the next image will go), pixels,
        per-image metadata JSON (tag 51123)
    …   at close: the last IFD's next offset set to 0, index map, display settings

The follower walks the IFD chain; a frame is taken only when its IFD parses (the expected size, one
uncompressed strip) and its pixel data lies wholly inside the file as it is now, so a frame being
written is never read torn. A file is finished when its display-settings header is written (Micro-
Manager's closing metadata) and the chain ends; the dataset is finished when the last file is.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.core.errors import SourceError

__all__ = ["MMStackFollower", "MMStackWriter", "continuation_files", "is_first_mm_file"]

_INDEX_MAP_HEADER, _INDEX_MAP_BODY = 54773648, 3453623
_DISPLAY_HEADER, _DISPLAY_BODY = 483765892, 347834724
_COMMENTS_HEADER, _COMMENTS_BODY = 99384722, 84720485
_SUMMARY_HEADER = 2355492
_MM_METADATA_TAG = 51123
_FIRST_FILE = re.compile(r"^(?P<base>.+_MMStack(_Pos\d+)?)\.ome\.tif$", re.IGNORECASE)


def is_first_mm_file(path: Path) -> bool:
    """``NAME_MMStack_Pos0.ome.tif`` (not a continuation ``..._1.ome.tif``)."""
    m = _FIRST_FILE.match(path.name)
    return bool(m) and not re.search(r"_\d+$", m.group("base").split("_MMStack")[1])


def continuation_files(first: Path, k: int) -> Path:
    """The k-th file of a dataset (k = 0: the first one)."""
    if k == 0:
        return first
    return first.with_name(first.name[: -len(".ome.tif")] + f"_{k}.ome.tif")


class _FileCursor:
    """Where the follower is in one file of the dataset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Unbuffered: a buffered reader would serve a re-read of the header (the closing mark) from bytes it
        # read before the writer changed them.
        self.fh = open(path, "rb", buffering=0)
        self.next_ifd: int | None = None  # offset of the next IFD to read
        self.header_read = False
        self.frames = 0  # frames read from this file

    def size(self) -> int:
        return os.fstat(self.fh.fileno()).st_size

    def read_at(self, offset: int, n: int) -> bytes:
        self.fh.seek(offset)
        return self.fh.read(n)

    def closed_by_writer(self) -> bool:
        data = self.read_at(16, 8)
        return len(data) == 8 and struct.unpack("<II", data)[0] == _DISPLAY_HEADER

    def indexed_frames(self) -> int:
        """Images in the index map the writer wrote at close (only valid once :meth:`closed_by_writer`)."""
        header, offset = struct.unpack("<II", self.read_at(8, 8))
        if header != _INDEX_MAP_HEADER:
            return 0
        body = self.read_at(offset, 8)
        return struct.unpack("<II", body)[1] if len(body) == 8 and struct.unpack("<I", body[:4])[0] == _INDEX_MAP_BODY else 0

    def close(self) -> None:
        self.fh.close()


class MMStackFollower:
    """Reads the frames of a Micro-Manager stack (``first`` and its continuation files) as they are written.

    :meth:`poll` returns the frames that became complete since the last call; :attr:`finished` is True
    once the writer closed the last file and every frame was returned. ``shape``/``dtype`` are known from
    the first frame (``None`` before). Errors (a file that is not Micro-Manager's, a frame of another size
    or type than the first) raise :class:`SourceError` naming the file.
    """

    def __init__(self, first: str | os.PathLike[str]) -> None:
        self.first = Path(first)
        self.summary: dict[str, Any] = {}
        self.shape: tuple[int, int] | None = None
        self.dtype: np.dtype | None = None
        self.pixel_size_nm: float | None = None
        self.frames_read = 0
        self.finished = False
        self._k = 0
        self._cursor: _FileCursor | None = None
        self._ended_at: float | None = None
        self.grace_s = 2.0  # how long a closed file waits for its continuation when frames are still planned

    @property
    def planned_frames(self) -> int | None:
        """Images the acquisition plans (frames × slices × channels of the summary), when it says."""
        s = self.summary
        try:
            n = int(s.get("Frames", 0)) * int(s.get("Slices", 1) or 1) * int(s.get("Channels", 1) or 1)
        except (TypeError, ValueError):
            return None
        return n or None

    def _open(self) -> _FileCursor | None:
        if self._cursor is None:
            path = continuation_files(self.first, self._k)
            if not path.is_file():
                if self._k == 0:
                    raise SourceError(f"{path}: the acquisition's file has disappeared")
                return None
            self._cursor = _FileCursor(path)
        return self._cursor

    def _read_header(self, c: _FileCursor) -> bool:
        head = c.read_at(0, 40)
        if len(head) < 40:
            return False
        if head[:4] != b"II*\x00":
            raise SourceError(f"{c.path}: not a little-endian classic TIFF as Micro-Manager writes")
        (first_ifd,) = struct.unpack("<I", head[4:8])
        summary_header, length = struct.unpack("<II", head[32:40])
        if summary_header != _SUMMARY_HEADER:
            raise SourceError(f"{c.path}: no Micro-Manager summary metadata at byte 32 (not a Micro-Manager "
                              "multipage TIFF)")
        data = c.read_at(40, length)
        if len(data) < length:
            return False
        if self._k == 0:
            try:
                self.summary = json.loads(data.decode("utf-8"))
            except ValueError as e:
                raise SourceError(f"{c.path}: its Micro-Manager summary metadata is not JSON ({e})") from e
            px = self.summary.get("PixelSize_um")
            if isinstance(px, (int, float)) and px > 0:
                self.pixel_size_nm = float(px) * 1000.0
        c.next_ifd = first_ifd
        c.header_read = True
        return True

    def _read_frame(self, c: _FileCursor, size: int) -> np.ndarray | None:
        """The frame of the IFD at ``c.next_ifd`` if it is complete (and advance), else None."""
        offset = c.next_ifd
        assert offset
        if offset + 2 > size:
            return None
        (n,) = struct.unpack("<H", c.read_at(offset, 2))
        end = offset + 2 + 12 * n + 4
        if n == 0 or n > 64 or end > size:
            return None
        raw = c.read_at(offset + 2, 12 * n + 4)
        tags: dict[int, int] = {}
        for i in range(n):
            tag, typ, count, value = struct.unpack("<HHII", raw[12 * i: 12 * i + 12])
            if typ == 3 and count == 1:  # SHORT stored in the first two bytes of the value field
                value = struct.unpack("<H", raw[12 * i + 8: 12 * i + 10])[0]
            tags[tag] = value
        (next_ifd,) = struct.unpack("<I", raw[12 * n: 12 * n + 4])
        try:
            width, height, bits = tags[256], tags[257], tags.get(258, 16)
            strip, nbytes = tags[273], tags[279]
        except KeyError:
            return None  # the IFD is being written
        if tags.get(259, 1) != 1:
            raise SourceError(f"{c.path}: frame {self.frames_read} is compressed (Micro-Manager writes raw pixels)")
        dtype = np.dtype({8: "<u1", 16: "<u2", 32: "<f4"}.get(bits, "<u2"))
        if nbytes != width * height * dtype.itemsize or strip + nbytes > size:
            return None  # pixels not all written yet
        if self.shape is None:
            self.shape, self.dtype = (int(height), int(width)), dtype.newbyteorder("=")
        elif (height, width) != self.shape or dtype.newbyteorder("=") != self.dtype:
            raise SourceError(f"{c.path}: frame {self.frames_read} is {width}x{height} {dtype.name}, but the "
                              f"acquisition's frames are {self.shape[1]}x{self.shape[0]} {self.dtype}")
        pixels = np.frombuffer(c.read_at(strip, nbytes), dtype).reshape(height, width).astype(self.dtype)
        c.next_ifd = next_ifd
        c.frames += 1
        self.frames_read += 1
        return pixels

    def poll(self, max_frames: int = 256) -> list[np.ndarray]:
        """The frames completed since the last call (at most ``max_frames``)."""
        out: list[np.ndarray] = []
        while len(out) < max_frames and not self.finished:
            c = self._open()
            if c is None:
                break  # the next file is not there yet
            if not c.header_read and not self._read_header(c):
                break
            size = c.size()
            if c.closed_by_writer() and c.frames >= c.indexed_frames():
                # This file is complete: the dataset goes on in the next file, or is finished.
                if continuation_files(self.first, self._k + 1).is_file():
                    c.close()
                    self._cursor, self._k = None, self._k + 1
                    continue
                planned = self.planned_frames
                now = time.monotonic()
                self._ended_at = self._ended_at or now
                # Micro-Manager may close a full file a moment before it creates the next one.
                if (planned is not None and self.frames_read >= planned) or now - self._ended_at > self.grace_s:
                    self.finished = True
                break
            frame = self._read_frame(c, size)
            if frame is None:
                break
            out.append(frame)
        return out

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None


class MMStackWriter:
    """Writes frames in Micro-Manager's multipage TIFF layout, one image at a time, flushed after each (as
    Micro-Manager does), continuing in ``_1``, ``_2``, … files past ``max_file_bytes``. For tests,
    benchmarks and demos of ``rtsmlm watch``; the files open in tifffile/Fiji as Micro-Manager stacks."""

    def __init__(self, first: str | os.PathLike[str], shape: tuple[int, int], *, dtype: Any = np.uint16,
                 planned_frames: int = 0, pixel_size_nm: float = 100.0, max_file_bytes: int = 4 * 2**30 - 2**20,
                 summary: dict[str, Any] | None = None) -> None:
        self.first = Path(first)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.max_file_bytes = int(max_file_bytes)
        self.summary = {"Prefix": self.first.name.split("_MMStack")[0], "Frames": int(planned_frames), "Slices": 1,
                        "Channels": 1, "Positions": 1, "Width": self.shape[1], "Height": self.shape[0],
                        "PixelType": "GRAY16" if self.dtype.itemsize == 2 else "GRAY8",
                        "PixelSize_um": pixel_size_nm / 1000.0, "MicroManagerVersion": "2.0 (rtsmlm writer)",
                        **(summary or {})}
        self.frames_written = 0
        self._k = 0
        self._fh: Any = None
        self._file_frames: list[int] = []  # IFD offsets in the current file
        self._last_next_field = 0  # file offset of the last IFD's next-IFD field
        self._open_file()

    def _open_file(self) -> None:
        path = continuation_files(self.first, self._k)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")
        summary = json.dumps(self.summary).encode("utf-8")
        head = b"II*\x00" + struct.pack("<I", 40 + len(summary))
        head += struct.pack("<IIIIIIII", 0, 0, 0, 0, _COMMENTS_HEADER, 0, _SUMMARY_HEADER, len(summary))
        self._fh.write(head + summary)
        self._fh.flush()
        self._file_frames = []

    def append(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"frame of shape {frame.shape}, the stack holds {self.shape}")
        pixels = frame.astype(self.dtype).tobytes()
        meta = json.dumps({"ImageNumber": self.frames_written, "Frame": self.frames_written}).encode() + b"\x00"
        pos = self._fh.tell()
        if self._file_frames and pos + len(pixels) + len(meta) + 400 > self.max_file_bytes:
            self._close_file()
            self._k += 1
            self._open_file()
            pos = self._fh.tell()
        entries = [(256, 4, 1, self.shape[1]), (257, 4, 1, self.shape[0]), (258, 3, 1, self.dtype.itemsize * 8),
                   (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, self.shape[0]),
                   (279, 4, 1, len(pixels)), (_MM_METADATA_TAG, 2, len(meta), 0)]
        ifd_bytes = 2 + 12 * len(entries) + 4
        strip = pos + ifd_bytes
        meta_at = strip + len(pixels)
        next_ifd = meta_at + len(meta)  # where the next image will go (Micro-Manager writes it ahead)
        out = struct.pack("<H", len(entries))
        for tag, typ, count, value in entries:
            value = strip if tag == 273 else meta_at if tag == _MM_METADATA_TAG else value
            out += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 else
                                                            struct.pack("<I", value))
        self._last_next_field = pos + ifd_bytes - 4
        out += struct.pack("<I", next_ifd)
        self._fh.write(out + pixels + meta)
        self._fh.flush()
        self._file_frames.append(pos)
        self.frames_written += 1

    def _close_file(self) -> None:
        fh = self._fh
        end = fh.tell()
        if self._file_frames:  # the last image's next-IFD offset: none
            fh.seek(self._last_next_field)
            fh.write(struct.pack("<I", 0))
        fh.seek(end)
        index = struct.pack("<II", _INDEX_MAP_BODY, len(self._file_frames))
        first_index = self.frames_written - len(self._file_frames)
        for i, offset in enumerate(self._file_frames):
            index += struct.pack("<IIIII", 0, 0, first_index + i, 0, offset)
        display = json.dumps([{"Name": "Default", "Color": -1}]).encode()
        fh.write(index)
        display_at = fh.tell()
        fh.write(struct.pack("<II", _DISPLAY_BODY, len(display)) + display)
        comments_at = fh.tell()
        fh.write(struct.pack("<II", _COMMENTS_BODY, 2) + b"{}")
        fh.seek(24)
        fh.write(struct.pack("<II", _COMMENTS_HEADER, comments_at))
        fh.seek(8)
        fh.write(struct.pack("<II", _INDEX_MAP_HEADER, end))
        fh.seek(16)
        fh.write(struct.pack("<II", _DISPLAY_HEADER, display_at))  # the closing mark, written last
        fh.flush()
        fh.close()

    def close(self) -> None:
        if self._fh is not None:
            self._close_file()
            self._fh = None

    def __enter__(self) -> MMStackWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

