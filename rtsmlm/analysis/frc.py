"""Fourier ring correlation (FRC) resolution of two independent half images.

The halves are images of the same sample from disjoint sets of localizations (the renderer's even and
odd time blocks). Their correlation in rings of spatial frequency falls from 1 (structure both see) to
0 (independent noise); the resolution is the inverse of the frequency where the correlation first drops
below the threshold, 1/7 by convention (Nieuwenhuizen et al., Nature Methods 2013; Banterle et al.,
J. Struct. Biol. 2013).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = ["FrcResult", "FRC_THRESHOLD", "frc"]

FRC_THRESHOLD = 1.0 / 7.0


@dataclass(frozen=True)
class FrcResult:
    """The outcome of :func:`frc`; unpacks as ``resolution_nm, freqs, curve``.

    ``resolution_nm`` is NaN when it cannot be read off the curve: ``reason`` then says why
    (``"no correlation"``: the curve starts below the threshold; ``"finer than 2 pixels"``: it never
    drops below it up to the Nyquist frequency). ``freqs`` are ring frequencies in 1/nm; ``curve`` is the
    correlation per ring, ``curve_smooth`` the running mean the crossing was read from.
    """

    resolution_nm: float
    freqs: np.ndarray
    curve: np.ndarray
    curve_smooth: np.ndarray
    threshold: float = FRC_THRESHOLD
    reason: str = ""

    def __iter__(self) -> Iterator:
        return iter((self.resolution_nm, self.freqs, self.curve))

    def describe(self) -> dict:
        """JSON-friendly summary for the run summary."""
        r = self.resolution_nm
        return {"resolution_nm": None if not math.isfinite(r) else round(r, 2), "threshold": self.threshold,
                "reason": self.reason or None}


def frc(img_a: np.ndarray, img_b: np.ndarray, pixel_nm: float, threshold: float = FRC_THRESHOLD,
        taper: float = 0.1, smooth_rings: int | None = None) -> FrcResult:
    """FRC of two half images with pixel size ``pixel_nm`` and the resolution at ``threshold``.

    ``taper`` is the fraction of each border smoothly faded out (a Tukey window), so the jump between
    opposite edges of the periodic Fourier transform does not add correlation at all frequencies.
    ``smooth_rings`` is the running-mean width used to find the crossing (default: about 1/200 of the rings,
    at least 3).
    """
    import scipy.fft

    a = np.asarray(img_a)
    b = np.asarray(img_b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"FRC needs two 2-D images of the same shape, got {a.shape} and {b.shape}")
    if not pixel_nm > 0:
        raise ValueError(f"FRC pixel_nm must be positive, got {pixel_nm!r}")
    h, w = a.shape
    n = max(h, w)
    if taper > 0:
        win = np.outer(_tukey(h, taper), _tukey(w, taper)).astype(np.float32)
        a = a * win
        b = b * win
    fa = scipy.fft.rfft2(a.astype(np.float32, copy=False), workers=-1)
    fb = scipy.fft.rfft2(b.astype(np.float32, copy=False), workers=-1)
    fy = scipy.fft.fftfreq(h)[:, None]
    fx = scipy.fft.rfftfreq(w)[None, :]
    ring = np.rint(np.sqrt(fy * fy + fx * fx) * n).astype(np.int64)
    # the half-plane transform holds each conjugate pair once, except the first (and Nyquist) column
    weight = np.full(fx.shape, 2.0)
    weight[0, 0] = 1.0
    if w % 2 == 0:
        weight[0, -1] = 1.0
    n_rings = n // 2 + 1
    keep = ring < n_rings
    ring_k = ring[keep]
    wk = np.broadcast_to(weight, ring.shape)[keep]
    num = np.bincount(ring_k, wk * (fa.real * fb.real + fa.imag * fb.imag)[keep], n_rings)
    pa = np.bincount(ring_k, wk * (fa.real ** 2 + fa.imag ** 2)[keep], n_rings)
    pb = np.bincount(ring_k, wk * (fb.real ** 2 + fb.imag ** 2)[keep], n_rings)
    den = np.sqrt(pa * pb)
    curve = np.divide(num, den, out=np.zeros(n_rings), where=den > 0)
    freqs = np.arange(n_rings) / (n * pixel_nm)
    width = smooth_rings or max(3, (n_rings // 200) | 1)
    smooth = _running_mean(curve, width)
    res, reason = _crossing(freqs, smooth, threshold)
    return FrcResult(res, freqs, curve, smooth, threshold, reason)


def _tukey(n: int, alpha: float) -> np.ndarray:
    """A Tukey (tapered cosine) window: flat in the middle, cosine tapers over ``alpha``/2 at each end."""
    if n < 3 or alpha <= 0:
        return np.ones(n)
    t = np.linspace(0.0, 1.0, n)
    edge = alpha / 2
    w = np.ones(n)
    lo = t < edge
    hi = t > 1 - edge
    w[lo] = 0.5 * (1 + np.cos(np.pi * (t[lo] / edge - 1)))
    w[hi] = 0.5 * (1 + np.cos(np.pi * ((t[hi] - 1) / edge + 1)))
    return w


def _running_mean(curve: np.ndarray, width: int) -> np.ndarray:
    """Running mean over ``width`` rings (shrinking at the ends); ring 0 (the mean) is left out."""
    out = curve.copy()
    if len(curve) < 3 or width < 2:
        return out
    body = curve[1:]
    half = width // 2
    c = np.concatenate([[0.0], np.cumsum(body)])
    idx = np.arange(len(body))
    lo = np.maximum(idx - half, 0)
    hi = np.minimum(idx + half + 1, len(body))
    out[1:] = (c[hi] - c[lo]) / (hi - lo)
    return out


def _crossing(freqs: np.ndarray, curve: np.ndarray, threshold: float) -> tuple[float, str]:
    """1 / (first frequency where ``curve`` falls below ``threshold``), interpolated between rings."""
    # the few lowest rings hold few Fourier samples (noise alone correlates them by ~1/sqrt(2 pi k)):
    # judge "any correlation at all" on their mean
    if len(curve) < 3 or curve[1:4].mean() < threshold:
        return float("nan"), "no correlation"
    below = np.flatnonzero(curve[1:] < threshold)
    if len(below) == 0:
        return float("nan"), "finer than 2 pixels"
    k = int(below[0]) + 1
    c0, c1 = curve[k - 1], curve[k]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    q = freqs[k - 1] + t * (freqs[k] - freqs[k - 1])
    return float(1.0 / q) if q > 0 else float("nan"), ""
