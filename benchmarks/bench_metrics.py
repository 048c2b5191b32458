"""Speed of matching/evaluation and of the localization file formats.

Run: python benchmarks/bench_metrics.py [--n 200000] [--per-frame 1 10 50]

Matching: ``n`` true emitters spread over frames with ``per-frame`` emitters each (1 = the vectorised
one-to-one path, 50 = dense frames through the assignment solver), predictions = 90 % of them with 20 nm
noise plus 10 % random false positives. Files: write + read of ``n`` rows as rtsmlm CSV, ThunderSTORM CSV
and Picasso HDF5 (streamed in batches of 1000 rows, one flush per 10 batches, as a live run does).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rtsmlm.analysis.metrics import evaluate
from rtsmlm.core.locs import LOC_DTYPE
from rtsmlm.io.locfiles import CsvLocWriter, PicassoHdf5Writer, read_locs


def make_case(n: int, per_frame: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros(n, LOC_DTYPE)
    truth["frame"] = np.arange(n) // per_frame
    truth["x"] = rng.uniform(0, 6400, n)
    truth["y"] = rng.uniform(0, 6400, n)
    truth["photons"] = rng.uniform(500, 5000, n)
    found = truth[rng.random(n) < 0.9].copy()
    found["x"] += rng.normal(0, 20, len(found))
    found["y"] += rng.normal(0, 20, len(found))
    n_fp = n // 10
    fp = np.zeros(n_fp, LOC_DTYPE)
    fp["frame"] = rng.integers(0, truth["frame"].max() + 1, n_fp)
    fp["x"] = rng.uniform(0, 6400, n_fp)
    fp["y"] = rng.uniform(0, 6400, n_fp)
    pred = np.concatenate([found, fp])
    return pred[rng.permutation(len(pred))], truth


def bench_matching(n: int, per_frame_list: list[int]) -> None:
    t0 = time.perf_counter()
    evaluate(*make_case(100, 10))  # first call imports scipy's solvers: keep that out of the figures
    print(f"first call (scipy imports): {time.perf_counter() - t0:.2f} s")
    print(f"matching: {n} true emitters; predictions = 90 % of them (20 nm noise) + {n // 10} false positives")
    for per_frame in per_frame_list:
        pred, truth = make_case(n, per_frame)
        t0 = time.perf_counter()
        r = evaluate(pred, truth)
        dt = time.perf_counter() - t0
        print(f"  {per_frame:3d} emitters/frame: {dt:6.2f} s  ({len(pred) / dt / 1e3:5.0f} k predictions/s)  "
              f"JI {r['jaccard']:.3f}  RMSE {r['rmse_lat_nm']:.1f} nm")


def bench_files(n: int) -> None:
    pred, _ = make_case(n, 10)
    pred = pred[np.argsort(pred["frame"], kind="stable")]
    for name in LOC_DTYPE.names[3:]:
        pred[name] = np.random.default_rng(1).uniform(1, 100, len(pred))
    print(f"files: {len(pred)} rows, appended in batches of 1000, flushed every 10 batches")
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "rtsmlm CSV": lambda p: CsvLocWriter(p, fsync=False),
            "ThunderSTORM CSV": lambda p: CsvLocWriter(p, "thunderstorm", fsync=False, psf_sigma_nm=130.0),
            "Picasso HDF5": lambda p: PicassoHdf5Writer(p, 100.0, 64, 64, psf_sigma_nm=130.0),
            "Picasso HDF5 (SWMR)": lambda p: PicassoHdf5Writer(p, 100.0, 64, 64, psf_sigma_nm=130.0,
                                                               swmr=True),
        }
        for i, (label, make) in enumerate(cases.items()):
            path = Path(tmp) / (f"f{i}.hdf5" if "HDF5" in label else f"f{i}.csv")
            t0 = time.perf_counter()
            w = make(path)
            for k, start in enumerate(range(0, len(pred), 1000)):
                w.append(pred[start:start + 1000])
                if k % 10 == 9:
                    w.flush()
            w.close()
            t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = read_locs(path)
            t_read = time.perf_counter() - t0
            assert len(back) == len(pred)
            size = path.stat().st_size / 1e6
            print(f"  {label:20s} write {t_write:6.2f} s ({len(pred) / t_write / 1e3:6.0f} k rows/s)  "
                  f"read {t_read:6.2f} s ({len(pred) / t_read / 1e3:6.0f} k rows/s)  {size:6.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="true emitters / file rows")
    ap.add_argument("--per-frame", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--skip-files", action="store_true")
    args = ap.parse_args()
    bench_matching(args.n, args.per_frame)
    if not args.skip_files:
        bench_files(args.n)


if __name__ == "__main__":
    main()
