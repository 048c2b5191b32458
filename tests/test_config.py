"""Configuration loading: the shipped config.toml, and one-sentence errors that name the key path.

An unknown key gets a did-you-mean, a wrong type says which type, an out-of-range value says the range,
a bad choice lists the choices. CLI ``--set`` overrides change single keys.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from rtsmlm.cli import main
from rtsmlm.core import config
from rtsmlm.core.config import ConfigError


def load_text(tmp_path: Path, text: str, overrides: list[str] | None = None) -> config.Config:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path, overrides)


def error_of(tmp_path: Path, text: str = "", overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, overrides)
    message = str(info.value)
    assert "\n" not in message, f"not one sentence: {message!r}"
    return message


@pytest.mark.parametrize("name", ["config.toml", "rtsmlm/default_config.toml"])
def test_shipped_config_files_load_and_equal_the_defaults(repo_root: Path, name: str) -> None:
    path = repo_root / name
    if not path.exists():
        pytest.skip(f"{name} is not in the repository yet")
    cfg = config.load(path)
    defaults = config.Config()
    for f in dataclasses.fields(config.Config):
        if f.name == "plugins":  # plugin tables are examples, not defaults of the engine
            assert isinstance(cfg.plugins, dict)
            continue
        assert getattr(cfg, f.name) == getattr(defaults, f.name), f"[{f.name}] differs from the defaults"


def test_defaults_without_a_file() -> None:
    assert config.load() == config.Config()
    assert config.load(None, []) == config.Config()


def test_unknown_key_names_the_path_and_suggests_the_closest_key(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "[sim]\ndensty = 1.0\n")
    assert "'sim.densty'" in msg and "did you mean 'density'?" in msg
    assert str(tmp_path / "config.toml") in msg
    msg = error_of(tmp_path, "[camra]\npixel_size_nm = 100.0\n")
    assert "'camra'" in msg and "did you mean 'camera'?" in msg
    msg = error_of(tmp_path, "[sim.drift]\nenabeld = true\n")
    assert "'sim.drift.enabeld'" in msg and "did you mean 'enabled'?" in msg
    # Nothing close: the allowed keys are listed instead.
    msg = error_of(tmp_path, "[stream]\nzzz = 1\n")
    assert "'stream.zzz'" in msg and "did you mean" not in msg and "address" in msg


@pytest.mark.parametrize("text, path, expected", [
    ('[sim]\nsize = "big"\n', "sim.size", "an integer"),
    ("[sim]\nsize = 64.0\n", "sim.size", "an integer"),
    ("[sim]\nsize = true\n", "sim.size", "an integer"),
    ('[camera]\nem_gain = "100"\n', "camera.em_gain", "a number"),
    ("[stream]\nenabled = 1\n", "stream.enabled", "true or false"),
    ("[output]\ndir = 5\n", "output.dir", "a string"),
    ("sim = 3\n", "sim", "a table"),
])
def test_wrong_type_names_the_path_and_the_expected_type(tmp_path: Path, text: str, path: str,
                                                         expected: str) -> None:
    msg = error_of(tmp_path, text)
    assert f"'{path}'" in msg and expected in msg


@pytest.mark.parametrize("text, path, allowed", [
    ("[sim]\ndensity = 50.0\n", "sim.density", "allowed range: 0 to 20"),
    ("[sim]\nsize = 4\n", "sim.size", "allowed range: 8 to 8192"),
    ("[camera]\nqe = 1.5\n", "camera.qe", "allowed range: 0.01 to 1"),
    ("[sim]\nframes = 0\n", "sim.frames", "allowed range: 1 to inf"),
])
def test_out_of_range_names_the_path_and_the_range(tmp_path: Path, text: str, path: str, allowed: str) -> None:
    msg = error_of(tmp_path, text)
    assert f"'{path}'" in msg and allowed in msg


def test_bad_choice_lists_the_choices_with_a_suggestion(tmp_path: Path) -> None:
    msg = error_of(tmp_path, '[camera]\nmodel = "emcdd"\n')
    assert "'camera.model'" in msg and "'emccd', 'scmos'" in msg and "did you mean 'emccd'?" in msg
    msg = error_of(tmp_path, '[sim]\nstructure = "ring"\n')
    assert "'sim.structure'" in msg and "did you mean 'rings'?" in msg


def test_nan_is_out_of_range(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "[sim]\ndensity = nan\n")
    assert "'sim.density'" in msg


def test_file_and_toml_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        config.load(missing)
    msg = error_of(tmp_path, "[sim\nsize = 3\n")
    assert "config.toml" in msg and "TOML" in msg


def test_overrides_change_single_keys_over_the_file(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[camera]\npixel_size_nm = 110.0\nem_gain = 50.0\n",
                    ["camera.pixel_size_nm=160", "backend.name=torch", "sim.drift.enabled=true",
                     'sim.structure="rings"', "sim.density=2"])
    assert cfg.camera.pixel_size_nm == 160.0 and isinstance(cfg.camera.pixel_size_nm, float)
    assert cfg.camera.em_gain == 50.0  # from the file, untouched by the overrides
    assert cfg.backend.name == "torch"  # a bare word is a string
    assert cfg.sim.drift.enabled is True and cfg.sim.structure == "rings" and cfg.sim.density == 2.0
    # Everything else keeps its default.
    assert cfg.sim.size == config.SimConfig().size and cfg.render == config.RenderConfig()
    # The last override of a key wins.
    assert config.load(overrides=["sim.seed=3", "sim.seed=4"]).sim.seed == 4


def test_config_text_loads_as_its_file_would_and_errors_name_its_source(tmp_path: Path) -> None:
    text = "[camera]\npixel_size_nm = 110.0\n\n[sim]\nbg_photons = 40.0\n"
    overrides = ["sim.seed=9"]
    assert config.loads(text, overrides) == load_text(tmp_path, text, overrides)
    with pytest.raises(ConfigError, match="the calibrated config: not valid TOML"):
        config.loads("[sim\n", source="the calibrated config")
    with pytest.raises(ConfigError, match="camera.pixel_size_nm"):
        config.loads("[camera]\npixel_size_nm = -1.0\n")


def test_overrides_are_validated_like_the_file() -> None:
    with pytest.raises(ConfigError, match=r"'sim\.densty'.*did you mean 'density'"):
        config.load(overrides=["sim.densty=1"])
    with pytest.raises(ConfigError, match=r"'sim\.density'.*allowed range"):
        config.load(overrides=["sim.density=-1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(overrides=["sim.density"])
    with pytest.raises(ConfigError, match="'sim.size.x'|'size' is not a table"):
        config.load(overrides=["sim.size=64", "sim.size.x=1"])


def test_replace_validates_programmatic_changes() -> None:
    cfg = config.replace(config.SimConfig(), density=1.5, seed=9)
    assert (cfg.density, cfg.seed) == (1.5, 9)
    with pytest.raises(ConfigError, match="'density'.*allowed range"):
        config.replace(config.SimConfig(), density=99.0)


def test_config_is_frozen_and_round_trips_through_a_dict() -> None:
    cfg = config.load(overrides=["sim.size=96", 'camera.model="scmos"'])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sim.size = 3  # type: ignore[misc]
    assert config.from_dict(config.to_dict(cfg)) == cfg
    docs = config.field_docs()
    assert "sim.density" in docs and "camera.pixel_size_nm" in docs and "sim.drift.enabled" in docs
    assert math.isfinite(cfg.camera.pixel_size_nm)


def test_cli_reports_a_config_error_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["simulate", "--out", str(tmp_path / "o"), "--quiet", "--set", "sim.densty=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'sim.densty'" in err and "did you mean 'density'?" in err
    assert not (tmp_path / "o").exists()
    rc = main(["simulate", "--out", str(tmp_path / "o"), "--quiet", "--size", "4"])
    assert rc == 2
    assert "'sim.size'" in capsys.readouterr().err
