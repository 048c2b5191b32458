"""``rtsmlm simulate``: write a simulated movie and its ground truth to a directory.

Files: ``movie.tif`` (ImageJ multi-page TIFF, pixel size + camera metadata), ``ground_truth.csv``
(``frame,x,y,z,photons``), ``drift.csv`` (``frame,dx,dy``) when drift is simulated, and
``simulation.json`` (the full config, so the movie can be regenerated).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtsmlm.core.config import Config, to_dict
from rtsmlm.io.tables import TRUTH_HEADER, write_drift_csv, write_truth_rows
from rtsmlm.outputs.files import clear_previous_run, prepare_out_dir
from rtsmlm.sim.simulator import Simulator

_IN_MEMORY_LIMIT = 2 << 30  # bytes of frames kept in memory for a plain ImageJ TIFF


def simulate_to_dir(cfg: Config, out: Path, *, overwrite: bool = False, progress: bool = False) -> Path:
    from rtsmlm.io.movies import open_movie_writer, write_tiff_movie

    prepare_out_dir(out, overwrite)
    clear_previous_run(out)
    sim = Simulator(cfg)
    n = cfg.sim.frames
    cam = sim.camera
    metadata = {"camera": cam.describe(), "source": "rtsmlm simulate", "seed": sim.seed,
                "structure": cfg.sim.structure, "density_per_um2": cfg.sim.density}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="simulate", unit="frame", dynamic_ncols=True)
    in_memory = n * sim.shape[0] * sim.shape[1] * 2 <= _IN_MEMORY_LIMIT
    frames = np.empty((n, *sim.shape), np.uint16) if in_memory else None
    writer = None if in_memory else open_movie_writer(out / "movie.tif", pixel_size_nm=cam.pixel_size_nm,
                                                      metadata=metadata, overwrite=overwrite)
    with open(out / "ground_truth.csv", "w") as fh:
        fh.write(TRUTH_HEADER + "\n")
        for i in range(n):
            frame, truth = sim.step()
            write_truth_rows(fh, truth)
            if frames is not None:
                frames[i] = frame
            else:
                writer.append(frame)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    if frames is not None:
        write_tiff_movie(out / "movie.tif", frames, cam.pixel_size_nm, metadata, overwrite=overwrite)
    else:
        writer.close()
    if cfg.sim.drift.enabled:
        table = sim.drift_table(n)
        write_drift_csv(out / "drift.csv", table[:, 0], table[:, 1], table[:, 2],
                        dz=table[:, 3] if table.shape[1] > 3 else None)
    (out / "simulation.json").write_text(json.dumps(to_dict(cfg), indent=2))
    return out
