"""The listener relay: order, bounded lag with counted loss, side events, failures, the watchdog."""

from __future__ import annotations

import threading
import time

import numpy as np

from rtsmlm.acquisition.source import TruthRecord
from rtsmlm.core.locs import LOC_DTYPE, LocalizationStream
from rtsmlm.engine.listener import Listener, RunEnd, RunStart, hooks_of
from rtsmlm.engine.relay import ListenerRelay, merge_section


def _fill(stream: LocalizationStream, n_batches: int, locs_per_batch: int = 3) -> None:
    for i in range(n_batches):
        locs = np.zeros(locs_per_batch, LOC_DTYPE)
        locs["frame"] = i
        stream.append(i, i, locs)


class Recording:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.events: list[tuple[str, int]] = []
        self.delay_s = delay_s
        self.ticks = 0

    def on_run_start(self, run: RunStart) -> None:
        self.events.append(("start", 0))

    def on_truth(self, record: TruthRecord) -> None:
        self.events.append(("truth", record.frame))

    def on_batch(self, batch) -> None:
        time.sleep(self.delay_s)
        self.events.append(("batch", batch.first_frame))

    def on_tick(self) -> None:
        self.ticks += 1

    def on_run_end(self, end: RunEnd):
        return {"recording": {"n": len(self.events)}}


def _run(relay: ListenerRelay, stream: LocalizationStream, timeout: float = 30.0) -> None:
    relay.start(RunStart("test"))
    assert relay.started.wait(timeout)
    stream.close()
    assert relay.thread is not None
    relay.thread.join(timeout)
    assert not relay.thread.is_alive()


def test_a_lossless_listener_sees_every_batch_in_order_and_truth_before_the_batches_after_it() -> None:
    failures: list[tuple] = []
    stream = LocalizationStream(retain=False)
    listener = Recording()
    listener.max_lag_batches = None
    relay = ListenerRelay(listener, stream, flush_interval_s=0.05, on_failure=lambda *a: failures.append(a))
    relay.post("on_truth", TruthRecord(0, np.zeros(0)))
    _fill(stream, 50)
    _run(relay, stream)
    batches = [f for kind, f in listener.events if kind == "batch"]
    assert batches == list(range(50)) and listener.events[:2] == [("start", 0), ("truth", 0)]
    assert relay.report().batches == 50 and relay.report().batches_lost == 0 and failures == []
    assert listener.ticks >= 1  # the final flush at least
    assert relay.end(RunEnd({})) == {"recording": {"n": 52}}


def test_a_listener_that_falls_behind_loses_the_oldest_batches_counted_and_memory_is_released() -> None:
    stream = LocalizationStream(retain=False)
    listener = Recording()
    listener.max_lag_batches = 5
    relay = ListenerRelay(listener, stream, flush_interval_s=0.05, on_failure=lambda *a: None)
    _fill(stream, 40, locs_per_batch=2)  # all waiting before the listener starts: 35 over its bound
    _run(relay, stream)
    report = relay.report()
    assert report.batches_lost == 35 and report.locs_lost == 70 and report.batches == 5
    assert [f for kind, f in listener.events if kind == "batch"] == list(range(35, 40))


def test_a_failing_critical_listener_is_reported_with_stop_and_a_plugin_that_blocks_is_disabled() -> None:
    class Broken:
        name = "broken"
        critical = True

        def on_batch(self, batch):
            raise OSError(28, "No space left on device")

    failures: list[tuple] = []
    stream = LocalizationStream(retain=False)
    relay = ListenerRelay(Broken(), stream, flush_interval_s=0.05, on_failure=lambda *a: failures.append(a))
    _fill(stream, 3)
    _run(relay, stream)
    (where, text, stop, exc), = failures
    assert "broken" in where and stop is True and isinstance(exc, OSError) and "No space left" in text
    assert relay.report().active is False

    release = threading.Event()

    class Blocking:
        def on_batch(self, batch):
            release.wait(60)

    stream = LocalizationStream(retain=False)
    failures.clear()
    relay = ListenerRelay(Blocking(), stream, flush_interval_s=0.05, on_failure=lambda *a: failures.append(a),
                          hook_timeout_s=0.2, name="blocking")
    _fill(stream, 5)
    t0 = time.perf_counter()
    _run(relay, stream)
    release.set()
    assert time.perf_counter() - t0 < 20
    assert relay.error == "on_batch: did not return within 0.2 s" and failures == []  # contained: a plugin


def test_hooks_of_maps_old_plugin_names_and_skips_the_protocols_own_stubs() -> None:
    class Old:
        def on_start(self, run): ...
        def on_localizations(self, batch): ...
        def on_stop(self, summary): ...

    class New(Listener):
        name = "new"

        def on_batch(self, batch): ...

    assert {k: v[0] for k, v in hooks_of(Old()).items()} == {"on_run_start": "on_start", "on_batch": "on_localizations",
                                                             "on_run_end": "on_stop"}
    assert set(hooks_of(New())) == {"on_batch"}


def test_merge_section_merges_mappings_and_keeps_plain_values() -> None:
    summary = {"outputs": {"a": 1}, "status": "complete"}
    merge_section(summary, {"outputs": {"b": 2}, "status": "x", "new": {"c": 3}}, "test")
    assert summary == {"outputs": {"a": 1, "b": 2}, "status": "complete", "new": {"c": 3}}
