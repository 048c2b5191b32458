"""Movie readers and writers on real files: TIFF flavours, Picasso .raw, .dax, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from rtsmlm.acquisition.source import SourceError
from rtsmlm.io.movies import (
    MovieWriter,
    RawMovieWriter,
    TiffMovieWriter,
    open_movie,
    open_movie_writer,
    write_tiff_movie,
)

DAX_PIXEL_NM = 160.0  # storm-analysis test movie (its README)


def movie(n: int = 6, height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    """Frames whose every pixel differs from its neighbours and from the other frames."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60000, size=(n, height, width), dtype=np.uint16)


def write_dax(path: Path, frames: np.ndarray, *, big_endian: bool = True, n_frames: int | None = None,
              extra: str = "") -> None:
    frames.astype(">u2" if big_endian else "<u2").tofile(path)
    endian = "big" if big_endian else "little"
    count = len(frames) if n_frames is None else n_frames
    path.with_suffix(".inf").write_text(
        f"binning = 1 x 1\ndata type = 16 bit integers (binary, {endian} endian)\n"
        f"frame dimensions = {frames.shape[2]} x {frames.shape[1]}\nnumber of frames = {count}\n{extra}")


# ---- .dax -----------------------------------------------------------------------------------------


@pytest.fixture()
def dax_dir(shared_data: Path) -> Path:
    path = shared_data / "storm-analysis-test"
    if not (path / "test.dax").is_file():
        pytest.skip(f"{path}/test.dax is absent")
    return path


def test_dax_test_movie_header(dax_dir: Path) -> None:
    with open_movie(dax_dir / "test.dax") as m:
        assert (m.n_frames, m.shape, len(m)) == (10, (256, 256), 10)
        assert m.dtype == np.dtype(np.uint16) and m.dtype.isnative
        assert m.pixel_size_nm is None  # the .inf does not say
        assert m.metadata["frame dimensions"] == "256 x 256"
        frame = m.read(3)
        assert frame.dtype.isnative and frame.shape == (256, 256)
        # independent decoding of the same bytes: big-endian uint16, frame-major
        raw = np.fromfile(dax_dir / "test.dax", dtype=">u2").reshape(10, 256, 256)
        np.testing.assert_array_equal(frame, raw[3])


def test_dax_truth_positions_land_on_bright_spots(dax_dir: Path) -> None:
    truth = np.loadtxt(dax_dir / "truth.csv", delimiter=",", skiprows=1)
    frames, x, y = truth[:, 0].astype(int), truth[:, 1] / DAX_PIXEL_NM, truth[:, 2] / DAX_PIXEL_NM
    with open_movie(dax_dir / "test.dax") as m:
        stack = np.stack(list(m)).astype(float)
    # Origin at the top-left corner of the top-left pixel: the pixel holding (x, y) is (floor y, floor x).
    rows, cols = np.floor(y).astype(int), np.floor(x).astype(int)
    at_truth = stack[frames, rows, cols]
    transposed = stack[frames, cols, rows]
    median = np.median(stack)
    assert at_truth.mean() > 2.5 * median
    assert at_truth.mean() > 2.5 * transposed.mean()  # x is the column axis, not the row axis
    # A pixel-centre origin would put half the emitters one pixel off: the corner convention must win.
    r_centre = np.clip(np.round(y).astype(int), 0, 255)
    c_centre = np.clip(np.round(x).astype(int), 0, 255)
    differs = (r_centre != rows) | (c_centre != cols)
    brighter = at_truth[differs] > stack[frames, r_centre, c_centre][differs]
    assert differs.sum() > 100 and brighter.mean() > 0.8


def test_dax_truncated_names_file_and_sizes(dax_dir: Path, tmp_path: Path) -> None:
    data = (dax_dir / "test.dax").read_bytes()
    (tmp_path / "test.dax").write_bytes(data[:1310000])
    (tmp_path / "test.inf").write_bytes((dax_dir / "test.inf").read_bytes())
    with pytest.raises(SourceError) as e:
        open_movie(tmp_path / "test.dax")
    msg = str(e.value)
    assert "test.dax" in msg and "1310000 bytes" in msg and "test.inf" in msg
    assert "10 frames of 256x256" in msg and "1310720 bytes" in msg


def test_dax_orientation_and_endianness_of_written_files(tmp_path: Path) -> None:
    frames = np.zeros((2, 5, 9), np.uint16)
    frames[1, 3, 7] = 4000  # row 3 (y), column 7 (x), in a non-square frame
    frames[0, 0, 1] = 258  # bytes 0x01 0x02 differ when swapped
    for big in (True, False):
        path = tmp_path / f"m_{int(big)}.dax"
        write_dax(path, frames, big_endian=big)
        with open_movie(path.with_suffix(".inf")) as m:  # the header path opens the movie too
            assert m.shape == (5, 9)
            np.testing.assert_array_equal(np.stack(list(m)), frames)


def test_dax_without_frame_count_uses_file_size(tmp_path: Path) -> None:
    frames = movie(4)
    path = tmp_path / "m.dax"
    frames.astype(">u2").tofile(path)
    path.with_suffix(".inf").write_text("data type = 16 bit integers (binary, big endian)\n"
                                        "frame dimensions = 30 x 20\n")
    with open_movie(path) as m:
        assert m.n_frames == 4
        np.testing.assert_array_equal(m.read(3), frames[3])


def test_dax_header_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.dax"
    movie(2).astype(">u2").tofile(path)
    with pytest.raises(SourceError, match=r"m\.inf is missing"):
        open_movie(path)
    path.with_suffix(".inf").write_text("number of frames = 2\n")
    with pytest.raises(SourceError, match=r"m\.inf.*frame dimensions"):
        open_movie(path)
    path.with_suffix(".inf").write_text("frame dimensions = 30 by 20\nnumber of frames = 2\n")
    with pytest.raises(SourceError, match=r"m\.inf.*'256 x 256'"):
        open_movie(path)


# ---- Picasso .raw ---------------------------------------------------------------------------------


def write_picasso(path: Path, frames: np.ndarray, info: dict) -> None:
    order = info.get("Byte Order", "<")
    frames.astype(np.dtype(info.get("Data Type", "uint16")).newbyteorder(order)).tofile(path)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(info))


@pytest.mark.parametrize("order", ["<", ">"])
def test_picasso_raw_written_directly(tmp_path: Path, order: str) -> None:
    frames = movie(5)
    path = tmp_path / "p.raw"
    write_picasso(path, frames, {"Byte Order": order, "Data Type": "uint16", "Frames": 5, "Height": 20,
                                 "Width": 30, "Camera": "Andor", "Pixelsize": 130})
    with open_movie(path) as m:
        assert (m.n_frames, m.shape, m.format) == (5, (20, 30), "picasso-raw")
        assert m.pixel_size_nm == 130.0 and m.metadata == {"Camera": "Andor"}
        np.testing.assert_array_equal(np.stack(list(m)), frames)


def test_picasso_raw_errors(tmp_path: Path) -> None:
    frames = movie(5)
    path = tmp_path / "p.raw"
    write_picasso(path, frames, {"Data Type": "uint16", "Frames": 6, "Height": 20, "Width": 30})
    with pytest.raises(SourceError) as e:
        open_movie(path)
    assert "p.raw" in str(e.value) and "6000 bytes" in str(e.value) and "p.yaml says 6 frames" in str(e.value)
    path.with_suffix(".yaml").write_text(yaml.safe_dump({"Frames": 5, "Height": 20}))
    with pytest.raises(SourceError, match=r"p\.yaml: key 'Width' is missing"):
        open_movie(path)
    path.with_suffix(".yaml").write_text(yaml.safe_dump({"Frames": 5, "Height": 20, "Width": 30,
                                                         "Data Type": "uint17"}))
    with pytest.raises(SourceError, match=r"p\.yaml: 'Data Type' 'uint17'"):
        open_movie(path)
    path.with_suffix(".yaml").unlink()
    with pytest.raises(SourceError, match=r"p\.yaml is missing"):
        open_movie(path)


def test_raw_writer_round_trip_and_picasso_header(tmp_path: Path) -> None:
    frames = movie(7)
    path = tmp_path / "rec.raw"
    meta = {"model": "emccd", "em_gain": np.float64(300.0), "baseline_adu": 100, "note": "run 1"}
    with RawMovieWriter(path, pixel_size_nm=117.0, metadata=meta) as w:
        assert isinstance(w, MovieWriter)
        for f in frames:
            w.append(f)
    info = yaml.safe_load(path.with_suffix(".yaml").read_text())
    assert {k: info[k] for k in ("Byte Order", "Data Type", "Frames", "Height", "Width")} == {
        "Byte Order": "<", "Data Type": "uint16", "Frames": 7, "Height": 20, "Width": 30}
    assert path.stat().st_size == frames.nbytes
    with open_movie(path) as m:
        assert m.pixel_size_nm == 117.0
        assert m.metadata == {"model": "emccd", "em_gain": 300.0, "baseline_adu": 100, "note": "run 1"}
        np.testing.assert_array_equal(np.stack(list(m)), frames)


def test_raw_writer_header_follows_flushes(tmp_path: Path) -> None:
    frames = movie(5)
    path = tmp_path / "rec.raw"
    w = RawMovieWriter(path)
    w.append(frames[0])
    with open_movie(path) as m:  # readable, empty, from the first frame on
        assert m.n_frames == 0
    w.append(frames[1])
    w.append(frames[2])
    w.flush()
    w.append(frames[3])
    with open_movie(path) as m:
        assert m.n_frames == 3 == w.frames_flushed
        np.testing.assert_array_equal(m.read(2), frames[2])
    w.close()
    with open_movie(path) as m:
        assert m.n_frames == 4


def test_writer_refuses_bad_frames_and_existing_files(tmp_path: Path) -> None:
    path = tmp_path / "rec.raw"
    with RawMovieWriter(path) as w:
        w.append(np.zeros((4, 5), np.uint16))
        with pytest.raises(ValueError, match=r"rec\.raw: frame 1 is \(4, 6\)"):
            w.append(np.zeros((4, 6), np.uint16))
        with pytest.raises(ValueError, match=r"frame 1 is \(4, 5\) float32"):
            w.append(np.zeros((4, 5), np.float32))
    with pytest.raises(FileExistsError, match=r"rec\.raw: file exists"):
        RawMovieWriter(path)
    with pytest.raises(ValueError, match="reserved"):
        RawMovieWriter(tmp_path / "b.raw", metadata={"Frames": 3})
    with pytest.raises(TypeError, match="metadata cannot be stored"):
        TiffMovieWriter(tmp_path / "c.tif", metadata={"f": object()})
    with pytest.raises(ValueError, match=r"e\.tif: pixel_size_nm must be a positive number"):
        TiffMovieWriter(tmp_path / "e.tif", pixel_size_nm=0.0)
    assert isinstance(open_movie_writer(tmp_path / "d.tif"), TiffMovieWriter)
    with pytest.raises(ValueError, match="no movie writer"):
        open_movie_writer(tmp_path / "d.avi")


# ---- TIFF -----------------------------------------------------------------------------------------


def test_write_tiff_movie_is_a_calibrated_imagej_stack(tmp_path: Path) -> None:
    frames = movie(6)
    path = tmp_path / "m.tif"
    meta = {"model": "scmos", "e_per_adu": 0.46, "exposure_ms": 20.0}
    write_tiff_movie(path, frames, 107.5, meta)
    with tifffile.TiffFile(path) as tif:  # what Fiji reads
        assert tif.is_imagej and not tif.is_bigtiff
        ij = tif.imagej_metadata
        assert ij["unit"] == "um" and ij["frames"] == 6 and ij["images"] == 6
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1000.0 / 107.5, rel=1e-6)  # pixels per µm
        assert tif.series[0].axes == "TYX"
        assert json.loads(ij["Info"])["metadata"] == meta
    with open_movie(path) as m:
        assert m.format == "imagej-tiff" and m.n_frames == 6
        assert m.pixel_size_nm == 107.5 and m.metadata == meta
        np.testing.assert_array_equal(np.stack(list(m)), frames)


def test_write_tiff_movie_streams_a_reader(tmp_path: Path) -> None:
    frames = movie(4)
    write_tiff_movie(tmp_path / "a.tif", frames, None, {})
    with open_movie(tmp_path / "a.tif") as src:
        assert src.pixel_size_nm is None
        write_tiff_movie(tmp_path / "b.tif", src, 100.0, {"k": 1})
    with open_movie(tmp_path / "b.tif") as m:
        np.testing.assert_array_equal(np.stack(list(m)), frames)
    with pytest.raises(ValueError, match="float64"):
        write_tiff_movie(tmp_path / "c.tif", frames.astype(np.float64), 100.0, {})
    with pytest.raises(FileExistsError):
        write_tiff_movie(tmp_path / "b.tif", frames, 100.0, {})


def test_tiff_writer_round_trip(tmp_path: Path) -> None:
    frames = movie(9)
    path = tmp_path / "rec.tif"
    meta = {"em_gain": 250.0, "baseline_adu": 400.0}
    with TiffMovieWriter(path, pixel_size_nm=160.0, metadata=meta) as w:
        for i, f in enumerate(frames):
            w.append(f)
            if i == 4:
                w.flush()
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and len(tif.pages) == 9
        assert tif.pages[0].tags["ResolutionUnit"].value == 3  # centimetre
        np.testing.assert_array_equal(tif.asarray(), frames)
    with open_movie(path) as m:
        assert not m.recovered and m.n_frames == 9
        assert m.pixel_size_nm == 160.0 and m.metadata == meta
        np.testing.assert_array_equal(np.stack(list(m)), frames)


def test_tiff_writer_single_frame(tmp_path: Path) -> None:
    frames = movie(1)
    with TiffMovieWriter(tmp_path / "one.tif") as w:
        w.append(frames[0])
    with open_movie(tmp_path / "one.tif") as m:
        assert m.n_frames == 1 and not m.recovered
        np.testing.assert_array_equal(m.read(0), frames[0])
    TiffMovieWriter(tmp_path / "none.tif").close()
    assert not (tmp_path / "none.tif").exists()


def test_tifffile_written_variants(tmp_path: Path) -> None:
    frames = movie(6)
    tifffile.imwrite(tmp_path / "shaped.tif", frames)
    tifffile.imwrite(tmp_path / "zlib.tif", frames, compression="zlib")  # read page by page
    tifffile.imwrite(tmp_path / "big_endian.tif", frames, byteorder=">")
    tifffile.imwrite(tmp_path / "bigtiff.tif", frames, bigtiff=True)
    with tifffile.TiffWriter(tmp_path / "generic.tif") as tw:  # pages without any shape metadata
        for f in frames:
            tw.write(f, metadata=None)
    for name in ("shaped", "zlib", "big_endian", "bigtiff", "generic"):
        with open_movie(tmp_path / f"{name}.tif") as m:
            assert m.n_frames == 6 and m.shape == (20, 30), name
            got = np.stack(list(m))
            assert got.dtype.isnative, name
            np.testing.assert_array_equal(got, frames, err_msg=name)


def test_imagej_hyperstack_frames_are_flattened_in_file_order(tmp_path: Path) -> None:
    data = movie(3 * 2 * 2).reshape(3, 2, 2, 20, 30)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.16, 1 / 0.16),
                     metadata={"axes": "TZCYX", "unit": "micron", "Info": "not json"})
    with open_movie(path) as m:
        assert m.n_frames == 12 and m.pixel_size_nm == pytest.approx(160.0)
        assert m.metadata["imagej"]["Info"] == "not json"
        np.testing.assert_array_equal(m.read(7), data.reshape(12, 20, 30)[7])


def test_ome_tiff_calibration_and_exposure(tmp_path: Path) -> None:
    frames = movie(4)
    path = tmp_path / "m.ome.tif"
    tifffile.imwrite(path, frames, metadata={"axes": "TYX", "PhysicalSizeX": 0.1075,
                                             "PhysicalSizeY": 0.1075,
                                             "Plane": {"ExposureTime": [0.03] * 4}})
    with open_movie(path) as m:
        assert m.format == "ome-tiff" and m.n_frames == 4
        assert m.pixel_size_nm == pytest.approx(107.5)
        assert m.metadata["exposure_ms"] == pytest.approx(30.0)
        np.testing.assert_array_equal(np.stack(list(m)), frames)


@pytest.mark.parametrize("kind", ["shaped", "zlib", "imagej", "ome", "writer"])
def test_truncated_tiff_fails_with_the_file_name(tmp_path: Path, kind: str) -> None:
    frames = movie(6)
    full = tmp_path / f"full_{kind}.tif"
    if kind == "writer":
        write_tiff_movie(full, frames, 100.0, {})
    elif kind == "ome":
        tifffile.imwrite(full, frames, ome=True, metadata={"axes": "TYX"})
    else:
        tifffile.imwrite(full, frames, imagej=kind == "imagej",
                         compression="zlib" if kind == "zlib" else None)
    data = full.read_bytes()
    cut = tmp_path / f"cut_{kind}.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SourceError) as e:
        open_movie(cut)
    assert f"cut_{kind}.tif" in str(e.value)


def test_imagej_stack_with_lost_page_index_opens_as_imagej_does(tmp_path: Path) -> None:
    frames = movie(6)
    full = tmp_path / "full.tif"
    write_tiff_movie(full, frames, 100.0, {"k": 2})
    with tifffile.TiffFile(full) as tif:
        data_end = tif.pages[0].dataoffsets[0] + frames.nbytes
    data = full.read_bytes()
    assert len(data) > data_end  # tifffile puts the other pages' index after the pixels
    (tmp_path / "no_index.tif").write_bytes(data[:data_end])
    with open_movie(tmp_path / "no_index.tif") as m:
        assert m.n_frames == 6 and m.metadata == {"k": 2}
        np.testing.assert_array_equal(np.stack(list(m)), frames)
    (tmp_path / "short.tif").write_bytes(data[:data_end - 1])
    with pytest.raises(SourceError) as e:
        open_movie(tmp_path / "short.tif")
    assert f"file has {data_end - 1} bytes" in str(e.value) and f"needs {data_end} bytes" in str(e.value)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "junk.tif").write_bytes(b"this is not a TIFF file at all")
    with pytest.raises(SourceError, match=r"junk\.tif: not a readable TIFF"):
        open_movie(tmp_path / "junk.tif")
    with pytest.raises(SourceError, match=r"nothere\.tif: movie file does not exist"):
        open_movie(tmp_path / "nothere.tif")
    with pytest.raises(SourceError, match="is a folder"):
        open_movie(tmp_path)
    (tmp_path / "m.avi").write_bytes(b"")
    with pytest.raises(SourceError, match=r"unsupported movie format '\.avi'"):
        open_movie(tmp_path / "m.avi")
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(SourceError, match=r"rgb\.tif: .*single-channel"):
        open_movie(tmp_path / "rgb.tif")


def test_reader_bounds_and_close(tmp_path: Path) -> None:
    write_tiff_movie(tmp_path / "m.tif", movie(3), 100.0, {})
    m = open_movie(tmp_path / "m.tif")
    kept = m.read(2)
    with pytest.raises(IndexError, match=r"frame 3 does not exist \(the movie has 3 frames\)"):
        m.read(3)
    with pytest.raises(IndexError):
        m.read(-1)
    m.close()
    m.close()
    assert kept.sum() > 0  # frames handed out stay valid after close
    with pytest.raises(ValueError, match="closed"):
        m.read(0)


# ---- crash safety: a writer process killed with SIGKILL -------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from rtsmlm.io.movies import open_movie_writer

    path, n_flushed, n_more = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    w = open_movie_writer(path, pixel_size_nm=123.0, metadata={"em_gain": 42.0})
    frame = lambda i: np.full((32, 48), i + 1, np.uint16) + np.arange(48, dtype=np.uint16)
    for i in range(n_flushed):
        w.append(frame(i))
    w.flush()
    for i in range(n_flushed, n_flushed + n_more):
        w.append(frame(i))  # never flushed
    print("ready", flush=True)
    sys.stdin.read()  # wait to be killed
""")


def kill_writer_midway(path: Path, n_flushed: int, n_more: int) -> None:
    """Run a writer in a subprocess, SIGKILL it after its flush and some unflushed frames."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(n_flushed), str(n_more)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def expected_frame(i: int) -> np.ndarray:
    return np.full((32, 48), i + 1, np.uint16) + np.arange(48, dtype=np.uint16)


def test_raw_writer_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.raw"
    kill_writer_midway(path, n_flushed=11, n_more=5)
    with open_movie(path) as m:
        assert m.n_frames == 11  # exactly the flushed frames: the header vouches for them
        assert m.pixel_size_nm == 123.0 and m.metadata == {"em_gain": 42.0}
        for i in range(11):
            np.testing.assert_array_equal(m.read(i), expected_frame(i))


def test_tiff_writer_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.tif"
    kill_writer_midway(path, n_flushed=11, n_more=5)
    # Other tools (tifffile here; Fiji reads the same IFD chain) see one page per flushed frame.
    with tifffile.TiffFile(path) as tif:
        assert 11 <= len(tif.pages) <= 16
        data = np.stack([tif.pages[i].asarray() for i in range(11)])
    np.testing.assert_array_equal(data, np.stack([expected_frame(i) for i in range(11)]))
    with open_movie(path) as m:
        assert 11 <= m.n_frames <= 16  # every flushed frame, plus unflushed ones that reached the disk
        assert m.pixel_size_nm == 123.0 and m.metadata == {"em_gain": 42.0}
        for i in range(m.n_frames):
            np.testing.assert_array_equal(m.read(i), expected_frame(i))


def test_tiff_killed_with_a_cut_last_page_keeps_the_complete_pages(tmp_path: Path) -> None:
    path = tmp_path / "killed.tif"
    kill_writer_midway(path, n_flushed=9, n_more=0)
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the kill cut the last page's pixels short
    with open_movie(path) as m:
        assert m.n_frames == 8
        np.testing.assert_array_equal(m.read(7), expected_frame(7))


def test_tiff_killed_after_linking_a_page_it_never_wrote_keeps_the_complete_pages(tmp_path: Path) -> None:
    """The kill came after tifffile pointed the last page at the next one's place (the end of the file) and
    before that page reached the disk: tifffile warns of an invalid page offset; the frames before it open."""
    path = tmp_path / "killed.tif"
    kill_writer_midway(path, n_flushed=9, n_more=0)
    with tifffile.TiffFile(path) as tif:
        last_ifd = tif.pages[8].offset
    path.write_bytes(path.read_bytes()[:last_ifd])  # page 8's IFD and pixels never written
    with open_movie(path) as m:
        assert m.n_frames == 8
        np.testing.assert_array_equal(m.read(7), expected_frame(7))


def test_tiff_killed_while_closing_keeps_only_flushed_frames(tmp_path: Path) -> None:
    path = tmp_path / "killed.tif"
    kill_writer_midway(path, n_flushed=7, n_more=0)
    data = path.read_bytes()
    # What close() leaves when killed after marking "closing" and writing part of the page index.
    marker = data.index(b'"state": "o"')
    data = data[:marker] + b'"state": "c"' + data[marker + 12:]
    path.write_bytes(data + bytes(range(256)) * 40)  # more than one frame of page-index bytes
    with open_movie(path) as m:
        assert m.n_frames == 7
        np.testing.assert_array_equal(m.read(6), expected_frame(6))
