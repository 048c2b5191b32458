"""Padding and tiling of frames for a fully convolutional network.

A :class:`TilePlan` says how a frame of any size goes through a network that needs image sizes that are
multiples of ``2**depth``: the frame is padded (edge replication) to the next multiple, then cut into
equally sized, overlapping tiles whose origins lie on multiples of ``2**depth`` (so the network's
down-sampling grid is the same as for the whole frame). Each tile owns a *core* rectangle; tiles of one
frame form a partition of the frame by their cores, and a tile's window extends ``margin`` pixels past
its core (clamped inside the frame), so with a margin at least the network's receptive-field radius the
stitched output equals untiled inference exactly, and with a smaller margin it is equal away from the
tile borders.

All tiles have the same size, so the tiles of a batch of frames go through the network as one batch
``(N * n_tiles, C, tile_h, tile_w)``, frame-major.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Tile:
    """One tile: its window ``[y0, y0 + tile_h) x [x0, x0 + tile_w)`` in the padded frame and the core
    ``[cy0, cy1) x [cx0, cx1)`` (padded-frame pixels) whose outputs it contributes."""

    y0: int
    x0: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


@dataclass(frozen=True)
class TilePlan:
    """How frames of ``height`` x ``width`` are padded and tiled; see the module docstring."""

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile_height: int
    tile_width: int
    margin: int
    tiles: tuple[Tile, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)

    def split(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` frames -> ``(N * n_tiles, 1, tile_h, tile_w)`` padded tiles, frame-major;
        ``(N, C, H, W)`` (frames with conditioning channels) -> ``(N * n_tiles, C, tile_h, tile_w)``."""
        if tuple(frames.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"TilePlan for {self.height}x{self.width} frames got frames of shape "
                             f"{tuple(frames.shape)}.")
        x = frames if frames.ndim == 4 else frames.unsqueeze(1)  # (N, C, H, W)
        ph, pw = self.padded_height - self.height, self.padded_width - self.width
        if ph or pw:
            # Edge replication: the padding looks like more of the same background, not a dark border.
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        if self.n_tiles == 1:
            return x
        th, tw = self.tile_height, self.tile_width
        tiles = [x[:, :, t.y0 : t.y0 + th, t.x0 : t.x0 + tw] for t in self.tiles]
        return torch.stack(tiles, dim=1).reshape(-1, x.shape[1], th, tw)

    def stitch(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B * n_tiles, C, tile_h, tile_w)`` tile outputs -> ``(B, C, height, width)`` frame outputs
        (cores copied into place, padding cropped)."""
        k = self.n_tiles
        if maps.shape[0] % k:
            raise ValueError(f"{maps.shape[0]} tile outputs is not a multiple of {k} tiles per frame.")
        if k == 1:
            return maps[:, :, : self.height, : self.width]
        b, c = maps.shape[0] // k, maps.shape[1]
        tiled = maps.reshape(b, k, c, self.tile_height, self.tile_width)
        out = maps.new_empty(b, c, self.padded_height, self.padded_width)
        for i, t in enumerate(self.tiles):
            out[:, :, t.cy0 : t.cy1, t.cx0 : t.cx1] = tiled[:, i, :, t.cy0 - t.y0 : t.cy1 - t.y0,
                                                           t.cx0 - t.x0 : t.cx1 - t.x0]
        return out[:, :, : self.height, : self.width]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _axis(padded: int, core: int, margin: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Tile size and (window start, core start, core end) along one axis."""
    if core >= padded:
        return padded, [(0, 0, padded)]
    size = min(core + 2 * margin, padded)
    spans = []
    for c0 in range(0, padded, core):
        c1 = min(c0 + core, padded)
        start = min(max(c0 - margin, 0), padded - size)
        spans.append((start, c0, c1))
    return size, spans


def make_plan(height: int, width: int, size_multiple: int, tile: int | None = None, margin: int = 0) -> TilePlan:
    """Plan for ``height`` x ``width`` frames: padded to multiples of ``size_multiple``; ``tile`` = core
    size in pixels (None or >= the frame: one tile), ``margin`` = overlap on each side (rounded up to a
    multiple of ``size_multiple``)."""
    if height < 1 or width < 1:
        raise ValueError(f"frame shape must be positive, got {height}x{width}.")
    m = size_multiple
    ph, pw = round_up(height, m), round_up(width, m)
    core = round_up(tile, m) if tile else max(ph, pw)
    if core < m:
        raise ValueError(f"tile size must be at least {m} pixels, got {tile}.")
    margin = round_up(max(margin, 0), m)
    th, ys = _axis(ph, core, margin)
    tw, xs = _axis(pw, core, margin)
    tiles = tuple(Tile(y0, x0, cy0, cy1, cx0, cx1) for (y0, cy0, cy1) in ys for (x0, cx0, cx1) in xs)
    return TilePlan(height, width, ph, pw, th, tw, margin if len(tiles) > 1 else 0, tiles)


def receptive_radius(depth: int) -> int:
    """Receptive-field radius in pixels of a DecodeNet (encoder U-Net, temporal U-Net and 3x3 head).

    Per U-Net: the input block (two 3x3 convs, 2 px); per level l = 1..depth going down, a 2x2 stride-2
    conv (2**(l-1) px) and two 3x3 convs (2 * 2**l px); per level going up, the 3x3 reduce conv
    (2**(l-1) px, it runs after up-sampling) and two 3x3 convs (2 * 2**(l-1) px).
    """
    unet = 2
    for level in range(1, depth + 1):
        unet += 2 ** (level - 1) + 2 * 2**level  # down
        unet += 2 ** (level - 1) + 2 * 2 ** (level - 1)  # up
    return 2 * unet + 1


def available_memory_bytes(device: str) -> int:
    """Free memory for activations: free GPU memory on CUDA, MemAvailable on the CPU (Linux)."""
    if device.startswith("cuda"):
        dev = torch.device(device)
        free, _total = torch.cuda.mem_get_info(dev)
        # Blocks torch's caching allocator holds but no tensor uses are free for this process's tensors;
        # the driver counts them as used.
        cached_unused = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + max(0, cached_unused))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def bytes_per_pixel(window: int, width: int, element_bytes: int) -> int:
    """Conservative peak activation memory per image pixel and window while decoding: the window's
    cached features (window * width channels), the temporal U-Net's full-resolution activations (about
    six width-channel maps alive at once with the skip connection) and the frame's own features."""
    return element_bytes * width * (2 * window + 8)


CPU_PIXELS_PER_CALL = 1 << 16
"""Image pixels per backend call on the CPU. Measured with the default model, bf16, one thread: 256x256
frames cost 56 CPU-ms each one at a time but 99 ms in batches of 16 (activations fall out of the
caches), while 64x64 frames gain from batches of 16 (2.9 ms vs 3.6 ms in pairs)."""


@dataclass(frozen=True)
class Sizing:
    """Automatic batch and tile sizes."""

    plan: TilePlan
    batch: int  # frames per encode/decode call


def choose_sizes(height: int, width: int, size_multiple: int, window: int, feature_channels: int,
                 element_bytes: int, free_bytes: int, max_batch: int = 16, memory_fraction: float = 0.25,
                 margin: int | None = None, depth: int | None = None, tile: int | None = None,
                 batch: int = 0, max_pixels: int | None = None) -> Sizing:
    """Pick the tile size and batch from free memory: whole frames when ``max_batch`` of them fit in
    ``memory_fraction`` of ``free_bytes``, else fewer frames per batch, else tiles (square cores,
    overlap ``margin``, default the receptive radius for ``depth``). ``max_pixels`` caps the image
    pixels per call (CPU: keeps activations cache-sized). ``tile``/``batch`` > 0 force them."""
    budget = max(int(free_bytes * memory_fraction), 1)
    per_px = bytes_per_pixel(window, feature_channels, element_bytes)
    if margin is None:
        margin = receptive_radius(depth) if depth is not None else 4 * size_multiple
    if tile:
        plan = make_plan(height, width, size_multiple, tile, margin)
    else:
        plan = make_plan(height, width, size_multiple)
        frame_bytes = plan.tile_height * plan.tile_width * per_px
        if frame_bytes > budget:
            # Largest square core whose tile (core + 2 margins) fits the budget, at least 4x the margin so
            # the overlap does not dominate the work.
            side = int((budget / per_px) ** 0.5) - 2 * round_up(margin, size_multiple)
            core = max(side // size_multiple * size_multiple, 4 * size_multiple, 2 * margin)
            plan = make_plan(height, width, size_multiple, core, margin)
    if batch <= 0:
        per_frame = plan.n_tiles * plan.tile_height * plan.tile_width * per_px
        batch = int(min(max(budget // max(per_frame, 1), 1), max_batch))
        if max_pixels:
            frame_px = plan.n_tiles * plan.tile_height * plan.tile_width
            batch = max(1, min(batch, max_pixels // frame_px))
    return Sizing(plan, batch)
