"""Bad input of every kind a new user produces: one clear line (exit 2), never a traceback, a hang or a
silently wrong output. Each case is what a person would actually type or have on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from rtsmlm.cli import main

COMMON = ["--quiet", "--no-stream", "--set", "backend.threads=1"]


def _movie(folder: Path, frames: np.ndarray, name: str = "movie.tif") -> Path:
    path = folder / name
    tifffile.imwrite(path, frames, photometric="minisblack")
    return path


def _truncated(folder: Path) -> list[str]:
    path = _movie(folder, np.full((20, 32, 32), 100, np.uint16))
    path.write_bytes(path.read_bytes()[:3000])
    return ["--source", str(path)]


def _empty_file(folder: Path) -> list[str]:
    (folder / "empty.tif").write_bytes(b"")
    return ["--source", str(folder / "empty.tif")]


def _rgb(folder: Path) -> list[str]:
    path = folder / "rgb.tif"
    tifffile.imwrite(path, np.zeros((4, 32, 32, 3), np.uint8), photometric="rgb")
    return ["--source", str(path)]


def _dax_without_inf(folder: Path) -> list[str]:
    (folder / "movie.dax").write_bytes(np.zeros(32 * 32 * 4, ">u2").tobytes())
    return ["--source", str(folder / "movie.dax")]


def _raw_without_yaml(folder: Path) -> list[str]:
    (folder / "movie.raw").write_bytes(np.zeros(32 * 32 * 4, "<u2").tobytes())
    return ["--source", str(folder / "movie.raw")]


def _config(folder: Path, text: str) -> list[str]:
    (folder / "bad.toml").write_text(text, encoding="utf-8")
    return ["--config", str(folder / "bad.toml")]


def _plugin(folder: Path, source: str | None, table: str = "[plugins.mine]\n") -> list[str]:
    if source is not None:
        (folder / "plugins").mkdir()
        (folder / "plugins" / "mine.py").write_text(source, encoding="utf-8")
    return _config(folder, table)


CASES = {
    "missing movie": (lambda d: ["--source", str(d / "nope.tif")], "nope.tif"),
    "truncated movie": (_truncated, "truncated"),
    "empty file": (_empty_file, "empty.tif"),
    "RGB movie": (_rgb, "single-channel"),
    ".dax without .inf": (_dax_without_inf, ".inf"),
    ".raw without .yaml": (_raw_without_yaml, ".yaml"),
    "unknown config key": (lambda d: _config(d, "[camera]\ngain = 3\n"), "gain"),
    "config value of the wrong type": (lambda d: _config(d, '[camera]\nem_gain = "high"\n'), "em_gain"),
    "config value out of range": (lambda d: _config(d, "[camera]\nqe = 2.0\n"), "qe"),
    "unknown config section": (lambda d: _config(d, "[camra]\nqe = 0.9\n"), "camra"),
    "invalid TOML": (lambda d: _config(d, "[camera\nqe = 0.9\n"), "TOML"),
    "bad --set value": (lambda d: ["--set", "pipeline.max_batch=-3"], "--set pipeline.max_batch=-3"),
    "--set without =": (lambda d: ["--set", "pipeline.max_batch"], "pipeline.max_batch"),
    "bad colormap": (lambda d: ["--set", 'gui.colormap="rainbowz"'], "rainbowz"),
    "missing plugin": (lambda d: _plugin(d, None), "mine"),
    "plugin without hooks": (lambda d: _plugin(d, "class Mine:\n    def __init__(self, config): pass\n"), "mine"),
    "plugin constructor raising": (lambda d: _plugin(d, "class Mine:\n    def __init__(self, config):\n"
                                                        "        raise RuntimeError('no laser')\n"
                                                        "    def on_stats(self, s): pass\n"), "no laser"),
    "plugin table not a table": (lambda d: _config(d, "[plugins]\nmine = 3\n"), "plugins.mine"),
    "missing checkpoint": (lambda d: ["--model", str(d / "none")], "none"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(case, tmp_path, capsys):
    make, must_contain = CASES[case]
    args = make(tmp_path)
    out = tmp_path / "out"
    rc = main(["run", *COMMON, "--max-frames", "5", "--out", str(out), *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{case}: exit {rc}\n{err}"
    assert len(lines) == 1 and lines[0].startswith("rtsmlm: "), f"{case}:\n{err}"
    assert "Traceback" not in err
    assert must_contain in lines[0], f"{case}: {must_contain!r} not in {lines[0]!r}"
    assert not out.exists() or not any(p.name == "localizations.csv" for p in out.iterdir())


@pytest.mark.slow  # runs the model on a short movie
def test_a_float_movie_with_nan_pixels_runs_and_reports_them(tmp_path, capsys):
    frames = np.random.default_rng(0).poisson(60.0, (12, 32, 32)).astype(np.float32) + 100.0
    frames[5, :4, :4] = np.nan
    movie = _movie(tmp_path, frames)
    out = tmp_path / "out"
    assert main(["run", *COMMON, "--source", str(movie), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nonfinite_frames"] == {"frames": 1, "pixels": 16, "ranges": [[5, 5]]}
    assert summary["frames_localized"] == 12 and summary["status"] == "complete"
