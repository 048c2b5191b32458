"""Inference backends: the :class:`Backend` protocol, the torch / ONNX Runtime / TensorRT
implementations, and :func:`open_backend`, which picks one ('auto') and says why.

Importing this package does not import torch, onnxruntime or tensorrt; each implementation module does.
"""

from rtsmlm.localization.backends.protocol import Backend, BackendError
from rtsmlm.localization.backends.select import (
    BackendChoice,
    Environment,
    choose_backend,
    cpu_has_bf16,
    default_threads,
    file_sha256,
    model_for_backend,
    open_backend,
    probe_environment,
)

__all__ = [
    "Backend", "BackendChoice", "BackendError", "Environment", "choose_backend", "cpu_has_bf16",
    "default_threads", "file_sha256", "model_for_backend", "open_backend", "probe_environment",
]
