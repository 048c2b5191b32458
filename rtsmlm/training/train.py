"""Training on simulated data: ``rtsmlm train --config FILE --out PREFIX``.

Samples are simulated on the fly (:mod:`rtsmlm.training.data`), deterministic per step so a resumed run
sees the same data as an uninterrupted one. Every ``train.checkpoint_every`` steps: validation on a fixed
simulated set (loss, Jaccard, lateral RMSE), the checkpoint ``PREFIX`` (weights + JSON metadata) is
written when validation improves, and the resumable state ``PREFIX.state.pt`` always.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from rtsmlm.core.config import Config, ConfigError, to_dict
from rtsmlm.core.jsonio import to_jsonable
from rtsmlm.localization.checkpoint import ModelMeta, save
from rtsmlm.training.data import Batch, Scales, TrainingSimulator


def _to_torch(batch: Batch, device: str = "cpu"):
    import torch

    pin = device != "cpu"
    out = []
    for a in (batch.frames, batch.em_xyzn, batch.em_mask, batch.bg):
        t = torch.from_numpy(a)
        out.append(t.pin_memory().to(device, non_blocking=True) if pin else t)
    return tuple(out)


def train_device(cfg: Config) -> str:
    """``train.device`` resolved: 'auto' is CUDA when torch sees a GPU."""
    import torch

    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        from rtsmlm.core.config import ConfigError

        raise ConfigError("train.device = 'cuda' but torch sees no CUDA GPU (a CPU build of torch, or no driver); "
                          "use train.device = 'auto' or 'cpu'")
    return "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"


# -- training batches simulated ahead of the steps, in worker processes -----------------------------------

_WORKER_SIM: TrainingSimulator | None = None
_WORKER_ARGS: tuple[int, int, int] = (0, 1, 1)


def _init_sim_worker(cfg: Config, scales: Scales | None) -> None:
    global _WORKER_SIM, _WORKER_ARGS
    import torch

    torch.set_num_threads(1)
    t = cfg.train
    _WORKER_SIM = TrainingSimulator(cfg, t.seed, scales=scales)
    _WORKER_ARGS = (t.seed, t.steps, t.batch_size)


def _simulate_step(step: int) -> Batch:
    assert _WORKER_SIM is not None
    seed, steps, batch_size = _WORKER_ARGS
    return _batch_for_step(_WORKER_SIM, seed, step, steps, batch_size)


def _batch_for_step(sim: TrainingSimulator, seed: int, step: int, steps: int, batch_size: int) -> Batch:
    """The batch of ``step``: it depends only on (seed, step), wherever it is simulated (resumable, and the
    same data with or without worker processes)."""
    sim.rng = np.random.default_rng([seed, step])
    sim.progress = step / steps
    return sim.batch(batch_size)


def sim_worker_count(cfg: Config, device: str) -> int:
    import os

    if cfg.train.sim_workers >= 0:
        return cfg.train.sim_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, max(1, cores - 1)) if device == "cuda" else 0


def training_batches(cfg: Config, sim: TrainingSimulator, first_step: int, workers: int):
    """Yield the batches of steps ``first_step``, ``first_step + 1``, … in order. With ``workers`` > 0
    they are simulated by that many processes, ``2 × workers`` steps ahead, so that a GPU does not wait
    for the simulation; otherwise here, one at a time."""
    t = cfg.train
    if workers <= 0:
        step = first_step
        while True:
            yield _batch_for_step(sim, t.seed, step, t.steps, t.batch_size)
            step += 1
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA or torch threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_sim_worker,
                             initargs=(cfg, sim.scales)) as pool:
        pending = deque(pool.submit(_simulate_step, s) for s in range(first_step, first_step + 2 * workers))
        nxt = first_step + 2 * workers
        while True:
            batch = pending.popleft().result()
            pending.append(pool.submit(_simulate_step, nxt))
            nxt += 1
            yield batch


def validate(model, val: Batch, scales: Scales, pixel_size_nm: float, is_3d: bool, chunk: int = 32) -> dict:
    """Loss, Jaccard and lateral RMSE of ``model`` on a fixed simulated set."""
    import torch

    from rtsmlm.analysis.metrics import evaluate
    from rtsmlm.localization.postprocess import Postprocessor
    from rtsmlm.training.loss import decode_loss

    device = str(next(model.parameters()).device)
    frames, em, mask, bg = _to_torch(val, device)
    post = Postprocessor(pixel_size_nm=pixel_size_nm, photon_scale=scales.photon_scale,
                         z_scale=scales.z_scale, bg_scale=scales.bg_scale)
    losses, preds = [], []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(frames), chunk):
            out = model(frames[i:i + chunk])
            loss, _ = decode_loss(out, em[i:i + chunk], mask[i:i + chunk], bg[i:i + chunk], use_z=is_3d)
            losses.append(float(loss) * len(out))
            preds.append(post(out, np.arange(i, i + len(out))))
    model.train()
    pred = np.concatenate(preds)
    side = val.frames.shape[-1]
    # Targets beyond the patch's edge (train.edge_target_px) are not the patch's emitters: the read-out drops them.
    in_patch = np.all((val.em_xyzn[..., :2] >= 0.0) & (val.em_xyzn[..., :2] < side), axis=-1)
    sample, slot = np.nonzero(val.em_mask & in_patch)
    em = val.em_xyzn[sample, slot].astype(np.float64)
    truth = np.zeros(len(sample), dtype=[("frame", "<i8"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    truth["frame"] = sample
    truth["x"] = em[:, 0] * pixel_size_nm
    truth["y"] = em[:, 1] * pixel_size_nm
    truth["z"] = em[:, 2] * scales.z_scale
    m = evaluate(pred, truth, tolerance_nm=250.0)
    return {"val_loss": sum(losses) / len(frames), "jaccard": m["jaccard"], "rmse_lat_nm": m["rmse_lat_nm"],
            "n_pred": m["n_pred"], "n_true": m["n_true"]}


def _conditioning_of(scales: Scales, wanted: str) -> dict:
    """A conditioned initial model stays conditioned (its first layer expects the channels)."""
    from rtsmlm.localization.conditioning import SETS

    for name, chans in SETS.items():
        if chans and chans == scales.conditioning:
            return {"conditioning": name}
    return {"conditioning": wanted}


def _widen_input(init_state: dict, target_state: dict) -> dict:
    """``init_state`` with its first convolution given zero weights for input channels the target model
    has and the initial model lacks (conditioning added in a fine-tune)."""
    state = dict(init_state)
    for name, target in target_state.items():
        w = state.get(name)
        if w is not None and w.ndim == 4 and target.ndim == 4 and w.shape[1] < target.shape[1] \
                and w.shape[0] == target.shape[0] and w.shape[2:] == target.shape[2:]:
            wider = target.new_zeros(target.shape)
            wider[:, : w.shape[1]] = w
            state[name] = wider
    return state


def _load_teacher(name: str, scales: Scales, window: int, device: str):
    """``train.teacher``'s model, frozen, on ``device``; refused in one sentence when it reads other inputs."""
    from rtsmlm.localization.checkpoint import load

    teacher, meta = load(name)
    if meta.scales != scales or meta.window != window:
        raise ConfigError(f"train.teacher = {name!r} reads other inputs than the model being trained (its scales "
                          f"{meta.scales} and window {meta.window} against {scales} and {window}); a teacher "
                          "must share the input transform, conditioning, scales and window.")
    teacher.eval().to(device)
    for param in teacher.parameters():
        param.requires_grad_(False)
    print(f"distilling from {name} ({meta.width} channels)", flush=True)
    return teacher


@contextmanager
def _ieee_floats():
    """Restore IEEE subnormals for the duration: with flush-to-zero set (torch.set_flush_denormal),
    scipy's cKDTree — used by the validation's matching — recurses until the stack overflows."""
    import torch

    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        torch.set_flush_denormal(True)


def train(cfg: Config, out_prefix: str | Path, *, resume: bool = True, progress: bool = True,
          log_path: str | Path | None = None, init: str | Path | None = None) -> Path:
    """Train a model for ``cfg``'s camera and PSF; returns the checkpoint prefix.

    ``init``: fine-tune from that checkpoint — its weights, its architecture (width, depth, window; a
    larger ``train.width`` widens it first, keeping its outputs: ``net.widened``; ``train.narrow_to`` prunes
    it to fewer channels: ``net.narrowed``) and
    its input/output scales (the network's units must not change under it); the data are ``cfg``'s.
    ``train.teacher``: the loss also asks the model to match that frozen model's output maps
    (:func:`rtsmlm.training.loss.distillation_loss`, weight ``train.distill_weight``).
    At the end the kept checkpoint's own detection threshold is chosen on the training conditions,
    simulated, and stored in its metadata (runs use it unless told another).
    """
    import torch

    from rtsmlm.localization.net import DecodeNet
    from rtsmlm.training.loss import decode_loss, distillation_loss

    init_state, init_meta = None, None
    if init is None and cfg.train.narrow_to:
        raise ConfigError(f"train.narrow_to = {cfg.train.narrow_to} prunes an initial model: give one with --init.")
    if init is not None:
        from rtsmlm.core.config import replace as replace_config
        from rtsmlm.localization.checkpoint import load

        init_model, init_meta = load(init)
        init_state = init_model.state_dict()
        # The architecture is the initial model's, except that a larger train.width widens it (see
        # net.widened) and train.narrow_to prunes it (net.narrowed); the input transform too (its first
        # layer expects it).
        init_width = max(init_meta.width, cfg.train.width)
        if cfg.train.narrow_to:
            if cfg.train.narrow_to >= init_meta.width:
                raise ConfigError(f"train.narrow_to = {cfg.train.narrow_to} must be below the width of {init} "
                                  f"({init_meta.width} channels); a larger train.width widens it instead.")
            init_width = cfg.train.narrow_to
        cfg = replace_config(cfg, train={**to_dict(cfg.train), "width": init_width, "depth": init_meta.depth,
                                         "window": init_meta.window,
                                         "input_transform": init_meta.scales.input_transform,
                                         **_conditioning_of(init_meta.scales, cfg.train.conditioning)})
    t = cfg.train
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    state_path = out_prefix.with_name(out_prefix.name + ".state.pt")
    log_path = Path(log_path) if log_path else out_prefix.with_name(out_prefix.name + ".log.jsonl")
    if t.threads:
        torch.set_num_threads(t.threads)
    # Subnormal floats appear as the weights settle and make CPU arithmetic ~10× slower: flush them in
    # the training steps, but not during validation (see _ieee_floats).
    torch.set_flush_denormal(True)
    torch.manual_seed(t.seed)
    is_3d = cfg.psf.model != "gaussian"
    device = train_device(cfg)
    scales = init_meta.scales if init_meta is not None else None
    if scales is not None and t.conditioning != "none" and not scales.conditioning:
        # Conditioning added to an unconditioned model: its photon channel keeps its weights, the new
        # channels start at zero weight (the model's outputs are unchanged at step 0) and are learned.
        from dataclasses import replace as replace_scales

        scales = replace_scales(scales, conditioning=Scales.from_config(cfg).conditioning)
    in_channels = (scales or Scales.from_config(cfg)).in_channels
    model = DecodeNet(window=t.window, width=t.width, depth=t.depth, in_channels=in_channels)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=1e-5)
    # Step decay as DECODE: the rate drops 10× over the run in two steps.
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.6 * t.steps), int(0.85 * t.steps)], 0.3)
    step, best = 0, -np.inf
    if init_state is not None:
        start = DecodeNet(window=t.window, width=init_meta.width, depth=t.depth, in_channels=in_channels)
        start.load_state_dict(_widen_input(init_state, start.state_dict()))
        if t.width > init_meta.width:
            from rtsmlm.localization.net import widened

            start = widened(start, t.width, seed=t.seed)
            print(f"widened {init} from {init_meta.width} to {t.width} channels (same outputs at step 0)",
                  flush=True)
        elif t.width < init_meta.width:
            from rtsmlm.localization.net import narrowed

            start = narrowed(start, t.width)
            print(f"narrowed {init} from {init_meta.width} to {t.width} channels (pruned: the fine-tune recovers "
                  "its outputs)", flush=True)
        model.load_state_dict(start.state_dict())
    if resume and state_path.exists():
        st = torch.load(state_path, weights_only=True, map_location="cpu")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, best = int(st["step"]), float(st["best"])
        print(f"resuming {state_path} at step {step}", flush=True)
    model.to(device)
    for group in opt.state.values():  # a resumed optimizer's moments follow the model to the device
        for k, v in group.items():
            if torch.is_tensor(v) and k != "step":
                group[k] = v.to(device)
    amp = device == "cuda" and t.mixed_precision
    workers = sim_worker_count(cfg, device)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"training on {torch.cuda.get_device_name()} ({'bf16 autocast' if amp else 'fp32'}), "
              f"{workers} simulation worker process(es)", flush=True)

    sim = TrainingSimulator(cfg, t.seed, scales=scales)
    val = TrainingSimulator(cfg, t.seed + 1_000_003, scales=scales).batch(t.val_samples)
    teacher = _load_teacher(t.teacher, sim.scales, t.window, device) if t.teacher else None
    meta_base = dict(width=t.width, depth=t.depth, window=t.window,
                     pixel_size_nm=cfg.camera.pixel_size_nm, camera=to_dict(cfg.camera),
                     psf=to_dict(cfg.psf), scales=sim.scales, train=to_dict(t))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=step, desc="train", dynamic_ncols=True)
    model.train()
    t0, running = time.perf_counter(), None
    batches = training_batches(cfg, sim, step, workers)  # data depend only on (seed, step): resumable
    while step < t.steps:
        frames, em, mask, bg = _to_torch(next(batches), device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(frames)
            loss, parts = decode_loss(out.float(), em, mask, bg, use_z=is_3d)
            if teacher is not None:
                with torch.no_grad():
                    teacher_out = teacher(frames)
                loss = loss + t.distill_weight * distillation_loss(out, teacher_out, use_z=is_3d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.03 / t.lr)
        opt.step()
        sched.step()
        step += 1
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
        if step % t.checkpoint_every == 0 or step == t.steps:
            with _ieee_floats():
                v = validate(model, val, sim.scales, cfg.camera.pixel_size_nm, is_3d)
            record = {"step": step, "train_loss": running, **v, "lr": sched.get_last_lr()[0],
                      "elapsed_s": time.perf_counter() - t0}
            with open(log_path, "a") as fh:
                fh.write(json.dumps(to_jsonable(record)) + "\n")
            rmse = v["rmse_lat_nm"]
            score = v["jaccard"] - (rmse / 100.0 if np.isfinite(rmse) else 1.0)
            if score > best or (t.keep == "last" and step == t.steps):
                best = max(best, score)
                save(out_prefix, model, ModelMeta(**meta_base, step=step, metrics=to_jsonable(v)))
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step, "best": best}, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
            msg = (f"step {step}: val loss {v['val_loss']:.3f} jaccard {v['jaccard']:.3f} "
                   f"rmse {v['rmse_lat_nm']:.1f} nm")
            (bar.write if bar else print)(msg)
    batches.close()
    if bar:
        bar.close()
    store_model_threshold(out_prefix, cfg, progress=progress)
    return out_prefix


def store_model_threshold(prefix: str | Path, cfg: Config, *, frames: int = 100, progress: bool = True) -> dict:
    """Choose a checkpoint's own detection threshold on ``cfg``'s conditions
    (:func:`rtsmlm.analysis.thresholds.choose_for_model`) and store it in its metadata."""
    from rtsmlm.analysis.thresholds import choose_for_model
    from rtsmlm.localization.checkpoint import store_detection

    detection = choose_for_model(str(prefix), cfg, frames=frames)
    store_detection(prefix, detection)
    if progress:
        print(f"detection threshold {detection['p_threshold']:.2f} (Jaccard {detection['jaccard']:.3f} on "
              f"{len(detection['conditions'])} simulated condition(s)) stored in {Path(prefix)}.json")
    return detection

