"""Export of a DecodeNet to ONNX as two graphs — the frame encoder and the temporal decoder — so the
streaming frame-feature cache works with ONNX Runtime and TensorRT exactly as with torch.

Both graphs have dynamic batch, height and width (height and width must be multiples of ``2**depth`` at
run time). ``precision='fp16'`` exports a float16 network (for TensorRT, which builds it strongly typed:
the precision comes from the graph): the encoder takes float32 frames and returns float16 features, the
decoder takes float16 features and returns float16 maps.

The exporter is torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, opset 18) when
onnxscript is installed, as torch recommends; without onnxscript (a GPU machine with a minimal
environment) the TorchScript exporter is used, with only its tracer warnings silenced.

:func:`cached_onnx` keeps exported graphs on disk keyed by the model hash, precision, opset, exporter and
torch version.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rtsmlm.localization.net import DecodeNet

ENCODER_INPUT = "frames"
ENCODER_OUTPUT = "features"
DECODER_INPUT = "window_features"
DECODER_OUTPUT = "maps"
DEFAULT_OPSET = 18


def dynamo_available() -> bool:
    """The dynamo exporter needs onnxscript."""
    import importlib.util

    return importlib.util.find_spec("onnxscript") is not None


class _EncoderGraph(nn.Module):
    def __init__(self, model: DecodeNet, half: bool) -> None:
        super().__init__()
        self.model = model
        self.half = half

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # fp16 graphs take float32 frames so callers never convert camera data on the host.
        return self.model.encode(frames.half() if self.half else frames)


class _DecoderGraph(nn.Module):
    def __init__(self, model: DecodeNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, window_features: torch.Tensor) -> torch.Tensor:
        return self.model.decode(window_features)


@dataclass(frozen=True)
class ExportedModel:
    """Paths of the two exported graphs and what they were exported from."""

    encoder: Path
    decoder: Path
    precision: str
    opset: int
    window: int
    width: int
    depth: int


def export_onnx(model: DecodeNet, out_dir: str | Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                stem: str = "decodenet") -> ExportedModel:
    """Write ``{stem}.encoder.onnx`` and ``{stem}.decoder.onnx`` into ``out_dir`` (atomically)."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"ONNX export precision must be 'fp32' or 'fp16', got {precision!r}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    half = precision == "fp16"
    net = copy.deepcopy(model).cpu().eval().float()
    if half:
        net = net.half()
    m = net.size_multiple
    h, w = 4 * m, 6 * m  # distinct example sizes so no axis is specialised by accident
    feat_dtype = torch.float16 if half else torch.float32
    examples = (
        (_EncoderGraph(net, half), torch.rand(2, net.in_channels, h, w), ENCODER_INPUT, ENCODER_OUTPUT, "encoder"),
        (_DecoderGraph(net), torch.rand(3, net.window * net.width, h, w, dtype=feat_dtype), DECODER_INPUT,
         DECODER_OUTPUT, "decoder"),
    )
    paths = {}
    for module, example, in_name, out_name, part in examples:
        path = out_dir / f"{stem}.{part}.onnx"
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        module.eval()
        if dynamo_available():
            dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # its progress lines
                program = torch.onnx.export(module, (example,), input_names=[in_name], output_names=[out_name],
                                            opset_version=opset, dynamic_shapes={in_name: dims}, dynamo=True)
                program.save(str(tmp))
        else:
            axes = {0: "batch", 2: "height", 3: "width"}
            with torch.no_grad(), warnings.catch_warnings():
                # The tracer warns about the Python shape check it skips; nothing else is silenced.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(module, (example,), str(tmp), input_names=[in_name], output_names=[out_name],
                                  opset_version=opset, dynamic_axes={in_name: axes, out_name: axes}, dynamo=False)
        tmp.replace(path)
        paths[part] = path
    return ExportedModel(paths["encoder"], paths["decoder"], precision, opset, model.window, model.width,
                         model.depth)


def cached_onnx(model: DecodeNet, model_hash: str, cache_dir: str | Path, precision: str = "fp32",
                opset: int = DEFAULT_OPSET) -> ExportedModel:
    """The exported graphs of ``model`` from ``cache_dir``, exporting them first when absent.

    Keyed by the first 16 hex digits of ``model_hash`` (the checkpoint's SHA-256), precision, opset and
    torch version (the exporter's output may change between versions)."""
    exporter = "dynamo" if dynamo_available() else "torchscript"
    key = f"{model_hash[:16]}-{precision}-opset{opset}-{exporter}-torch{torch.__version__.split('+')[0]}"
    folder = Path(cache_dir).expanduser() / "onnx" / key
    enc, dec = folder / "decodenet.encoder.onnx", folder / "decodenet.decoder.onnx"
    if enc.is_file() and dec.is_file():
        return ExportedModel(enc, dec, precision, opset, model.window, model.width, model.depth)
    exported = export_onnx(model, folder, precision=precision, opset=opset)
    (folder / "source.json").write_text(json.dumps({"model_sha256": model_hash, "precision": precision,
                                                    "opset": opset, "torch": torch.__version__}, indent=2))
    return exported
