"""The ``Backend`` protocol: what the streaming localizer needs from an inference engine.

A backend holds one trained :class:`rtsmlm.localization.net.DecodeNet` in the form its engine runs (a torch
module, two ONNX Runtime sessions, two TensorRT engines) and exposes the network's two halves
separately, so every frame is encoded once and its features are reused by all windows it belongs to.

Tensors crossing the interface are ``torch.Tensor`` on :attr:`Backend.device` (zero-copy views of
numpy arrays for ONNX Runtime, CUDA tensors for TensorRT), so the localizer's frame-feature cache,
tiling and post-processing are the same code for every backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rtsmlm.core.errors import RtsmlmError

if TYPE_CHECKING:  # torch is imported lazily: `import rtsmlm.localization.backends` stays light
    import numpy as np
    import torch


class BackendError(RtsmlmError, RuntimeError):
    """A backend cannot be opened or run; the message names the setting or package concerned."""


@runtime_checkable
class Backend(Protocol):
    """An inference engine running the encoder and temporal decoder of a DECODE network.

    Life cycle: :func:`rtsmlm.localization.backends.open_backend` loads the checkpoint and builds the backend;
    the localizer calls :meth:`warmup` once with the tile shape and batch sizes it will use, then
    :meth:`upload`, :meth:`encode` and :meth:`decode` for every batch of frames, from one thread.

    Results of :meth:`encode` and :meth:`decode` are valid until the next call of the same method: a backend
    replaying a fixed-shape graph (CUDA graphs) returns the graph's own output tensor rather than a copy,
    and the localizer copies what it keeps (the feature cache, tile groups).

    Optional hook (looked up with ``getattr``; backends without it get a new contiguous tensor):

    ``decode_input(shape, dtype) -> torch.Tensor``
        Called before each :meth:`decode` with the shape ``(B, window * feature_channels, H, W)`` and dtype
        of the windows the localizer is about to assemble; returns the tensor to write them into and pass
        to :meth:`decode` (the captured graph's static input, so the call copies nothing; else an empty
        tensor in the memory layout the engine runs fastest).
    """

    name: str
    """'torch', 'onnxruntime' or 'tensorrt'."""
    device: str
    """Where tensors live: 'cpu' or 'cuda' / 'cuda:N'."""
    precision: str
    """'fp32', 'fp16' or 'bf16': the arithmetic precision of the network."""
    window: int
    """Frames per window (odd); the outputs refer to the central frame."""
    in_channels: int
    """Channels of one frame's network input: 1 (photons), or 1 + the model's conditioning maps."""
    feature_channels: int
    """Channels of one frame's features (the network's width)."""
    size_multiple: int
    """Image height and width must be multiples of this (2**depth)."""

    def warmup(self, height: int, width: int, encode_batch: int, decode_batch: int) -> None:
        """Called once before streaming with the (padded, tiled) image size and the largest batches the
        localizer will send; allocates buffers, builds or captures fixed-shape graphs, runs once."""

    def upload(self, frames: "np.ndarray") -> "torch.Tensor":
        """Called with a batch of raw camera frames (any numeric dtype, e.g. uint16) before scaling;
        returns them as a tensor on :attr:`device` (pinned, asynchronous copies on CUDA)."""

    def encode(self, frames: "torch.Tensor") -> "torch.Tensor":
        """Called once per frame batch: network input ``(N, in_channels, H, W)`` float32 (transformed photons, then
        any conditioning maps) on :attr:`device` -> features ``(N, feature_channels, H, W)``, valid until the
        next encode call."""

    def decode(self, features: "torch.Tensor") -> "torch.Tensor":
        """Called once per window batch: the concatenated features of each window's frames in time order
        ``(B, window * feature_channels, H, W)`` -> output maps ``(B, 10, H, W)`` (any float dtype), valid
        until the next decode call."""

    def describe(self) -> dict[str, Any]:
        """What it runs on: at least name, device, precision, threads; JSON-friendly."""
