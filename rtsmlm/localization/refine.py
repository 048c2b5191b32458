"""Maximum-likelihood refinement of the network's localizations with the known PSF (``model.refine``).

The network places an isolated emitter from one frame less precisely than the Cramér–Rao bound allows
(its sub-pixel read-out is learned, and a small network has little capacity for it across many PSF widths
and backgrounds). A classical fit starting from the network's answer recovers that: for every localization,
the pixel-integrated Gaussian of the run's PSF σ (``psf.sigma_nm``) is fitted to a (2R+1)² patch of the
frame in photons by Fisher scoring of the Poisson likelihood — x, y, photons and a flat background free,
σ fixed — with the other localizations of the frame inside the patch added to the model at their
network positions and brightness (so a close pair is fitted as a pair, not pulled together). For a 3D
model with an astigmatic PSF the depth is fitted too: the elliptical Gaussian's widths σx(z), σy(z) follow
the model's focus curves (:meth:`rtsmlm.sim.psf.AstigmaticPSF.width_curves`), z is a fifth parameter.

Noise: data and model are divided by the excess-noise factor F (2 for an EMCCD with EM gain, 1 otherwise,
over the quantum efficiency: photons are photo-electrons / QE) and the read-noise variance is added to both (Huang et al., Nat. Methods 2013, per pixel for an sCMOS with
maps), which makes the counts close to Poisson. The reported ``sigma_x``/``sigma_y``/``sigma_photons``
(and ``sigma_z``) of a refined localization are the square roots of the fit's Cramér–Rao bound.

Two modes. ``mle``: the fit's position replaces the network's — best for emitters seen in one frame only
(measured: per-axis RMSE 1.2–1.6 → 0.95–1.13 × √CRLB), but it throws away what the network saw in the
neighbouring frames of an emitter that stays on (its RMSE there rises, 5.1 → 7.2 nm for the default model).
``fuse``: the inverse-variance mean of the network's position (its own predicted σ, which is small when
neighbouring frames helped) and the fit's (its CRLB) — keeps the temporal gain, recovers part of the
single-frame one; its σ is the smaller of the two (both saw the same frame). Only localizations with no other
within ``ISOLATION_SIGMAS`` σ are refined; a fit that fails (not finite) or moves more than ``MAX_SHIFT_PX``
from the network's position (a missed neighbour pulling it) keeps the network's values. All arithmetic is
batched torch on the frames' device; only the localization table crosses to the host.

The split check (2D, ``model.merge_splits``, before the refinement): the network now and then reads one
emitter as two localizations 1–2 px apart (the second a false positive; neither is isolated, so neither is
refined, and the kept one sits half the split away). Two localizations of a frame closer than
``SPLIT_MAX_PX``, with no third near either and neither repeated in the frame before or after (a molecule that
stays on is the network's to judge: it saw those frames), are fitted as one emitter and as two; when two do
not explain the frame better (twice the log-likelihood ratio below ``SPLIT_MAX_2DLL``) they become one at the
one-emitter fit. Measured on the benchmarks' single-frame sCMOS movie (README, "The split check"): per-axis
RMSE / √CRLB of 500–1000-photon emitters 1.11 → 1.08, Jaccard +0.002; one partner of 1011 at 1–2 px lost on the
close-pair movie, density unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from rtsmlm.core.camera import CameraModel
from rtsmlm.sim.psf import AstigmaticPSF, GaussianPSF

ITERATIONS = 8
MAX_SHIFT_PX = 0.7
"""A refined position further than this from the network's is a fit gone astray: the network's is kept."""
MODES = ("mle", "fuse")
"""``mle``: the fit's position replaces the network's; ``fuse``: the inverse-variance mean of the two."""
ISOLATION_SIGMAS = 4.0
"""Only localizations with no other within this many PSF σ are refined: in a dense field the network's
learned answer beats a fit that depends on neighbours' positions and on neighbours the network missed."""
MAX_STEP_PX = 0.3
"""Largest position update of one Fisher-scoring iteration (keeps the first steps from overshooting)."""
MAX_STEP_Z_NM = 60.0
"""Largest depth update of one iteration."""
MAX_SHIFT_Z_NM = 300.0
"""A refined depth further than this from the network's is a fit gone astray (3D)."""
Z_UNIT_NM = 100.0
"""The fit's depth unit: keeps the Fisher matrix of (px, px, 100 nm, photons, photons) well conditioned."""
SPLIT_MAX_PX = 2.0
"""Two localizations of a frame closer than this (pixels) may be one emitter read as two (the split check)."""
SPLIT_MAX_2DLL = 20.0
"""The split check merges a pair whose two-emitter fit beats the one-emitter fit by less than this (twice the
log-likelihood ratio; two emitters have three more parameters, so one emitter's noise alone gives ~3). The
splits the network makes are selected noise (median 9 on the benchmarks' sparse movies); true pairs that pass
the check's other conditions were rare there (1 of 1011 partners at 1–2 px on the close-pair movie)."""


def checks_splits(refine: str, merge_splits: bool, psf_model: str) -> bool:
    """Whether a run's refiner runs the split check (and so reads the adjacent frames' localizations):
    refinement on, ``model.merge_splits``, a model of a Gaussian (2D) PSF."""
    return refine != "off" and bool(merge_splits) and psf_model == "gaussian"


@dataclass(frozen=True)
class _Fit:
    """What :meth:`MLERefiner._fit` returns: per patch the K emitters' ``x``, ``y`` (pixels), ``z`` (nm), ``n``
    (photons) ``(m, K)``, the background ``b`` ``(m,)``, the Fisher information at the last step ``(m, k, k)``
    and the Poisson log-likelihood of the final values (without the data's constant term) ``(m,)``."""

    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    n: torch.Tensor
    b: torch.Tensor
    info: torch.Tensor
    loglik: torch.Tensor


class MLERefiner:
    """Refines localization tables of one run: the PSF (its width, or focus curves in 3D) and the camera are
    the run's. ``z_range_nm`` (3D): the depths the model covers; fitted depths are kept 1.5× inside it."""

    def __init__(self, psf: GaussianPSF | AstigmaticPSF, camera: CameraModel, frame_shape: tuple[int, int],
                 device: str | torch.device = "cpu", iterations: int = ITERATIONS, mode: str = "mle",
                 z_range_nm: float = 600.0, merge_splits: bool = True) -> None:
        from rtsmlm.localization.conditioning import read_noise_photons

        if mode not in MODES:
            raise ValueError(f"refinement mode {mode!r}; allowed: {', '.join(MODES)}")
        if not isinstance(psf, (GaussianPSF, AstigmaticPSF)):
            raise ValueError(f"MLE refinement fits a Gaussian or astigmatic PSF, not {type(psf).__name__}")
        if not psf.sigma_px > 0:
            raise ValueError(f"MLE refinement needs a positive PSF sigma, got {psf.sigma_px!r} px")
        self.mode = mode
        self.psf = psf
        self.has_z = isinstance(psf, AstigmaticPSF)
        self.z_limit_nm = 1.5 * float(z_range_nm) if self.has_z else 0.0
        # The widest spot of the depth range (3D) sets the patch.
        widest = float(np.max(np.concatenate(psf.width_curves(np.array([-1.0, 1.0]) * float(z_range_nm))[:2])))
        self.half = max(3, int(math.ceil(3.0 * min(widest, 4.0 * psf.sigma_px))))
        # Depth steps are capped at MAX_STEP_Z_NM: a 250 nm start error needs a few more iterations.
        self.iterations = int(iterations) + (4 if self.has_z else 0)
        self.pixel_size_nm = camera.pixel_size_nm
        # Photons are photo-electrons / QE: their variance is F / QE times their mean.
        self.excess = camera.excess_noise / max(camera.qe, 1e-3)
        read_var = np.asarray(read_noise_photons(camera), np.float64) ** 2 / self.excess**2
        if read_var.ndim and read_var.shape != tuple(frame_shape):
            raise ValueError(f"the camera's read-noise map is {read_var.shape} but the frames are {tuple(frame_shape)}")
        self.device = torch.device(device)
        self._read_var = torch.as_tensor(np.broadcast_to(read_var, frame_shape).copy(), dtype=torch.float32,
                                         device=self.device)
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.refined = 0  # localizations refined so far (the others kept the network's values)
        self.merge_splits = bool(merge_splits) and not self.has_z
        self.merged = 0  # localizations dropped by the split check (each the second of one emitter read as two)

    # -- pixel-integrated Gaussian ------------------------------------------------------------------

    @staticmethod
    def _axis(edges: torch.Tensor, centre: torch.Tensor, sigma: torch.Tensor):
        """Fraction of a 1D Gaussian in each pixel [k, k+1) and its derivatives by the centre and by σ.
        ``edges`` (n, P) are the pixels' left edges, ``centre`` and ``sigma`` (n,)."""
        s2 = math.sqrt(2.0) * sigma[:, None]
        a = (edges - centre[:, None]) / s2
        b = a + 1.0 / s2
        frac = 0.5 * (torch.erf(b) - torch.erf(a))
        ea, eb = torch.exp(-a * a), torch.exp(-b * b)
        d_centre = (ea - eb) / (math.sqrt(2.0 * math.pi) * sigma[:, None])
        d_sigma = (a * ea - b * eb) / (math.sqrt(math.pi) * sigma[:, None])
        return frac, d_centre, d_sigma

    def _psf(self, cols: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor):
        """(n, P, P) PSF patches and their derivatives by x, y and z (per nm; zero in 2D)."""
        sx, sy, dsx, dsy = self.psf.width_curves(z)
        ex, dex, sex = self._axis(cols, x, sx)
        ey, dey, sey = self._axis(rows, y, sy)
        psf = ey[:, :, None] * ex[:, None, :]
        d_z = (dsy[:, None, None] * sey[:, :, None] * ex[:, None, :]
               + dsx[:, None, None] * ey[:, :, None] * sex[:, None, :])
        return psf, ey[:, :, None] * dex[:, None, :], dey[:, :, None] * ex[:, None, :], d_z

    # -- refinement ---------------------------------------------------------------------------------

    def __call__(self, locs: np.ndarray, photons: torch.Tensor, frame_indices: list[int],
                 neighbours: np.ndarray | None = None) -> np.ndarray:
        """``locs`` (LOC_DTYPE, nm) of the frames ``frame_indices`` whose photon images are ``photons``
        ``(B, H, W)`` (row b = frame_indices[b]); returns a refined copy. ``neighbours``: localizations of the
        frames before and after them (any rows; those of ``frame_indices`` may be in it too), for the split
        check (:meth:`_merge_splits`); None: no split is merged."""
        if len(locs) == 0:
            return locs
        dev = self.device
        row_of = {int(f): b for b, f in enumerate(frame_indices)}
        if self.merge_splits and neighbours is not None:
            locs = self._merge_splits(locs, photons, row_of, neighbours)
        px = self.pixel_size_nm
        batch_row = torch.as_tensor([row_of[int(f)] for f in locs["frame"]], device=dev)
        x0 = torch.as_tensor(locs["x"] / px, dtype=torch.float32, device=dev)
        y0 = torch.as_tensor(locs["y"] / px, dtype=torch.float32, device=dev)
        z0 = torch.as_tensor(np.nan_to_num(locs["z"]) if self.has_z else np.zeros(len(locs)),
                             dtype=torch.float32, device=dev).clamp(-self.z_limit_nm, self.z_limit_nm)
        n0 = torch.as_tensor(locs["photons"], dtype=torch.float32, device=dev).clamp_min(1.0)
        b0 = torch.as_tensor(locs["bg"], dtype=torch.float32, device=dev).clamp_min(0.0)
        rows, cols, weight, data, read = self._patches(photons, batch_row, x0, y0)
        pairs, crowding = self._neighbours(locs, z0)
        isolated = crowding == 0
        # Neighbours' light at the network's values (refitting them jointly was measured: no gain).
        others = self._others(pairs, x0, y0, z0, n0, rows, cols)
        fit = self._fit(data, read, weight, rows, cols, x0[:, None], y0[:, None], z0[:, None], n0[:, None], b0,
                        others)
        x, y, z, n, b = fit.x[:, 0], fit.y[:, 0], fit.z[:, 0], fit.n[:, 0], fit.b
        k = 5 if self.has_z else 4
        info = fit.info
        crlb = torch.sqrt(torch.linalg.inv(info).diagonal(dim1=-2, dim2=-1).clamp_min(0.0))
        shift = torch.hypot(x - x0, y - y0)
        ok = torch.isfinite(x) & torch.isfinite(y) & torch.isfinite(n) & (shift <= MAX_SHIFT_PX) \
            & torch.isfinite(crlb).all(dim=1) & isolated
        if self.has_z:
            ok &= torch.isfinite(z) & ((z - z0).abs() <= MAX_SHIFT_Z_NM)
        fitted = {"x": (x * px, crlb[:, 0] * px), "y": (y * px, crlb[:, 1] * px)}
        if self.has_z:
            fitted["z"] = (z, crlb[:, 2] * Z_UNIT_NM)
        good = ok.cpu().numpy()
        out = locs.copy()
        for axis, (value, sd) in fitted.items():
            fit, fit_var = value.double().cpu().numpy(), sd.double().cpu().numpy() ** 2
            if self.mode == "fuse":
                # The network's estimate carries what the fit cannot see (the neighbouring frames of an
                # emitter that stays on): the inverse-variance mean of the two, each by its own σ. Its σ is
                # not the independent estimates' 1/√(1/σn² + 1/σf²): the fit's photons are the network's too,
                # so their errors are correlated and the mean is no better than the better of the two
                # (reported that way, single-frame emitters' errors were 1.5× their σ).
                net_var = np.asarray(locs["sigma_" + axis], np.float64) ** 2
                wt = net_var / (net_var + fit_var)
                fit = (1.0 - wt) * locs[axis] + wt * fit
                fit_var = np.minimum(net_var, fit_var)
            out[axis][good] = fit[good]
            out["sigma_" + axis][good] = np.sqrt(fit_var[good])
        out["photons"][good] = n.cpu().numpy()[good]
        out["bg"][good] = b.cpu().numpy()[good]
        out["sigma_photons"][good] = crlb[:, k - 2].cpu().numpy()[good]
        self.refined += int(good.sum())
        return out

    def _patches(self, photons: torch.Tensor, batch_row: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """The (2·half+1)² patch around each position (pixels): its pixel rows and columns ``(n, P)`` (float),
        which pixels lie inside the frame (weight 1, else 0), the counts and the read-noise variance, both on
        the Poisson-like scale of the fit (photons / excess + read variance)."""
        h, w = self.frame_shape
        offs = torch.arange(-self.half, self.half + 1, device=self.device)
        rows = torch.floor(y).long().clamp(0, h - 1)[:, None] + offs  # (n, P) pixel rows of each patch
        cols = torch.floor(x).long().clamp(0, w - 1)[:, None] + offs
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rr, cc = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        data = photons[batch_row[:, None, None], rr[:, :, None], cc[:, None, :]].float()
        read = self._read_var[rr[:, :, None], cc[:, None, :]]
        return rows.float(), cols.float(), valid.float(), data.clamp_min(0.0) / self.excess + read, read

    def _fit(self, data: torch.Tensor, read: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor,
             cols: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, n: torch.Tensor,
             b: torch.Tensor, others: torch.Tensor | float = 0.0) -> "_Fit":
        """Fisher scoring of the Poisson likelihood of K emitters and a flat background on each patch:
        ``x``, ``y`` (pixels), ``z`` (nm; ignored in 2D), ``n`` (photons) ``(m, K)`` start values, ``b``
        ``(m,)``; ``others`` is light held fixed (photons). Parameters per emitter (x, y[, z], n), then b."""
        m, emitters = x.shape
        per = 4 if self.has_z else 3
        x, y, z, n, b = x.clone(), y.clone(), z.clone(), n.clone(), b.clone()
        size = per * emitters + 1
        ridge = 1e-6 * torch.eye(size, device=self.device)
        info = ridge.expand(m, size, size)
        rows_k, cols_k = (t.repeat_interleave(emitters, dim=0) for t in (rows, cols))  # one patch per emitter
        for iteration in range(self.iterations + 1):
            psf, dpx, dpy, dpz = (t.reshape(m, emitters, *t.shape[1:]) for t in self._psf(
                cols_k, rows_k, x.reshape(-1), y.reshape(-1), z.reshape(-1)))
            light = (n[:, :, None, None] * psf).sum(dim=1)
            model = ((light + b[:, None, None] + others) / self.excess + read).clamp_min(1e-6)
            if iteration == self.iterations:  # the last pass only scores the final values
                break
            columns = []
            for e in range(emitters):
                columns += [n[:, e, None, None] * dpx[:, e], n[:, e, None, None] * dpy[:, e]]
                if self.has_z:
                    columns.append(n[:, e, None, None] * dpz[:, e] * Z_UNIT_NM)
                columns.append(psf[:, e])
            jac = torch.stack(columns + [torch.ones_like(model)], dim=-1) / self.excess  # (m, P, P, size)
            resid = (data / model - 1.0) * weight
            grad = (resid[..., None] * jac).sum(dim=(1, 2))
            info = ((weight / model)[..., None, None] * jac[..., :, None] * jac[..., None, :]).sum(dim=(1, 2)) + ridge
            step = torch.nan_to_num(torch.linalg.solve(info, grad.unsqueeze(-1)).squeeze(-1))
            each = step[:, :-1].reshape(m, emitters, per)  # (x, y[, z], n) of every emitter
            x = x + each[..., 0].clamp(-MAX_STEP_PX, MAX_STEP_PX)
            y = y + each[..., 1].clamp(-MAX_STEP_PX, MAX_STEP_PX)
            if self.has_z:
                z = (z + (each[..., 2] * Z_UNIT_NM).clamp(-MAX_STEP_Z_NM, MAX_STEP_Z_NM)).clamp(
                    -self.z_limit_nm, self.z_limit_nm)
            n = (n + each[..., per - 1]).clamp_min(1.0)
            b = (b + step[:, -1]).clamp_min(0.0)
        loglik = (weight * (data * torch.log(model) - model)).sum(dim=(1, 2))
        return _Fit(x, y, z, n, b, info, loglik)

    def _merge_splits(self, locs: np.ndarray, photons: torch.Tensor, row_of: dict[int, int],
                      neighbours: np.ndarray) -> np.ndarray:
        """One emitter the network read as two: two localizations of a frame closer than ``SPLIT_MAX_PX``, with
        no third within ``ISOLATION_SIGMAS`` σ of either, neither repeated (within ``CONFIRM_RADIUS_PX``) in
        the frame before or after (``neighbours``), whose light one emitter explains as well as two (twice the
        log-likelihood ratio of the fits below ``SPLIT_MAX_2DLL``), become one: the surer row (higher p), at
        the one-emitter fit. A true close pair that stays on for more than a frame is repeated next door and is
        not tested (on the benchmarks' close-pair movie the check merged 1 of 1011 partners at 1–2 px)."""
        from rtsmlm.localization.brightness_floor import CONFIRM_RADIUS_PX, repeated_next_door

        px = self.pixel_size_nm
        i, j = self._split_candidates(locs)
        if not len(i):
            return locs
        alone = ~repeated_next_door(locs, neighbours, CONFIRM_RADIUS_PX * px)
        keep_pair = alone[i] & alone[j]
        i, j = i[keep_pair], j[keep_pair]
        if not len(i):
            return locs
        dev = self.device

        def both(column: str) -> torch.Tensor:  # (m, 2): the pair's two values of a column
            return torch.as_tensor(np.stack([locs[column][i], locs[column][j]], 1), dtype=torch.float32, device=dev)

        xs, ys = both("x") / px, both("y") / px
        ns = both("photons").clamp_min(1.0)
        bg = both("bg").mean(dim=1).clamp_min(0.0)
        share = ns / ns.sum(dim=1, keepdim=True)
        mid_x, mid_y = (share * xs).sum(dim=1), (share * ys).sum(dim=1)
        batch_row = torch.as_tensor([row_of[int(f)] for f in locs["frame"][i]], device=dev)
        rows, cols, weight, data, read = self._patches(photons, batch_row, mid_x, mid_y)
        zeros = torch.zeros_like(xs)
        two = self._fit(data, read, weight, rows, cols, xs, ys, zeros, ns, bg)
        one = self._fit(data, read, weight, rows, cols, mid_x[:, None], mid_y[:, None], zeros[:, :1],
                        ns.sum(dim=1, keepdim=True), bg)
        ratio = (2.0 * (two.loglik - one.loglik)).cpu().numpy()
        inside = torch.hypot(one.x[:, 0] - mid_x, one.y[:, 0] - mid_y).cpu().numpy() <= MAX_SHIFT_PX
        merge = (ratio < SPLIT_MAX_2DLL) & inside & np.isfinite(ratio)
        if not merge.any():
            return locs
        i, j = i[merge], j[merge]
        kept = np.where(locs["p"][i] >= locs["p"][j], i, j)
        out = locs.copy()
        out["x"][kept] = one.x[merge, 0].cpu().numpy() * px
        out["y"][kept] = one.y[merge, 0].cpu().numpy() * px
        out["photons"][kept] = one.n[merge, 0].cpu().numpy()
        out["bg"][kept] = one.b[merge].cpu().numpy()
        dropped = np.where(kept == i, j, i)
        self.merged += len(dropped)
        return np.delete(out, dropped)

    def _split_candidates(self, locs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows (i, j), i < j, of one frame closer than ``SPLIT_MAX_PX`` with no third localization within
        ``ISOLATION_SIGMAS`` σ of either (2D only)."""
        if self.has_z or len(locs) < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        (i, j), crowding = self._neighbours(locs, torch.zeros(len(locs), device=self.device))
        i, j, crowding = i.cpu().numpy(), j.cpu().numpy(), crowding.cpu().numpy()
        close = np.hypot(locs["x"][i] - locs["x"][j], locs["y"][i] - locs["y"][j]) < SPLIT_MAX_PX * self.pixel_size_nm
        only_each_other = (i < j) & close & (crowding[i] == 1) & (crowding[j] == 1)
        return i[only_each_other], j[only_each_other]

    def _neighbours(self, locs: np.ndarray, z: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Pairs (i, j) of localizations of one frame whose light reaches each other's patch (both orders), and
        how many others each has within ``ISOLATION_SIGMAS`` σ (in 3D the mean of the two spots' larger widths
        at their depths; 0 = isolated)."""
        count = len(locs)
        crowding = np.zeros(count, np.int64)
        sx, sy, _, _ = self.psf.width_curves(z)
        spot = torch.maximum(sx, sy).cpu().numpy().astype(np.float64)
        reach = self.half + 3.0 * float(spot.max()) + 1.0
        frames = np.asarray(locs["frame"])
        order = np.argsort(frames, kind="stable")
        bounds = np.flatnonzero(np.diff(frames[order])) + 1
        pairs_i, pairs_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        xs, ys = (locs["x"] / self.pixel_size_nm), (locs["y"] / self.pixel_size_nm)
        for group in np.split(order, bounds):
            if len(group) < 2:
                continue
            dx = np.abs(xs[group][:, None] - xs[group][None, :])
            dy = np.abs(ys[group][:, None] - ys[group][None, :])
            i, j = np.nonzero((dx < reach) & (dy < reach) & ~np.eye(len(group), dtype=bool))
            pairs_i.append(group[i])
            pairs_j.append(group[j])
            width = 0.5 * (spot[group[i]] + spot[group[j]])
            crowded = np.hypot(dx[i, j], dy[i, j]) < ISOLATION_SIGMAS * width
            np.add.at(crowding, group[i[crowded]], 1)
        pairs = (torch.as_tensor(np.concatenate(pairs_i), device=self.device),
                 torch.as_tensor(np.concatenate(pairs_j), device=self.device))
        return pairs, torch.as_tensor(crowding, device=self.device)

    def _others(self, pairs: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                z: torch.Tensor, n: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(n, P, P) light of the other localizations of each one's frame inside its patch."""
        ii, jj = pairs
        others = torch.zeros(len(x), rows.shape[1], cols.shape[1], device=self.device)
        if len(ii):
            psf, _, _, _ = self._psf(cols[ii], rows[ii], x[jj], y[jj], z[jj])
            others.index_add_(0, ii, n[jj, None, None] * psf)
        return others
