"""A model's own detection threshold: chosen on its training conditions (simulated) when it is trained,
stored in its metadata, used by runs unless the config sets one (issue 13 item 3)."""

import json
import shutil

import pytest

from rtsmlm.cli import main
from rtsmlm.core import config
from rtsmlm.localization.checkpoint import (
    DEFAULT_MODEL_DIR,
    DEFAULT_P_THRESHOLD,
    CheckpointError,
    detection_threshold,
    load_meta,
    store_detection,
)


def _copy_default(tmp_path):
    """The shipped default model as a model trained before thresholds were chosen (no ``detection``)."""
    shutil.copy(DEFAULT_MODEL_DIR / "default_2d.safetensors", tmp_path / "model.safetensors")
    meta = json.loads((DEFAULT_MODEL_DIR / "default_2d.json").read_text())
    meta.pop("detection", None)
    (tmp_path / "model.json").write_text(json.dumps(meta))
    return tmp_path / "model"


def test_the_config_wins_then_the_model_then_the_default(tmp_path):
    prefix = _copy_default(tmp_path)
    meta = load_meta(prefix)
    assert meta.detection is None
    assert detection_threshold(meta, -1.0) == (DEFAULT_P_THRESHOLD, "default")
    meta = store_detection(prefix, {"p_threshold": 0.45, "jaccard": 0.8, "frames": 10, "conditions": ["a"]})
    assert load_meta(prefix).detection == meta.detection
    assert detection_threshold(meta, -1.0) == (0.45, "model")
    assert detection_threshold(meta, 0.7) == (0.7, "config")
    assert detection_threshold(meta, 0.0) == (0.0, "config")  # 0 is a threshold, not "unset"
    assert config.load().model.p_threshold < 0  # the default: the model's own
    assert load_meta("default").detection is not None  # every shipped model carries one


def test_a_bad_stored_threshold_is_one_sentence_naming_the_file_and_key(tmp_path):
    prefix = _copy_default(tmp_path)
    data = json.loads(prefix.with_suffix(".json").read_text())
    data["detection"] = {"p_threshold": 1.5}
    prefix.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"model\.json: metadata key 'detection\.p_threshold' is 1\.5"):
        load_meta(prefix)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(CheckpointError, match="detection.p_threshold"):
        store_detection(_copy_default(fresh), {"p_threshold": -0.1})


@pytest.mark.slow  # simulates and localizes 30 frames, then a 60-frame run
def test_choose_threshold_stores_the_best_of_the_curve_and_a_run_uses_it(tmp_path, capsys):
    from rtsmlm.analysis.thresholds import GRID, JACCARD_TOLERANCE, threshold_curve

    prefix = _copy_default(tmp_path)
    # A dim sample, where the usual 0.6 loses emitters: the conditions to choose on.
    conditions = tmp_path / "dim.toml"
    conditions.write_text("[sim]\nsize = 64\ndensity = 0.5\nphotons_mean = 700.0\nphotons_sigma = 200.0\n"
                          "bg_photons = 60.0\nseed = 5\n")
    assert main(["choose-threshold", str(prefix), "--config", str(conditions), "--frames", "30"]) == 0
    detection = load_meta(prefix).detection
    assert detection is not None and detection["p_threshold"] in GRID and detection["frames"] == 30
    assert "detection threshold" in capsys.readouterr().out
    # It is the curve's best on those conditions (the same simulation, seeded).
    cfg = config.load(conditions)
    curve = threshold_curve(config.replace(cfg, sim=config.to_dict(config.replace(cfg.sim, seed=cfg.sim.seed + 7000))),
                            str(prefix), frames=30)
    assert detection["jaccard"] == pytest.approx(curve[detection["p_threshold"]], abs=1e-4)
    assert detection["jaccard"] >= max(curve.values()) - JACCARD_TOLERANCE
    # Of the thresholds as good as the best, the one nearest the usual 0.6.
    assert all(abs(t - 0.6) >= abs(detection["p_threshold"] - 0.6) for t, j in curve.items()
               if j >= max(curve.values()) - JACCARD_TOLERANCE)
    assert detection["p_threshold"] < DEFAULT_P_THRESHOLD  # dim emitters need a lower one

    out = tmp_path / "run"
    common = ["run", "--quiet", "--no-stream", "--set", "backend.threads=1", "--set", f'model.checkpoint="{prefix}"',
              "--set", "sim.size=64"]
    assert main([*common, "--out", str(out), "--max-frames", "60"]) == 0
    model = json.loads((out / "summary.json").read_text())["model"]
    assert model["p_threshold"] == detection["p_threshold"] and model["p_threshold_from"] == "model"
    assert model["residual_threshold"] == 0.5  # the second detection pass is on by default
    out2 = tmp_path / "run2"
    assert main([*common, "--out", str(out2), "--max-frames", "30", "--set", "model.p_threshold=0.7",
                 "--set", "model.min_photons=600", "--set", "model.residual_threshold=0"]) == 0
    model = json.loads((out2 / "summary.json").read_text())["model"]
    assert model["p_threshold"] == 0.7 and model["p_threshold_from"] == "config" and model["min_photons"] == 600
    assert model["residual_threshold"] == 0.0
    # The brightness floor (what calibrate may choose) holds for every localization the run wrote: each is at
    # least 600 photons or beside one that is, in an adjacent frame.
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.localization.brightness_floor import CONFIRM_RADIUS_PX, kept_by_floor

    for name in ("localizations.csv", "localizations.hdf5"):
        table = read_locs(out2 / name)
        assert len(table) and (table["photons"] >= 600).any(), name
        assert kept_by_floor(table, 600.0, CONFIRM_RADIUS_PX * 100.0 + 1e-3).all(), name


def test_training_ends_by_storing_the_models_threshold(tmp_path):
    prefix = tmp_path / "m"
    assert main(["train", "--out", str(prefix), "--steps", "1", "--set", "train.batch_size=2", "--set",
                 "train.val_samples=4", "--set", "train.patch_size=16", "--set", "sim.size=32", "--quiet"]) == 0
    detection = load_meta(prefix).detection
    assert detection is not None and 0.0 <= detection["p_threshold"] <= 1.0
    assert detection["conditions"] and detection["conditions"][0].startswith("training config")


def test_choose_threshold_without_a_config_simulates_the_middle_of_the_training_ranges(tmp_path, capsys):
    prefix = _copy_default(tmp_path)
    assert main(["choose-threshold", str(prefix), "--frames", "10", "--quiet"]) == 0
    detection = load_meta(prefix).detection
    train = load_meta("default").train
    bg = (train["bg_min"] + train["bg_max"]) / 2
    assert detection is not None and detection["frames"] == 10
    assert detection["conditions"] == [f"training config: emccd 100 nm px, σ 130 nm, bg {bg:g}, "
                                       f"{(train['density_min'] + train['density_max']) / 2:g}/µm²"]
    assert capsys.readouterr().out == ""  # --quiet
    # Not a checkpoint: one sentence.
    assert main(["choose-threshold", str(tmp_path / "nothing")]) == 2
    assert "nothing.json does not exist" in capsys.readouterr().err


def test_thresholds_chosen_for_one_checkpoint_give_way_to_another_models_own(tmp_path, caplog):
    """rtsmlm calibrate's thresholds and floor belong to the model it picked (model.thresholds_for): a run of a
    model fine-tuned on that config (here a copy of the default model with its own stored threshold) uses that
    model's threshold and no floor, without the user resetting them; the picked model keeps them."""
    from dataclasses import replace

    from rtsmlm.acquisition.source import CameraModel
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.checkpoint import thresholds_for_run
    from rtsmlm.localization.localizer import StreamingLocalizer

    prefix = _copy_default(tmp_path)
    store_detection(prefix, {"p_threshold": 0.35, "jaccard": 0.8, "frames": 10, "conditions": ["a"]})
    cfg = config.load(None, ["model.checkpoint='broad_2d'", "model.thresholds_for='broad_2d'",
                             "model.p_threshold=0.2", "model.candidate_threshold=0.2", "model.min_photons=300"])
    assert thresholds_for_run(cfg.model) == cfg.model
    same = replace(cfg.model, checkpoint=str(DEFAULT_MODEL_DIR / "broad_2d.safetensors"))  # its path: the same model
    assert thresholds_for_run(same) == same
    fine_tuned = replace(cfg, model=replace(cfg.model, checkpoint=str(prefix)))
    with caplog.at_level("INFO", logger="rtsmlm.localization"):
        backend, meta = open_backend(config.BackendConfig(name="torch", device="cpu", threads=1), str(prefix))
        loc = StreamingLocalizer.for_run(backend, meta, CameraModel(), (32, 32), fine_tuned)
    assert (loc.p_threshold, loc.p_threshold_source) == (0.35, "model")
    assert loc.floor.min_photons == 0.0 and loc.postprocessor.candidate_threshold == 0.3
    assert "chosen for broad_2d" in caplog.text
    unbound = replace(fine_tuned, model=replace(fine_tuned.model, thresholds_for=""))
    loc = StreamingLocalizer.for_run(backend, meta, CameraModel(), (32, 32), unbound)
    assert (loc.p_threshold, loc.floor.min_photons) == (0.2, 300.0)  # not bound: they apply to any model
