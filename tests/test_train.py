"""`rtsmlm train` end to end on a tiny budget: files, resumability, loadable checkpoint, strict JSON."""

import json
from pathlib import Path

import numpy as np
import pytest

from rtsmlm.cli import main
from rtsmlm.localization.checkpoint import load

TINY = ["--set", "train.batch_size=2", "--set", "train.val_samples=4", "--set", "train.checkpoint_every=1",
        "--set", "train.patch_size=16", "--quiet"]


def _strict_json(text: str):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=no_constants)


def test_train_writes_a_loadable_checkpoint_into_a_new_folder_and_resumes(tmp_path, capsys):
    prefix = tmp_path / "new" / "folder" / "model"
    assert main(["train", "--out", str(prefix), "--steps", "2", *TINY]) == 0
    for name in ("model.safetensors", "model.json", "model.state.pt", "model.log.jsonl"):
        assert (prefix.parent / name).exists(), name
    log = [_strict_json(line) for line in prefix.with_name("model.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    meta_json = _strict_json(prefix.with_suffix(".json").read_text())
    assert meta_json["format"] == "rtsmlm-checkpoint-1" and meta_json["train"]["patch_size"] == 16

    model, meta = load(prefix)
    assert meta.window == 3 and meta.step in (1, 2)
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())

    # A second call with more steps resumes from the saved state instead of starting again.
    assert main(["train", "--out", str(prefix), "--steps", "3", *TINY]) == 0
    log = [_strict_json(line) for line in prefix.with_name("model.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert "resuming" in capsys.readouterr().out


def test_keep_last_keeps_the_last_steps_weights(tmp_path):
    """train.keep = "last": the checkpoint holds the last step's weights whatever the validation scores
    (each step's weights differ, so the saved ones are the last step's exactly)."""
    import torch

    prefix = tmp_path / "model"
    assert main(["train", "--out", str(prefix), "--steps", "3", *TINY, "--set", 'train.keep="last"']) == 0
    model, meta = load(prefix)
    assert meta.step == 3
    state = torch.load(prefix.with_suffix(".state.pt"), map_location="cpu", weights_only=False)
    assert state["step"] == 3
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name


def test_fine_tuning_starts_from_a_checkpoint_with_its_architecture_and_scales(tmp_path):
    """`rtsmlm train --init default`: the shipped model's weights, width and scales, the config's data."""
    import torch

    from rtsmlm.localization.checkpoint import load as load_ckpt

    prefix = tmp_path / "tuned"
    # A config asking for a narrower net: the initial model's architecture wins.
    assert main(["train", "--out", str(prefix), "--steps", "1", "--init", "default", "--set", "train.width=8",
                 "--set", "train.lr=1e-7", *TINY]) == 0
    tuned, meta = load_ckpt(prefix)
    base, base_meta = load_ckpt("default")
    assert meta.width == base_meta.width and meta.scales == base_meta.scales
    # One step at a negligible learning rate: the weights are the initial model's.
    for (name, a), (_, b) in zip(tuned.state_dict().items(), base.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_fine_tuning_to_a_larger_width_widens_the_initial_model_without_changing_its_outputs(tmp_path, capsys):
    """`--init default --set train.width=32`: a 32-channel model whose outputs at step 0 are the shipped
    16-channel model's; its added channels are live (random, not zero), so training can use them."""
    import torch

    from rtsmlm.localization.checkpoint import load as load_ckpt

    prefix = tmp_path / "wide"
    assert main(["train", "--out", str(prefix), "--steps", "1", "--init", "default", "--set", "train.width=32",
                 "--set", "train.lr=1e-7", *TINY]) == 0
    assert "widened default from 16 to 32 channels" in capsys.readouterr().out
    wide, meta = load_ckpt(prefix)
    base, base_meta = load_ckpt("default")
    assert (meta.width, base_meta.width) == (32, 16) and meta.scales == base_meta.scales
    frames = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 3 + 1
    with torch.no_grad():
        assert torch.allclose(wide.eval()(frames), base.eval()(frames), atol=1e-4)
    added = wide.encoder.inc[0].weight[16:]
    assert added.abs().mean() > 1e-3


def test_fine_tuning_with_narrow_to_prunes_the_initial_model(tmp_path, capsys):
    """`--init default --set train.narrow_to=8`: an 8-channel model that starts as net.narrowed's pruning of
    the shipped 16-channel one (one step at a negligible learning rate keeps it there), with its scales; a
    narrow_to that is not narrower, or without an initial model, is refused in one sentence."""
    import torch

    from rtsmlm.core.config import ConfigError
    from rtsmlm.localization.checkpoint import load as load_ckpt
    from rtsmlm.localization.net import narrowed

    prefix = tmp_path / "narrow"
    assert main(["train", "--out", str(prefix), "--steps", "1", "--init", "default", "--set", "train.narrow_to=8",
                 "--set", "train.lr=1e-7", *TINY]) == 0
    assert "narrowed default from 16 to 8 channels" in capsys.readouterr().out
    small, meta = load_ckpt(prefix)
    base, base_meta = load_ckpt("default")
    assert meta.width == 8 and meta.scales == base_meta.scales
    for (name, a), (_, b) in zip(small.state_dict().items(), narrowed(base, 8).state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name
    from rtsmlm.core import config as rconfig
    from rtsmlm.training.train import train

    for init, narrow_to, message in (("default", 16, "must be below the width"), (None, 8, "give one with --init")):
        cfg = rconfig.load(None, overrides=[f"train.narrow_to={narrow_to}"])
        with pytest.raises(ConfigError, match=message):
            train(cfg, tmp_path / "refused", init=init, progress=False)


def test_batches_simulated_by_worker_processes_equal_those_of_the_training_process():
    """Worker processes (how a GPU is kept fed) give the very batches the training process would make: the
    data depend only on (seed, step), so runs stay reproducible and resumable either way."""
    from rtsmlm.core import config as rconfig
    from rtsmlm.training.data import TrainingSimulator
    from rtsmlm.training.train import sim_worker_count, train_device, training_batches

    cfg = rconfig.from_dict({"train": {"batch_size": 2, "patch_size": 16, "steps": 10, "seed": 4}})
    here = training_batches(cfg, TrainingSimulator(cfg, 4), 3, workers=0)
    there = training_batches(cfg, TrainingSimulator(cfg, 4), 3, workers=2)
    for _ in range(3):
        a, b = next(here), next(there)
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.em_xyzn, b.em_xyzn)
    there.close()
    assert train_device(cfg) in ("cpu", "cuda") and sim_worker_count(cfg, "cpu") == 0


def test_train_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this machine trains there (benchmarks/gpu_acceptance.py measures it)")
    assert main(["train", "--out", str(tmp_path / "m"), "--steps", "1", "--device", "cuda", *TINY]) == 2
    assert "train.device = 'cuda' but torch sees no CUDA GPU" in capsys.readouterr().err


def test_train_help_documents_every_train_key(capsys):
    import dataclasses

    from rtsmlm.core.config import TrainConfig, field_docs

    docs = field_docs(TrainConfig)
    assert all(docs[f.name] for f in dataclasses.fields(TrainConfig)), [k for k, v in docs.items() if not v]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert all(f"  {f.name} = " in text for f in dataclasses.fields(TrainConfig))


def test_pair_fraction_adds_partners_close_by_and_leaves_other_configs_data_unchanged():
    """train.pair_fraction gives events a partner 0.5–2.5 px away (close pairs to learn to split); with
    the key at 0 the simulated data are those of a config without it (shipped models stay reproducible)."""
    from scipy.spatial import cKDTree

    from rtsmlm.core import config as rconfig
    from rtsmlm.training.data import PAIR_DISTANCE_PX, TrainingSimulator

    base = {"train": {"broad": True, "density_min": 0.5, "density_max": 0.5, "on_frames_min": 1.0,
                      "on_frames_max": 1.0}}
    plain = TrainingSimulator(rconfig.from_dict(base), 3)
    zero = TrainingSimulator(rconfig.from_dict({"train": {**base["train"], "pair_fraction": 0.0}}), 3)
    for _ in range(3):
        a, b = plain._events(0.5), zero._events(0.5)
        assert all(np.array_equal(u, v) for u, v in zip(a, b))

    paired = TrainingSimulator(rconfig.from_dict({"train": {**base["train"], "pair_fraction": 1.0}}), 3)
    x, y, _, start, _, bright = paired._events(0.5)
    n = len(x) // 2
    assert len(x) == 2 * n and n > 0
    d = np.hypot(x[n:] - x[:n], y[n:] - y[:n])  # every event's partner follows the originals
    assert d.min() >= PAIR_DISTANCE_PX[0] and d.max() <= PAIR_DISTANCE_PX[1]
    assert np.abs(start[n:] - start[:n]).max() <= 1.0
    assert np.all(np.isin(bright[n:], bright[:n]))
    # Without partners, emitters this close are rare at 0.5/µm²: the nearest-neighbour distances show it.
    xp, yp, *_ = plain._events(0.5)
    near_plain = (cKDTree(np.column_stack([xp, yp])).query(np.column_stack([xp, yp]), k=2)[0][:, 1] < 2.5).mean()
    assert near_plain < 0.3


def test_frame_locked_training_events_cover_whole_frames():
    """sim.frame_locked (a calibrated movie whose molecules switch with the frames): the training events start
    on a frame boundary and last whole frames, so no emitter is partly on in a training frame."""
    from rtsmlm.core import config as rconfig
    from rtsmlm.training.data import TrainingSimulator

    cfg = rconfig.from_dict({"sim": {"frame_locked": True, "mean_on_frames": 0.7}})
    _, _, _, start, dur, _ = TrainingSimulator(cfg, 5)._events(1.0)
    assert len(start) > 10
    assert np.array_equal(start, np.floor(start)) and np.array_equal(dur, np.ceil(dur)) and dur.min() >= 1
    # Without the key the events are those of before (continuous starts and durations).
    _, _, _, start0, dur0, _ = TrainingSimulator(rconfig.from_dict({"sim": {"mean_on_frames": 0.7}}), 5)._events(1.0)
    assert np.array_equal(np.floor(start0), start) and not np.array_equal(start0, start)


def test_edge_targets_reach_just_beyond_the_patch_and_leave_other_configs_data_unchanged():
    """train.edge_target_px: emitters up to that far outside the patch are targets too (the read-out decides
    inside/outside by the localized position); at 0 the batches are those of a config without the key."""
    from rtsmlm.core import config as rconfig
    from rtsmlm.training.data import TrainingSimulator

    base = {"train": {"density_min": 2.0, "density_max": 2.0, "patch_size": 16}}
    plain = TrainingSimulator(rconfig.from_dict(base), 7).batch(24)
    zero = TrainingSimulator(rconfig.from_dict({"train": {**base["train"], "edge_target_px": 0.0}}), 7).batch(24)
    assert np.array_equal(plain.em_xyzn, zero.em_xyzn) and np.array_equal(plain.frames, zero.frames)
    xy = plain.em_xyzn[plain.em_mask][:, :2]
    assert len(xy) > 20 and xy.min() >= 0.0 and xy.max() < 16.0

    edge = TrainingSimulator(rconfig.from_dict({"train": {**base["train"], "edge_target_px": 0.5}}), 7).batch(24)
    xy = edge.em_xyzn[edge.em_mask][:, :2]
    outside = (xy < 0.0) | (xy >= 16.0)
    assert outside.any(axis=1).sum() >= 1
    assert xy.min() >= -0.5 and xy.max() < 16.5
    # The same emitters were drawn: the inside targets are the plain config's.
    inside = ~outside.any(axis=1)
    assert inside.sum() == plain.em_mask.sum()


def test_a_teacher_adds_its_term_to_the_loss_and_must_read_the_same_inputs(tmp_path, capsys):
    """`train.teacher`: a model fine-tuned from `default` with `default` itself as teacher starts with the
    teacher term at 0 — its first step's loss is that of the same run without a teacher — and the term weighs
    in once the two differ (a teacher of another width); a teacher whose inputs differ (the broad model's
    Anscombe input and conditioning against `default`'s linear photons) is refused in one sentence."""
    from rtsmlm.core import config as rconfig
    from rtsmlm.core.config import ConfigError
    from rtsmlm.training.train import train

    def first_loss(prefix, *extra):
        assert main(["train", "--out", str(prefix), "--steps", "1", "--init", "default", *extra, *TINY]) == 0
        return _strict_json(prefix.with_name(prefix.name + ".log.jsonl").read_text().splitlines()[0])["train_loss"]

    alone = first_loss(tmp_path / "alone")
    self_taught = first_loss(tmp_path / "self", "--set", 'train.teacher="default"')
    assert "distilling from default (16 channels)" in capsys.readouterr().out
    assert self_taught == pytest.approx(alone, rel=1e-5)
    small = tmp_path / "small"
    assert main(["train", "--out", str(small), "--steps", "1", "--init", "default", "--set", "train.narrow_to=8",
                 *TINY]) == 0
    other = first_loss(tmp_path / "other", "--set", f'train.teacher="{small}"', "--set", "train.distill_weight=5")
    assert other > alone + 1e-3

    cfg = rconfig.load(Path(__file__).parents[1] / "configs" / "train_broad_2d_small_polish.toml",
                       overrides=['train.teacher="default"', "train.steps=1"])
    with pytest.raises(ConfigError, match="reads other inputs than the model being trained"):
        train(cfg, tmp_path / "refused", init="broad_2d", progress=False)
