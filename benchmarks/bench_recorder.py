"""Raw-movie writing speed of the run recorder (page-per-frame BigTIFF and Picasso .raw).

Prints frames/s and MB/s for 256×256 and 2048×2048 uint16 frames, flushing once per second of frames
as a run does. Target: well above the camera's rate (a 256² camera at 1,000 frames/s).

    python benchmarks/bench_recorder.py
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from rtsmlm.io.movies import open_movie_writer


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    for size, n in ((256, 3000), (2048, 100)):
        frame = rng.integers(90, 2000, (size, size), dtype=np.uint16)
        for suffix in (".tif", ".raw"):
            with tempfile.TemporaryDirectory() as d:
                w = open_movie_writer(os.path.join(d, "raw" + suffix), pixel_size_nm=100.0)
                t0 = time.perf_counter()
                for i in range(n):
                    w.append(frame)
                    if i % 100 == 99:
                        w.flush()
                w.close()
                dt = time.perf_counter() - t0
            print(f"{suffix:5s} {size}x{size}: {n / dt:8.0f} frames/s  {n * frame.nbytes / dt / 1e6:6.0f} MB/s")


if __name__ == "__main__":
    main()
