"""Incremental super-resolution rendering into a fixed-extent canvas, with two half-canvases for FRC.

Every localization batch is added to the canvas as it arrives: as a histogram (one count in the pixel
holding it) or as a Gaussian whose width is the localization's predicted uncertainty (``sigma_x``,
``sigma_y``), clamped to [``min_sigma_nm``, ``max_sigma_nm``], integrated exactly over each pixel out to
2.5 sigma and normalised so that every localization adds 1 to the image (less only where a spot is cut
by the canvas border). The canvas is kept as two halves, the
localizations of even and of odd time blocks, whose sum is the image and whose Fourier ring correlation
(:mod:`rtsmlm.analysis.frc`) measures the resolution. When the drift estimate changes materially the canvas is
re-rendered from the stored localizations (:meth:`Canvas.rerender`).

Pixel (row i, column j) covers x in [j p, (j+1) p), y in [i p, (i+1) p), p = ``pixel_nm`` (DESIGN.md).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from rtsmlm.core.config import RenderConfig

COLORMAPS = ("inferno", "magma", "hot", "viridis", "cividis", "turbo", "gray")
"""Colour maps offered in the live window and named in error messages (``gui.colormap`` may name any
matplotlib colour map)."""

__all__ = ["Canvas"]

_TRUNCATE_SIGMAS = 2.5  # a Gaussian is drawn out to this many sigmas (98.8 % of it per axis)
_CHUNK_PIXELS = 1 << 20  # kernel pixels drawn per vectorised step


class Canvas:
    """A float32 super-resolution image of fixed extent that localization batches are added to.

    ``shape_nm`` is the field (height, width) in nm; the image has ``ceil(h / pixel_nm)`` x
    ``ceil(w / pixel_nm)`` pixels. Localizations outside it are counted in :attr:`n_outside`.
    ``half_block_frames`` sets the time blocks that alternate between the two halves when
    :meth:`add` is not told the parity. Drift-corrected coordinates (``x_dc``, ``y_dc``) are drawn
    when present, raw ``x``, ``y`` otherwise. Adding and reading may happen from different threads.
    """

    def __init__(self, shape_nm: tuple[float, float], pixel_nm: float, mode: str = "gaussian",
                 min_sigma_nm: float = 5.0, max_sigma_nm: float = 50.0, half_block_frames: int = 200) -> None:
        h, w = (float(v) for v in shape_nm)
        if not (h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
            raise ValueError(f"canvas shape_nm must be two positive sizes (height, width) in nm, got {shape_nm!r}")
        if not pixel_nm > 0:
            raise ValueError(f"canvas pixel_nm must be positive, got {pixel_nm!r}")
        if mode not in ("gaussian", "histogram"):
            raise ValueError(f"canvas mode is {mode!r}; allowed values: 'gaussian', 'histogram'")
        if not 0 <= min_sigma_nm <= max_sigma_nm:
            raise ValueError(f"canvas sigma limits must satisfy 0 <= min_sigma_nm <= max_sigma_nm, got "
                             f"{min_sigma_nm!r} and {max_sigma_nm!r}")
        if half_block_frames < 1:
            raise ValueError(f"canvas half_block_frames must be at least 1, got {half_block_frames!r}")
        self.shape_nm = (h, w)
        self.pixel_nm = float(pixel_nm)
        self.shape = (int(math.ceil(h / pixel_nm)), int(math.ceil(w / pixel_nm)))
        self.mode = mode
        self.min_sigma_nm = float(min_sigma_nm)
        self.max_sigma_nm = float(max_sigma_nm)
        self.half_block_frames = int(half_block_frames)
        self._halves = np.zeros((2, *self.shape), dtype=np.float32)
        self._image: np.ndarray | None = None
        self._lock = threading.Lock()
        self.n_locs = 0
        """Localizations drawn (inside the canvas) since the last clear."""
        self.n_outside = 0
        """Localizations that fell outside the canvas since the last clear."""
        self.version = 0
        """Increments on every change, so a viewer can tell when to redraw."""

    @classmethod
    def from_config(cls, cfg: RenderConfig, shape_nm: tuple[float, float], half_block_frames: int = 200) -> Canvas:
        """A canvas with the ``[render]`` settings (pixel size, mode, sigma limits)."""
        return cls(shape_nm, cfg.pixel_size_nm, cfg.mode, cfg.min_sigma_nm, cfg.max_sigma_nm, half_block_frames)

    # ------------------------------------------------------------------------------------------ drawing

    def add(self, locs: np.ndarray, block_parity: int | np.ndarray | None = None, weight: float = 1.0) -> None:
        """Draw a batch: into half ``block_parity`` (0/1, one per batch or per localization), or by frame.

        ``weight=-1`` takes back localizations drawn before with exactly these coordinates: with
        :meth:`rtsmlm.analysis.drift.OnlineDrift.as_applied` and ``stale_frames`` only the localizations whose drift
        correction moved need redrawing, instead of a full :meth:`rerender`.
        """
        y, x, sy, sx, parity = self._prepare(locs, block_parity)
        with self._lock:
            self._draw(y, x, sy, sx, parity, float(weight))
            self._image = None
            self.version += 1

    def rerender(self, locs: np.ndarray, block_parity: int | np.ndarray | None = None) -> None:
        """Replace the content by ``locs`` (e.g. all localizations, corrected with a new drift estimate)."""
        y, x, sy, sx, parity = self._prepare(locs, block_parity)
        with self._lock:
            self._halves[:] = 0
            self.n_locs = self.n_outside = 0
            self._draw(y, x, sy, sx, parity, 1.0)
            self._image = None
            self.version += 1

    def clear(self) -> None:
        """Empty the canvas."""
        with self._lock:
            self._halves[:] = 0
            self.n_locs = self.n_outside = 0
            self._image = None
            self.version += 1

    def _prepare(self, locs: np.ndarray, block_parity: int | np.ndarray | None):
        names = getattr(getattr(locs, "dtype", None), "names", None) or ()
        xs, ys = ("x_dc", "y_dc") if "x_dc" in names else ("x", "y")
        missing = [c for c in (xs, ys) if c not in names]
        if missing:
            raise ValueError(f"localization table lacks the column(s) {', '.join(missing)} needed to render; "
                             f"got fields {names}")
        x = np.asarray(locs[xs], dtype=np.float64)
        y = np.asarray(locs[ys], dtype=np.float64)
        n = len(x)
        if block_parity is None:
            if "frame" not in names:
                raise ValueError("rendering without block_parity needs a 'frame' column to choose the half")
            parity = (np.asarray(locs["frame"], dtype=np.int64) // self.half_block_frames) % 2
        else:
            parity = np.broadcast_to(np.asarray(block_parity, dtype=np.int64) % 2, (n,))
        if self.mode == "gaussian":
            sx = _sigma_column(locs, "sigma_x", names, n)
            sy = _sigma_column(locs, "sigma_y", names, n)
            sx = np.clip(np.nan_to_num(sx, nan=self.min_sigma_nm), self.min_sigma_nm, self.max_sigma_nm)
            sy = np.clip(np.nan_to_num(sy, nan=self.min_sigma_nm), self.min_sigma_nm, self.max_sigma_nm)
        else:
            sx = sy = None
        return y, x, sy, sx, parity

    def _draw(self, y, x, sy, sx, parity, weight: float) -> None:
        h_nm, w_nm = self.shape_nm
        inside = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x < w_nm) & (y >= 0) & (y < h_nm)
        sign = 1 if weight >= 0 else -1
        self.n_outside += sign * int(len(x) - np.count_nonzero(inside))
        self.n_locs += sign * int(np.count_nonzero(inside))
        if not inside.all():
            y, x, parity = y[inside], x[inside], parity[inside]
            if sx is not None:
                sx, sy = sx[inside], sy[inside]
        if len(x) == 0:
            return
        flat = self._halves.reshape(-1)
        offset = parity * (self.shape[0] * self.shape[1])  # half 1 follows half 0 in memory
        if self.mode == "histogram":
            iy = np.minimum((y / self.pixel_nm).astype(np.int64), self.shape[0] - 1)
            ix = np.minimum((x / self.pixel_nm).astype(np.int64), self.shape[1] - 1)
            # np.add.at is fast with an array of values (a scalar takes a slow path)
            np.add.at(flat, offset + iy * self.shape[1] + ix, np.full(len(ix), weight, dtype=np.float32))
            return
        self._draw_gaussians(flat, offset, y, x, sy, sx, weight)

    def _draw_gaussians(self, flat, offset, y, x, sy, sx, weight: float) -> None:
        """Pixel-integrated Gaussians, grouped by window size so each group is one vectorised operation.

        Each localization's window is the square of pixels within ``_TRUNCATE_SIGMAS`` sigmas of it.
        Localizations are drawn in raster order within each window size, which keeps consecutive
        updates in nearby memory (several times faster than random order on a big canvas), and all
        kernel pixels of a batch go through one ``np.add.at`` (each call has a fixed cost).
        """
        from scipy.special import erf

        p = self.pixel_nm
        h, w = self.shape
        reach = _TRUNCATE_SIGMAS * np.maximum(sx, sy)
        row0 = np.floor((y - reach) / p).astype(np.int64)  # first row and column of each window
        col0 = np.floor((x - reach) / p).astype(np.int64)
        size = np.maximum(np.floor((y + reach) / p).astype(np.int64) - row0,
                          np.floor((x + reach) / p).astype(np.int64) - col0) + 1
        order = np.argsort(size * (4 * h * w) + (row0 + h) * (2 * w) + col0 + w, kind="stable")
        y, x, sy, sx, row0, col0, size, offset = (a[order] for a in (y, x, sy, sx, row0, col0, size, offset))
        # the fraction of each 1-D Gaussian between consecutive pixel edges, for every window at once:
        # one erf call over the ragged list of edges (window by window, y then x)
        n_edges = size + 1
        starts = np.concatenate([[0], np.cumsum(n_edges)[:-1]])
        owner = np.repeat(np.arange(len(y)), n_edges)
        step = np.arange(int(n_edges.sum())) - starts[owner]
        inv = 1.0 / (np.sqrt(2.0) * np.maximum(np.stack([sy, sx]), 1e-6 * p))  # sigma 0: all in one pixel
        cdf_y = erf(((row0[owner] + step) * p - y[owner]) * inv[0, owner])
        cdf_x = erf(((col0[owner] + step) * p - x[owner]) * inv[1, owner])
        bounds = np.flatnonzero(np.diff(size)) + 1
        group_starts = np.concatenate([[0], bounds])
        group_ends = np.concatenate([bounds, [len(y)]])
        total = int(np.sum(size * size))
        index = np.empty(min(total, _CHUNK_PIXELS), dtype=np.int64)
        weights = np.empty(len(index), dtype=np.float32)
        fill = 0
        for g0, g1 in zip(group_starts, group_ends):
            n = int(size[g0])
            steps = np.arange(n)
            rel = (steps[:, None] * w + steps[None, :]).ravel()  # window pixels in the flat canvas
            chunk = max(1, len(index) // (n * n))  # bounds the temporaries of big batches
            for a in range(g0, g1, chunk):
                b = min(g1, a + chunk)
                m = (b - a) * n * n
                if fill + m > len(index):
                    np.add.at(flat, index[:fill], weights[:fill])
                    fill = 0
                e0, e1 = starts[a], starts[b - 1] + n + 1
                wy = _normalised_steps(cdf_y[e0:e1].reshape(b - a, n + 1))
                wx = _normalised_steps(cdf_x[e0:e1].reshape(b - a, n + 1))
                if weight != 1.0:
                    wx *= np.float32(weight)
                wk = weights[fill:fill + m].reshape(b - a, n, n)
                np.multiply(wy[:, :, None], wx[:, None, :], out=wk)
                ik = index[fill:fill + m].reshape(b - a, n * n)
                ry, rx = row0[a:b], col0[a:b]
                np.add((offset[a:b] + ry * w + rx)[:, None], rel[None, :], out=ik)
                edge = (ry < 0) | (ry + n > h) | (rx < 0) | (rx + n > w)
                if edge.any():  # windows reaching past the border: drop the outside part
                    ky = ry[edge, None] + steps[None, :]
                    kx = rx[edge, None] + steps[None, :]
                    out = (((ky < 0) | (ky >= h))[:, :, None] | ((kx < 0) | (kx >= w))[:, None, :])
                    out = out.reshape(-1, n * n)
                    wk2 = wk.reshape(b - a, n * n)
                    wk2[edge] = np.where(out, np.float32(0), wk2[edge])
                    ik[edge] = np.where(out, offset[a:b][edge, None], ik[edge])
                fill += m
        if fill:
            np.add.at(flat, index[:fill], weights[:fill])

    # ------------------------------------------------------------------------------------------ reading

    @property
    def image(self) -> np.ndarray:
        """The super-resolution image (sum of the halves), float32; a new array after each change."""
        with self._lock:
            if self._image is None:
                self._image = self._halves[0] + self._halves[1]
            return self._image

    @property
    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the even-block and odd-block half images (for Fourier ring correlation)."""
        with self._lock:
            return self._halves[0].copy(), self._halves[1].copy()

    def to_uint8(self, lut_percentile: float = 99.5) -> np.ndarray:
        """The image scaled to 0..255 for display: the ``lut_percentile`` of the non-empty pixels maps to 255."""
        if not 0 < lut_percentile <= 100:
            raise ValueError(f"lut_percentile must be in (0, 100], got {lut_percentile!r}")
        img = self.image
        values = img[img > 0]
        if len(values) == 0:
            return np.zeros(img.shape, dtype=np.uint8)
        if len(values) > 200_000:  # a strided sample gives the percentile to display accuracy, fast
            values = values[:: len(values) // 200_000]
        top = float(np.percentile(values, lut_percentile))
        if top <= 0:
            top = float(values.max())
        out = np.empty(img.shape, dtype=np.float32)
        np.multiply(img, np.float32(255.0 / top), out=out)
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)


def _sigma_column(locs: np.ndarray, name: str, names: tuple, n: int) -> np.ndarray:
    if name in names:
        return np.asarray(locs[name], dtype=np.float64)
    return np.zeros(n)  # unknown uncertainty: clamped up to min_sigma_nm


def _normalised_steps(cdf: np.ndarray) -> np.ndarray:
    """Per row: the differences of a cumulative distribution at pixel edges, summing to 1 (float32)."""
    weights = np.diff(cdf, axis=1)
    weights /= weights.sum(axis=1, keepdims=True)  # each localization adds exactly 1
    return weights.astype(np.float32)


def pool(image: np.ndarray, max_px: int, reducer: str = "sum") -> tuple[np.ndarray, int]:
    """Pool ``image`` by an integer factor so that no side exceeds ``max_px``.

    Returns the pooled image (float32) and the factor. ``reducer`` is ``"sum"`` (an SR histogram keeps
    its counts) or ``"mean"`` (a camera frame keeps its ADU scale). Edge rows/columns that do not fill a
    whole block are dropped, so pooled pixel (i, j) covers exactly original pixels
    ``[i·f, (i+1)·f) × [j·f, (j+1)·f)`` and the nm coordinates of the pooled image stay exact.
    """
    if reducer not in ("sum", "mean"):
        raise ValueError(f"pool reducer must be 'sum' or 'mean', got {reducer!r}")
    factor = max(1, math.ceil(max(image.shape) / max_px))
    if factor == 1:
        return image.astype(np.float32, copy=False), 1
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    # factor² strided adds: ~10x faster than reshape(...).sum(axis=(1, 3)), whose reduction runs over
    # non-contiguous axes (2.7 vs 25 ms for a 2048² frame here).
    pooled = np.zeros((h // factor, w // factor), np.float32)
    for i in range(factor):
        for j in range(factor):
            pooled += image[i:h:factor, j:w:factor]
    if reducer == "mean":
        pooled *= np.float32(1.0 / (factor * factor))
    return pooled, factor


# --------------------------------------------------------------------------------------------------
# Intensity mapping (the live view and render.png)

_LEVEL_SAMPLES = 1 << 18
"""Percentiles are taken on at most this many pixels (a regular subsample); exact enough for contrast."""


def percentile_levels(image: np.ndarray, low: float, high: float, *, nonzero: bool = False) -> tuple[float, float]:
    """Contrast limits at the ``low`` and ``high`` percentiles of ``image``.

    With ``nonzero`` only pixels > 0 count — an SR image is mostly empty, and a percentile over all
    pixels would put the white point at 0. Large images are subsampled on a regular grid. The result
    always has ``hi > lo`` so a mapping never divides by zero.
    """
    values = image.ravel()
    if values.size > _LEVEL_SAMPLES:
        values = values[:: values.size // _LEVEL_SAMPLES]
    if nonzero:
        values = values[values > 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if nonzero:
        lo = 0.0  # empty SR pixels stay black
    if not hi > lo:
        hi = lo + 1.0  # a flat image: any positive span shows it uniformly
    return lo, hi


def to_uint8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto 0..255 (clipped), ready for a 256-entry lookup table."""
    scale = np.float32(255.0 / max(hi - lo, 1e-12))
    out = (image.astype(np.float32, copy=False) - np.float32(lo)) * scale
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Depth colour (3D runs)


class DepthMaps:
    """Per SR pixel: how many localizations of a 3D run landed there and the sum of their z — what the
    render's colour by depth is made of. Kept beside the canvas and changed with it (drawn, taken back,
    rebuilt), so the live view colours by depth without going over every localization."""

    def __init__(self, shape: tuple[int, int], pixel_nm: float) -> None:
        self.pixel_nm = float(pixel_nm)
        self.count = np.zeros(shape, np.float64)
        self.z_sum = np.zeros(shape, np.float64)

    def add(self, locs: np.ndarray, weight: float = 1.0, *, x_column: str = "x", y_column: str = "y") -> None:
        h, w = self.count.shape
        col = np.floor(np.asarray(locs[x_column], np.float64) / self.pixel_nm).astype(np.int64)
        row = np.floor(np.asarray(locs[y_column], np.float64) / self.pixel_nm).astype(np.int64)
        z = np.asarray(locs["z"], np.float64)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & np.isfinite(z)
        flat = row[inside] * w + col[inside]
        np.add.at(self.count.reshape(-1), flat, weight)
        np.add.at(self.z_sum.reshape(-1), flat, weight * z[inside])


def colour_by_depth(value: np.ndarray, count: np.ndarray, z_sum: np.ndarray, z_range_nm: tuple[float, float],
                    colormap: str = "turbo", spread_px: float = 1.0) -> np.ndarray:
    """RGB (uint8): the hue of each pixel is its localizations' mean z (``colormap`` over ``z_range_nm``),
    its brightness ``value`` (0–1). ``count``/``z_sum`` are spread by ``spread_px`` first (a localization's
    depth colours the pixels its blob covers, as the render draws it)."""
    import matplotlib
    from scipy.ndimage import gaussian_filter

    if spread_px > 0:
        count, z_sum = gaussian_filter(count, spread_px), gaussian_filter(z_sum, spread_px)
    z_mean = np.divide(z_sum, count, out=np.zeros_like(z_sum, dtype=np.float64), where=count > 1e-9)
    lo, hi = z_range_nm
    hue = matplotlib.colormaps[colormap](np.clip((z_mean - lo) / max(hi - lo, 1e-9), 0.0, 1.0))[..., :3]
    return (255 * hue * np.clip(value, 0.0, 1.0)[..., None]).astype(np.uint8)


def z_colour_image(intensity: np.ndarray, locs: np.ndarray, pixel_nm: float, z_range_nm: tuple[float, float], *,
                   white_percentile: float = 99.5, colormap: str = "turbo", x_column: str = "x",
                   y_column: str = "y") -> np.ndarray:
    """RGB (uint8) image of a 3D run: the hue of each SR pixel is its localizations' mean z (``colormap``
    over ``z_range_nm``), its brightness the render's intensity (``intensity``, one value per SR pixel)."""
    depth = DepthMaps(intensity.shape, pixel_nm)
    depth.add(locs, x_column=x_column, y_column=y_column)
    _, white = percentile_levels(intensity, 0.0, white_percentile, nonzero=True)
    return colour_by_depth(intensity / white, depth.count, depth.z_sum, z_range_nm, colormap)


def depth_range_nm(count: np.ndarray, z_sum: np.ndarray) -> tuple[float, float]:
    """A symmetric z range covering the 1st–99th percentile of the pixels' mean z (rounded up to 50 nm)."""
    filled = count > 0.5
    if not filled.any():
        return (-500.0, 500.0)
    z_mean = z_sum[filled] / count[filled]
    half = float(np.max(np.abs(np.percentile(z_mean, [1, 99]))))
    half = max(50.0, 50.0 * np.ceil(half / 50.0))
    return (-half, half)


def write_z_png(path: Any, rgb: np.ndarray, z_range_nm: tuple[float, float], pixel_nm: float,
                colormap: str = "turbo") -> None:
    """The depth-coloured render with a colour bar in nm (a matplotlib figure, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = rgb.shape[:2]
    scale = min(1.0, 2000.0 / max(h, w))
    fig = plt.figure(figsize=(max(3.0, w * scale / 100 + 1.2), max(2.5, h * scale / 100)), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 0.82, 0.94))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    cax = fig.add_axes((0.86, 0.1, 0.03, 0.8))
    norm = matplotlib.colors.Normalize(*z_range_nm)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=colormap), cax=cax, label="z (nm)")
    ax.set_title(f"{pixel_nm:g} nm pixels", fontsize=8)
    fig.savefig(path)
    plt.close(fig)
