"""The file-replay source on real movie files, driven by real threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rtsmlm.acquisition.file import FileSource, FrameSchedule, camera_from_metadata
from rtsmlm.acquisition.source import CameraModel, Source, SourceError
from rtsmlm.io.movies import RawMovieWriter, write_tiff_movie


def frames_of(n: int = 10) -> np.ndarray:
    """Frame k is filled with k + 1 plus a column ramp, so frames are told apart by any pixel."""
    index = np.arange(n, dtype=np.uint16)[:, None, None] + 1
    ramp = np.arange(12, dtype=np.uint16)[None, None, :]
    return index + ramp + np.zeros((n, 8, 12), np.uint16)


@pytest.fixture()
def tiff_movie(tmp_path: Path) -> Path:
    path = tmp_path / "movie.tif"
    camera = CameraModel(model="scmos", baseline_adu=400.0, e_per_adu=0.5, em_gain=1.0).describe()
    write_tiff_movie(path, frames_of(10), 108.0, camera)
    return path


def test_is_a_source_with_the_file_camera(tiff_movie: Path) -> None:
    with FileSource(tiff_movie, camera=CameraModel(qe=0.8, exposure_ms=30.0)) as src:
        assert isinstance(src, Source)
        assert src.shape == (8, 12) and src.dtype == np.dtype(np.uint16)
        assert src.control is None and src.n_frames == 10
        cam = src.camera
        # file settings win field by field; the argument fills in what the file lacks
        assert (cam.model, cam.pixel_size_nm, cam.baseline_adu, cam.e_per_adu, cam.em_gain) == (
            "scmos", 108.0, 400.0, 0.5, 1.0)
        assert cam.exposure_ms == 10.0  # describe() of the recorded camera carried its exposure
        assert cam.qe == 1.0
        assert "baseline_adu" in src.camera_from_file


def test_camera_argument_is_used_when_the_file_has_no_camera(tmp_path: Path) -> None:
    path = tmp_path / "bare.raw"
    with RawMovieWriter(path) as w:
        for f in frames_of(3):
            w.append(f)
    given = CameraModel(pixel_size_nm=133.0, em_gain=250.0)
    with FileSource(path, camera=given) as src:
        assert src.camera == given and src.camera_from_file == ()


def test_free_running_delivers_every_frame_in_order(tiff_movie: Path) -> None:
    expected = frames_of(10)
    with FileSource(tiff_movie) as src:
        src.start()
        got = list(src.frames())
    assert [f.index for f in got] == list(range(10))
    np.testing.assert_array_equal(np.stack([f.data for f in got]), expected)
    assert all(b.timestamp >= a.timestamp for a, b in zip(got, got[1:]))


def test_max_frames_limits_count_and_n_frames(tiff_movie: Path) -> None:
    with FileSource(tiff_movie, max_frames=4) as src:
        assert src.n_frames == 4
        src.start()
        assert [f.index for f in src.frames()] == [0, 1, 2, 3]
    with FileSource(tiff_movie, max_frames=50) as src:
        assert src.n_frames == 10


def test_loop_replays_with_increasing_indices(tiff_movie: Path) -> None:
    expected = frames_of(10)
    with FileSource(tiff_movie, loop=True, max_frames=25) as src:
        assert src.n_frames == 25
        src.start()
        got = list(src.frames())
    assert [f.index for f in got] == list(range(25))
    for f in got:
        np.testing.assert_array_equal(f.data, expected[f.index % 10])
    with FileSource(tiff_movie, loop=True) as src:
        assert src.n_frames is None  # endless


def test_stop_from_another_thread_interrupts_a_paced_wait(tiff_movie: Path) -> None:
    # One frame every 1000 s: the consumer can only end if stop() wakes the schedule's wait.
    src = FileSource(tiff_movie, fps=0.001, loop=True)
    src.start()
    received: list[int] = []
    first = threading.Event()

    def consume() -> None:
        for frame in src.frames():
            received.append(frame.index)
            first.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert first.wait(timeout=30)  # frame 0 is due at once
    src.stop()
    consumer.join(timeout=30)
    assert not consumer.is_alive()
    assert received == [0]
    src.stop()  # idempotent
    src.close()


def test_stop_ends_a_free_running_replay(tiff_movie: Path) -> None:
    src = FileSource(tiff_movie, loop=True)  # endless unless stopped
    src.start()
    count = 0
    for frame in src.frames():
        count += 1
        if frame.index == 6:
            src.stop()
    assert count == 7
    src.close()


def test_paced_frames_are_never_early(tiff_movie: Path) -> None:
    fps = 400.0
    with FileSource(tiff_movie, fps=fps) as src:
        src.start()
        t_before = time.perf_counter()
        got = list(src.frames())
    assert len(got) == 10
    for f in got:  # the schedule starts after t_before, and frame k is not delivered before k / fps
        assert f.timestamp - t_before >= f.index / fps


class SteppedClock:
    """A clock that moves only when told: the source's reads take ``work`` s, waits take what they ask."""

    def __init__(self, work: float) -> None:
        self.now = 100.0
        self.work = work
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


def test_schedule_does_not_accumulate_processing_time() -> None:
    clock = SteppedClock(work=0.003)
    schedule = FrameSchedule(100.0, threading.Event(), clock=clock, wait=clock.wait)
    schedule.begin()
    delivered = []
    for k in range(50):
        assert schedule.wait_until_due(k)
        delivered.append(clock.now)
        clock.now += clock.work  # reading and handing over the frame
    # Frame k leaves exactly at t0 + k / fps: the per-frame work is absorbed, not added.
    np.testing.assert_allclose(delivered, 100.0 + np.arange(50) / 100.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(clock.waits, [0.01 - 0.003] * 49, rtol=0, atol=1e-9)


def test_schedule_catches_up_after_a_stall() -> None:
    clock = SteppedClock(work=0.0)
    schedule = FrameSchedule(10.0, threading.Event(), clock=clock, wait=clock.wait)
    schedule.begin()
    assert schedule.wait_until_due(0)
    clock.now += 0.35  # the consumer stalled for 3.5 periods
    for k in (1, 2, 3):  # overdue frames go out without waiting
        assert schedule.wait_until_due(k)
    assert clock.waits == []
    assert schedule.wait_until_due(4)
    assert clock.now == pytest.approx(100.4)


def test_schedule_returns_false_once_stopped() -> None:
    stop = threading.Event()
    clock = SteppedClock(work=0.0)
    schedule = FrameSchedule(10.0, stop, clock=clock, wait=clock.wait)
    schedule.begin()
    stop.set()
    assert not schedule.wait_until_due(0)


def test_frames_requires_start_and_bad_arguments_are_named(tiff_movie: Path, tmp_path: Path) -> None:
    with FileSource(tiff_movie) as src:
        with pytest.raises(RuntimeError, match="start"):
            next(src.frames())
    with pytest.raises(ValueError, match="fps"):
        FileSource(tiff_movie, fps=-1.0)
    with pytest.raises(ValueError, match="max_frames"):
        FileSource(tiff_movie, max_frames=-3)
    with pytest.raises(SourceError, match=r"missing\.tif: movie file does not exist"):
        FileSource(tmp_path / "missing.tif")


def test_bad_camera_metadata_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    write_tiff_movie(path, frames_of(2), 100.0, {"em_gain": "high"})
    with pytest.raises(SourceError, match=r"bad\.tif: camera 'em_gain' must be a number"):
        FileSource(path)
    with pytest.raises(SourceError, match="'model' must be 'emccd' or 'scmos'"):
        camera_from_metadata({"camera": {"model": "ccd"}}, None, CameraModel(), "x.tif")
    cam, fields = camera_from_metadata({"camera": {"qe": 0.9}}, None, CameraModel(), "x.tif")
    assert cam.qe == 0.9 and fields == ("qe",)


def test_replays_the_dax_test_movie(shared_data: Path) -> None:
    path = shared_data / "storm-analysis-test" / "test.dax"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with FileSource(path, camera=CameraModel(pixel_size_nm=160.0, baseline_adu=100.0)) as src:
        assert src.camera.pixel_size_nm == 160.0  # the .dax does not record one: the argument's
        src.start()
        got = list(src.frames())
    assert len(got) == 10 and got[-1].data.shape == (256, 256)
