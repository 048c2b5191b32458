"""The GPU path's acceptance run: one command, under 10 minutes, every figure of issue 16 as JSON.

Run (on a machine with an NVIDIA GPU, from the repository root; no network needed):

    PYTHONPATH=. python benchmarks/gpu_acceptance.py --out gpu_acceptance

On a machine without a GPU it prints one line ("no GPU: ...") and exits 0 without running anything else.
With one it:
1. prints the environment (GPU, driver, torch / CUDA / cuDNN, TensorRT when importable);
2. runs the tests that exercise CUDA and TensorRT (tests/test_backends.py, test_localizer.py,
   test_postprocess.py, test_tiling.py);
3. runs ``rtsmlm bench`` for torch CUDA fp16 and bf16 (and TensorRT fp16 when importable) at 64², 256², 1024²,
   2048²: frames/s, MB/s, latency p50/p99, GPU memory; and for the larger model a GPU runs instead of
   broad_2d (``broad_2d_wide``) at 64², 256², 1024², also with test-time flips (torch fp16, 4 flips);
4. runs a 20,000-frame 256² simulated pipeline as fast as possible (frames lost, latency);
5. trains for about 2 minutes on CUDA and briefly on the CPU (steps/s, ratio);
6. compares each GPU backend's localizations with torch fp32 on one simulated movie (Jaccard of the match
   against the fp32 table, target ≥ 0.97; RMSE, target ≤ 3 nm).
Everything goes to ``OUT/acceptance.json`` (and the tools' own files beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "QT_QPA_PLATFORM": "offscreen"}


def sh(args: list[str], timeout: float, log: Path) -> tuple[int, str, float]:
    """Run a command; its output goes to ``log``; returns (exit code, output tail, seconds)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, text = 124, f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s"
    log.write_text(text if isinstance(text, str) else text.decode(errors="replace"))
    return code, str(text)[-2000:], time.perf_counter() - t0


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    if torch.cuda.is_available():
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        info["nvidia_smi"] = q.stdout.strip()
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def agreement(out: Path, specs: list[str]) -> list[dict[str, Any]]:
    """Each spec's localizations matched against torch fp32 CUDA's on one simulated 256² movie."""
    import numpy as np

    from rtsmlm.analysis.metrics import evaluate
    from rtsmlm.core import config as rconfig
    from rtsmlm.core.config import BackendConfig
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie
    from rtsmlm.sim import Simulator

    cfg = rconfig.from_dict({"sim": {"size": 256, "density": 0.5, "seed": 7}})
    sim = Simulator(cfg)
    movie, _truth = sim.movie(200)
    frames = np.asarray(movie)
    tables = {}
    for spec in ["torch:fp32", *specs]:
        name, precision = spec.split(":")[:2]
        backend, meta = open_backend(BackendConfig(name=name, device="cuda", precision=precision,
                                                   engine_cache_dir=str(out / "engines")), "default")
        loc = StreamingLocalizer(backend, meta, sim.camera, frames.shape[1:], cfg.model.p_threshold,
                                 cfg.model.candidate_threshold,
                                 psf_sigma_px=cfg.psf.sigma_nm / sim.camera.pixel_size_nm)
        tables[spec] = localize_movie(loc, frames)
        del backend, loc
    rows = []
    ref = tables["torch:fp32"]
    for spec in specs:
        m = evaluate(tables[spec], ref, tolerance_nm=50.0)
        rows.append({"spec": spec, "n_locs": int(len(tables[spec])), "n_fp32": int(len(ref)),
                     "jaccard_vs_fp32": m["jaccard"], "rmse_vs_fp32_nm": m["rmse_lat_nm"],
                     "pass": bool(m["jaccard"] >= 0.97 and m["rmse_lat_nm"] <= 3.0)})
    return rows


def steps_per_s(log_text: str) -> float | None:
    rates = re.findall(r"([\d.]+)it/s", log_text)
    return float(rates[-1]) if rates else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_acceptance")
    ap.add_argument("--bench-seconds", type=float, default=3.0)
    ap.add_argument("--pipeline-frames", type=int, default=20000)
    ap.add_argument("--train-seconds", type=float, default=120.0)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"no GPU: torch {torch.__version__} sees no CUDA device; nothing to accept on this machine")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(report["environment"], indent=1), flush=True)
    trt = report["environment"]["tensorrt"] is not None
    gpu_specs = ["torch:fp16", "torch:bf16"] + (["tensorrt:fp16"] if trt else [])

    def save() -> None:
        (out / "acceptance.json").write_text(json.dumps(report, indent=1, default=str))

    code, tail, secs = sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_backends.py",
                           "tests/test_localizer.py", "tests/test_postprocess.py", "tests/test_tiling.py"],
                          300, out / "tests.log")
    report["tests"] = {"exit_code": code, "summary": tail.strip().splitlines()[-1] if tail.strip() else "",
                       "seconds": round(secs, 1)}
    print("tests:", report["tests"], flush=True)
    save()

    specs = ",".join(f"{s}:cuda" for s in gpu_specs)

    def bench(key: str, extra: list[str], sizes: str, timeout: float, backends: str = specs) -> None:
        """One ``rtsmlm bench`` run of every GPU backend into ``report[key]`` (and OUT/KEY.json, KEY.log)."""
        result = out / f"{key}.json"
        code, tail, secs = sh([sys.executable, "-m", "rtsmlm", "bench", *extra, "--backends", backends, "--sizes", sizes,
                               "--seconds", str(args.bench_seconds), "--json", str(result),
                               "--engine-cache-dir", str(out / "engines")], timeout, out / f"{key}.log")
        report[key] = {"exit_code": code, "seconds": round(secs, 1),
                       "results": json.loads(result.read_text()) if result.is_file() else None}
        print(f"{key}:", code, tail[-1500:], flush=True)
        save()

    bench("bench", [], "64,256,1024,2048", 360)
    # The larger sibling a GPU runs instead of broad_2d (checkpoint.LARGER_ON_GPU): its speed on this GPU.
    # And with test-time flips (backend.test_time_flips = 4: four times the network's arithmetic).
    bench("bench_broad_2d_wide", ["--checkpoint", "broad_2d_wide"], "64,256,1024", 300,
          specs + ",torch:fp16:cuda+flips4")

    run_dir = out / "pipeline"
    code, tail, secs = sh([sys.executable, "-m", "rtsmlm", "run", "--as-fast-as-possible", "--max-frames",
                           str(args.pipeline_frames), "--set", "sim.size=256", "--no-stream", "--quiet", "--out",
                           str(run_dir), "--overwrite"], 300, out / "pipeline.log")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    report["pipeline"] = {"exit_code": code, "seconds": round(secs, 1),
                          **{k: summary.get(k) for k in ("frames_acquired", "frames_localized", "frames_lost_localizer",
                                                          "frames_missing_final", "localized_fps", "latency_ms_p50",
                                                          "latency_ms_p99", "backend")}}
    print("pipeline:", report["pipeline"], flush=True)
    save()

    train = {}
    for device, seconds in (("cuda", args.train_seconds), ("cpu", 20.0)):
        code, tail, secs = sh([sys.executable, "-m", "rtsmlm", "train", "--device", device, "--steps", "100000",
                               "--set", "train.checkpoint_every=100000", "--set", "train.threads=0", "--out",
                               str(out / f"train_{device}" / "model"), "--restart"], seconds,
                              out / f"train_{device}.log")
        train[device] = {"steps_per_s": steps_per_s((out / f"train_{device}.log").read_text()),
                         "seconds": round(secs, 1)}
    if train["cuda"]["steps_per_s"] and train["cpu"]["steps_per_s"]:
        train["speedup"] = train["cuda"]["steps_per_s"] / train["cpu"]["steps_per_s"]
    report["train"] = train
    print("train:", train, flush=True)
    save()

    try:
        report["agreement"] = agreement(out, gpu_specs)
    except Exception as e:  # report, do not lose the other figures
        report["agreement"] = {"error": f"{type(e).__name__}: {e}"}
    print("agreement:", report["agreement"], flush=True)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    print(f"figures: {out / 'acceptance.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
