"""The engine inside the user's own acquisition script: a pycromanager ``Acquisition`` on a real headless
Micro-Manager core with this project's device adapter hands every image to :class:`EmbeddedRun` through
``image_process_fn``; the run analyses exactly those frames (the same localizations as ``rtsmlm run`` on
them), and handing over never blocks: what the engine cannot take is dropped and counted.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtsmlm.acquisition.push import PushSource
from rtsmlm.acquisition.source import SourceError
from rtsmlm.cli import main
from rtsmlm.io.movies import write_tiff_movie
from rtsmlm.outputs.files import LOCS_CSV, SUMMARY_JSON

REPO = Path(__file__).resolve().parent.parent


def test_push_never_blocks_and_counts_what_it_drops() -> None:
    source = PushSource((8, 8), capacity=4)
    results: list[bool] = []
    pusher = threading.Thread(target=lambda: results.extend(source.push(np.zeros((8, 8))) for _ in range(10)))
    pusher.start()
    pusher.join(10)
    assert not pusher.is_alive()  # nobody takes frames: push still returns
    assert results == [True] * 4 + [False] * 6 and source.lost_frames == 6
    source.start()
    source.end()
    assert [f.index for f in source.frames()] == [0, 1, 2, 3]  # the queued frames are delivered, then the end
    assert source.push(np.zeros((8, 8))) is False and source.lost_frames == 7
    with pytest.raises(SourceError, match=r"shape \(9, 8\), but this run analyses 8x8 frames"):
        source.push(np.zeros((9, 8)))


@pytest.mark.slow
def test_a_pycromanager_acquisition_feeds_the_engine_without_waiting_for_it(tmp_path) -> None:
    pytest.importorskip("pycromanager")
    from pycromanager import Acquisition, multi_d_acquisition_events

    from rtsmlm.acquisition.micromanager import MicroManagerSource
    from rtsmlm.embed import EmbeddedRun

    library_dir = _adapter(tmp_path)
    mm = MicroManagerSource.headless(library_dir, REPO / "plugins" / "micromanager" / "rtsmlm_sim.cfg", buffer_mb=64)
    frames: list[np.ndarray] = []
    try:
        core = mm.core
        core.setROI(0, 0, 48, 48)
        with EmbeddedRun(out=tmp_path / "run", shape=(48, 48),
                         overrides=["stream.enabled=false", "backend.threads=1", "backend.precision=fp32"]) as run:
            def process(image, metadata):
                frames.append(np.array(image))
                return run.image_process_fn(image, metadata)

            with Acquisition(directory=str(tmp_path / "acq"), name="cells", image_process_fn=process,
                             show_display=False) as acq:
                acq.acquire(multi_d_acquisition_events(num_time_points=120, time_interval_s=0))
    finally:
        mm.close()
    summary = json.loads((tmp_path / "run" / SUMMARY_JSON).read_text())
    stats = summary["source"]["stats"]
    assert stats["frames_pushed"] == len(frames) == 120
    assert summary["frames_acquired"] + stats["frames_dropped_at_push"] == 120
    assert summary["status"] == "complete" and summary["frames_missing_final"] == 0
    # The run analysed exactly the images the acquisition produced: an offline run on them agrees.
    # Both in fp32: on a CPU with bf16 instructions ('auto' is bf16 there) other batch compositions round the
    # read-outs differently; the plumbing is what is compared.
    movie = write_tiff_movie(tmp_path / "frames.tif", np.stack(frames[: summary["frames_acquired"]]), 100.0)
    assert main(["run", "--quiet", "--no-stream", "--source", str(movie), "--out", str(tmp_path / "ref"),
                 "--set", "backend.threads=1", "--set", "backend.precision=fp32"]) == 0
    got = pd.read_csv(tmp_path / "run" / LOCS_CSV).sort_values(["frame", "x", "y"]).reset_index(drop=True)
    ref = pd.read_csv(tmp_path / "ref" / LOCS_CSV).sort_values(["frame", "x", "y"]).reset_index(drop=True)
    assert len(got) == len(ref) > 0 and np.array_equal(got["frame"], ref["frame"])
    assert np.abs(got["x"] - ref["x"]).max() < 0.01


def _adapter(tmp_path: Path) -> Path:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "plugins" / "micromanager" / "build.py")], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"the Micro-Manager device adapter does not build here: {proc.stderr[-300:]}")
    return Path(proc.stdout.strip().splitlines()[-1]).parent
