"""ONNX Runtime backend (CPU execution provider): the encoder and decoder graphs from
:mod:`rtsmlm.localization.onnx_export` in two sessions. fp32 only; a real alternative on machines without a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtsmlm.localization.backends.protocol import BackendError
from rtsmlm.localization.net import DecodeNet, parameter_count
from rtsmlm.localization.onnx_export import (
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    ExportedModel,
    cached_onnx,
)


class OnnxRuntimeBackend:
    """Runs the exported encoder/decoder graphs with ONNX Runtime's CPU execution provider.

    Args:
        model: the network (exported on first use into ``cache_dir``, keyed by ``model_hash``).
        model_hash: the checkpoint's SHA-256.
        cache_dir: where exported graphs are kept (``backend.engine_cache_dir``).
        threads: intra-op threads of each session (0 = ONNX Runtime's default, all cores).
        exported: already exported graphs (skips the export).
    """

    name = "onnxruntime"
    device = "cpu"
    precision = "fp32"

    def __init__(self, model: DecodeNet, model_hash: str, cache_dir: str | Path, threads: int = 0,
                 exported: ExportedModel | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the onnxruntime backend needs the onnxruntime package "
                               "(pip install 'rtsmlm[onnx]').") from None
        self.exported = exported or cached_onnx(model, model_hash, cache_dir, "fp32")
        self.window = model.window
        self.in_channels = model.in_channels
        self.feature_channels = model.width
        self.size_multiple = model.size_multiple
        self.threads = threads
        self.n_parameters = parameter_count(model)
        self._ort_version = ort.__version__
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self._encoder = ort.InferenceSession(str(self.exported.encoder), opts, providers=providers)
        self._decoder = ort.InferenceSession(str(self.exported.decoder), opts, providers=providers)

    def warmup(self, height: int, width: int, encode_batch: int, decode_batch: int) -> None:
        feats = self.encode(torch.zeros(encode_batch, self.in_channels, height, width))
        self.decode(torch.zeros(decode_batch, self.window * self.feature_channels, height, width,
                                dtype=feats.dtype))

    def upload(self, frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frames))

    @staticmethod
    def _host(x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        (out,) = self._encoder.run([ENCODER_OUTPUT], {ENCODER_INPUT: self._host(frames)})
        return torch.from_numpy(out)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        (out,) = self._decoder.run([DECODER_OUTPUT], {DECODER_INPUT: self._host(features)})
        return torch.from_numpy(out)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "device": self.device, "precision": self.precision,
            "threads": self.threads or "default", "parameters": self.n_parameters, "window": self.window,
            "width": self.feature_channels, "size_multiple": self.size_multiple,
            "onnxruntime": self._ort_version, "provider": "CPUExecutionProvider",
            "onnx_opset": self.exported.opset,
        }
