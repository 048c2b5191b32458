"""The DECODE-style localization network (Speiser et al., Nature Methods 2021).

Two U-Nets and a set of output heads:

* the **frame encoder** (``DecodeNet.encoder``) maps one camera frame ``(N, 1, H, W)`` to a feature map
  ``(N, width, H, W)``; it is applied to every frame of a window with shared weights;
* the **temporal U-Net** (``DecodeNet.temporal``) takes the encoder features of the ``window`` frames
  concatenated in time order ``(B, window*width, H, W)`` and returns ``(B, width, H, W)`` for the
  window's central frame;
* the **heads** turn those features into the 10 output maps below.

Encoding and decoding are separate public methods because in streaming every frame is encoded once and
its features are reused by all ``window`` windows it belongs to (``forward`` = encode + decode, for
training and for batch analysis).

Output channels (``(B, N_OUT_CHANNELS, H, W)``), all per pixel of the window's central frame; the net is
scale-free, the ``*_scale`` numbers are passed to the loss and the postprocessor by the caller:

===========  =====================================================================================
``CH_P``       0  detection probability p, sigmoid, in (0, 1)
``CH_PHOT``    1  photons / photon_scale, sigmoid, in (0, 1)
``CH_X``       2  x offset of the emitter from the CENTRE of this pixel, in pixels, tanh, in (-1, 1)
``CH_Y``       3  y offset from the pixel centre, in pixels, tanh, in (-1, 1)
``CH_Z``       4  z / z_scale, tanh, in (-1, 1)
``CH_SIG_PHOT`` 5  sigma_photons / photon_scale, sigmoid * 3 + 0.01
``CH_SIG_X``   6  sigma_x in pixels, sigmoid * 3 + 0.01
``CH_SIG_Y``   7  sigma_y in pixels, sigmoid * 3 + 0.01
``CH_SIG_Z``   8  sigma_z / z_scale, sigmoid * 3 + 0.01
``CH_BG``      9  background / bg_scale, sigmoid, in (0, 1)
===========  =====================================================================================

Design choices: ELU activations and no normalisation layers (as DECODE; it also makes a batch of one in
streaming give exactly the batched result); down-sampling by stride-2 convolutions and up-sampling by
nearest-neighbour interpolation, which export cleanly to ONNX/TensorRT; no data-dependent Python control
flow, so the module traces, exports with dynamic batch/H/W, and runs under ``channels_last`` and bf16
autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CH_P = 0
CH_PHOT = 1
CH_X = 2
CH_Y = 3
CH_Z = 4
CH_SIG_PHOT = 5
CH_SIG_X = 6
CH_SIG_Y = 7
CH_SIG_Z = 8
CH_BG = 9
N_OUT_CHANNELS = 10

SIGMA_SCALE = 3.0
"""Predicted sigmas are ``sigmoid * SIGMA_SCALE + SIGMA_MIN`` (DECODE's parametrisation)."""
SIGMA_MIN = 0.01

P_BIAS_INIT = -6.0
"""Initial bias of the p head: sigmoid(-6) ~ 0.0025, so an untrained net predicts a few emitters per
frame instead of half the pixels, which keeps the count loss sane in the first steps."""


class _ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with ELU, keeping the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ELU(),
        )


class _Up(nn.Module):
    """Nearest-neighbour 2x up-sampling, a 3x3 convolution halving the channels, concatenation with the
    skip connection, then a conv block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ELU())
        self.block = _ConvBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.block(torch.cat([self.reduce(x), skip], dim=1))


class UNet(nn.Module):
    """A plain 2D U-Net: ``(N, in_channels, H, W) -> (N, width, H, W)``.

    ``depth`` is the number of down-sampling levels; channels double at each level (width, 2*width, ...).
    H and W must be multiples of ``2**depth`` (checked by ``DecodeNet``).
    """

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        channels = [width * 2**level for level in range(depth + 1)]
        self.inc = _ConvBlock(in_channels, channels[0])
        # Stride-2 2x2 convolution as the pooling: learnable, and maps onto one fast conv kernel.
        self.downs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels[level], channels[level], 2, stride=2),
                nn.ELU(),
                _ConvBlock(channels[level], channels[level + 1]),
            )
            for level in range(depth)
        )
        self.ups = nn.ModuleList(_Up(channels[level + 1], channels[level]) for level in reversed(range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottom level is x itself
        for up in self.ups:
            x = up(x, skips.pop())
        return x


class _Head(nn.Sequential):
    """DECODE's output head: 3x3 conv + ELU, then a 1x1 conv to the head's raw output channels."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(width, width, 3, padding=1), nn.ELU(), nn.Conv2d(width, out_channels, 1))


class DecodeNet(nn.Module):
    """DECODE-style multi-frame localization network; see the module docstring for the output channels.

    Args:
        window: number of consecutive frames per window (odd; the output refers to the central frame).
        width: feature channels at full resolution in both U-Nets.
        depth: number of down-sampling levels in each U-Net; H and W must be multiples of ``2**depth``.
        in_channels: channels of one input frame (1 for a camera frame).
    """

    def __init__(self, window: int = 3, width: int = 24, depth: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"DecodeNet window must be a positive odd number of frames, got {window}.")
        if width < 1 or depth < 0 or in_channels < 1:
            raise ValueError(
                f"DecodeNet needs width >= 1, depth >= 0, in_channels >= 1, got width={width}, "
                f"depth={depth}, in_channels={in_channels}."
            )
        self.window = window
        self.width = width
        self.depth = depth
        self.in_channels = in_channels
        self.encoder = UNet(in_channels, width, depth)
        self.temporal = UNet(window * width, width, depth)
        # Separate heads per quantity group (as DECODE): their raw outputs concatenate to channel order
        # p | photons, x, y, z | sigma_photons, sigma_x, sigma_y, sigma_z | bg.
        self.head_p = _Head(width, 1)
        self.head_values = _Head(width, 4)
        self.head_sigmas = _Head(width, 4)
        self.head_bg = _Head(width, 1)
        with torch.no_grad():
            self.head_p[-1].bias.fill_(P_BIAS_INIT)

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this number."""
        return 2**self.depth

    def check_size(self, height: int, width: int) -> None:
        """Raise a ValueError if an image of ``height`` x ``width`` pixels cannot go through the net."""
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(
                f"DecodeNet(depth={self.depth}) needs image height and width that are multiples of {m}, "
                f"got {height}x{width}; crop or pad the frames."
            )

    def _check_input(self, x: torch.Tensor) -> None:
        # Shape checks are plain Python on static sizes; skipped while tracing/exporting so the exported
        # graph keeps symbolic H/W (the check is not data-dependent control flow on tensor values).
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        self.check_size(int(x.shape[-2]), int(x.shape[-1]))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame features: ``(N, in_channels, H, W) -> (N, width, H, W)``, each frame independently."""
        self._check_input(frames)
        return self.encoder(frames)

    def decode(self, feats: torch.Tensor) -> torch.Tensor:
        """Output maps of the central frame from the concatenated features of a window's frames in time
        order: ``(B, window*width, H, W) -> (B, 10, H, W)``."""
        self._check_input(feats)
        h = self.temporal(feats)
        raw = torch.cat([self.head_p(h), self.head_values(h), self.head_sigmas(h), self.head_bg(h)], dim=1)
        # Channel slices of a channels_last tensor send tanh/sigmoid down slow strided CPU loops (~70×).
        raw = raw.contiguous()
        return torch.cat(
            [
                torch.sigmoid(raw[:, CH_P : CH_PHOT + 1]),
                torch.tanh(raw[:, CH_X : CH_Z + 1]),
                torch.sigmoid(raw[:, CH_SIG_PHOT : CH_SIG_Z + 1]) * SIGMA_SCALE + SIGMA_MIN,
                torch.sigmoid(raw[:, CH_BG : CH_BG + 1]),
            ],
            dim=1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, window, H, W)`` frames in time order (``(B, window, in_channels, H, W)`` when
        ``in_channels > 1``) -> ``(B, 10, H, W)`` for each window's central frame."""
        self._check_input(x)
        b = x.shape[0]
        h, w = x.shape[-2], x.shape[-1]
        # (B, T, [C,] H, W) -> (B*T, C, H, W): every frame through the shared encoder in one batch.
        feats = self.encode(x.reshape(b * self.window, self.in_channels, h, w))
        # (B*T, width, H, W) -> (B, T*width, H, W): frame-major concatenation, frame 0's channels first.
        return self.decode(feats.reshape(b, self.window * self.width, h, w))


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def widened(net: DecodeNet, width: int, *, seed: int = 0) -> DecodeNet:
    """A copy of ``net`` with ``width`` feature channels that computes exactly the same outputs.

    Every convolution keeps the old weights for the old channels; the added channels get fresh random
    weights for their own inputs, and every old channel reads them with weight zero. So the wider net
    starts where ``net`` is and training grows the new capacity from there (Net2Net's idea, Chen et al.
    2016, with zero instead of copied outgoing weights): a larger model for GPUs costs a fine-tune of
    the shipped one instead of a training from scratch. No normalisation layer mixes channels, so the
    copy is exact up to float rounding.
    """
    if width < net.width:
        raise ValueError(f"widened() makes a net wider, not narrower: {net.width} -> {width} channels.")
    wide = DecodeNet(window=net.window, width=width, depth=net.depth, in_channels=net.in_channels)
    generator = torch.Generator().manual_seed(seed)
    old_convs, new_convs, inputs = _convolutions(net), _convolutions(wide), _conv_inputs(net)
    # The old channels come first in every convolution's output (and so in every input block).
    old_first = {name: torch.arange(conv.out_channels) for name, conv in old_convs.items()}
    with torch.no_grad():
        for name, conv in new_convs.items():
            old = old_convs[name]
            in_index = _input_index(name, inputs, net, old_first, new_convs)
            out_index = old_first[name]
            fresh = torch.empty_like(conv.weight)
            bound = 1.0 / float(conv.weight[0].numel()) ** 0.5  # PyTorch's default Conv2d bound
            fresh.uniform_(-bound, bound, generator=generator)
            fresh[out_index] = 0.0  # old outputs read nothing from added inputs ...
            fresh[out_index[:, None], in_index[None, :]] = old.weight  # ... and their old inputs as before
            conv.weight.copy_(fresh)
            bias = torch.zeros_like(conv.bias)
            bias[out_index] = old.bias
            conv.bias.copy_(bias)
    return wide


def narrowed(net: DecodeNet, width: int) -> DecodeNet:
    """A copy of ``net`` with ``width`` feature channels (fewer): structured pruning, the converse of
    :func:`widened`, to start a faster model from a larger trained one instead of from scratch.

    Every convolution keeps the output channels that carry the most: a channel's importance is the norm of
    its filter times the summed norm of the weights that read it downstream (a channel nothing reads, or
    whose filter is near zero, contributes little). Its consumers keep only the kept channels' inputs.
    Unlike widening this changes the outputs; a fine-tune recovers them (``train.narrow_to``). Output
    heads keep their output channels; every other level shrinks in proportion (width, 2·width, ...).
    """
    if width > net.width:
        raise ValueError(f"narrowed() makes a net narrower, not wider: {net.width} -> {width} channels.")
    small = DecodeNet(window=net.window, width=width, depth=net.depth, in_channels=net.in_channels)
    old_convs, new_convs, inputs = _convolutions(net), _convolutions(small), _conv_inputs(net)
    readers: dict[str, list[tuple[str, int]]] = {name: [] for name in old_convs}
    for name in inputs:
        for producer, offset in _input_blocks(name, inputs, net, old_convs):
            if producer is not None:
                readers[producer].append((name, offset))
    kept: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, old in old_convs.items():
            n_keep = new_convs[name].out_channels
            importance = old.weight.flatten(1).norm(dim=1)
            downstream = torch.zeros(old.out_channels)
            for reader, offset in readers[name]:
                read = old_convs[reader].weight[:, offset : offset + old.out_channels]
                downstream += read.transpose(0, 1).flatten(1).norm(dim=1)
            if readers[name]:
                importance = importance * downstream
            kept[name] = torch.sort(torch.topk(importance, n_keep).indices).values
        for name, conv in new_convs.items():
            in_index = _input_index(name, inputs, net, kept, old_convs)
            conv.weight.copy_(old_convs[name].weight[kept[name]][:, in_index])
            conv.bias.copy_(old_convs[name].bias[kept[name]])
    return small


def _convolutions(net: DecodeNet) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}


def _input_blocks(
    name: str, inputs: dict[str, list[str | None]], net: DecodeNet, layout: dict[str, nn.Conv2d]
) -> list[tuple[str | None, int]]:
    """The blocks convolution ``name``'s input concatenates (``inputs``: :func:`_conv_inputs`), as ``layout``'s
    convolutions produce them: (producer, ``None`` for the camera frame; its first channel in the input)."""
    blocks, offset = [], 0
    for producer in inputs[name]:
        blocks.append((producer, offset))
        offset += net.in_channels if producer is None else layout[producer].out_channels
    return blocks


def _input_index(
    name: str,
    inputs: dict[str, list[str | None]],
    net: DecodeNet,
    index_of: dict[str, torch.Tensor],
    layout: dict[str, nn.Conv2d],
) -> torch.Tensor:
    """Positions, in convolution ``name``'s input as ``layout``'s convolutions produce it, of the channels
    ``index_of`` selects from each of its producers (the frame input's channels are all taken as they are)."""
    return torch.cat(
        [
            torch.arange(net.in_channels) + offset if producer is None else index_of[producer] + offset
            for producer, offset in _input_blocks(name, inputs, net, layout)
        ]
    )


def _conv_inputs(net: DecodeNet) -> dict[str, list[str | None]]:
    """For every convolution of ``net`` (by module name), the convolutions whose outputs its input
    concatenates, in order (``None``: the camera frame): the data flow of :class:`UNet` and the heads."""
    inputs: dict[str, list[str | None]] = {}

    def unet(prefix: str, external: list[str | None]) -> str:
        inputs[f"{prefix}.inc.0"], inputs[f"{prefix}.inc.2"] = external, [f"{prefix}.inc.0"]
        last, skips = f"{prefix}.inc.2", []
        for level in range(net.depth):
            skips.append(last)
            down = f"{prefix}.downs.{level}"
            inputs[f"{down}.0"], inputs[f"{down}.2.0"], inputs[f"{down}.2.2"] = [last], [f"{down}.0"], [f"{down}.2.0"]
            last = f"{down}.2.2"
        for i in range(net.depth):
            up = f"{prefix}.ups.{i}"
            inputs[f"{up}.reduce.0"] = [last]
            inputs[f"{up}.block.0"] = [f"{up}.reduce.0", skips.pop()]  # UNet.forward: cat([reduce(x), skip])
            inputs[f"{up}.block.2"] = [f"{up}.block.0"]
            last = f"{up}.block.2"
        return last

    features = unet("encoder", [None])
    decoded = unet("temporal", [features] * net.window)  # the window's frames, frame 0's features first
    for head in ("head_p", "head_values", "head_sigmas", "head_bg"):
        inputs[f"{head}.0"], inputs[f"{head}.2"] = [decoded], [f"{head}.0"]
    return inputs
