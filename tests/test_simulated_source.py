"""The simulated camera behind the Source protocol: order, ground truth, laser control, stop, determinism.

Real threads, synchronised with Events; ``join(timeout)`` only guards against a hung test.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from scipy import stats

from rtsmlm.acquisition.simulated import LASER_DEVICE, LASER_PROPERTY, SimulatedCamera
from rtsmlm.acquisition.source import Control, PublishesTruth, Source, SourceError, TruthRecord
from rtsmlm.core import config
from rtsmlm.sim import Simulator

JOIN_S = 30.0


def small_cfg(*overrides: str) -> config.Config:
    return config.load(overrides=["sim.size=32", "sim.density=1.0", *overrides])


def test_frames_come_in_order_with_their_truth_first() -> None:
    events: list[tuple[str, int]] = []
    truths: dict[int, np.ndarray] = {}

    def on_truth(record: TruthRecord) -> None:
        events.append(("truth", record.frame))
        truths[record.frame] = record.emitters
        assert record.drift_nm is None  # no drift simulated

    cam = SimulatedCamera(small_cfg(), max_frames=25)
    assert isinstance(cam, Source) and isinstance(cam.control, Control) and isinstance(cam, PublishesTruth)
    cam.set_truth_sink(on_truth)
    assert cam.shape == (32, 32) and cam.dtype == np.uint16 and cam.n_frames == 25
    cam.start()
    frames = []
    for frame in cam.frames():
        events.append(("frame", frame.index))
        frames.append(frame)
    cam.close()
    assert [f.index for f in frames] == list(range(25))
    assert all(f.data.shape == (32, 32) and f.data.dtype == np.uint16 for f in frames)
    assert all(b.timestamp >= a.timestamp for a, b in itertools.pairwise(frames))
    # Exactly one truth record per frame, delivered before that frame.
    assert events == [e for i in range(25) for e in (("truth", i), ("frame", i))]
    assert all(np.all(truths[i]["frame"] == i) for i in truths)
    assert sum(len(t) for t in truths.values()) > 0


def test_camera_model_matches_the_config() -> None:
    cfg = small_cfg("camera.pixel_size_nm=160", "camera.em_gain=200")
    cam = SimulatedCamera(cfg, max_frames=1)
    assert cam.camera.pixel_size_nm == 160.0 and cam.camera.em_gain == 200.0
    assert cam.camera.model == "emccd"


def test_same_seed_same_movie_and_truth_and_the_seed_argument_overrides_the_config() -> None:
    cfg = small_cfg("sim.seed=21", "sim.drift.enabled=true")

    def record(seed: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        truths: list[np.ndarray] = []
        cam = SimulatedCamera(cfg, max_frames=15, seed=seed)
        cam.set_truth_sink(lambda r: truths.append(r.emitters))
        cam.start()
        return np.stack([f.data for f in cam.frames()]), truths

    a_frames, a_truth = record()
    b_frames, b_truth = record()
    c_frames, _ = record(seed=22)
    assert np.array_equal(a_frames, b_frames)
    assert all(np.array_equal(x, y) for x, y in zip(a_truth, b_truth, strict=True))
    assert not np.array_equal(a_frames, c_frames)
    # The plain simulator with the same seed is the same acquisition.
    sim = Simulator(cfg)
    for i in range(15):
        frame, truth = sim.step()
        assert np.array_equal(frame, a_frames[i]) and np.array_equal(truth, a_truth[i])


def test_activation_laser_power_sets_the_activation_rate() -> None:
    cam = SimulatedCamera(small_cfg("sim.size=64", "sim.density=0.5"))
    control = cam.control
    assert control.get_property(LASER_DEVICE, LASER_PROPERTY) == 1.0
    pp = cam.sim.photophysics
    cam.start()
    frames = cam.frames()

    def activations_over(n: int) -> int:
        before = pp.n_activations
        for _ in itertools.islice(frames, n):
            pass
        return pp.n_activations - before

    control.set_property(LASER_DEVICE, LASER_PROPERTY, 0)
    assert control.get_property(LASER_DEVICE, LASER_PROPERTY) == 0.0
    assert activations_over(50) == 0
    # Laser off: once the molecules that were on have finished, frames show no emitters.
    assert pp.n_on == 0

    control.set_property(LASER_DEVICE, LASER_PROPERTY, "1")  # Micro-Manager properties may be strings
    at_1 = activations_over(300)
    control.set_property(LASER_DEVICE, LASER_PROPERTY, 4.0)
    at_4 = activations_over(300)
    cam.stop()
    # Equal frames at rates r and 4r: given the total, the count at 4r is binomial(total, 4/5) (the OFF
    # pool hardly changes: < 1 % of the labels are on or bleached here).
    assert at_1 > 100
    assert stats.binomtest(at_4, at_1 + at_4, 0.8).pvalue > 1e-4, (at_1, at_4)


def test_control_refuses_unknown_properties_and_negative_power() -> None:
    control = SimulatedCamera(small_cfg()).control
    with pytest.raises(SourceError, match="Laser488.Power"):
        control.set_property("Laser488", "Power", 1.0)
    with pytest.raises(SourceError, match="ActivationLaser.Voltage"):
        control.get_property(LASER_DEVICE, "Voltage")
    for bad in (-0.5, float("nan"), "high", None):
        with pytest.raises(SourceError, match="Power"):
            control.set_property(LASER_DEVICE, LASER_PROPERTY, bad)
    assert control.get_property(LASER_DEVICE, LASER_PROPERTY) == 1.0


@pytest.mark.parametrize("realtime", [False, True])
def test_stop_from_another_thread_ends_frames(realtime: bool) -> None:
    """An endless camera; the consumer thread ends when another thread calls stop().

    In real-time mode the exposure is one minute, so stop() comes before the first frame is due (the
    consumer is about to wait for it, or already waiting): frames() must end without waiting it out.
    """
    cfg = small_cfg("camera.exposure_ms=60000") if realtime else small_cfg()
    cam = SimulatedCamera(cfg, realtime=realtime)
    # Real time: stop as soon as the consumer is about to iterate; else once three frames arrived.
    wanted = 0 if realtime else 3
    ready = threading.Event()
    got: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            if wanted == 0:
                ready.set()
            for frame in cam.frames():
                got.append(frame.index)
                if len(got) == wanted:
                    ready.set()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    cam.start()  # before the thread: start() re-arms the camera, so it must not race with stop()
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert ready.wait(JOIN_S)
    cam.stop()
    thread.join(JOIN_S)
    assert not thread.is_alive(), "frames() did not end after stop()"
    assert not errors, errors
    assert got == list(range(len(got)))
    if realtime:
        assert got == []  # the first exposure had not finished when stop() came
    cam.close()


def test_movie_and_dark_frames_are_the_simulator_stepped_and_the_camera_without_light() -> None:
    cfg = small_cfg("sim.seed=4")
    frames, truth = Simulator(cfg).movie(6)
    stepped = Simulator(cfg)
    steps = [stepped.step() for _ in range(6)]
    assert frames.dtype == np.uint16 and np.array_equal(frames, np.stack([f for f, _ in steps]))
    assert np.array_equal(truth, np.concatenate([t for _, t in steps]))
    dark = Simulator(cfg).dark_frames(4)
    assert dark.shape == (4, *frames.shape[1:]) and abs(float(dark.mean()) - cfg.camera.baseline_adu) < 1.0
