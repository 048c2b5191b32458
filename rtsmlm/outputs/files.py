"""What a run writes to its output directory, as listeners of the run.

Files (see the README): ``localizations.csv``, ``localizations.hdf5`` + ``localizations.yaml``
(Picasso), ``ground_truth.csv`` (simulated sources), ``raw.tif``/``raw.raw`` (camera sources, written
by the pipeline's recorder), ``render.tif``/``render.png`` and ``drift.csv`` (the render listener),
``summary.json``. Everything is flushed at least every ``output.flush_interval_s``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.acquisition.source import TruthRecord
from rtsmlm.core.locs import LocBatch, LocSpill

LOCS_CSV = "localizations.csv"
LOCS_HDF5 = "localizations.hdf5"
TRUTH_CSV = "ground_truth.csv"
TRUTH_DRIFT_CSV = "ground_truth_drift.csv"
SUMMARY_JSON = "summary.json"


RUN_FILES = frozenset({
    LOCS_CSV, LOCS_HDF5, "localizations.yaml", TRUTH_CSV, TRUTH_DRIFT_CSV, SUMMARY_JSON,
    "raw.tif", "raw.raw", "raw.yaml", "render.tif", "render.png", "render_z.png", "drift.csv",
    "movie.tif", "simulation.json",  # rtsmlm simulate
})
"""Names of the files rtsmlm itself writes into a run's (or a simulation's) folder; plugins' files are
listed in the summary's ``files``."""


def previous_run_files(out: Path, keep: frozenset[str] = frozenset()) -> list[Path]:
    """The files of an earlier run in ``out`` that ``--overwrite`` removes: rtsmlm's own files, the
    files its summary.json lists, and their ``.tmp`` leftovers. Raises FileExistsError naming what
    else the folder holds (rtsmlm never deletes a file it did not write); entries named in ``keep`` (a
    batch's record and chunk folder) are neither foreign nor removed."""
    allowed = set(RUN_FILES)
    try:
        listed = json.loads((out / SUMMARY_JSON).read_text()).get("files", [])
        allowed.update(str(n) for n in listed if isinstance(n, str) and "/" not in n and "\\" not in n)
    except (OSError, ValueError, AttributeError):
        pass
    entries = sorted(p for p in out.iterdir() if p.name not in keep)
    foreign = [p.name for p in entries
               if not (p.is_file() and (p.name in allowed or p.name.removesuffix(".tmp") in allowed))]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FileExistsError(f"output directory {out} holds files rtsmlm did not write ({shown}); "
                              "--overwrite only replaces an earlier run: choose another --out")
    return entries


def prepare_out_dir(out: Path, overwrite: bool) -> Path:
    """Create ``out``; refuse an existing non-empty directory unless ``overwrite``, and then refuse one
    that holds anything but an earlier run's files (checked here, removed by :func:`clear_previous_run`
    once everything that can fail has been opened)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out} exists and is not empty (use --overwrite)")
        previous_run_files(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def clear_previous_run(out: Path, keep: frozenset[str] = frozenset()) -> None:
    """Remove an earlier run's files from ``out`` (``--overwrite``): the new run's folder holds only its
    own files, so no stale raw movie or ground truth is ever taken for this run's."""
    for path in previous_run_files(out, keep):
        path.unlink()


@dataclass(frozen=True)
class LocalizationFilesSummary:
    """The localization files' part of summary.json ``outputs``."""

    localizations: list[str]
    picasso_rows_moved_inside: int
    drift_corrected_columns: list[str] | None = None


@dataclass(frozen=True)
class TruthFilesSummary:
    """The ground truth's part of summary.json ``outputs``."""

    ground_truth: str
    ground_truth_drift: str | None = None


class LocalizationFiles:
    """Listener writing the localization stream to CSV and Picasso HDF5, flushed every
    ``output.flush_interval_s``; the one owner of those files. At the end, when the run has a final
    drift (``RunEnd.drift``), it replaces them by the drift-corrected table (``x_dc``, ``y_dc``, and
    ``z_dc`` in a 3D run whose focus drift was estimated)."""

    name = "files"
    critical = True
    max_lag_batches = None  # the data: never drop a batch

    def __init__(self, out_dir: Path, *, pixel_size_nm: float, shape: tuple[int, int], csv_style: str,
                 psf_sigma_nm: float | None, include_z: bool, overwrite: bool, drift_correction: bool = True) -> None:
        """``drift_correction``: the run corrects drift, so keep every row for the corrected rewrite (without
        it nothing is spilled)."""
        from rtsmlm.io.locfiles import CsvLocWriter, PicassoHdf5Writer

        self.out_dir = out_dir
        self._layout = dict(pixel_size_nm=pixel_size_nm, shape=shape, csv_style=csv_style,
                            psf_sigma_nm=psf_sigma_nm, include_z=include_z)
        self.csv = CsvLocWriter(out_dir / LOCS_CSV, csv_style, psf_sigma_nm=psf_sigma_nm,
                                overwrite=overwrite)
        self.hdf5 = PicassoHdf5Writer(out_dir / LOCS_HDF5, pixel_size_nm, shape[1], shape[0],
                                      psf_sigma_nm=psf_sigma_nm, include_z=include_z, overwrite=overwrite)
        # Every row, on a temporary file, for the corrected rewrite.
        self._table = LocSpill(tail_locs=0) if drift_correction else None
        self.n_rows = 0

    def on_batch(self, batch: LocBatch) -> None:
        if len(batch.locs):
            self.csv.append(batch.locs)
            self.hdf5.append(batch.locs)
            if self._table is not None:
                self._table.append(batch.locs)
            self.n_rows += len(batch.locs)

    def on_tick(self) -> None:
        self.csv.flush()
        self.hdf5.flush()

    def on_run_end(self, end: Any) -> dict[str, Any]:
        self.csv.close()
        self.hdf5.close()
        drift = getattr(end, "drift", None)
        corrected = None
        if self._table is not None:
            if drift is not None and self.n_rows:
                corrected = self._rewrite_corrected(drift, self._table.all())
            self._table.close()
        # Rows moved just inside the image so Picasso's loader keeps them (the CSV has exact values).
        return {"outputs": LocalizationFilesSummary([LOCS_CSV, LOCS_HDF5], self.hdf5.n_moved_inside, corrected)}

    def _rewrite_corrected(self, drift: Any, table: np.ndarray) -> list[str]:
        """Replace the streamed files by the drift-corrected table (atomic renames: a crash leaves the
        streamed files or the corrected ones, never half of one); returns the corrected columns. A 3D run
        whose focus drift was estimated (``drift.dz``) gets ``z_dc`` too."""
        from rtsmlm.core.locs import with_drift_columns
        from rtsmlm.io.locfiles import write_csv, write_picasso_hdf5

        dz = getattr(drift, "dz", None)
        has_z = dz is not None and self._layout["include_z"]
        locs = with_drift_columns(table, z=has_z)
        frame = np.clip(locs["frame"], 0, len(drift.frames) - 1)
        locs["x_dc"] = locs["x"] - np.asarray(drift.dx)[frame]
        locs["y_dc"] = locs["y"] - np.asarray(drift.dy)[frame]
        if has_z:
            locs["z_dc"] = locs["z"] - np.asarray(dz)[frame]
        lay = self._layout
        out = self.out_dir
        tmp_csv = out / (LOCS_CSV + ".dc.tmp")
        write_csv(tmp_csv, locs, lay["csv_style"], psf_sigma_nm=lay["psf_sigma_nm"], overwrite=True)
        h5, yml = write_picasso_hdf5(out / "localizations_dc.tmp.hdf5", locs, lay["pixel_size_nm"],
                                     int(lay["shape"][1]), int(lay["shape"][0]), psf_sigma_nm=lay["psf_sigma_nm"],
                                     include_z=lay["include_z"], overwrite=True)
        tmp_csv.replace(out / LOCS_CSV)
        Path(h5).replace(out / LOCS_HDF5)
        Path(yml).replace(out / LOCS_HDF5.replace(".hdf5", ".yaml"))
        return ["x_dc", "y_dc", "z_dc"] if has_z else ["x_dc", "y_dc"]


class TruthFiles:
    """Listener writing the ground truth a simulated source publishes: ``ground_truth.csv`` (the emitters
    of exactly the frames acquired) and, when drift is simulated, ``ground_truth_drift.csv``.

    The file is created at the first flush, not before, so a run that fails to start (a bad model) leaves
    the ground truth of a previous run in the same folder untouched.
    """

    name = "ground_truth"
    critical = True  # the truth of a simulated run is data: lose none of it
    max_lag_batches = None

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / TRUTH_CSV
        self.drift_path = out_dir / TRUTH_DRIFT_CSV
        self._fh: Any = None
        self._closed = False
        self._pending: list[np.ndarray] = []
        self._drift: list[tuple[float, ...]] = []
        self._write_lock = threading.Lock()  # one writer of the file at a time

    def on_truth(self, record: TruthRecord) -> None:
        self._pending.append(record.emitters)
        if record.drift_nm is not None:
            self._drift.append((record.frame, *record.drift_nm))

    def on_tick(self) -> None:
        self.flush()

    def on_run_end(self, end: Any) -> dict[str, Any]:
        self.close()
        drift_file = None
        if self._drift:
            from rtsmlm.io.tables import write_drift_csv

            table = np.asarray(self._drift, dtype=np.float64)
            # The simulated sample's true drift, to score drift.csv against.
            write_drift_csv(self.drift_path, table[:, 0], table[:, 1], table[:, 2],
                            dz=table[:, 3] if table.shape[1] > 3 else None)
            drift_file = TRUTH_DRIFT_CSV
        return {"outputs": TruthFilesSummary(TRUTH_CSV, drift_file)}

    def flush(self) -> None:
        from rtsmlm.io.tables import TRUTH_HEADER, write_truth_rows

        with self._write_lock:
            if self._closed:
                return
            pending, self._pending = self._pending, []
            start = 0
            try:
                if self._fh is None:
                    self._fh = open(self.path, "w")
                    self._fh.write(TRUTH_HEADER + "\n")
                else:
                    start = self._fh.tell()
                if pending:  # one formatting pass for the whole interval, not one per frame
                    write_truth_rows(self._fh, np.concatenate(pending))
                self._fh.flush()
            except OSError:
                # A full disk: end the file on its last whole row (or remove it if not even the header
                # fitted), so it opens in any CSV reader; the rows stay pending.
                self._pending[:0] = pending
                self._cut_back(start)
                raise

    def _cut_back(self, size: int) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if size == 0:
            self.path.unlink(missing_ok=True)
            return
        with open(self.path, "r+b") as fh:
            fh.truncate(size)
        self._fh = open(self.path, "a")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._write_lock:
                self._closed = True
                if self._fh is not None:
                    self._fh.close()
