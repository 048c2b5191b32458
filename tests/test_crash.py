"""``rtsmlm run`` as a real process, killed or interrupted mid-run.

The run publishes its localizations on a real ZeroMQ socket on loopback; the test subscribes and
notes when each batch arrived. SIGKILL gives the process no chance to clean up, so what is on disk
afterwards is exactly what the periodic flushes (``output.flush_interval_s``, default 1 s) had written:
every localization older than one second must be in both localization files, and every output must
still be readable. SIGINT (Ctrl-C) must stop cleanly: drain, flush, write the summary, exit 0.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from rtsmlm.core.config import Config, load
from rtsmlm.outputs.files import LOCS_CSV, LOCS_HDF5, SUMMARY_JSON, TRUTH_CSV
from rtsmlm.outputs.stream import TOPIC_LOCS, Subscriber

# Guard against a hung child process or a silent stream (model loading on a busy 2-core machine takes
# tens of seconds); never used to order events.
GUARD_S = 180.0
# How long the run keeps going after the first batch reached the test before the signal: long enough
# for several flush intervals to pass, so there are batches old enough to be checked.
RUN_AFTER_FIRST_BATCH_S = 4.0
# The files promise: what is older than one flush interval is on disk. The batch's arrival at the
# test is later than its creation in the engine (which is what "older" is measured from), so the
# margin only has to cover the engine's own flush work on a loaded machine (formatting, fsync).
FLUSH_PROMISE_S = 1.0
MARGIN_S = 0.25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_overrides(address: str) -> list[str]:
    """The config of the child process; the test rebuilds the same config to re-simulate its frames."""
    return [f"stream.address={json.dumps(address)}", "backend.threads=1"]


def start_run(tmp_path: Path, address: str) -> tuple[subprocess.Popen, Path, Path]:
    """``rtsmlm run`` on the simulated camera at its real frame rate, until stopped (max-frames 0)."""
    out = tmp_path / "run"
    log = tmp_path / "run.log"
    cmd = [sys.executable, "-m", "rtsmlm", "run", "--realtime", "--max-frames", "0", "--out", str(out),
           "--quiet"]
    for ov in run_overrides(address):
        cmd += ["--set", ov]
    with open(log, "wb") as fh:  # a file, not a pipe: a pipe nobody reads would block the child's logging
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path)
    return proc, out, log


def receive_until(sub: Subscriber, proc: subprocess.Popen, log: Path, seconds_after_first: float):
    """(arrival time, message) of every locs batch until ``seconds_after_first`` after the first one."""
    received = []
    deadline = time.monotonic() + GUARD_S
    while True:
        now = time.monotonic()
        if received and now >= received[0][0] + seconds_after_first:
            return received
        assert now < deadline, f"no localizations streamed within {GUARD_S} s:\n{log.read_text()[-3000:]}"
        assert proc.poll() is None, f"rtsmlm run exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        msg = sub.recv(timeout=0.5)
        if msg is not None and msg.topic == TOPIC_LOCS:
            received.append((time.monotonic(), msg))


def simulated_frames_and_truth(cfg: Config, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames and truth rows the (deterministic) simulated camera delivers first for ``cfg``."""
    from rtsmlm.acquisition.simulated import SimulatedCamera

    truths = []
    cam = SimulatedCamera(cfg, max_frames=n)
    cam.set_truth_sink(lambda r: truths.append(r.emitters))
    cam.start()
    frames = np.stack([f.data for f in cam.frames()])
    return frames, np.concatenate(truths)


def rows_of_frames(table: np.ndarray, first: int, last: int) -> np.ndarray:
    """frame, x, y of the rows of frames ``first..last``, sorted (any table with those columns)."""
    sel = table[(table["frame"] >= first) & (table["frame"] <= last)]
    rows = np.empty(len(sel), dtype=[("frame", "<i8"), ("x", "<f8"), ("y", "<f8")])
    for name in rows.dtype.names:
        rows[name] = sel[name]
    return np.sort(rows, order=["frame", "x", "y"])


@pytest.mark.slow  # starts a process that loads torch and the model: ~15-40 s on a busy 2-core machine
def test_sigkill_mid_run_keeps_every_localization_older_than_one_second(tmp_path):
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.io.movies import open_movie

    address = f"tcp://127.0.0.1:{free_port()}"
    with Subscriber(address, (TOPIC_LOCS,)) as sub:
        proc, out, log = start_run(tmp_path, address)
        try:
            received = receive_until(sub, proc, log, RUN_AFTER_FIRST_BATCH_S)
            t_kill = time.monotonic()
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()  # no-op after SIGKILL; ends the child if an assertion fired first
            proc.wait(GUARD_S)
    assert proc.returncode == -signal.SIGKILL

    old = [msg for t, msg in received if t <= t_kill - FLUSH_PROMISE_S - MARGIN_S]
    assert old, "no batch old enough to check: the run streamed too little before the kill"
    assert sum(m.n for m in old) > 0, "the old batches hold no localization to look for"

    # Every output is readable after the kill. The CSV may end in a half-written line (ignored, with a
    # warning); the HDF5 file still carries the SWMR writer's flag; raw.tif lacks its page index.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csv_locs = read_locs(out / LOCS_CSV)
        h5_locs = read_locs(out / LOCS_HDF5)
        truth = read_locs(out / TRUTH_CSV)
        with open_movie(out / "raw.tif") as movie:
            raw = np.stack([movie.read(i) for i in range(len(movie))])
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["status"] == "running" and summary["output_dir"] == str(out)

    # Every localization of every batch older than a flush interval is in both files.
    # The Picasso file holds rows in the outer half of an edge pixel just inside the image (its loader
    # drops them otherwise): expect them there.
    pixel = summary["source"]["camera"]["pixel_size_nm"]
    height, width = summary["source"]["shape"]

    def picasso_view(locs: np.ndarray) -> np.ndarray:
        locs = locs.copy()
        for axis, size in (("x", width), ("y", height)):
            locs[axis] = np.clip(locs[axis], (0.5 + 1e-3) * pixel, (size - 1e-3 + 0.5) * pixel)
        return locs

    for msg in old:
        for name, table in ((LOCS_CSV, csv_locs), (LOCS_HDF5, h5_locs)):
            want = rows_of_frames(msg.locs if name == LOCS_CSV else picasso_view(msg.locs),
                                  msg.first_frame, msg.last_frame)
            got = rows_of_frames(table, msg.first_frame, msg.last_frame)
            where = f"{name}, frames {msg.first_frame}-{msg.last_frame}"
            assert len(got) == len(want), where
            np.testing.assert_array_equal(got["frame"], want["frame"], err_msg=where)
            np.testing.assert_allclose(got["x"], want["x"], atol=0.01, err_msg=where)
            np.testing.assert_allclose(got["y"], want["y"], atol=0.01, err_msg=where)

    # The camera frames and their ground truth are on disk at least up to the last frame checked above
    # (those frames were acquired before they were localized), identical to what the camera delivered.
    last_old = max(m.last_frame for m in old)
    assert len(raw) > last_old
    frames, sim_truth = simulated_frames_and_truth(load(None, run_overrides(address)), len(raw))
    np.testing.assert_array_equal(raw, frames)
    assert int(truth["frame"].max()) >= int(sim_truth["frame"][sim_truth["frame"] <= last_old].max())
    want = rows_of_frames(sim_truth, 0, last_old)
    got = rows_of_frames(truth, 0, last_old)
    assert len(got) == len(want)
    np.testing.assert_array_equal(got["frame"], want["frame"])
    np.testing.assert_allclose(got["x"], want["x"], atol=0.01)


@pytest.mark.slow  # starts a process that loads torch and the model: ~15-40 s on a busy 2-core machine
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_stops_cleanly_drains_flushes_writes_the_summary_and_exits_0(tmp_path, stop_signal):
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.io.movies import open_movie

    address = f"tcp://127.0.0.1:{free_port()}"
    with Subscriber(address, (TOPIC_LOCS,)) as sub:
        proc, out, log = start_run(tmp_path, address)
        try:
            receive_until(sub, proc, log, 1.0)
            proc.send_signal(stop_signal)
            # The end-of-run marker follows the last batch once the run has drained.
            final = None
            deadline = time.monotonic() + GUARD_S
            while final is None and time.monotonic() < deadline:
                msg = sub.recv(timeout=1.0)
                if msg is not None and msg.final:
                    final = msg
            rc = proc.wait(GUARD_S)
        finally:
            proc.kill()
            proc.wait(GUARD_S)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert final is not None, "no end-of-run marker on the stream"

    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["status"] == "complete" and summary["errors"] == []
    acquired = summary["frames_acquired"]
    assert acquired > 0
    # Live: localized, skipped (latency bound) or lost; the skipped and lost ones are caught up after.
    assert (summary["frames_localized"] + summary["frames_skipped_live"]
            + summary["frames_lost_localizer"]) == acquired
    assert summary["frames_missing_final"] == 0
    assert summary["frames_recorded"] == acquired and summary["frames_lost_recorder"] == 0
    assert final.stats["n_locs"] == summary["n_locs"] == summary["stream"]["n_locs"]
    # Everything is flushed and closed: no warning about partial lines or a writer still open.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_locs(out / LOCS_CSV)) == summary["n_locs"]
        assert len(read_locs(out / LOCS_HDF5)) == summary["n_locs"]
        with open_movie(out / "raw.tif") as movie:
            assert len(movie) == acquired
        assert int(read_locs(out / TRUTH_CSV)["frame"].max()) < acquired
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def _check_readable_after_kill(out: Path) -> None:
    """Every file a killed run leaves opens in the tools users read it with."""
    import h5py
    import pandas as pd
    import tifffile

    for csv_name in (LOCS_CSV, TRUTH_CSV):
        if (out / csv_name).exists():
            table = pd.read_csv(out / csv_name, on_bad_lines="skip")
            assert {"frame", "x", "y"} <= set(table.columns), csv_name
    if (out / LOCS_HDF5).exists():
        with h5py.File(out / LOCS_HDF5, "r", swmr=True) as f:
            assert f["locs"].dtype.names[:3] == ("frame", "x", "y")
    if (out / "raw.tif").exists():
        with tifffile.TiffFile(out / "raw.tif") as tif:
            for page in tif.pages[:-1]:  # every flushed frame is a page of its own (the last may be cut)
                assert page.shape == tif.pages[0].shape
    json.loads((out / SUMMARY_JSON).read_text())


@pytest.mark.slow  # five killed runs per source: ~1-2 min on a busy 2-core machine
@pytest.mark.parametrize("kind", ["simulator", "file"])
def test_sigkill_at_random_moments_leaves_every_file_readable(tmp_path, kind):
    rng = np.random.default_rng(11)
    source = []
    if kind == "file":
        from rtsmlm.cli import main

        assert main(["simulate", "--frames", "3000", "--size", "64", "--out", str(tmp_path / "sim"), "--quiet"]) == 0
        source = ["--source", str(tmp_path / "sim" / "movie.tif")]
    for trial in range(5):
        out = tmp_path / f"run{trial}"
        log = tmp_path / f"run{trial}.log"
        cmd = [sys.executable, "-m", "rtsmlm", "run", "--max-frames", "0", "--out", str(out), "--quiet",
               "--no-stream", "--set", "backend.threads=1", *source]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + GUARD_S
            while not (out / SUMMARY_JSON).exists():  # the run has opened its outputs
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(float(rng.uniform(0.2, 4.0)))  # a random moment of the run
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(GUARD_S)
        _check_readable_after_kill(out)
