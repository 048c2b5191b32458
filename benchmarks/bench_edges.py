"""Edge frames: how a frame whose neighbour in time is missing is localized, by the edge padding.

Run: python benchmarks/bench_edges.py [--models broad_2d[,broad_2d_wide]] [--frames 600] [--lengths 1,2,3]

Every movie has two edge frames (its first and last), and a live run gets two more at every gap: frames lost
by the ring or skipped by a localizer that fell behind end one sequence and start another
(``StreamingLocalizer``), and the windows of the frames at the gap are completed by padding. Here a simulated
movie (default EMCCD camera, 64², seed 4242; 1/µm² at background 50 and 0.3/µm² at background 100) is pushed
through one localizer as sequences of L frames — a missing index after every L frames — so that every frame
(L = 1, 2) or two of three (L = 3) is an edge frame. Printed per padding (``StreamingLocalizer.edge_padding``:
'same' copies the edge frame, 'reflect' mirrors its other neighbour in; a lone frame gets copies either way):
the Jaccard of the edge frames, over all their true emitters (250 nm), beside the same frames localized
inside the whole movie. Torch fp32 on one CPU thread, as every accuracy benchmark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as acc  # noqa: E402

from rtsmlm.core.locs import concat  # noqa: E402
from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie  # noqa: E402

MOVIES = ((1.0, 50.0), (0.3, 100.0))  # (emitters/µm², background photons/px)
PADDINGS = ("same", "reflect")


def jaccard(pred: np.ndarray, truth: np.ndarray, frames: np.ndarray) -> tuple[float, int, int]:
    """(Jaccard, predictions, true emitters) over the frames ``frames``, all true emitters, 250 nm."""
    scores, _, _ = acc.score(pred[np.isin(pred["frame"], frames)], truth[np.isin(truth["frame"], frames)], 250.0, None)
    return scores["all"]["jaccard"], scores["all"]["n_pred"], scores["all"]["n_true"]


def localize_in_sequences(make, frames: np.ndarray, length: int) -> np.ndarray:
    """Localizations of ``frames`` pushed as sequences of ``length`` frames (a missing index between them),
    numbered as in the movie."""
    loc = make()
    k = np.arange(len(frames) - len(frames) % length)
    pushed = k + k // length
    parts = [loc.push(frames[a:a + 16], pushed[a:a + 16])[0] for a in range(0, len(k), 16)]
    parts.append(loc.finish()[0])
    locs = concat(parts)
    back = dict(zip(pushed.tolist(), k.tolist()))
    locs["frame"] = [back[int(f)] for f in locs["frame"]]
    return locs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="broad_2d", help="comma-separated model specs (bench_accuracy)")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--lengths", default="1,2,3", help="sequence lengths L")
    args = ap.parse_args(argv)
    base, backend_cfg = acc.reference_backend()
    lengths = [int(v) for v in args.lengths.split(",")]
    shipped = StreamingLocalizer.edge_padding
    print(f"{args.frames} frames of 64² per movie; Jaccard of the edge frames (their localizations, their true "
          "emitters) against the same frames inside the whole movie")
    for spec in args.models.split(","):
        label, offline = acc.open_model_spec(spec, backend_cfg, base.model)
        for density, bg in MOVIES:
            cfg = acc.sim_config(base, seed=4242, size=64, density=density, bg=bg)
            movie = acc.simulate_movie(cfg, f"{density:g}/µm², bg {bg:g}", args.frames)

            def make():
                return offline.streaming(movie.camera, movie.frames.shape[1:], psf_sigma_nm=cfg.psf.sigma_nm)

            whole = localize_movie(make(), movie.frames)
            print(f"{label}, {movie.name}: whole movie {jaccard(whole, movie.truth, np.arange(args.frames))[0]:.4f}")
            for length in lengths:
                k = np.arange(args.frames - args.frames % length)
                edges = k[(k % length == 0) | (k % length == length - 1)]
                inside, n_inside, _ = jaccard(whole, movie.truth, edges)
                for padding in PADDINGS:
                    StreamingLocalizer.edge_padding = padding
                    try:
                        locs = localize_in_sequences(make, movie.frames, length)
                    finally:
                        StreamingLocalizer.edge_padding = shipped
                    ji, n_pred, n_true = jaccard(locs, movie.truth, edges)
                    print(f"  L={length} {padding:7s}: edge frames {ji:.4f} ({n_pred} localizations, {n_true} true) "
                          f"| inside the movie {inside:.4f} ({n_inside})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
