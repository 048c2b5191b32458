"""DECODE's training loss for the 10-channel output of ``DecodeNet``.

Per sample (one window, targets are the emitters of its central frame) the loss is

* **count**: the negative log-likelihood of the true number of emitters ``n`` under a Gaussian
  approximation of the Poisson-binomial distribution of the per-pixel detections, mean ``sum p``,
  variance ``sum p(1-p)`` (clamped from below). As in DECODE it is weighted by the number of emitters
  (here ``max(n, 1)``, so that empty frames still penalise false detections);
* **localization**: minus the sum over true emitters of their log-likelihood under a Gaussian mixture with
  one component per pixel: weight ``p_k / sum p``, mean (pixel centre + predicted offset, z, photons),
  diagonal std from the predicted sigmas. Evaluated with ``logsumexp`` for stability. In 2D mode
  (``use_z=False``) the z dimension is left out;
* **background**: squared error of the background map, summed over pixels (so a pixel's gradient does not
  depend on the image size), times ``bg_weight``.

The total is the mean of the per-sample sums over the batch. ``distillation_loss`` is the optional extra term of
a fine-tune with a teacher (``train.teacher``): agreement with a larger model's output maps. Units are the network's: positions in
pixels, z / z_scale, photons / photon_scale, background / bg_scale (see ``rtsmlm.localization.net``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rtsmlm.localization.net import (
    CH_BG,
    CH_P,
    CH_PHOT,
    CH_SIG_PHOT,
    CH_SIG_X,
    CH_SIG_Y,
    CH_SIG_Z,
    CH_X,
    CH_Y,
    CH_Z,
    N_OUT_CHANNELS,
)

_LOG_2PI = math.log(2.0 * math.pi)


def _check_shapes(out: torch.Tensor, em_xyzn: torch.Tensor, em_mask: torch.Tensor, bg_target: torch.Tensor) -> None:
    if out.ndim != 4 or out.shape[1] != N_OUT_CHANNELS:
        raise ValueError(f"decode_loss: out must have shape (B, {N_OUT_CHANNELS}, H, W), got {tuple(out.shape)}.")
    b, _, h, w = out.shape
    if em_xyzn.ndim != 3 or em_xyzn.shape[0] != b or em_xyzn.shape[2] != 4:
        raise ValueError(f"decode_loss: em_xyzn must have shape ({b}, M, 4), got {tuple(em_xyzn.shape)}.")
    if tuple(em_mask.shape) != tuple(em_xyzn.shape[:2]):
        raise ValueError(
            f"decode_loss: em_mask must have shape {tuple(em_xyzn.shape[:2])} (that of em_xyzn without the "
            f"last axis), got {tuple(em_mask.shape)}."
        )
    if tuple(bg_target.shape) != (b, h, w):
        raise ValueError(f"decode_loss: bg_target must have shape ({b}, {h}, {w}), got {tuple(bg_target.shape)}.")


def decode_loss(
    out: torch.Tensor,
    em_xyzn: torch.Tensor,
    em_mask: torch.Tensor,
    bg_target: torch.Tensor,
    *,
    use_z: bool = True,
    bg_weight: float = 1.0,
    count_weight: float = 1.0,
    count_var_min: float = 1e-2,
    sigma_min: float = 1e-3,
    p_min: float = 1e-12,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DECODE loss of a batch of network outputs.

    Args:
        out: ``(B, 10, H, W)`` network output (channel contract of ``rtsmlm.localization.net``).
        em_xyzn: ``(B, M, 4)`` true emitters of each window's central frame: x, y in pixels from the
            top-left image corner (x = column; pixel (i, j)'s centre is (j + 0.5, i + 0.5)), z / z_scale,
            photons / photon_scale. Rows where ``em_mask`` is False are padding and may hold anything.
        em_mask: ``(B, M)`` bool, True for real emitters.
        bg_target: ``(B, H, W)`` true background / bg_scale.
        use_z: False for 2D data: the z output and target are ignored.
        bg_weight, count_weight: weights of the background and count terms.
        count_var_min: lower clamp of the count variance ``sum p(1-p)``.
        sigma_min: lower clamp of the predicted sigmas (the net's own floor is 0.01).
        p_min: lower clamp of p inside the logarithm of the mixture weights.

    Returns:
        ``(total, parts)``: the scalar loss (mean over the batch) and a dict of detached batch means
        ``count``, ``loc``, ``bg`` and ``total``.
    """
    _check_shapes(out, em_xyzn, em_mask, bg_target)
    # The mixture log-likelihood needs float32 even when the forward pass ran under bf16 autocast.
    out = out.float()
    em_xyzn = em_xyzn.to(out.dtype)
    em_mask = em_mask.to(torch.bool)
    bg_target = bg_target.to(out.dtype)
    b, _, h, w = out.shape

    p = out[:, CH_P].reshape(b, h * w)
    n_true = em_mask.sum(dim=1).to(out.dtype)

    # (a) count: Gaussian approximation of the Poisson-binomial of the per-pixel Bernoulli detections.
    count_mean = p.sum(dim=1)
    count_var = (p - p * p).sum(dim=1).clamp_min(count_var_min)
    count_nll = 0.5 * (n_true - count_mean) ** 2 / count_var + 0.5 * (torch.log(count_var) + _LOG_2PI)
    count_term = count_nll * n_true.clamp_min(1.0)

    # (b) localization: one mixture component per pixel.
    log_weight = torch.log(p.clamp_min(p_min)) - torch.log(count_mean.clamp_min(p_min)).unsqueeze(1)  # (B, K)
    rows = torch.arange(h, device=out.device, dtype=out.dtype)
    cols = torch.arange(w, device=out.device, dtype=out.dtype)
    centre_y, centre_x = torch.meshgrid(rows + 0.5, cols + 0.5, indexing="ij")
    means = [
        (centre_x + out[:, CH_X]).reshape(b, h * w),
        (centre_y + out[:, CH_Y]).reshape(b, h * w),
        out[:, CH_Z].reshape(b, h * w),
        out[:, CH_PHOT].reshape(b, h * w),
    ]
    sigma_channels = [CH_SIG_X, CH_SIG_Y, CH_SIG_Z, CH_SIG_PHOT]
    dims = [0, 1, 2, 3] if use_z else [0, 1, 3]
    # Padding rows may hold NaN/garbage; zero them so they cannot poison gradients through the product.
    targets = torch.where(em_mask.unsqueeze(-1), em_xyzn, torch.zeros_like(em_xyzn))
    # Accumulate the per-dimension Gaussian log-densities into one (B, M, K) tensor (one dimension at a
    # time keeps peak memory at a few B*M*K buffers).
    log_component = torch.zeros(b, em_xyzn.shape[1], h * w, device=out.device, dtype=out.dtype)
    for d in dims:
        sigma = out[:, sigma_channels[d]].reshape(b, h * w).clamp_min(sigma_min)
        z_score = (targets[:, :, d].unsqueeze(2) - means[d].unsqueeze(1)) / sigma.unsqueeze(1)
        log_component = log_component - 0.5 * z_score * z_score - torch.log(sigma).unsqueeze(1)
    log_component = log_component - 0.5 * len(dims) * _LOG_2PI
    log_lik = torch.logsumexp(log_component + log_weight.unsqueeze(1), dim=2)  # (B, M)
    loc_term = -(log_lik * em_mask.to(out.dtype)).sum(dim=1)

    # (c) background.
    bg_term = ((out[:, CH_BG] - bg_target) ** 2).sum(dim=(1, 2))

    per_sample = count_weight * count_term + loc_term + bg_weight * bg_term
    total = per_sample.mean()
    parts = {
        "count": count_term.mean().detach(),
        "loc": loc_term.mean().detach(),
        "bg": bg_term.mean().detach(),
        "total": total.detach(),
    }
    return total, parts


class DecodeLoss(nn.Module):
    """``decode_loss`` with its options fixed at construction; ``forward(out, em_xyzn, em_mask,
    bg_target) -> (total, parts)``."""

    def __init__(
        self,
        use_z: bool = True,
        bg_weight: float = 1.0,
        count_weight: float = 1.0,
        count_var_min: float = 1e-2,
        sigma_min: float = 1e-3,
    ) -> None:
        super().__init__()
        self.use_z = use_z
        self.bg_weight = bg_weight
        self.count_weight = count_weight
        self.count_var_min = count_var_min
        self.sigma_min = sigma_min

    def forward(
        self, out: torch.Tensor, em_xyzn: torch.Tensor, em_mask: torch.Tensor, bg_target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return decode_loss(
            out,
            em_xyzn,
            em_mask,
            bg_target,
            use_z=self.use_z,
            bg_weight=self.bg_weight,
            count_weight=self.count_weight,
            count_var_min=self.count_var_min,
            sigma_min=self.sigma_min,
        )


def distillation_loss(out: torch.Tensor, teacher_out: torch.Tensor, *, use_z: bool = False,
                      p_eps: float = 1e-6) -> torch.Tensor:
    """How far a network's output maps are from a teacher's on the same input (knowledge distillation).

    Per sample, summed over pixels: the Kullback–Leibler divergence of the student's detection Bernoulli from
    the teacher's (zero where they agree), plus, weighted by the teacher's p, half the squared difference of
    the positions (x, y, and z with ``use_z``) and photons in units of the teacher's predicted sigmas — the
    read-out matters only where the teacher sees an emitter. The mean over the batch; 0 when ``out`` equals
    ``teacher_out``. Why: the simulated truth marks each emitter at one pixel, while a larger model's p map
    also says how likely a dim partner beside a bright one is — what a small model misses at close pairs.
    """
    if out.shape != teacher_out.shape:
        raise ValueError(f"distillation_loss: student output {tuple(out.shape)} and teacher output "
                         f"{tuple(teacher_out.shape)} differ in shape.")
    out, teacher_out = out.float(), teacher_out.float().detach()
    s_p = out[:, CH_P].clamp(p_eps, 1.0 - p_eps)
    t_p = teacher_out[:, CH_P].clamp(p_eps, 1.0 - p_eps)
    kl = t_p * (torch.log(t_p) - torch.log(s_p)) + (1.0 - t_p) * (torch.log1p(-t_p) - torch.log1p(-s_p))
    pairs = [(CH_X, CH_SIG_X), (CH_Y, CH_SIG_Y), (CH_PHOT, CH_SIG_PHOT)] + ([(CH_Z, CH_SIG_Z)] if use_z else [])
    read_out = torch.zeros_like(kl)
    for value, sigma in pairs:
        read_out = read_out + 0.5 * ((out[:, value] - teacher_out[:, value]) / teacher_out[:, sigma]) ** 2
    per_sample = (kl + t_p * read_out).sum(dim=(1, 2))
    return per_sample.mean()
