"""Inference throughput and latency per backend (the same as ``rtsmlm bench``).

    python benchmarks/bench_inference.py                       # every backend here, 64/256/1024 px
    python benchmarks/bench_inference.py --backends torch:bf16 --threads 1,2 --sizes 64,256
    python benchmarks/bench_inference.py --accuracy 500 --sizes 64   # accuracy of each backend vs fp32

Prints a table (frames/s, MB/s of 16-bit frames, latency p50/p99, batch, tiles, localizations per frame)
and writes bench_inference.json with the machine and its load average.
"""

import sys

from rtsmlm.cli.bench import bench_main

if __name__ == "__main__":
    raise SystemExit(bench_main(sys.argv[1:]))
