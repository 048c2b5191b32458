"""``rtsmlm batch`` on a real Dask LocalCluster (worker processes): the same localizations as ``rtsmlm run``
on the whole movie, resumable, OME-Zarr read by the workers, a worker killed mid-batch, a damaged chunk
retried and reported while the other movies complete, and bad input as one line.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtsmlm.cli import main
from rtsmlm.core import config as rconfig
from rtsmlm.io.movies import open_movie
from rtsmlm.outputs.files import LOCS_CSV, SUMMARY_JSON

pytest.importorskip("distributed")

pytestmark = pytest.mark.slow
RAW_COLUMNS = ["frame", "x", "y", "photons", "bg", "sigma_x", "sigma_y", "p"]
FP32 = ["--set", "backend.precision=fp32"]
"""Every run here in fp32: what is compared is the batch's plumbing against a run's, and on a CPU with bf16
instructions ('auto' precision is bf16 there) other batch compositions round differently enough to move a
read-out across the detection threshold."""


def simulate(out: Path, seed: int, frames: int = 160, size: int = 40) -> Path:
    assert main(["simulate", "--frames", str(frames), "--size", str(size), "--seed", str(seed), "--density", "0.6",
                 "--out", str(out), "--quiet"]) == 0
    return out / "movie.tif"


def sorted_table(path: Path) -> pd.DataFrame:
    t = pd.read_csv(path)
    return t.sort_values(["frame", "x", "y"]).reset_index(drop=True)


def assert_same_localizations(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same localizations: the same rows in the same frames; values equal to float32 rounding (the CPU
    convolution kernels round differently for other batch compositions, as two runs of `rtsmlm run` do)."""
    assert len(a) == len(b) and len(a) > 100
    assert np.array_equal(a["frame"].to_numpy(), b["frame"].to_numpy())
    for col in ("x", "y"):
        assert np.abs(a[col] - b[col]).max() < 0.01, col  # nm
    for col in ("photons", "bg", "p"):
        assert np.allclose(a[col], b[col], rtol=1e-4, atol=1e-4), col


@pytest.fixture(scope="module")
def movies(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("movies")
    return {"a": simulate(root / "a", 11), "b": simulate(root / "b", 12, frames=100)}


@pytest.fixture(scope="module")
def reference(movies, tmp_path_factory) -> dict[str, pd.DataFrame]:
    """`rtsmlm run` on each whole movie."""
    out = {}
    for key, movie in movies.items():
        d = tmp_path_factory.mktemp(f"run_{key}")
        assert main(["run", "--quiet", "--no-stream", "--source", str(movie), "--out", str(d / "o"),
                     "--set", "backend.threads=1", *FP32]) == 0
        out[key] = sorted_table(d / "o" / LOCS_CSV)
    return out


def batch(*args: str) -> int:
    return main(["batch", "--quiet", "--workers", "2", *FP32, *args])


def test_batch_equals_run_on_each_whole_movie_and_resumes(movies, reference, tmp_path, capsys) -> None:
    out = tmp_path / "batch"
    assert batch(str(movies["a"]), str(movies["b"]), "--out", str(out), "--chunk-frames", "37") == 0
    index = pd.read_csv(out / "index.csv")
    assert list(index["status"]) == ["complete", "complete"]
    for key, name in (("a", "a_movie"), ("b", "b_movie")):
        got = sorted_table(out / name / LOCS_CSV)
        assert_same_localizations(got, reference[key])
        # Drift over the whole movie: the corrected columns are there, within the estimate's noise of the run's.
        assert np.abs(got["x_dc"] - reference[key]["x_dc"]).max() < 10.0
        summary = json.loads((out / name / SUMMARY_JSON).read_text())
        assert summary["status"] == "complete" and summary["n_locs"] == len(got)
        assert summary["batch"]["chunks"] == len(range(0, summary["frames_acquired"], 37))
        assert (out / name / "render.png").is_file() and (out / name / "drift.csv").is_file()
        row = index[index["name"] == name].iloc[0]
        assert row["n_locs"] == len(got) and row["frames"] == summary["frames_acquired"]
    first = json.loads((out / "index.json").read_text())
    assert first["chunks_run"] == 5 + 3 and first["chunks_skipped"] == 0

    # A rerun does nothing again; a lost chunk file is the only chunk run again.
    chunk = sorted((out / "a_movie" / "chunks").glob("*.npy"))[2]
    chunk.unlink()
    assert batch(str(movies["a"]), str(movies["b"]), "--out", str(out), "--chunk-frames", "37") == 0
    again = json.loads((out / "index.json").read_text())
    assert again["chunks_run"] == 1 and again["chunks_skipped"] == 7
    assert_same_localizations(sorted_table(out / "a_movie" / LOCS_CSV), reference["a"])

    # Other settings never mix with chunks made before: one line, and the movie is not redone silently.
    assert batch(str(movies["a"]), str(movies["b"]), "--out", str(out), "--chunk-frames", "50") == 1
    assert [m["status"] for m in json.loads((out / "index.json").read_text())["movies"]] == ["failed", "failed"]
    assert "chunk_frames" in capsys.readouterr().err


def test_ome_zarr_movies_are_read_by_the_workers(movies, reference, tmp_path) -> None:
    from rtsmlm.io.zarr_movies import write_ome_zarr

    with open_movie(movies["a"]) as m:
        zarr_path = write_ome_zarr(tmp_path / "a.ome.zarr", m.read_range(0, m.n_frames), m.pixel_size_nm,
                                   chunk_frames=16, metadata=m.metadata)
    out = tmp_path / "batch"
    assert batch(str(zarr_path), "--out", str(out), "--chunk-frames", "50") == 0
    assert_same_localizations(sorted_table(out / "a" / LOCS_CSV), reference["a"])


def test_a_damaged_chunk_is_retried_then_reported_and_the_other_movies_complete(movies, reference, tmp_path,
                                                                                 capsys) -> None:
    from rtsmlm.io.zarr_movies import write_ome_zarr

    with open_movie(movies["a"]) as m:
        broken = write_ome_zarr(tmp_path / "broken.zarr", m.read_range(0, m.n_frames), m.pixel_size_nm,
                                chunk_frames=16)
    (broken / "0" / "3.0.0").write_bytes(b"not a compressed chunk")  # frames 48-63
    out = tmp_path / "batch"
    assert batch(str(broken), str(movies["b"]), "--out", str(out), "--chunk-frames", "40", "--retries", "1") == 1
    err = capsys.readouterr().err
    assert "broken.zarr" in err and "frames 40-79" in err
    index = pd.read_csv(out / "index.csv").set_index("name")
    assert index.loc["broken", "status"] == "failed" and index.loc["movie", "status"] == "complete"
    assert not (out / "broken" / LOCS_CSV).exists()  # nothing partial passed off as complete
    assert json.loads((out / "broken" / SUMMARY_JSON).read_text())["status"] == "failed"
    assert_same_localizations(sorted_table(out / "movie" / LOCS_CSV), reference["b"])


def test_a_worker_killed_mid_batch_costs_nothing(movies, reference, tmp_path) -> None:
    from distributed import Client, LocalCluster

    from rtsmlm.batch.runner import BatchOptions, run_batch

    cfg = rconfig.load(None, ["backend.precision=fp32"])
    out = tmp_path / "batch"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        result: dict[str, object] = {}
        runner = threading.Thread(target=lambda: result.update(summary=run_batch(
            cfg, [str(movies["a"])], BatchOptions(out, scheduler=cluster.scheduler_address, chunk_frames=20,
                                                  progress=False))))
        runner.start()
        deadline = time.monotonic() + 120
        while not list((out / "movie" / "chunks").glob("*.npy")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)  # mid-batch: other chunks are running or queued
        runner.join(300)
    summary = result["summary"]
    assert [m.status for m in summary.movies] == ["complete"]  # type: ignore[attr-defined]
    assert_same_localizations(sorted_table(out / "movie" / LOCS_CSV), reference["a"])


def test_bad_input_is_one_line(tmp_path, capsys, movies) -> None:
    assert batch(str(tmp_path / "nothing.tif"), "--out", str(tmp_path / "o")) == 2
    assert "nothing.tif: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert batch(str(tmp_path / "empty"), "--out", str(tmp_path / "o")) == 2
    assert "holds no movie" in capsys.readouterr().err
    t0 = time.monotonic()
    assert main(["batch", "--quiet", str(movies["b"]), "--out", str(tmp_path / "o"),
                 "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 60


def test_sigterm_stops_the_batch_and_a_rerun_continues_from_the_chunks_done(movies, reference, tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "batch"
    cmd = [sys.executable, "-m", "rtsmlm", "batch", "--quiet", "--workers", "1", *FP32, str(movies["a"]), "--out",
           str(out), "--chunk-frames", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "movie" / "chunks").glob("*.npy")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-500:]
    done = len(list((out / "movie" / "chunks").glob("*.npy")))
    assert 1 <= done < 8 and not list((out / "movie" / "chunks").glob("*.tmp"))
    assert batch(str(movies["a"]), "--out", str(out), "--chunk-frames", "20") == 0
    index = json.loads((out / "index.json").read_text())
    assert index["chunks_skipped"] == done and index["chunks_run"] == 8 - done
    assert_same_localizations(sorted_table(out / "movie" / LOCS_CSV), reference["a"])
