"""``rtsmlm export``: write a checkpoint's encoder/decoder ONNX graphs, optionally build the TensorRT
engines for a streaming shape."""

from __future__ import annotations

from pathlib import Path

from rtsmlm.localization.onnx_export import DEFAULT_OPSET, export_onnx


def export_main(argv: list[str]) -> int:
    """``rtsmlm export``: write the encoder/decoder ONNX graphs of a checkpoint, optionally also build
    (and cache) the TensorRT engines for a streaming shape. Returns the exit code."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="rtsmlm export", description=export_main.__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="default", help="checkpoint path prefix or 'default'")
    p.add_argument("--out", required=True, help="output folder for the .onnx files")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--tensorrt", action="store_true",
                   help="also build the TensorRT engines (needs tensorrt and a CUDA GPU) into --engine-cache-dir")
    p.add_argument("--engine-cache-dir", default="~/.cache/rtsmlm/engines")
    p.add_argument("--height", type=int, default=256, help="--tensorrt: streaming tile height (multiple of 2**depth)")
    p.add_argument("--width", type=int, default=256, help="--tensorrt: streaming tile width")
    p.add_argument("--batch", type=int, default=16, help="--tensorrt: largest batch")
    args = p.parse_args(argv)
    from rtsmlm.localization import checkpoint as ckpt
    from rtsmlm.localization.backends import BackendError, file_sha256

    try:
        model, meta = ckpt.load(args.checkpoint)
        stem = ckpt.resolve(args.checkpoint).name
        exported = export_onnx(model, args.out, precision=args.precision, opset=args.opset, stem=stem)
        print(f"wrote {exported.encoder} and {exported.decoder} ({args.precision}, opset {args.opset}, dynamic "
              f"batch/height/width in multiples of {model.size_multiple})")
        if args.tensorrt:
            from rtsmlm.localization.backends.tensorrt import TensorRTBackend

            model_hash = file_sha256(ckpt.resolve(args.checkpoint).with_suffix(".safetensors"))
            precision = "fp16" if args.precision == "fp16" else "fp32"
            backend = TensorRTBackend(model, model_hash, args.engine_cache_dir, precision=precision)
            backend.warmup(args.height, args.width, args.batch, args.batch)
            print(f"TensorRT engines built and cached in {Path(args.engine_cache_dir).expanduser() / 'tensorrt'}")
    except (ckpt.CheckpointError, BackendError, ValueError, OSError) as e:
        print(f"rtsmlm export: {e}", file=sys.stderr)
        return 2
    return 0
