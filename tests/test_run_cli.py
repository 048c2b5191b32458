"""``rtsmlm run`` through the real command-line entry point (``rtsmlm.cli.commands``).

End of source: exit 0, every output complete and consistent with the summary. Bad input (unreadable
source, a model for another camera, a broken checkpoint, an existing output directory, a full disk):
one clear line on stderr, exit code 2 (or 1 for a run that started and was cut short), and nothing
already written is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from rtsmlm.cli import main
from rtsmlm.outputs.files import LOCS_CSV, LOCS_HDF5, SUMMARY_JSON, TRUTH_CSV

N_FRAMES = 30
# One inference thread: the test machine is shared. No ZeroMQ: no port to pick in these tests.
COMMON = ["--quiet", "--no-stream", "--set", "backend.threads=1"]


def run_cli(*args: str) -> int:
    return main(["run", *COMMON, *args])


def error_lines(err: str) -> list[str]:
    """The lines the CLI printed as errors (logging and warnings are not written to stderr in-process)."""
    return [line for line in err.splitlines() if line.strip()]


def fingerprint(folder: Path) -> dict[str, str]:
    """Name → SHA-256 of every file in ``folder`` (to prove nothing was touched)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_one_line_error(capsys, *must_contain: str) -> str:
    out, err = capsys.readouterr()
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    line = lines[0]
    assert line.startswith("rtsmlm: ") and "Traceback" not in err, err
    for text in must_contain:
        assert text in line, f"{text!r} not in {line!r}"
    return line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, int, str]:
    """A complete ``rtsmlm run`` of the simulated camera to the end of its frames (default config)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    capture = tmp_path_factory.mktemp("finished_stdout") / "stdout.txt"
    # capsys is function-scoped: capture the command's own report through a real file instead.
    import contextlib

    with open(capture, "w") as fh, contextlib.redirect_stdout(fh):
        rc = run_cli("--max-frames", str(N_FRAMES), "--out", str(out))
    return out, rc, capture.read_text()


# --------------------------------------------------------------------------------------------------
# End of source


@pytest.mark.slow  # the module fixture loads torch and the model: ~5-20 s on a busy 2-core machine
def test_run_to_the_end_of_the_source_exits_0_with_every_output_complete(finished_run):
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.io.movies import open_movie

    out, rc, stdout = finished_run
    assert rc == 0
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["status"] == "complete" and summary["errors"] == []
    assert summary["frames_acquired"] == summary["frames_recorded"] == N_FRAMES
    # Live: localized, skipped (latency bound) or lost; the skipped and lost ones are caught up after.
    assert (summary["frames_localized"] + summary["frames_skipped_live"]
            + summary["frames_lost_localizer"]) == N_FRAMES
    assert summary["frames_missing_final"] == 0
    assert summary["frames_lost_recorder"] == 0
    # Frames older than pipeline.max_latency_ms when the localizer reached them (a slow start on a busy
    # machine) are analysed after the acquisition, and the line says so.
    late = summary.get("frames_caught_up", 0)
    late_text = f" (+{late} analysed after the acquisition)" if late else ""
    assert (f"{N_FRAMES} frames acquired (source.max_frames = {N_FRAMES}), {summary['frames_localized']} localized "
            f"live{late_text}, {summary['n_locs']} localizations, 0 frames missing") in stdout
    # Every file is complete and closed: reading raises no warning about partial lines or open writers.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_locs(out / LOCS_CSV)) == summary["n_locs"]
        assert len(read_locs(out / LOCS_HDF5)) == summary["n_locs"]
        truth = read_locs(out / TRUTH_CSV)
        with open_movie(out / "raw.tif") as movie:
            assert len(movie) == N_FRAMES and movie.shape == tuple(summary["source"]["shape"])
            assert movie.pixel_size_nm == summary["source"]["camera"]["pixel_size_nm"]
    assert len(truth) > 0 and 0 <= truth["frame"].min() and truth["frame"].max() < N_FRAMES
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow  # reuses the module fixture's run
def test_an_existing_output_directory_is_refused_and_left_untouched(finished_run, tmp_path, capsys):
    previous = tmp_path / "previous"
    shutil.copytree(finished_run[0], previous)
    before = fingerprint(previous)
    assert run_cli("--max-frames", "5", "--out", str(previous)) == 2
    assert_one_line_error(capsys, str(previous), "--overwrite")
    assert fingerprint(previous) == before


@pytest.mark.slow  # reuses the module fixture's run
@pytest.mark.parametrize("bad", ["model", "source"])
def test_a_failed_overwrite_leaves_the_previous_run_intact(finished_run, tmp_path, capsys, bad):
    previous = tmp_path / "previous"
    shutil.copytree(finished_run[0], previous)
    before = fingerprint(previous)
    missing = tmp_path / ("no_such_model" if bad == "model" else "no_such_movie.tif")
    assert run_cli("--max-frames", "5", "--out", str(previous), "--overwrite", f"--{bad}", str(missing)) == 2
    assert_one_line_error(capsys, str(missing))
    assert fingerprint(previous) == before


@pytest.mark.slow  # reuses the module fixture's run
def test_overwrite_leaves_only_the_new_runs_files(finished_run, tmp_path, capsys):
    """A simulator run's folder overwritten by a file replay: no stale raw.tif or ground_truth.csv stays
    (rtsmlm evaluate would silently score against the wrong truth)."""
    from rtsmlm.io.movies import write_tiff_movie

    previous = tmp_path / "previous"
    shutil.copytree(finished_run[0], previous)
    (previous / "summary.json.tmp").write_text("{}")  # a leftover of a killed run is ours too
    assert (previous / TRUTH_CSV).exists() and (previous / "raw.tif").exists()
    movie = tmp_path / "movie.tif"
    write_tiff_movie(movie, np.full((6, 32, 32), 100, np.uint16), 100.0)
    assert run_cli("--source", str(movie), "--out", str(previous), "--overwrite") == 0
    names = {p.name for p in previous.iterdir()}
    assert TRUTH_CSV not in names and "raw.tif" not in names and "summary.json.tmp" not in names
    summary = json.loads((previous / SUMMARY_JSON).read_text())
    assert names == set(summary["files"])
    assert summary["frames_acquired"] == 6


def test_overwrite_refuses_a_folder_holding_other_files(tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.docx").write_text("months of work")
    (folder / "localizations.csv").write_text("frame,x,y\n")
    assert run_cli("--max-frames", "5", "--out", str(folder), "--overwrite") == 2
    assert_one_line_error(capsys, str(folder), "chapter1.docx")
    assert sorted(p.name for p in folder.iterdir()) == ["chapter1.docx", "localizations.csv"]


@pytest.fixture(scope="module")
def long_movie(tmp_path_factory) -> Path:
    """A 2,500-frame simulated movie: longer than the ring (512) and than the simulator's 2,000 frames."""
    out = tmp_path_factory.mktemp("long") / "sim"
    assert main(["simulate", "--frames", "2500", "--size", "32", "--out", str(out), "--quiet"]) == 0
    return out / "movie.tif"


@pytest.mark.slow  # 2,500 frames through the model, twice: ~30 s on a busy 2-core machine
@pytest.mark.parametrize("pace", [[], ["--fps", "3000"]], ids=["as-fast-as-possible", "paced"])
def test_a_replayed_movie_is_analysed_whole_and_loses_no_frame(long_movie, tmp_path, pace):
    out = tmp_path / "replay"
    assert run_cli("--source", str(long_movie), "--out", str(out), "--set", "pipeline.max_batch=64", *pace) == 0
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["frame_limit"] is None
    assert summary["frames_acquired"] == summary["frames_localized"] == 2500
    assert summary["frames_lost_localizer"] == 0 and summary["frames_lost_localizer_ranges"] == []


# --------------------------------------------------------------------------------------------------
# Unreadable sources: refused before anything is written


def _truncated_tiff(folder: Path) -> Path:
    from rtsmlm.io.movies import write_tiff_movie

    path = folder / "truncated.tif"
    frames = np.full((20, 16, 16), 100, np.uint16)
    write_tiff_movie(path, frames, 100.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_a_tiff(folder: Path) -> Path:
    path = folder / "notes.tif"
    path.write_text("this is not an image\n")
    return path


def _a_folder(folder: Path) -> Path:
    path = folder / "frames"
    path.mkdir()
    return path


def _unsupported(folder: Path) -> Path:
    path = folder / "movie.avi"
    path.write_bytes(b"RIFF0000AVI ")
    return path


@pytest.mark.parametrize("make_source", [lambda d: d / "missing.tif", _truncated_tiff, _not_a_tiff, _a_folder,
                                         _unsupported], ids=["missing", "truncated", "not-a-tiff", "folder",
                                                             "unsupported"])
def test_an_unreadable_source_is_one_line_exit_2_and_no_output(tmp_path, capsys, make_source):
    source = make_source(tmp_path)
    out = tmp_path / "out"
    assert run_cli("--source", str(source), "--out", str(out)) == 2
    assert_one_line_error(capsys, str(source))
    assert not out.exists() or not any(out.iterdir()), "a run that never started left files behind"


def test_the_terminal_shows_one_line_for_a_truncated_source(tmp_path):
    """As a user sees it: the real process, stderr as printed (log records of libraries included)."""
    source = _truncated_tiff(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "rtsmlm", "run", *COMMON, "--source", str(source),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"rtsmlm: {source}"), proc.stderr


def test_a_bad_config_value_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("--out", str(out), "--set", "pipeline.ring_frames=1") == 2
    assert_one_line_error(capsys, "pipeline.ring_frames")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# Models that do not fit


def _checkpoint_copy(folder: Path, edit) -> Path:
    from rtsmlm.localization.checkpoint import resolve

    src = resolve("default")
    prefix = folder / "model"
    shutil.copy(src.with_suffix(".safetensors"), prefix.with_suffix(".safetensors"))
    meta = json.loads(src.with_suffix(".json").read_text())
    edit(meta)
    prefix.with_suffix(".json").write_text(json.dumps(meta))
    return prefix


@pytest.mark.slow  # checkpoint loading imports torch first (~10 s on a busy 2-core machine)
def test_a_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    model = tmp_path / "nowhere" / "model"
    assert run_cli("--max-frames", "5", "--out", str(tmp_path / "out"), "--model", str(model)) == 2
    assert_one_line_error(capsys, str(model))


@pytest.mark.slow  # imports torch to load the weights
def test_weights_that_do_not_fit_their_metadata_are_one_line_exit_2(tmp_path, capsys):
    model = _checkpoint_copy(tmp_path, lambda meta: meta.update(width=2 * meta["width"]))
    assert run_cli("--max-frames", "5", "--out", str(tmp_path / "out"), "--model", str(model)) == 2
    assert_one_line_error(capsys, str(model))


@pytest.mark.slow  # loads the model and localizes a short movie
def test_a_movie_from_another_camera_runs_with_a_warning_naming_the_difference(finished_run, tmp_path, capsys):
    from rtsmlm.io.movies import open_movie, write_tiff_movie

    with open_movie(finished_run[0] / "raw.tif") as movie:
        frames = np.stack([movie.read(i) for i in range(10)])
    # The same frames, recorded as if by an sCMOS with 160 nm pixels: the default model was trained for an
    # EMCCD (a noise model the photon conversion does not undo: warned). The pixel size alone is not: the PSF's
    # width in pixels, which the range guard measures on the frames, is what the model cares about.
    source = write_tiff_movie(tmp_path / "other_camera.tif", frames, 160.0, {"camera": {"model": "scmos"}})
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"camera\.model: model trained for emccd, .* scmos") as caught:
        assert run_cli("--source", str(source), "--out", str(out)) == 0
    assert not [w for w in caught if "pixel_size_nm" in str(w.message)]
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["status"] == "complete" and summary["source"]["camera"]["pixel_size_nm"] == 160.0
    assert summary["source"]["camera"]["model"] == "scmos"
    assert summary["frames_localized"] + summary["frames_lost_localizer"] == 10


# --------------------------------------------------------------------------------------------------
# Full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MiB tmpfs mounted in tmp_path (needs root; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # loads the model and runs until the disk fills
def test_a_filling_disk_stops_the_run_with_one_line_and_every_file_readable(small_disk, capsys):
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.io.movies import open_movie

    out = small_disk / "run"
    # Free-running camera (about 8 KiB per 64x64 frame): 3000 frames would need more than the 20 MiB
    # disk. A small ring keeps the drain after the stop short.
    rc = run_cli("--as-fast-as-possible", "--max-frames", "3000", "--out", str(out),
                 "--set", "pipeline.ring_frames=64")
    assert rc == 1
    line = assert_one_line_error(capsys, "disk", str(out))
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["status"] == "failed" and len(summary["errors"]) == 1 and summary["errors"][0] in line
    acquired = summary["frames_acquired"]
    assert 0 < acquired < 3000
    assert summary["frames_recorded"] == acquired and summary["frames_lost_recorder"] == 0
    # Live: localized, skipped (latency bound) or lost; the skipped and lost ones are caught up after.
    assert (summary["frames_localized"] + summary["frames_skipped_live"]
            + summary["frames_lost_localizer"]) == acquired
    assert summary["frames_missing_final"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_locs(out / LOCS_CSV)) == summary["n_locs"]
        assert len(read_locs(out / LOCS_HDF5)) == summary["n_locs"]
        assert read_locs(out / TRUTH_CSV)["frame"].max() < acquired
        with open_movie(out / "raw.tif") as movie:
            assert len(movie) == acquired
    assert shutil.disk_usage(small_disk).free > 0


@pytest.mark.slow  # checkpoint loading imports torch first
@pytest.mark.parametrize("edit, key", [
    (lambda m: m.update(width=-4), "'width' is -4"),
    (lambda m: m.update(width="16"), "'width' must be an integer"),
    (lambda m: m.update(width=100000), "'width' is 100000"),
    (lambda m: m["scales"].update(input_scale=0.0), "'scales.input_scale' is 0.0"),
    (lambda m: m["scales"].update(input_scale=float("nan")), "'scales.input_scale' is nan"),
    (lambda m: m.update(window=4), "'window' must be odd"),
    (lambda m: m.pop("depth"), "'depth' is missing"),
], ids=["negative", "string", "huge", "zero-scale", "nan-scale", "even-window", "missing"])
def test_bad_checkpoint_metadata_is_one_line_naming_file_and_key(tmp_path, capsys, edit, key):
    model = _checkpoint_copy(tmp_path, edit)
    assert run_cli("--max-frames", "5", "--out", str(tmp_path / "o"), "--model", str(model)) == 2
    assert_one_line_error(capsys, str(model), key)


@pytest.mark.slow
def test_checkpoint_metadata_that_is_a_list_or_nan_weights_is_one_line(tmp_path, capsys):
    model = _checkpoint_copy(tmp_path, lambda m: None)
    model.with_suffix(".json").write_text("[1, 2, 3]")
    assert run_cli("--max-frames", "5", "--out", str(tmp_path / "o"), "--model", str(model)) == 2
    assert_one_line_error(capsys, "must be a JSON object")

    from safetensors.torch import load_file, save_file

    (tmp_path / "nan").mkdir()
    model = _checkpoint_copy(tmp_path / "nan", lambda m: None)
    weights = load_file(str(model.with_suffix(".safetensors")))
    first = sorted(weights)[0]
    weights[first][...] = float("nan")
    save_file(weights, str(model.with_suffix(".safetensors")))
    assert run_cli("--max-frames", "5", "--out", str(tmp_path / "o2"), "--model", str(model)) == 2
    assert_one_line_error(capsys, "NaN or infinite", first)


def test_an_unknown_colormap_is_one_line_exit_2(tmp_path, capsys):
    assert run_cli("--max-frames", "5", "--out", str(tmp_path / "o"), "--set", 'gui.colormap="infernoo"') == 2
    assert_one_line_error(capsys, "gui.colormap 'infernoo'")


@pytest.mark.slow  # loads the model and runs until the disk fills
def test_a_disk_filled_faster_than_the_stats_interval_gives_one_line_and_whole_rows(small_disk, capsys):
    """A 256x256 camera free-running fills the 20 MiB disk in a fraction of a second."""
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.io.movies import open_movie

    out = small_disk / "run"
    rc = run_cli("--as-fast-as-possible", "--max-frames", "3000", "--out", str(out), "--set", "sim.size=256",
                 "--set", "pipeline.ring_frames=32")
    assert rc == 1
    line = assert_one_line_error(capsys, "disk", str(out))
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["status"] == "failed" and len(summary["errors"]) == 1 and summary["errors"][0] in line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in (LOCS_CSV, LOCS_HDF5):
            read_locs(out / name)
        if (out / TRUTH_CSV).exists():
            assert (out / TRUTH_CSV).read_text().endswith("\n")
        assert (out / LOCS_CSV).read_text().endswith("\n")
        with open_movie(out / "raw.tif") as movie:
            assert len(movie) == summary["frames_recorded"]
    assert not [p.name for p in out.iterdir() if p.stat().st_size == 0]
