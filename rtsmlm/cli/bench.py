"""``rtsmlm bench``: inference throughput and latency per backend, end to end from raw uint16 frames to
localizations (upload, ADU -> photons, encoder, feature cache, decoder, post-processing).

For each backend, thread count and frame size it reports frames/s, MB/s of 16-bit camera data, the
latency of a frame (from the call that delivers it to the call that returns its localizations) at p50
and p99, localizations per frame, batch size, tiles, precision, threads and model size; prints a table
and writes a JSON with the machine description and load average (other jobs sharing the CPU make the
figures noisy; the load says how much).

``--accuracy N`` instead simulates N frames with ground truth, localizes them with every backend, scores
each with the same code as ``rtsmlm evaluate`` (the files are kept, and the commands printed) and
reports each backend's relative difference from the first one (the fp32 reference).

Backends are given as ``NAME[:PRECISION[:DEVICE]][+fp32heads][+flips2|+flips4]``, e.g. ``torch:fp32``,
``torch:bf16``, ``torch:bf16+fp32heads`` (CPU bf16 with fp32 output heads), ``torch:fp32+flips4`` (test-time
flips, ``backend.test_time_flips``), ``onnxruntime``, ``torch:fp16:cuda``, ``tensorrt:fp16``, ``auto``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SIZES = (64, 256, 1024)


SPEC_OPTIONS = ("fp32heads", "flips2", "flips4")


def _parse_spec(spec: str) -> dict[str, str]:
    spec, *options = spec.split("+")
    for option in options:
        if option not in SPEC_OPTIONS:
            raise ValueError(f"backend spec option {option!r} is unknown; one of "
                             + ", ".join(f"'+{o}'" for o in SPEC_OPTIONS))
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise ValueError(f"backend spec {spec!r} must look like NAME[:PRECISION[:DEVICE]], e.g. torch:bf16")
    out = {"name": parts[0]}
    if len(parts) > 1 and parts[1]:
        out["precision"] = parts[1]
    if len(parts) > 2 and parts[2]:
        out["device"] = parts[2]
    if "fp32heads" in options:
        out["fp32_heads"] = "1"
    for option in options:
        if option.startswith("flips"):
            out["test_time_flips"] = option.removeprefix("flips")
    if out["name"] != "auto" and "device" not in out:
        out["device"] = "cuda" if out["name"] == "tensorrt" else "cpu"
    return out


def default_specs() -> list[str]:
    """Every backend/precision this machine can run, the fp32 reference first."""
    from rtsmlm.localization.backends import probe_environment

    env = probe_environment()
    specs = ["torch:fp32"]
    if env.cpu_bf16:
        specs.append("torch:bf16")
    if env.has_onnxruntime:
        specs.append("onnxruntime:fp32")
    if env.has_cuda:
        specs += ["torch:fp32:cuda", "torch:fp16:cuda", "torch:bf16:cuda"]
        if env.has_tensorrt:
            specs.append("tensorrt:fp16")
    return specs


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load average, library versions, GPU."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _simulated_frames(cfg, size: int, n: int, seed: int = 0):
    """``n`` simulated frames of ``size`` x ``size`` with ground truth, and the camera model."""
    from rtsmlm.core import config as config_mod
    from rtsmlm.sim.simulator import Simulator

    sim = {**config_mod.to_dict(cfg.sim), "size": size, "frames": n, "seed": seed}
    sim_cfg = config_mod.replace(cfg, sim=sim)
    sim = Simulator(sim_cfg)
    frames, truth = sim.movie(n)
    return frames, truth, sim.camera


def _open(spec: dict[str, str], threads: int, args, checkpoint: str):
    from rtsmlm.core.config import BackendConfig
    from rtsmlm.localization.backends import open_backend

    cfg = BackendConfig(name=spec["name"], device=spec.get("device", "auto"), precision=spec.get("precision", "auto"),
                        threads=threads, engine_cache_dir=args.engine_cache_dir,
                        test_time_flips=int(spec.get("test_time_flips", 1)))
    return open_backend(cfg, checkpoint, jit=not args.no_jit, fp32_heads="fp32_heads" in spec)


def run_one(backend, meta, camera, frames: np.ndarray, seconds: float, min_frames: int, batch: int,
            p_threshold: float, candidate_threshold: float, psf_sigma_px: float | None,
            refine: str, residual_threshold: float, merge_splits: bool) -> dict[str, Any]:
    """Stream ``frames`` (cycled) through a fresh localizer for ``seconds`` (at least ``min_frames``)."""
    from rtsmlm.localization.localizer import StreamingLocalizer

    shape = frames.shape[1:]
    loc = StreamingLocalizer(backend, meta, camera, shape, p_threshold, candidate_threshold, batch_size=batch,
                             psf_sigma_px=psf_sigma_px, refine=refine, residual_threshold=residual_threshold,
                             merge_splits=merge_splits)
    b = loc.batch_size
    # Warm-up run (allocations, oneDNN/cuDNN kernel selection), then a fresh sequence for the timing.
    for start in range(0, 2 * b, b):
        loc.push(frames[np.arange(start, start + b) % len(frames)], np.arange(start, start + b))
    loc.finish()
    first = 1_000_000
    arrival: dict[int, float] = {}
    latencies: list[float] = []
    n_locs = 0
    pending = first
    c0 = time.process_time()
    t0 = time.perf_counter()
    i = 0
    while True:
        idx = np.arange(first + i, first + i + b)
        batch_frames = frames[(idx - first) % len(frames)]
        t_in = time.perf_counter()
        for f in idx:
            arrival[int(f)] = t_in
        locs, done = loc.push(batch_frames, idx)
        t_out = time.perf_counter()
        n_locs += len(locs)
        while pending <= done:
            latencies.append(t_out - arrival.pop(pending))
            pending += 1
        i += b
        if t_out - t0 >= seconds and i >= min_frames:
            break
    locs, done = loc.finish()
    t_end = time.perf_counter()
    cpu = time.process_time() - c0
    n_locs += len(locs)
    while pending <= done:
        latencies.append(t_end - arrival.pop(pending))
        pending += 1
    elapsed = t_end - t0
    fps = i / elapsed
    lat = np.array(latencies) * 1e3
    return {
        "height": shape[0], "width": shape[1], "frames": i, "seconds": elapsed, "frames_per_s": fps,
        "mb_per_s": fps * shape[0] * shape[1] * 2 / 1e6, "cpu_ms_per_frame": 1e3 * cpu / i,
        "frames_per_cpu_s": i / cpu if cpu > 0 else None, "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p99_ms": float(np.percentile(lat, 99)), "locs_per_frame": n_locs / i, "batch": b,
        "tiles": loc.plan.n_tiles, "tile_shape": [loc.plan.tile_height, loc.plan.tile_width],
    }


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [("spec", "{}"), ("device", "{}"), ("precision", "{}"), ("threads", "{}"), ("size", "{}"), ("frames_per_s", "{:.1f}"),
            ("mb_per_s", "{:.2f}"), ("cpu_ms_per_frame", "{:.2f}"), ("latency_p50_ms", "{:.1f}"), ("latency_p99_ms", "{:.1f}"),
            ("batch", "{}"), ("tiles", "{}"), ("locs_per_frame", "{:.1f}")]
    heads = ["backend", "device", "precision", "threads", "frame", "frames/s", "MB/s", "CPU ms/frame", "p50 ms", "p99 ms", "batch", "tiles",
             "locs/frame"]
    body = []
    for r in rows:
        r = {**r, "size": f"{r['height']}x{r['width']}", "device": r["describe"]["device"]}
        body.append([fmt.format(r[k]) for k, fmt in cols])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(heads)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths)))
              + " |" for b in body]
    return "\n".join(lines)


def _throughput(args, cfg, specs: list[str]) -> dict[str, Any]:
    from rtsmlm.localization.checkpoint import resolve

    model_file = resolve(args.checkpoint).with_suffix(".safetensors")
    rows = []
    movies = {size: _simulated_frames(cfg, size, args.pool) for size in args.sizes}
    for spec_text in specs:
        spec = _parse_spec(spec_text)
        for threads in args.threads:
            backend, meta = _open(spec, threads, args, args.checkpoint)
            d = backend.describe()
            for size in args.sizes:
                frames, _truth, camera = movies[size]
                r = run_one(backend, meta, camera, frames, args.seconds, args.min_frames, args.batch,
                            cfg.model.p_threshold, cfg.model.candidate_threshold,
                            cfg.psf.sigma_nm / camera.pixel_size_nm, cfg.model.refine,
                            cfg.model.residual_threshold, cfg.model.merge_splits)
                r.update(backend=f"{d['name']}/{d['device']}", spec=spec_text, precision=d["precision"],
                         threads=d.get("threads"), parameters=d.get("parameters"),
                         model_mb=model_file.stat().st_size / 1e6, load_avg_1min=os.getloadavg()[0], describe=d)
                rows.append(r)
                print(f"  {spec_text} threads={threads} {size}x{size}: {r['frames_per_s']:.1f} frames/s, "
                      f"p50 {r['latency_p50_ms']:.1f} ms (load {r['load_avg_1min']:.1f})", file=sys.stderr, flush=True)
            del backend, meta  # its graphs, engines and cached blocks must not count against the next one
            _free_gpu_memory()
    return {"results": rows, "table": _table(rows)}


def _free_gpu_memory() -> None:
    """Return the memory of backends no longer referenced to the GPU before the next one is measured."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _accuracy(args, cfg, specs: list[str]) -> dict[str, Any]:
    from rtsmlm.analysis.evaluate import evaluate_files
    from rtsmlm.io.locfiles import write_csv
    from rtsmlm.io.tables import TRUTH_HEADER, write_truth_rows
    from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = args.sizes[0]
    frames, truth, camera = _simulated_frames(cfg, size, args.accuracy, seed=args.seed)
    truth_path = out / "truth.csv"
    with open(truth_path, "w") as fh:
        fh.write(TRUTH_HEADER + "\n")
        write_truth_rows(fh, truth)
    rows = []
    for spec_text in specs:
        spec = _parse_spec(spec_text)
        backend, meta = _open(spec, args.threads[0], args, args.checkpoint)
        loc = StreamingLocalizer(backend, meta, camera, frames.shape[1:], cfg.model.p_threshold,
                                 cfg.model.candidate_threshold, batch_size=args.batch,
                                 psf_sigma_px=cfg.psf.sigma_nm / camera.pixel_size_nm, refine=cfg.model.refine,
                                 min_photons=cfg.model.min_photons,
                                 residual_threshold=cfg.model.residual_threshold,
                                 merge_splits=cfg.model.merge_splits)
        locs = localize_movie(loc, frames)
        path = out / f"locs_{spec_text.replace(':', '_')}.csv"
        write_csv(path, locs, overwrite=True)
        m = evaluate_files(path, truth_path, pixel_size_nm=camera.pixel_size_nm)
        d = backend.describe()
        row = {"spec": spec_text, "backend": f"{d['name']}/{d['device']}", "precision": d["precision"],
               **{k: m.get(k) for k in ("jaccard", "rmse_lat_nm", "efficiency_lat", "n_pred", "n_true", "tp")},
               "command": f"rtsmlm evaluate --locs {path} --truth {truth_path} --pixel-size {camera.pixel_size_nm:g}"}
        rows.append(row)
    ref = rows[0]
    lines = [f"accuracy on {args.accuracy} simulated {size}x{size} frames ({len(truth)} emitters); reference "
             f"{ref['spec']}", "| backend | precision | jaccard | rmse_lat_nm | efficiency_lat | n_pred | "
             "Δjaccard | Δrmse | Δefficiency |", "|---|---|---|---|---|---|---|---|---|"]

    def num(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    for r in rows:
        for k in ("jaccard", "rmse_lat_nm", "efficiency_lat"):
            r[f"rel_diff_{k}"] = (r[k] - ref[k]) / ref[k] if r[k] is not None and ref[k] else None
        rel = [num(None if r[f"rel_diff_{k}"] is None else 100 * r[f"rel_diff_{k}"], "+.2f") + "%"
               for k in ("jaccard", "rmse_lat_nm", "efficiency_lat")]
        lines.append(f"| {r['spec']} | {r['precision']} | {num(r['jaccard'], '.4f')} | {num(r['rmse_lat_nm'], '.2f')} | "
                     f"{num(r['efficiency_lat'], '.2f')} | {r['n_pred']} | " + " | ".join(rel) + " |")
    return {"accuracy": rows, "table": "\n".join(lines)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtsmlm bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="config.toml (camera, simulator, thresholds); default: built-in defaults")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: model.checkpoint of the config)")
    p.add_argument("--backends", default=None,
                   help="comma-separated NAME[:PRECISION[:DEVICE]] (default: every backend this machine can run)")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="frame sizes in pixels, e.g. 64,256,1024")
    p.add_argument("--threads", default="0", help="comma-separated CPU thread counts (0 = all cores)")
    p.add_argument("--batch", type=int, default=0, help="frames per backend call (0 = automatic)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration")
    p.add_argument("--min-frames", type=int, default=8, help="at least this many timed frames")
    p.add_argument("--pool", type=int, default=16, help="distinct simulated frames per size (cycled)")
    p.add_argument("--no-jit", action="store_true", help="torch CPU in eager mode (no TorchScript graphs)")
    p.add_argument("--engine-cache-dir", default="~/.cache/rtsmlm/engines")
    p.add_argument("--accuracy", type=int, default=0, metavar="N",
                   help="instead of timing: score N simulated frames (first size) with every backend")
    p.add_argument("--seed", type=int, default=1, help="simulation seed of --accuracy")
    p.add_argument("--out", default="bench_accuracy", help="--accuracy: folder for truth and localization CSVs")
    p.add_argument("--json", default="bench_inference.json", help="write the results here ('' = do not)")
    return p


def bench_main(argv: list[str]) -> int:
    """Entry point of ``rtsmlm bench``; returns the exit code."""
    import logging

    from rtsmlm.core import config as config_mod

    args = build_parser().parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s]
        args.threads = [int(t) for t in args.threads.split(",") if t]
    except ValueError:
        print(f"rtsmlm bench: --sizes and --threads take comma-separated integers, got {args.sizes!r} / "
              f"{args.threads!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cfg = config_mod.load(args.config)
    args.checkpoint = args.checkpoint or cfg.model.checkpoint
    from dataclasses import replace

    from rtsmlm.localization.checkpoint import thresholds_for_run

    # The config's thresholds as a run of this checkpoint would use them (model.thresholds_for).
    cfg = replace(cfg, model=thresholds_for_run(replace(cfg.model, checkpoint=str(args.checkpoint))))
    specs = args.backends.split(",") if args.backends else default_specs()
    try:
        for s in specs:
            _parse_spec(s)
    except ValueError as e:
        print(f"rtsmlm bench: {e}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"command": "rtsmlm bench " + " ".join(argv), "machine": machine_info(),
                              "checkpoint": str(args.checkpoint)}
    result = _accuracy(args, cfg, specs) if args.accuracy else _throughput(args, cfg, specs)
    report.update(result)
    report["machine"]["load_avg_after"] = list(os.getloadavg())
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}, torch {m['torch']}; load average "
          f"before {m['load_avg_1_5_15'][0]:.2f}, after {m['load_avg_after'][0]:.2f}")
    print(report["table"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(bench_main(sys.argv[1:]))
