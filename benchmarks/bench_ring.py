"""Write throughput of the frame ring buffer: 256×256 uint16 frames with 0, 1 and 2 active readers.

Run: python benchmarks/bench_ring.py [--frames 20000] [--slots 512] [--batch 16]

The writer writes as fast as it can (a camera never waits for the ring); each active reader is a thread
draining its cursor with read_many(batch) like the localizer does. Printed per case: writes/s, and for each
reader the frames it read and lost (a reader slower than the writer loses the oldest frames, by design).
The target is >= 10,000 writes/s on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from rtsmlm.acquisition.ring import RingBuffer, RingReader

SHAPE = (256, 256)


def run_case(n_readers: int, n_frames: int, n_slots: int, batch: int) -> None:
    ring = RingBuffer(n_slots, SHAPE, np.uint16)
    readers = [ring.add_reader(f"reader{i}") for i in range(n_readers)]

    def drain(reader: RingReader) -> None:
        while reader.read_many(batch, timeout=None):
            pass

    threads = [threading.Thread(target=drain, args=(r,), daemon=True) for r in readers]
    for t in threads:
        t.start()
    # Distinct pixel content per frame, prepared beforehand so only the ring's cost is timed.
    sources = [np.full(SHAPE, v, dtype=np.uint16) for v in range(8)]
    start = time.perf_counter()
    for i in range(n_frames):
        ring.write(sources[i & 7], i, time.perf_counter())
    elapsed = time.perf_counter() - start
    ring.close()
    for t in threads:
        t.join()
    rate = n_frames / elapsed
    mb_s = rate * np.prod(SHAPE) * 2 / 1e6
    print(f"{n_readers} active reader(s): {rate:10,.0f} writes/s  ({mb_s:,.0f} MB/s, "
          f"{n_frames} frames in {elapsed:.3f} s)")
    for r in readers:
        s = r.stats()
        print(f"    {s.name}: read {s.n_read:,}  lost {s.n_lost:,}  ({r.n_torn} torn copies caught)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000, help="frames written per case")
    parser.add_argument("--slots", type=int, default=512, help="ring capacity in frames")
    parser.add_argument("--batch", type=int, default=16, help="max frames per read_many")
    args = parser.parse_args()
    print(f"ring buffer: {args.slots} slots of {SHAPE[0]}x{SHAPE[1]} uint16, {args.frames:,} frames per case, "
          f"reader batch {args.batch}")
    for n_readers in (0, 1, 2):
        run_case(n_readers, args.frames, args.slots, args.batch)


if __name__ == "__main__":
    main()
