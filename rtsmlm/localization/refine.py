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
"""

from __future__ import annotations

import math

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


class MLERefiner:
    """Refines localization tables of one run: the PSF (its width, or focus curves in 3D) and the camera are
    the run's. ``z_range_nm`` (3D): the depths the model covers; fitted depths are kept 1.5× inside it."""

    def __init__(self, psf: GaussianPSF | AstigmaticPSF, camera: CameraModel, frame_shape: tuple[int, int],
                 device: str | torch.device = "cpu", iterations: int = ITERATIONS, mode: str = "mle",
                 z_range_nm: float = 600.0) -> None:
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

    def __call__(self, locs: np.ndarray, photons: torch.Tensor, frame_indices: list[int]) -> np.ndarray:
        """``locs`` (LOC_DTYPE, nm) of the frames ``frame_indices`` whose photon images are ``photons``
        ``(B, H, W)`` (row b = frame_indices[b]); returns a refined copy."""
        if len(locs) == 0:
            return locs
        px, half = self.pixel_size_nm, self.half
        h, w = self.frame_shape
        dev = self.device
        row_of = {int(f): b for b, f in enumerate(frame_indices)}
        batch_row = torch.as_tensor([row_of[int(f)] for f in locs["frame"]], device=dev)
        x0 = torch.as_tensor(locs["x"] / px, dtype=torch.float32, device=dev)
        y0 = torch.as_tensor(locs["y"] / px, dtype=torch.float32, device=dev)
        z0 = torch.as_tensor(np.nan_to_num(locs["z"]) if self.has_z else np.zeros(len(locs)),
                             dtype=torch.float32, device=dev).clamp(-self.z_limit_nm, self.z_limit_nm)
        n0 = torch.as_tensor(locs["photons"], dtype=torch.float32, device=dev).clamp_min(1.0)
        b0 = torch.as_tensor(locs["bg"], dtype=torch.float32, device=dev).clamp_min(0.0)
        offs = torch.arange(-half, half + 1, device=dev)
        ci = torch.floor(y0).long().clamp(0, h - 1)
        cj = torch.floor(x0).long().clamp(0, w - 1)
        rows = ci[:, None] + offs  # (n, P) pixel rows of each patch
        cols = cj[:, None] + offs
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rr, cc = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        data = photons[batch_row[:, None, None], rr[:, :, None], cc[:, None, :]].float()
        read = self._read_var[rr[:, :, None], cc[:, None, :]]
        data = data.clamp_min(0.0) / self.excess + read
        pairs, isolated = self._neighbours(locs, z0)
        # Neighbours' light at the network's values (refitting them jointly was measured: no gain).
        others = self._others(pairs, x0, y0, z0, n0, rows.float(), cols.float())
        x, y, z, n, b = x0.clone(), y0.clone(), z0.clone(), n0.clone(), b0.clone()
        weight = valid.float()
        k = 5 if self.has_z else 4
        info = None
        for _ in range(self.iterations):
            psf, dpx, dpy, dpz = self._psf(cols.float(), rows.float(), x, y, z)
            model = (n[:, None, None] * psf + b[:, None, None] + others) / self.excess + read
            model = model.clamp_min(1e-6)
            derivs = [n[:, None, None] * dpx, n[:, None, None] * dpy]
            if self.has_z:
                derivs.append(n[:, None, None] * dpz * Z_UNIT_NM)
            jac = torch.stack(derivs + [psf, torch.ones_like(psf)], dim=-1) / self.excess  # (n, P, P, k)
            resid = (data / model - 1.0) * weight
            grad = (resid[..., None] * jac).sum(dim=(1, 2))
            info = ((weight / model)[..., None, None] * jac[..., :, None] * jac[..., None, :]).sum(dim=(1, 2))
            info = info + 1e-6 * torch.eye(k, device=dev)
            step = torch.nan_to_num(torch.linalg.solve(info, grad.unsqueeze(-1)).squeeze(-1))
            x = x + step[:, 0].clamp(-MAX_STEP_PX, MAX_STEP_PX)
            y = y + step[:, 1].clamp(-MAX_STEP_PX, MAX_STEP_PX)
            if self.has_z:
                z = (z + (step[:, 2] * Z_UNIT_NM).clamp(-MAX_STEP_Z_NM, MAX_STEP_Z_NM)).clamp(
                    -self.z_limit_nm, self.z_limit_nm)
            n = (n + step[:, k - 2]).clamp_min(1.0)
            b = (b + step[:, k - 1]).clamp_min(0.0)
        assert info is not None
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

    def _neighbours(self, locs: np.ndarray, z: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Pairs (i, j) of localizations of one frame whose light reaches each other's patch, and whether
        each has no other within ``ISOLATION_SIGMAS`` σ (in 3D the mean of the two spots' larger widths at
        their depths)."""
        count = len(locs)
        isolated = np.ones(count, bool)
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
            isolated[group[i[crowded]]] = False
        pairs = (torch.as_tensor(np.concatenate(pairs_i), device=self.device),
                 torch.as_tensor(np.concatenate(pairs_j), device=self.device))
        return pairs, torch.as_tensor(isolated, device=self.device)

    def _others(self, pairs: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                z: torch.Tensor, n: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(n, P, P) light of the other localizations of each one's frame inside its patch."""
        ii, jj = pairs
        others = torch.zeros(len(x), rows.shape[1], cols.shape[1], device=self.device)
        if len(ii):
            psf, _, _, _ = self._psf(cols[ii], rows[ii], x[jj], y[jj], z[jj])
            others.index_add_(0, ii, n[jj, None, None] * psf)
        return others
