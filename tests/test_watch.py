"""``rtsmlm watch``: a writer process appends frames in Micro-Manager's multipage TIFF layout (continuation
files included) while the watcher analyses the growing stack; the localizations equal an offline run of
the finished movie, no frame lost or torn. Also: the stack follower against a writer that is mid-frame,
the files open in tifffile as Micro-Manager stacks, and bad input as one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtsmlm.cli import main
from rtsmlm.io.mm_tiff import MMStackFollower, MMStackWriter, is_first_mm_file
from rtsmlm.io.movies import open_movie
from rtsmlm.outputs.files import LOCS_CSV, SUMMARY_JSON

WRITER = """
import sys, time
import numpy as np
from rtsmlm.io.mm_tiff import MMStackWriter
frames = np.load(sys.argv[1])
with MMStackWriter(sys.argv[2], frames.shape[1:], planned_frames=len(frames), pixel_size_nm=float(sys.argv[3]),
                   max_file_bytes=int(sys.argv[4])) as w:
    for f in frames:
        w.append(f)
        time.sleep(float(sys.argv[5]))
"""


def start_writer(frames: np.ndarray, first: Path, pixel_nm: float, max_bytes: int, period_s: float,
                 tmp: Path) -> subprocess.Popen:
    np.save(tmp / "frames.npy", frames)
    first.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", WRITER, str(tmp / "frames.npy"), str(first), str(pixel_nm),
                             str(max_bytes), str(period_s)])


def table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).sort_values(["frame", "x", "y"]).reset_index(drop=True)


def test_names_of_micro_manager_stacks() -> None:
    assert is_first_mm_file(Path("a/run_1_MMStack_Pos0.ome.tif"))
    assert is_first_mm_file(Path("run_MMStack.ome.tif"))
    assert not is_first_mm_file(Path("run_1_MMStack_Pos0_1.ome.tif"))
    assert not is_first_mm_file(Path("movie.ome.tif"))


def test_the_follower_never_returns_a_frame_being_written_and_tifffile_opens_the_files(tmp_path) -> None:
    import tifffile

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60000, (60, 24, 20)).astype(np.uint16)
    first = tmp_path / "acq_MMStack_Pos0.ome.tif"
    writer = MMStackWriter(first, (24, 20), planned_frames=60, max_file_bytes=20_000)
    follower = MMStackFollower(first)
    got: list[np.ndarray] = []
    for k, frame in enumerate(frames):
        writer.append(frame)
        # The writer mid-frame: the file ends inside this frame's pixels (or its IFD). Nothing is returned
        # until the rest is on disk.
        path = Path(writer._fh.name)
        data = path.read_bytes()
        cut = int(rng.integers(1, 24 * 20 * 2 + 100))
        with open(path, "r+b") as fh:
            fh.truncate(len(data) - cut)
        assert follower.poll() == []
        with open(path, "ab") as fh:
            fh.write(data[-cut:])
        got += follower.poll()
        assert len(got) == k + 1
    writer.close()
    assert follower.poll() == [] and follower.finished
    assert np.array_equal(np.stack(got), frames)
    files = sorted(tmp_path.glob("*.ome.tif"))
    assert len(files) > 2  # continuation files _1, _2, …
    with tifffile.TiffFile(first) as tf:
        assert tf.is_micromanager and tf.micromanager_metadata["Summary"]["Frames"] == 60
        assert np.array_equal(tf.pages[2].asarray(), frames[2])


@pytest.mark.slow
def test_watch_analyses_a_growing_stack_like_an_offline_run_of_the_finished_movie(tmp_path) -> None:
    assert main(["simulate", "--frames", "150", "--size", "40", "--seed", "5", "--density", "0.6",
                 "--out", str(tmp_path / "sim"), "--quiet"]) == 0
    movie = tmp_path / "sim" / "movie.tif"
    with open_movie(movie) as m:
        frames, pixel_nm = m.read_range(0, m.n_frames), m.pixel_size_nm
    # Both in fp32: on a CPU with bf16 instructions ('auto' is bf16 there) other batch compositions round the
    # read-outs differently; the plumbing is what is compared.
    assert main(["run", "--quiet", "--no-stream", "--source", str(movie), "--out", str(tmp_path / "ref"),
                 "--set", "backend.threads=1", "--set", "backend.precision=fp32"]) == 0

    watched = tmp_path / "mm"
    watched.mkdir()
    first = watched / "cells_1" / "cells_1_MMStack_Pos0.ome.tif"
    writer = start_writer(frames, first, pixel_nm or 100.0, 120_000, 0.01, tmp_path)  # 100 frames/s
    try:
        code = main(["watch", str(watched), "--out", str(tmp_path / "out"), "--max-acquisitions", "1",
                     "--no-stream", "--set", "backend.threads=1", "--set", "backend.precision=fp32",
                     "--idle-timeout-s", "20"])
    finally:
        writer.wait(60)
    assert code == 0 and writer.returncode == 0
    assert len(list(first.parent.glob("*.ome.tif"))) > 2  # the stack went on in continuation files
    out = tmp_path / "out" / "cells_1"
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["status"] == "complete" and summary["frames_acquired"] == len(frames)
    assert summary["frames_missing_final"] == 0 and summary["source"]["stats"]["ended_by"] == "closed"
    got, ref = table(out / LOCS_CSV), table(tmp_path / "ref" / LOCS_CSV)
    assert len(got) == len(ref) > 100 and np.array_equal(got["frame"], ref["frame"])
    assert np.abs(got["x"] - ref["x"]).max() < 0.01 and np.abs(got["y"] - ref["y"]).max() < 0.01


def test_a_watched_folder_that_disappears_is_one_line(tmp_path, capsys) -> None:
    watched = tmp_path / "mm"
    watched.mkdir()
    threading.Timer(0.5, lambda: shutil.rmtree(watched)).start()
    t0 = time.monotonic()
    assert main(["watch", str(watched), "--out", str(tmp_path / "out"), "--no-stream"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"rtsmlm watch: {watched}: the watched folder has disappeared"]
    assert time.monotonic() - t0 < 10


def test_a_frame_of_another_size_in_a_continuation_file_is_one_clear_error(tmp_path) -> None:
    from rtsmlm.core.errors import SourceError

    first = tmp_path / "acq_MMStack_Pos0.ome.tif"
    with MMStackWriter(first, (16, 16), planned_frames=4, max_file_bytes=2000) as w:
        w.append(np.zeros((16, 16), np.uint16))
    with MMStackWriter(tmp_path / "acq_MMStack_Pos0_1.ome.tif", (20, 16), planned_frames=4) as w2:
        w2.append(np.zeros((20, 16), np.uint16))
    follower = MMStackFollower(first)
    with pytest.raises(SourceError, match=r"acq_MMStack_Pos0_1.ome.tif: frame 1 is 16x20 uint16, but the "
                                          r"acquisition's frames are 16x16 uint16"):
        follower.poll()


@pytest.mark.slow
def test_watch_live_shows_each_acquisition_in_the_live_window_and_goes_on(tmp_path, capsys) -> None:
    pytest.importorskip("PyQt5")
    rng = np.random.default_rng(3)
    watched = tmp_path / "mm"
    for name in ("a_1", "a_2"):  # two finished acquisitions already in the folder
        with MMStackWriter(watched / name / f"{name}_MMStack_Pos0.ome.tif", (32, 32), planned_frames=30) as w:
            for _ in range(30):
                w.append(rng.poisson(80, (32, 32)).astype(np.uint16) + 100)
    assert main(["watch", str(watched), "--out", str(tmp_path / "out"), "--live", "--max-acquisitions", "2",
                 "--no-stream", "--set", "backend.threads=1"]) == 0
    for name in ("a_1", "a_2"):
        summary = json.loads((tmp_path / "out" / name / SUMMARY_JSON).read_text())
        assert summary["status"] == "complete" and summary["frames_acquired"] == 30
    assert "a_2" in capsys.readouterr().out
