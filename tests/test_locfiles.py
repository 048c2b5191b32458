"""Localization file formats: round trips, frame-base and pixel conversions, detection, crash safety."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from rtsmlm.core.locs import LOC_DTYPE, LOC_DTYPE_DC, LOC_DTYPE_DC_Z, with_drift_columns
from rtsmlm.io.locfiles import (
    THUNDERSTORM_COLUMNS,
    CsvLocWriter,
    LocalizationWriter,
    LocFileError,
    PicassoHdf5Writer,
    clear_swmr_flag,
    detect_format,
    read_locs,
    write_csv,
    write_picasso_hdf5,
)

PIXEL = 100.0


def make_locs(n: int, seed: int = 0) -> np.ndarray:
    """A realistic table: every column filled, a few NaNs where the network gives no estimate."""
    rng = np.random.default_rng(seed)
    locs = np.zeros(n, dtype=LOC_DTYPE)
    locs["frame"] = np.sort(rng.integers(0, 1000, n))
    locs["x"] = rng.uniform(50, 6350, n)  # inside the pixel centres (edge rows: their own test)
    locs["y"] = rng.uniform(50, 6350, n)
    locs["z"] = rng.uniform(-400, 400, n)
    locs["photons"] = rng.uniform(300, 8000, n)
    locs["bg"] = rng.uniform(20, 150, n)
    locs["sigma_x"] = rng.uniform(2, 40, n)
    locs["sigma_y"] = rng.uniform(2, 40, n)
    locs["sigma_z"] = rng.uniform(5, 80, n)
    locs["sigma_photons"] = rng.uniform(10, 300, n)
    locs["p"] = rng.uniform(0.5, 1, n)
    if n > 3:
        locs["sigma_z"][::3] = np.nan
    return locs


def assert_same(a: np.ndarray, b: np.ndarray, columns: tuple[str, ...] | None = None, rtol: float = 0.0,
                atol: float = 0.0) -> None:
    for name in columns or a.dtype.names:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, equal_nan=True, err_msg=name)


# --------------------------------------------------------------------------------------------------
# CSV


def test_rtsmlm_csv_round_trip_is_exact(tmp_path: Path) -> None:
    locs = make_locs(500)
    path = write_csv(tmp_path / "locs.csv", locs)
    assert path.read_text().splitlines()[0] == ",".join(LOC_DTYPE.names)
    assert detect_format(path) == "rtsmlm_csv"
    back = read_locs(path)
    assert back.dtype == LOC_DTYPE
    assert_same(back, locs)  # 9 significant digits: float32 survives exactly


def test_drift_corrected_table_keeps_its_columns(tmp_path: Path) -> None:
    locs = with_drift_columns(make_locs(50))
    locs["x_dc"] -= 12.5
    back = read_locs(write_csv(tmp_path / "dc.csv", locs))
    assert back.dtype == LOC_DTYPE_DC
    assert_same(back, locs)


def test_thunderstorm_csv_has_its_header_and_one_based_frames(tmp_path: Path) -> None:
    locs = make_locs(40)
    locs["frame"][0] = 0
    path = write_csv(tmp_path / "ts.csv", locs, style="thunderstorm", psf_sigma_nm=130.0)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(f'"{c}"' for c in THUNDERSTORM_COLUMNS)
    first = lines[1].split(",")
    assert first[0] == "1" and first[1] == "1"  # id and frame both start at 1 in ThunderSTORM
    assert float(first[5]) == 130.0
    file_frames = np.array([int(line.split(",")[1]) for line in lines[1:]])
    assert np.array_equal(file_frames, locs["frame"] + 1)

    assert detect_format(path) == "thunderstorm_csv"
    back = read_locs(path)
    assert np.array_equal(back["frame"], locs["frame"])
    assert_same(back, locs, ("x", "y", "z", "photons", "bg"))
    per_axis = np.sqrt((locs["sigma_x"].astype(float) ** 2 + locs["sigma_y"].astype(float) ** 2) / 2)
    np.testing.assert_allclose(back["sigma_x"], per_axis, rtol=1e-6)
    np.testing.assert_allclose(back["sigma_y"], per_axis, rtol=1e-6)
    assert np.all(np.isnan(back["p"]))  # ThunderSTORM has no detection probability


def test_reads_a_thunderstorm_file_as_thunderstorm_writes_it(tmp_path: Path) -> None:
    # 3D variant: uncertainty_xy / uncertainty_z, frames from 1, float frame numbers.
    path = tmp_path / "ts3d.csv"
    path.write_text('"id","frame","x [nm]","y [nm]","z [nm]","sigma1 [nm]","sigma2 [nm]",'
                    '"intensity [photon]","offset [photon]","bkgstd [photon]","uncertainty_xy [nm]",'
                    '"uncertainty_z [nm]"\n'
                    "1,1.0,1500.5,2500.25,-120,140,120,3000,80,9,7.5,20\n"
                    "2,7.0,10,20,30,140,120,1000,50,7,15,40\n")
    back = read_locs(path)
    assert back["frame"].tolist() == [0, 6]
    assert back["x"].tolist() == [1500.5, 10.0] and back["z"].tolist() == [-120.0, 30.0]
    assert back["sigma_x"].tolist() == [7.5, 15.0] and back["sigma_z"].tolist() == [20.0, 40.0]
    assert back["bg"].tolist() == [80.0, 50.0]


def test_simulator_truth_csv_reads_with_missing_columns_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv"
    path.write_text("frame,x,y,z,photons\n0,150.5,250.25,0,1200\n3,10,20,-50,800.5\n")
    back = read_locs(path)
    assert back.dtype == LOC_DTYPE
    assert back["frame"].tolist() == [0, 3]
    assert back["photons"].tolist() == [1200.0, 800.5]
    assert np.all(np.isnan(back["bg"])) and np.all(np.isnan(back["sigma_x"])) and np.all(np.isnan(back["p"]))


def test_reads_the_storm_analysis_truth(shared_data: Path) -> None:
    path = shared_data / "storm-analysis-test" / "truth.csv"
    truth = read_locs(path)
    assert len(truth) == 2000
    assert truth["frame"].min() == 0 and truth["frame"].max() == 9  # 10 frames, 0-based
    assert np.all(np.isnan(truth["photons"]))  # frame,x,y,z only
    assert np.all((truth["x"] >= 0) & (truth["x"] < 256 * 160.0))
    assert np.all((truth["y"] >= 0) & (truth["y"] < 256 * 160.0))
    assert np.all(truth["z"] == 0.0)


def test_header_only_csv_is_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    with CsvLocWriter(path):
        pass
    back = read_locs(path)
    assert back.dtype == LOC_DTYPE and len(back) == 0


def test_partial_last_line_is_dropped_with_a_warning(tmp_path: Path) -> None:
    locs = make_locs(10)
    path = write_csv(tmp_path / "cut.csv", locs)
    with open(path, "a") as fh:
        fh.write("999,12.5,3")  # a writer killed in the middle of a row
    with pytest.warns(UserWarning, match="partial last line"):
        back = read_locs(path)
    assert_same(back, locs)


def test_unrecognised_and_broken_files_name_the_file(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(LocFileError, match="other.csv"):
        read_locs(other)
    with pytest.raises(LocFileError, match="does not exist"):
        read_locs(tmp_path / "missing.csv")
    broken = tmp_path / "broken.csv"
    broken.write_text("frame,x,y\n0,1,2\n1,abc,3\n")
    with pytest.raises(LocFileError, match="broken.csv"):
        read_locs(broken)
    fractional = tmp_path / "fractional.csv"
    fractional.write_text("frame,x,y\n0.5,1,2\n")
    with pytest.raises(LocFileError, match="whole numbers"):
        read_locs(fractional)


def test_writers_refuse_to_overwrite_and_bad_tables(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", make_locs(3))
    with pytest.raises(FileExistsError, match="file exists"):
        write_csv(path, make_locs(3))
    write_csv(path, make_locs(5), overwrite=True)
    assert len(read_locs(path)) == 5
    with CsvLocWriter(tmp_path / "b.csv") as w:
        with pytest.raises(LocFileError, match="lacks"):
            w.append(np.zeros(2, dtype=[("frame", "i8"), ("x", "f4")]))
    with pytest.raises(LocFileError, match="after close"):
        w.append(make_locs(1))


# --------------------------------------------------------------------------------------------------
# Picasso HDF5


def test_picasso_round_trip_and_pixel_convention(tmp_path: Path) -> None:
    locs = make_locs(300)
    locs["x"][0], locs["y"][0] = 150.0, 250.0  # centre of pixel (row 2, column 1)
    h5_path, yaml_path = write_picasso_hdf5(tmp_path / "locs.hdf5", locs, PIXEL, 64, 64, psf_sigma_nm=130.0)
    assert yaml_path == tmp_path / "locs.yaml"
    info = list(yaml.safe_load_all(yaml_path.read_text()))
    assert info[0]["Width"] == 64 and info[0]["Height"] == 64 and info[0]["Pixelsize"] == PIXEL
    assert info[0]["Frames"] == int(locs["frame"].max()) + 1
    assert info[0]["Generated by"].startswith("rtsmlm")

    with h5py.File(h5_path, "r") as f:
        raw = f["locs"][...]
    assert raw.dtype["frame"] == np.dtype("<u4")
    for name in ("frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy", "net_gradient", "z", "p"):
        assert name in raw.dtype.names
    # Picasso's pixel centres are at integer coordinates.
    assert (raw["x"][0], raw["y"][0]) == (1.0, 2.0)
    np.testing.assert_allclose(raw["lpx"], locs["sigma_x"] / PIXEL, rtol=1e-6)
    np.testing.assert_allclose(raw["sx"], 1.3)
    np.testing.assert_allclose(raw["net_gradient"], locs["p"])

    assert detect_format(h5_path) == "picasso_hdf5"
    back = read_locs(h5_path)
    assert back.dtype == LOC_DTYPE
    assert np.array_equal(back["frame"], locs["frame"])
    # Rows in the outer half of an edge pixel are moved just inside for Picasso's loader (tested below).
    inside = (locs["x"] > 50) & (locs["x"] < 6350) & (locs["y"] > 50) & (locs["y"] < 6350)
    assert_same(back[inside], locs[inside], ("x", "y"), rtol=1e-6, atol=1e-3)
    assert_same(back, locs, ("sigma_x", "sigma_y"), rtol=1e-6, atol=1e-3)
    assert_same(back, locs, ("z", "photons", "bg", "sigma_z", "sigma_photons", "p"))


def test_picasso_drift_corrected_writes_corrected_xy_and_keeps_raw(tmp_path: Path) -> None:
    locs = with_drift_columns(make_locs(20))
    locs["x"] = np.clip(locs["x"], 100.0, 6300.0)  # corrected positions inside the image (edges: below)
    locs["y"] = np.clip(locs["y"], 100.0, 6300.0)
    locs["x_dc"] = locs["x"] - 30.0
    locs["y_dc"] = locs["y"] + 10.0
    h5_path, _ = write_picasso_hdf5(tmp_path / "dc.hdf5", locs, PIXEL, 64, 64)
    with h5py.File(h5_path, "r") as f:
        raw = f["locs"][...]
    np.testing.assert_allclose(raw["x"], locs["x_dc"] / PIXEL - 0.5, rtol=1e-6)
    back = read_locs(h5_path)
    assert back.dtype == LOC_DTYPE_DC
    assert_same(back, locs, ("x", "y", "x_dc", "y_dc"), rtol=1e-6, atol=1e-3)


def test_a_focus_drift_corrected_table_keeps_raw_and_corrected_z_in_every_format(tmp_path: Path) -> None:
    """A 3D run's ``z_dc`` (z minus the estimated focus drift): an added rtsmlm CSV column; in Picasso the
    corrected z in ``z`` and the raw one in ``z_raw`` (like x, y); ThunderSTORM's ``z [nm]`` is corrected."""
    locs = with_drift_columns(make_locs(20), z=True)
    assert locs.dtype == LOC_DTYPE_DC_Z and np.array_equal(locs["z_dc"], locs["z"])
    locs["x"] = np.clip(locs["x"], 100.0, 6300.0)
    locs["y"] = np.clip(locs["y"], 100.0, 6300.0)
    locs["x_dc"], locs["y_dc"] = locs["x"] - 30.0, locs["y"] + 10.0
    locs["z_dc"] = locs["z"] - 75.0
    csv = write_csv(tmp_path / "dc.csv", locs)
    assert csv.read_text().splitlines()[0].endswith(",x_dc,y_dc,z_dc")
    back = read_locs(csv)
    assert back.dtype == LOC_DTYPE_DC_Z
    assert_same(back, locs, ("x", "y", "z", "x_dc", "y_dc", "z_dc"))
    h5_path, _ = write_picasso_hdf5(tmp_path / "dc.hdf5", locs, PIXEL, 64, 64)
    with h5py.File(h5_path, "r") as f:
        raw = f["locs"][...]
    np.testing.assert_allclose(raw["z"], locs["z_dc"], rtol=1e-6)
    np.testing.assert_allclose(raw["z_raw"], locs["z"], rtol=1e-6)
    back = read_locs(h5_path)
    assert back.dtype == LOC_DTYPE_DC_Z
    assert_same(back, locs, ("z", "z_dc"), rtol=1e-6, atol=1e-3)
    ts = write_csv(tmp_path / "ts.csv", locs, "thunderstorm")
    back = read_locs(ts)
    assert_same(back, locs[["z_dc"]].astype([("z", "<f4")]), ("z",), rtol=1e-6, atol=1e-3)
    # A 2D table written without z keeps Picasso's fields as before (no z_raw without z).
    h5_2d, _ = write_picasso_hdf5(tmp_path / "dc2d.hdf5", locs, PIXEL, 64, 64, include_z=False)
    with h5py.File(h5_2d, "r") as f:
        assert "z" not in f["locs"].dtype.names and "z_raw" not in f["locs"].dtype.names


def test_picasso_pixel_size_comes_from_yaml_or_argument(tmp_path: Path) -> None:
    locs = make_locs(5)
    h5_path, yaml_path = write_picasso_hdf5(tmp_path / "p.hdf5", locs, PIXEL, 64, 64, include_z=False)
    yaml_path.unlink()
    with pytest.raises(LocFileError, match="Pixelsize"):
        read_locs(h5_path)
    back = read_locs(h5_path, pixel_size_nm=PIXEL)
    assert_same(back, locs, ("x", "y"), rtol=1e-6)
    assert np.all(np.isnan(back["z"]))  # written without z


def test_picasso_rejects_negative_frames(tmp_path: Path) -> None:
    locs = make_locs(3)
    locs["frame"][0] = -1
    with pytest.raises(LocFileError, match="frame numbers"):
        write_picasso_hdf5(tmp_path / "neg.hdf5", locs, PIXEL, 64, 64)


def test_streaming_picasso_writer_grows_the_file_and_updates_frames(tmp_path: Path) -> None:
    locs = make_locs(100)
    path = tmp_path / "live.hdf5"
    w = PicassoHdf5Writer(path, PIXEL, 64, 64, psf_sigma_nm=130.0)
    assert isinstance(w, LocalizationWriter)
    assert len(read_locs(path)) == 0  # readable from the start
    w.append(locs[:60])
    assert (w.n_pending, w.n_written) == (60, 0)
    w.flush()
    assert (w.n_pending, w.n_written) == (0, 60)
    assert len(read_locs(path)) == 60
    assert yaml.safe_load(path.with_suffix(".yaml").read_text())["Frames"] == int(locs["frame"][59]) + 1
    w.append(locs[60:])
    w.close()
    w.close()  # idempotent
    assert_same(read_locs(path), locs, ("frame", "x", "y"), rtol=1e-6, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Crash safety: a real process, SIGKILLed after it reported its flushes


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from rtsmlm.io.locfiles import CsvLocWriter, PicassoHdf5Writer

    kind, path, rows_path = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = np.load(rows_path)
    if kind == "csv":
        w = CsvLocWriter(path)
    elif kind == "thunderstorm":
        w = CsvLocWriter(path, style="thunderstorm")
    else:
        w = PicassoHdf5Writer(path, 100.0, 64, 64, psf_sigma_nm=130.0, swmr=(kind == "picasso_swmr"))
    w.append(rows[:300]); w.flush()
    w.append(rows[300:450]); w.append(rows[450:500]); w.flush()
    w.append(rows[500:])  # appended, never flushed
    print("ready", flush=True)
    sys.stdin.read()  # wait here until killed
""")


@pytest.mark.parametrize("kind", ["csv", "thunderstorm", "picasso", "picasso_swmr"])
def test_every_flushed_row_survives_sigkill(tmp_path: Path, kind: str) -> None:
    rows = make_locs(600, seed=5)
    rows_path = tmp_path / "rows.npy"
    np.save(rows_path, rows)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / ("out.hdf5" if kind.startswith("picasso") else "out.csv")
    proc = subprocess.Popen([sys.executable, str(script), kind, str(path), str(rows_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    back = read_locs(path)
    assert len(back) == 500  # both flushes, nothing of the unflushed batch
    assert np.array_equal(back["frame"], rows["frame"][:500])
    assert_same(back, rows[:500], ("x", "y"), rtol=1e-6, atol=1e-3)
    if kind == "picasso":
        # Closed between flushes: an ordinary HDF5 file that any reader (Picasso, pandas) opens.
        with h5py.File(path, "r") as f:
            assert f["locs"].shape == (500,)
    if kind == "picasso_swmr":
        with pytest.raises(OSError):
            h5py.File(path, "r")  # the "being written" flag is still set ...
        clear_swmr_flag(path)
        with h5py.File(path, "r") as f:  # ... until cleared
            assert f["locs"].shape == (500,)


def _picasso_sanity(locs: np.ndarray, width: int, height: int) -> np.ndarray:
    """Picasso's own filter at load time (picasso.lib.ensure_sanity, picassosr 0.11), restated."""
    keep = np.all([np.isfinite(locs[n]) for n in locs.dtype.names], axis=0)
    keep &= (locs["x"] > 0) & (locs["y"] > 0) & (locs["x"] < width) & (locs["y"] < height)
    keep &= (locs["lpx"] > 0) & (locs["lpy"] > 0)
    return locs[keep]


def test_every_localization_survives_picassos_loader(tmp_path: Path) -> None:
    """Edge pixels' outer halves and drift-corrected positions past the edge are moved just inside, so
    Picasso's loader (which drops x <= 0 or x >= Width in its pixel-centre convention) keeps every row."""
    locs = with_drift_columns(make_locs(200))
    edge = {0: (10.0, 3000.0), 1: (0.0, 50.0), 2: (6395.0, 6399.9), 3: (-30.0, 7000.0)}
    for i, (x, y) in edge.items():
        locs["x_dc"][i], locs["y_dc"][i] = x, y
    path = tmp_path / "locs.hdf5"
    write_picasso_hdf5(path, locs, PIXEL, 64, 64, psf_sigma_nm=130.0)
    with h5py.File(path, "r") as f:
        raw = f["locs"][...]
    assert len(_picasso_sanity(raw, 64, 64)) == len(locs)
    inner = np.setdiff1d(np.arange(len(locs)), list(edge))
    np.testing.assert_allclose(raw["x"][inner], locs["x_dc"][inner] / PIXEL - 0.5, atol=1e-5)
    try:
        from picasso import io as picasso_io
    except ImportError:
        return  # picasso is a benchmark-only dependency; the restated rule above is what it applies
    loaded, _ = picasso_io.load_locs(str(path))
    assert len(loaded) == len(locs)
