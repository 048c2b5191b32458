"""The frame ring buffer with real threads: ordering, independent readers, loss accounting, close, torn reads.

Threads are synchronised with Events only; `join(timeout)` is a guard against a hung test, never the
synchronisation itself.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rtsmlm.acquisition.ring import RingBuffer, RingClosed, RingReader
from rtsmlm.acquisition.source import Frame

SHAPE = (8, 6)
JOIN_S = 30.0  # generous guard against a deadlocked test on a loaded 2-core machine


def pixels_for(index: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A frame whose every pixel encodes its source index, so a torn or misplaced frame is visible."""
    return np.full(shape, index % 65536, dtype=np.uint16)


def write_indices(ring: RingBuffer, indices: list[int]) -> None:
    for i in indices:
        ring.write(pixels_for(i, ring.shape), i, timestamp=1000.0 + i)


def assert_frame_consistent(frame: Frame) -> None:
    assert frame.data.dtype == np.uint16
    assert np.all(frame.data == frame.index % 65536), f"frame {frame.index} holds pixels of another frame"
    assert frame.timestamp == 1000.0 + frame.index


def run_thread(target, *args) -> threading.Thread:
    """Start ``target`` in a thread that re-raises nothing but stores its exception for the test."""
    errors: list[BaseException] = []

    def wrapper() -> None:
        try:
            target(*args)
        except BaseException as exc:  # surfaced by finish()
            errors.append(exc)

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def finish(thread: threading.Thread) -> None:
    thread.join(JOIN_S)
    assert not thread.is_alive(), "thread did not finish"
    if thread.errors:  # type: ignore[attr-defined]
        raise thread.errors[0]  # type: ignore[attr-defined]


def drain(reader: RingReader) -> list[Frame]:
    """Everything left for ``reader`` once the ring is closed."""
    return list(reader)


# -- basic behaviour ---------------------------------------------------------------------------------------


def test_frames_come_back_in_order_with_index_timestamp_and_pixels() -> None:
    ring = RingBuffer(16, SHAPE)
    reader = ring.add_reader("loc")
    write_indices(ring, list(range(10)))
    ring.close()
    frames = drain(reader)
    assert [f.index for f in frames] == list(range(10))
    for f in frames:
        assert_frame_consistent(f)
    assert reader.n_read == 10 and reader.n_lost == 0
    assert ring.n_written == 10


def test_returned_frames_are_copies_not_views_of_the_ring() -> None:
    ring = RingBuffer(2, SHAPE)
    reader = ring.add_reader("loc")
    write_indices(ring, [7])
    frame = reader.read(timeout=0)
    assert frame is not None
    write_indices(ring, [8, 9])  # overwrites both slots, including the one frame 7 was in
    assert np.all(frame.data == 7)
    frame.data[:] = 0  # writing to the copy must not reach the ring
    assert [f.index for f in reader.read_many(10, timeout=0)] == [8, 9]


def test_concurrent_reader_gets_ordered_frames_and_every_frame_is_read_or_lost() -> None:
    ring = RingBuffer(8, SHAPE)
    reader = ring.add_reader("loc")
    n = 2000
    got: list[Frame] = []

    def consume() -> None:
        got.extend(reader)

    thread = run_thread(consume)
    write_indices(ring, list(range(n)))
    ring.close()
    finish(thread)
    received = [f.index for f in got]
    assert received == sorted(received) and len(set(received)) == len(received)
    lost = reader.lost_indices.tolist()
    assert sorted(received + lost) == list(range(n)), "a frame was neither delivered nor recorded as lost"
    assert reader.n_read == len(received) and reader.n_lost == len(lost)
    for f in got:
        assert_frame_consistent(f)


def test_readers_are_independent() -> None:
    ring = RingBuffer(32, SHAPE)
    fast = ring.add_reader("fast")
    slow = ring.add_reader("slow")
    write_indices(ring, list(range(20)))
    assert [f.index for f in fast.read_many(100, timeout=0)] == list(range(20))
    assert fast.fill == 0 and slow.fill == 20
    assert [f.index for f in slow.read_many(5, timeout=0)] == [0, 1, 2, 3, 4]
    write_indices(ring, [20, 21])
    ring.close()
    assert [f.index for f in drain(slow)] == list(range(5, 22))
    assert [f.index for f in drain(fast)] == [20, 21]
    assert fast.n_lost == slow.n_lost == 0


def test_a_reader_behind_the_bound_jumps_to_the_present() -> None:
    """skip_if_stale: nothing while the oldest unclaimed frame is recent; once it is older than the bound,
    every unclaimed frame (stale or not) but the newest ``keep`` is skipped in one run, recorded apart from
    losses, and reading goes on with the next frame."""
    ring = RingBuffer(32, SHAPE)
    reader = ring.add_reader("localizer")
    other = ring.add_reader("recorder")
    write_indices(ring, list(range(10)))  # timestamps 1000..1009
    assert reader.skip_if_stale(1000.0) == 0  # frame 0 is exactly at the bound: not stale
    assert [f.index for f in reader.read_many(2, timeout=0)] == [0, 1]
    assert reader.skip_if_stale(1002.5) == 8  # frame 2 is stale: 2..9 go, the recent 3..9 with it
    assert reader.skipped_indices.tolist() == list(range(2, 10)) and reader.n_skipped == 8
    assert reader.skip_if_stale(2000.0) == 0  # nothing unclaimed
    write_indices(ring, [10, 11])
    assert [f.index for f in reader.read_many(10, timeout=0)] == [10, 11]
    assert reader.n_lost == 0 and reader.lost_indices.tolist() == []
    assert [f.index for f in other.read_many(100, timeout=0)] == list(range(12))  # the other reader keeps all
    write_indices(ring, [12, 13, 14, 15])
    assert reader.skip_if_stale(1013.5, keep=2) == 2  # the newest two stay: a sequence, not a lone frame
    assert [f.index for f in reader.read_many(10, timeout=0)] == [14, 15]
    write_indices(ring, [16])
    assert reader.skip_if_stale(2000.0, keep=2) == 0  # one stale frame, and it is among the newest two


def test_two_reader_threads_each_see_the_whole_stream() -> None:
    n = 300
    ring = RingBuffer(n, SHAPE)  # large enough that nobody can lose anything
    readers = [ring.add_reader(f"r{i}") for i in range(2)]
    results: dict[str, list[int]] = {r.name: [] for r in readers}

    def consume(reader: RingReader) -> None:
        while True:
            batch = reader.read_many(7, timeout=None)
            if not batch:
                return
            for f in batch:
                assert_frame_consistent(f)
            results[reader.name].extend(f.index for f in batch)

    threads = [run_thread(consume, r) for r in readers]
    write_indices(ring, list(range(n)))
    ring.close()
    for t in threads:
        finish(t)
    for r in readers:
        assert results[r.name] == list(range(n))
        assert r.n_lost == 0 and r.at_end


# -- loss accounting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "indices",
    [
        pytest.param(list(range(100, 100 + 4 * 8)), id="consecutive"),
        pytest.param([3 * i + (i % 5 == 0) * 1 for i in range(4 * 8)], id="with-gaps"),
    ],
)
def test_stalled_reader_gets_newest_frames_and_exact_lost_indices(indices: list[int]) -> None:
    n_slots = 8
    ring = RingBuffer(n_slots, SHAPE)
    reader = ring.add_reader("stalls")
    head, rest = indices[:n_slots], indices[n_slots:]  # rest: 3N frames written while the reader stalls
    assert len(rest) == 3 * n_slots
    read_head = threading.Event()
    resume = threading.Event()
    got: list[Frame] = []

    def consume() -> None:
        for _ in head:
            frame = reader.read(timeout=None)
            assert frame is not None
            got.append(frame)
        read_head.set()
        resume.wait()  # the stall: the writer goes on meanwhile
        got.extend(reader)

    thread = run_thread(consume)
    write_indices(ring, head)
    assert read_head.wait(JOIN_S)
    write_indices(ring, rest)
    assert reader.fill == n_slots and reader.fill_fraction == 1.0
    resume.set()
    ring.close()
    finish(thread)

    assert [f.index for f in got] == head + rest[-n_slots:]
    assert reader.lost_indices.tolist() == rest[:-n_slots]
    assert reader.n_lost == 2 * n_slots and reader.n_read == 2 * n_slots
    for f in got:
        assert_frame_consistent(f)


def test_loss_is_per_reader() -> None:
    ring = RingBuffer(4, SHAPE)
    keeps_up = ring.add_reader("keeps-up")
    lags = ring.add_reader("lags")
    for i in range(12):
        write_indices(ring, [i])
        assert keeps_up.read(timeout=0).index == i
    ring.close()
    assert [f.index for f in drain(lags)] == [8, 9, 10, 11]
    assert lags.lost_indices.tolist() == list(range(8))
    assert keeps_up.n_lost == 0 and keeps_up.lost_indices.size == 0


def test_stats_report_fill_and_totals() -> None:
    ring = RingBuffer(4, SHAPE)
    a = ring.add_reader("a")
    b = ring.add_reader("b")
    write_indices(ring, list(range(6)))
    a.read_many(3, timeout=0)
    stats = ring.stats()
    assert stats.capacity == 4 and stats.n_written == 6 and not stats.closed
    by_name = {r.name: r for r in stats.readers}
    assert by_name["a"].fill == 1 and by_name["a"].n_read == 3 and by_name["a"].n_lost == 2
    assert by_name["b"].fill == 4 and by_name["b"].fill_fraction == 1.0 and by_name["b"].n_lost == 2
    assert b.stats() == by_name["b"]


def test_reader_added_late_starts_at_next_frame_or_oldest_held() -> None:
    ring = RingBuffer(4, SHAPE)
    write_indices(ring, list(range(6)))
    late = ring.add_reader("late")
    oldest = ring.add_reader("oldest", from_oldest=True)
    write_indices(ring, [6])
    ring.close()
    assert [f.index for f in drain(late)] == [6]
    # Frames 2..5 were held when it attached; writing 6 then evicted 2.
    assert [f.index for f in drain(oldest)] == [3, 4, 5, 6]
    assert oldest.lost_indices.tolist() == [2]


def test_removed_reader_is_no_longer_tracked() -> None:
    ring = RingBuffer(4, SHAPE)
    reader = ring.add_reader("gone")
    ring.remove_reader(reader)
    write_indices(ring, list(range(10)))
    assert reader.n_lost == 0
    assert ring.stats().readers == ()
    with pytest.raises(KeyError, match="gone"):
        ring.remove_reader("gone")


# -- close semantics -------------------------------------------------------------------------------------


def test_close_wakes_a_blocked_reader_after_it_drained_everything() -> None:
    ring = RingBuffer(8, SHAPE)
    reader = ring.add_reader("loc")
    first_read = threading.Event()
    results: list[Frame | None] = []

    def consume() -> None:
        results.append(reader.read(timeout=None))
        first_read.set()
        results.append(reader.read(timeout=None))  # blocks until close

    thread = run_thread(consume)
    write_indices(ring, [0])
    assert first_read.wait(JOIN_S)
    ring.close()
    finish(thread)
    assert results[0] is not None and results[0].index == 0
    assert results[1] is None
    assert reader.at_end
    assert reader.read_many(4, timeout=None) == []


def test_frames_written_before_close_are_still_delivered() -> None:
    ring = RingBuffer(8, SHAPE)
    reader = ring.add_reader("loc")
    write_indices(ring, [0, 1, 2])
    ring.close()
    assert ring.closed and not reader.at_end
    assert [f.index for f in reader.read_many(2, timeout=None)] == [0, 1]
    assert reader.read(timeout=None).index == 2
    assert reader.read(timeout=None) is None and reader.at_end


def test_write_after_close_is_refused() -> None:
    ring = RingBuffer(4, SHAPE)
    ring.close()
    with pytest.raises(RingClosed, match="frame 5"):
        write_indices(ring, [5])


def test_timeout_on_an_open_empty_ring_returns_nothing_and_is_not_end() -> None:
    ring = RingBuffer(4, SHAPE)
    reader = ring.add_reader("loc")
    assert reader.read(timeout=0) is None
    assert reader.read_many(3, timeout=0.01) == []
    assert not reader.at_end


# -- torn-read protection --------------------------------------------------------------------------------


def test_hammered_ring_never_returns_a_torn_frame() -> None:
    # A big frame makes each copy long enough for the writer to lap a 3-slot ring during it.
    shape = (256, 256)
    ring = RingBuffer(3, shape)
    readers = [ring.add_reader(f"r{i}") for i in range(2)]
    n = 3000
    indices = [(i * 7919) % 200_000 for i in range(n)]  # crosses 65536, so pixels hold index mod 65536
    got: dict[str, list[int]] = {r.name: [] for r in readers}
    peeked: list[Frame] = []

    def consume(reader: RingReader) -> None:
        while True:
            batch = reader.read_many(3, timeout=None)
            if not batch:
                return
            for f in batch:
                assert np.all(f.data == f.index % 65536), f"torn frame {f.index} returned to {reader.name}"
            got[reader.name].extend(f.index for f in batch)
            frame = ring.peek_latest()
            assert np.all(frame.data == frame.index % 65536), f"torn frame {frame.index} from peek_latest"
            peeked.append(frame)

    threads = [run_thread(consume, r) for r in readers]
    for i in indices:
        ring.write(np.full(shape, i % 65536, dtype=np.uint16), i, float(i))
    ring.close()
    for t in threads:
        finish(t)
    for r in readers:
        received = got[r.name]
        assert len(set(received)) == len(received)
        assert sorted(received + r.lost_indices.tolist()) == sorted(indices)
        assert r.n_read + r.n_lost == n
    assert peeked, "the readers never got a frame"


class PausingRing(RingBuffer):
    """A ring whose first reader copy pauses between claiming a frame and copying its pixels.

    This is the window in which a real writer can overwrite a claimed slot; the pause makes it happen
    deterministically so the seqlock check is exercised every time.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.claimed = threading.Event()
        self.overwritten = threading.Event()

    def _copy_out(self, first_write: int, count: int, out: np.ndarray) -> None:
        if not self.claimed.is_set():
            self.claimed.set()
            assert self.overwritten.wait(JOIN_S)
        super()._copy_out(first_write, count, out)


def test_frame_overwritten_during_the_copy_counts_as_lost_not_returned() -> None:
    ring = PausingRing(4, SHAPE)
    reader = ring.add_reader("loc")
    write_indices(ring, [10])
    results: list[Frame | None] = []
    thread = run_thread(lambda: results.append(reader.read(timeout=None)))
    assert ring.claimed.wait(JOIN_S)  # the reader holds frame 10 and is about to copy it
    write_indices(ring, [11, 12, 13, 14])  # the fourth write reuses frame 10's slot
    ring.overwritten.set()
    finish(thread)
    assert results[0] is not None and results[0].index == 11
    assert_frame_consistent(results[0])
    assert reader.lost_indices.tolist() == [10]
    assert reader.n_torn == 1 and reader.n_lost == 1
    ring.close()
    assert [f.index for f in drain(reader)] == [12, 13, 14]


# -- peek and input validation ---------------------------------------------------------------------------


def test_peek_latest_returns_newest_without_moving_readers() -> None:
    ring = RingBuffer(4, SHAPE)
    reader = ring.add_reader("loc")
    assert ring.peek_latest() is None
    write_indices(ring, [0, 1, 2])
    latest = ring.peek_latest()
    assert latest is not None and latest.index == 2
    assert_frame_consistent(latest)
    assert reader.fill == 3
    assert [f.index for f in reader.read_many(10, timeout=0)] == [0, 1, 2]


def test_bad_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="at least 2 slots"):
        RingBuffer(1, SHAPE)
    ring = RingBuffer(4, SHAPE)
    ring.add_reader("loc")
    with pytest.raises(ValueError, match="already has a reader named 'loc'"):
        ring.add_reader("loc")
    with pytest.raises(ValueError, match=r"frame 3 has shape \(5, 5\)"):
        ring.write(np.zeros((5, 5), np.uint16), 3, 0.0)
    with pytest.raises(TypeError, match="frame 4 has pixel type float32"):
        ring.write(np.zeros(SHAPE, np.float32), 4, 0.0)
    ring.write(np.full(SHAPE, 200, np.uint8), 5, 0.0)  # widening is fine
    assert ring.peek_latest().data.dtype == np.uint16
