"""Does a model survive a GPU's fp16? Activation range and rounding, measured on a CPU.

Run: python benchmarks/study_half_range.py [--models broad_2d,broad_2d_wide] [--batches 8] [--size 64]

On a GPU the shipped models run in fp16 (TensorRT, or torch autocast: ``backend.precision = "auto"``), which no
machine here can run at speed. Two things could go wrong, and both can be measured in fp32 arithmetic:

* **range**: fp16 holds magnitudes up to 65504 (bf16, which the CPU benchmarks run, up to 3·10³⁸). Every
  convolution's input and output is recorded over samples spanning the broad model's whole training range
  (configs/train_broad_2d_small.toml: background 1–1000 photons/px, 100–20,000 photons, EMCCD and sCMOS, σ
  0.7–2 px, 0–6 emitters/µm²) plus the brightest corner (20,000 photons on a background of 1000), and the
  largest magnitude printed against fp16's limit;
* **rounding**: the output maps with every weight and every convolution's input and output rounded to fp16
  (arithmetic accumulated in fp32, as tensor cores do) against fp32, beside the same with bf16's rounding
  (8 bits of mantissa against fp16's 11). bf16 is what ``bench_broad.py --models M+bf16`` measures end to
  end; an fp16 error several times below bf16's says the fp16 path cannot be worse on that account.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtsmlm.core import config as rconfig
from rtsmlm.localization.checkpoint import load
from rtsmlm.localization.net import CH_P, CH_X, CH_Y
from rtsmlm.training.data import TrainingSimulator

FP16_MAX = 65504.0
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_broad_2d_small.toml"


def _rounded(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).float()


def _samples(batches: int, size: int, scales) -> list[torch.Tensor]:
    """Windows spanning the training range, then the brightest corner."""
    cfg = rconfig.load(CONFIG, overrides=[f"train.patch_size={size}"])
    out = []
    for b in range(batches):
        sim = TrainingSimulator(cfg, 9000 + b, scales=scales)
        out.append(torch.from_numpy(sim.batch(16).frames))
    bright = rconfig.load(CONFIG, overrides=[f"train.patch_size={size}", "train.photons_min=20000.0",
                                             "train.photons_max=20000.0", "train.bg_min=1000.0", "train.bg_max=1000.0",
                                             "train.density_min=3.0"])
    out.append(torch.from_numpy(TrainingSimulator(bright, 9999, scales=scales).batch(16).frames))
    return out


def _hooks(model: nn.Module, dtype: torch.dtype | None, largest: list[float]) -> list:
    """Record every convolution's largest |input| and |output|; with ``dtype``, round both to it."""
    def pre(_module, args):
        largest[0] = max(largest[0], float(args[0].abs().max()))
        return (_rounded(args[0], dtype),) if dtype is not None else None

    def post(_module, _args, output):
        largest[0] = max(largest[0], float(output.abs().max()))
        return _rounded(output, dtype) if dtype is not None else None

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [h for m in convs for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]


def _run(model: nn.Module, samples: list[torch.Tensor], dtype: torch.dtype | None) -> tuple[torch.Tensor, float]:
    largest = [0.0]
    handles = _hooks(model, dtype, largest)
    try:
        with torch.inference_mode():
            maps = torch.cat([model(x) for x in samples])
    finally:
        for h in handles:
            h.remove()
    return maps, largest[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="broad_2d,broad_2d_wide")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    print(f"{'model':16s} {'largest |activation|':>22s} {'fp16 limit':>11s} "
          f"{'max |Δp| fp16':>14s} {'bf16':>8s} {'max |Δx,y| px where p>0.1, fp16':>33s} {'bf16':>8s}")
    for name in args.models.split(","):
        model, meta = load(name)
        model.eval()
        samples = _samples(args.batches, args.size, meta.scales)
        reference, largest = _run(model, samples, None)
        row = [f"{name[:16]:16s} {largest:22.1f} {FP16_MAX:11.0f}"]
        dp, dxy = [], []
        sure = reference[:, CH_P] > 0.1
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for dtype in (torch.float16, torch.bfloat16):
            model.load_state_dict({k: _rounded(v, dtype) for k, v in state.items()})
            maps, _ = _run(model, samples, dtype)
            model.load_state_dict(state)
            dp.append(float((maps[:, CH_P] - reference[:, CH_P]).abs().max()))
            shift = torch.stack([(maps[:, c] - reference[:, c]).abs() for c in (CH_X, CH_Y)]).amax(dim=0)
            dxy.append(float(shift[sure].max()) if bool(sure.any()) else float("nan"))
        row.append(f"{dp[0]:14.2e} {dp[1]:8.2e} {dxy[0]:33.2e} {dxy[1]:8.2e}")
        print(" ".join(row), flush=True)
        if not np.isfinite(largest) or largest >= FP16_MAX:
            print(f"   {name}: an activation reaches fp16's limit: its GPU fp16 path would overflow")


if __name__ == "__main__":
    main()
