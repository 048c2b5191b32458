"""Ring buffer under the paces, frame sizes and batch sizes users meet.

A waiting producer (a file replayed as fast as possible) must lose nothing; a live producer (a camera,
which never waits) may lose frames, but then each reader's record of lost indices must be exact: every
frame is either delivered intact, in order, or listed as lost, never both and never neither.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rtsmlm.acquisition.ring import RingBuffer

JOIN_S = 120.0


def _pixels(index: int, shape: tuple[int, int]) -> np.ndarray:
    return np.full(shape, index % 65536, dtype=np.uint16)


def _produce(ring: RingBuffer, n: int, pace: str, wait: bool, shape: tuple[int, int]) -> None:
    """Write n frames at a pace: 'free' (no pause), 'paced' (a short sleep each), 'bursty' (bursts of
    a ring's worth, then a pause)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        if wait:
            assert ring.wait_for_space(30.0), "the producer waited 30 s for space: a reader is stuck"
        ring.write(_pixels(i, shape), i, float(i))
        if pace == "paced":
            time.sleep(0.0002)
        elif pace == "bursty" and i % ring.capacity == ring.capacity - 1:
            time.sleep(float(rng.uniform(0.0, 0.01)))
    ring.close()


def _consume(reader, batch: int, slow_s: float, got: list[int], errors: list[str]) -> None:
    while True:
        frames = reader.read_many(batch, timeout=1.0)
        if not frames:
            if reader.at_end:
                return
            continue
        for f in frames:
            if not np.all(f.data == f.index % 65536):
                errors.append(f"frame {f.index} delivered torn")
            got.append(f.index)
        if slow_s:
            time.sleep(slow_s)


def _run(n: int, shape, pace: str, batch: int, wait: bool, n_readers: int = 1, slow_s: float = 0.0,
         capacity: int = 16):
    ring = RingBuffer(capacity, shape)
    readers = [ring.add_reader(f"r{k}") for k in range(n_readers)]
    got = [[] for _ in readers]
    errors: list[str] = []
    threads = [threading.Thread(target=_consume, args=(r, batch, slow_s * (k + 1), got[k], errors), daemon=True)
               for k, r in enumerate(readers)]
    for t in threads:
        t.start()
    prod = threading.Thread(target=_produce, args=(ring, n, pace, wait, shape), daemon=True)
    prod.start()
    for t in (prod, *threads):
        t.join(JOIN_S)
        assert not t.is_alive(), "hung"
    return readers, got, errors


@pytest.mark.parametrize("shape", [(8, 8), (128, 128), (256, 256)])
@pytest.mark.parametrize("pace", ["free", "paced", "bursty"])
@pytest.mark.parametrize("batch", [1, 7, 16, 64])
def test_waiting_producer_loses_nothing(shape, pace, batch) -> None:
    n = 3000 if shape[0] < 256 else 800
    if pace == "paced":
        n //= 4
    readers, got, errors = _run(n, shape, pace, batch, wait=True, n_readers=2)
    assert errors == []
    for reader, indices in zip(readers, got):
        assert reader.n_lost == 0, f"{reader.name} lost {reader.n_lost} of {n} frames ({reader.n_torn} torn)"
        assert indices == list(range(n))


@pytest.mark.parametrize("batch", [1, 8, 64])
@pytest.mark.parametrize("pace", ["free", "bursty"])
def test_live_producer_loss_record_is_exact(pace, batch) -> None:
    n = 4000
    readers, got, errors = _run(n, (64, 64), pace, batch, wait=False, n_readers=2, slow_s=0.001)
    assert errors == []
    for reader, indices in zip(readers, got):
        lost = reader.lost_indices.tolist()
        assert indices == sorted(indices), "frames out of order"
        assert not set(indices) & set(lost), "a frame both delivered and listed as lost"
        assert sorted(indices + lost) == list(range(n)), "a frame neither delivered nor listed as lost"
        assert reader.n_lost == len(lost) and reader.n_read == len(indices)
