"""DECODE loss: agreement with an independent torch.distributions formulation, gradients, empty frames,
2D mode, perfect-vs-shifted predictions, and a tiny net overfitting a fixed toy batch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

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
    DecodeNet,
)
from rtsmlm.training.loss import DecodeLoss, decode_loss


def _random_output(b: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """A plausible network output with every channel inside its documented range."""
    out = torch.empty(b, 10, h, w)
    out[:, CH_P] = torch.rand(b, h, w, generator=generator) * 0.98 + 0.01
    out[:, CH_PHOT] = torch.rand(b, h, w, generator=generator)
    out[:, CH_X : CH_Z + 1] = torch.rand(b, 3, h, w, generator=generator) * 2 - 1
    out[:, CH_SIG_PHOT : CH_SIG_Z + 1] = torch.rand(b, 4, h, w, generator=generator) * 2 + 0.1
    out[:, CH_BG] = torch.rand(b, h, w, generator=generator)
    return out


def _reference_loss(out, em, mask, bg, use_z=True):
    """The same quantity written with torch.distributions, one sample at a time (no clamps active)."""
    b, _, h, w = out.shape
    rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    total = 0.0
    for s in range(b):
        p = out[s, CH_P].flatten()
        n = float(mask[s].sum())
        count = -D.Normal(p.sum(), (p * (1 - p)).sum().sqrt()).log_prob(torch.tensor(n)) * max(n, 1.0)
        mu = torch.stack(
            [(cols + out[s, CH_X]).flatten(), (rows + out[s, CH_Y]).flatten(), out[s, CH_Z].flatten(),
             out[s, CH_PHOT].flatten()], dim=-1)
        sd = torch.stack([out[s, c].flatten() for c in (CH_SIG_X, CH_SIG_Y, CH_SIG_Z, CH_SIG_PHOT)], dim=-1)
        keep = [0, 1, 2, 3] if use_z else [0, 1, 3]
        mixture = D.MixtureSameFamily(
            D.Categorical(probs=p / p.sum()), D.Independent(D.Normal(mu[:, keep], sd[:, keep]), 1))
        loc = -mixture.log_prob(em[s][mask[s]][:, keep]).sum() if n > 0 else 0.0
        bg_term = ((out[s, CH_BG] - bg[s]) ** 2).sum()
        total = total + count + loc + bg_term
    return total / b


@pytest.mark.parametrize("use_z", [True, False])
def test_matches_independent_formulation(use_z: bool) -> None:
    g = torch.Generator().manual_seed(1)
    out = _random_output(3, 6, 5, g)
    em = torch.rand(3, 4, 4, generator=g) * torch.tensor([5.0, 6.0, 1.0, 1.0])
    mask = torch.tensor([[True, True, False, False], [False] * 4, [True] * 4])
    bg = torch.rand(3, 6, 5, generator=g)
    total, parts = decode_loss(out, em, mask, bg, use_z=use_z)
    torch.testing.assert_close(total, _reference_loss(out, em, mask, bg, use_z), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(parts["count"] + parts["loc"] + parts["bg"], parts["total"])


def test_gradients_flow_to_every_head() -> None:
    torch.manual_seed(0)
    net = DecodeNet(window=3, width=4, depth=1)
    out = net(torch.rand(2, 3, 8, 8))
    em = torch.tensor([[[3.2, 4.7, 0.1, 0.5]], [[1.0, 1.0, 0.0, 0.2]]])
    total, _ = DecodeLoss()(out, em, torch.ones(2, 1, dtype=torch.bool), torch.full((2, 8, 8), 0.3))
    total.backward()
    for head in (net.head_p, net.head_values, net.head_sigmas, net.head_bg):
        grad = head[-1].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_frames_without_emitters_reward_low_p() -> None:
    g = torch.Generator().manual_seed(2)
    out = _random_output(2, 8, 8, g).requires_grad_(True)
    em = torch.full((2, 3, 4), float("nan"))  # padding may hold anything, even NaN
    mask = torch.zeros(2, 3, dtype=torch.bool)
    bg = torch.zeros(2, 8, 8)
    total, parts = decode_loss(out, em, mask, bg)
    total.backward()
    assert torch.isfinite(total) and parts["loc"] == 0
    assert torch.isfinite(out.grad).all()
    previous = None
    for level in (0.3, 0.1, 0.01, 0.001):  # fewer false detections -> lower loss
        quiet = out.detach().clone()
        quiet[:, CH_P] = level
        loss, _ = decode_loss(quiet, em, mask, bg)
        assert previous is None or loss < previous
        previous = loss


def test_no_emitter_dimension_at_all() -> None:
    g = torch.Generator().manual_seed(3)
    out = _random_output(2, 4, 4, g)
    total, _ = decode_loss(out, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), torch.zeros(2, 4, 4))
    assert torch.isfinite(total)


def test_2d_mode_ignores_z() -> None:
    g = torch.Generator().manual_seed(4)
    out = _random_output(1, 6, 6, g)
    em = torch.tensor([[[2.3, 3.6, 0.4, 0.5]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    bg = torch.zeros(1, 6, 6)
    other = out.clone()
    other[:, CH_Z] = -other[:, CH_Z]
    other[:, CH_SIG_Z] = other[:, CH_SIG_Z] * 2
    l2d, _ = decode_loss(out, em, mask, bg, use_z=False)
    l2d_other, _ = decode_loss(other, em, mask, bg, use_z=False)
    l3d, _ = decode_loss(out, em, mask, bg, use_z=True)
    l3d_other, _ = decode_loss(other, em, mask, bg, use_z=True)
    torch.testing.assert_close(l2d, l2d_other)
    assert not torch.isclose(l3d, l3d_other)


def _perfect_output(h: int, w: int, em: torch.Tensor, bg: float) -> torch.Tensor:
    """p = 1 at each emitter's pixel with the exact offset, z, photons; p ~ 0 elsewhere; small sigmas."""
    out = torch.zeros(1, 10, h, w)
    out[:, CH_P] = 1e-4
    out[:, CH_SIG_PHOT : CH_SIG_Z + 1] = 0.1
    out[:, CH_BG] = bg
    for x, y, z, n in em.tolist():
        i, j = int(y), int(x)
        out[0, CH_P, i, j] = 0.999
        out[0, CH_X, i, j] = x - (j + 0.5)
        out[0, CH_Y, i, j] = y - (i + 0.5)
        out[0, CH_Z, i, j] = z
        out[0, CH_PHOT, i, j] = n
    return out


def test_perfect_prediction_beats_shifted_ones() -> None:
    em = torch.tensor([[2.3, 5.8, 0.2, 0.6], [6.7, 1.1, -0.4, 0.3]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    bg = torch.full((1, 8, 8), 0.25)
    perfect = _perfect_output(8, 8, em, 0.25)
    best, _ = decode_loss(perfect, em[None], mask, bg)
    for channel, delta in ((CH_X, 0.3), (CH_Y, -0.3), (CH_Z, 0.2), (CH_PHOT, 0.1), (CH_BG, 0.05)):
        shifted = perfect.clone()
        shifted[:, channel] = shifted[:, channel] + delta
        worse, _ = decode_loss(shifted, em[None], mask, bg)
        assert worse > best, f"shifting channel {channel} by {delta} did not increase the loss"
    moved = perfect.clone()
    moved[:, CH_P] = torch.roll(moved[:, CH_P], shifts=2, dims=-1)  # detections in the wrong pixels
    worse, _ = decode_loss(moved, em[None], mask, bg)
    assert worse > best
    missing = perfect.clone()
    missing[0, CH_P, 5, 2] = 1e-4  # one emitter not detected
    worse, _ = decode_loss(missing, em[None], mask, bg)
    assert worse > best


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="em_mask"):
        decode_loss(torch.zeros(1, 10, 4, 4), torch.zeros(1, 2, 4), torch.zeros(1, 3, dtype=torch.bool),
                    torch.zeros(1, 4, 4))


@pytest.fixture()
def single_thread():
    # A net this small is dominated by thread hand-offs; one intra-op thread is several times faster
    # on a busy machine. Restored afterwards so other tests see the default.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_tiny_net_overfits_fixed_toy_batch(single_thread) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    frames = torch.rand(4, 3, 8, 8, generator=g)
    em = torch.rand(4, 3, 4, generator=g) * torch.tensor([8.0, 8.0, 2.0, 1.0]) - torch.tensor([0, 0, 1.0, 0])
    mask = torch.tensor([[True, True, False], [True, False, False], [False] * 3, [True] * 3])
    bg = torch.rand(4, 1, 1, generator=g).expand(4, 8, 8)
    net = DecodeNet(window=3, width=8, depth=1)
    loss_fn = DecodeLoss()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    history, loc_history = [], []
    for _ in range(100):
        optimiser.zero_grad()
        total, parts = loss_fn(net(frames), em, mask, bg)
        total.backward()
        optimiser.step()
        history.append(total.item())
        loc_history.append(parts["loc"].item())
    assert all(math.isfinite(v) for v in history)
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    # "Clearly": the loss drops by more than half of its initial magnitude.
    assert last < first - 0.5 * abs(first), (first, last)
    # Not only the easy count term: the localization likelihood of the emitters improves too.
    assert loc_history[-1] < loc_history[0] - 0.5 * abs(loc_history[0]), loc_history[::10]


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it() -> None:
    """The teacher term: 0 when the outputs agree; positive otherwise, against an independent Bernoulli KL;
    its gradient raises p where the teacher's is higher, and moves positions only where the teacher sees an
    emitter (its p weights the read-out)."""
    from rtsmlm.training.loss import distillation_loss

    g = torch.Generator().manual_seed(3)
    teacher = _random_output(2, 6, 6, g)
    assert distillation_loss(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-5)

    student = teacher.clone()
    student[:, CH_P] = 0.5
    kl = D.kl_divergence(D.Bernoulli(probs=teacher[:, CH_P]), D.Bernoulli(probs=student[:, CH_P]))
    assert distillation_loss(student, teacher).item() == pytest.approx(kl.sum(dim=(1, 2)).mean().item(), rel=1e-4)

    student = teacher.clone()
    student[:, CH_P] = teacher[:, CH_P] * 0.5
    student.requires_grad_(True)
    ahead = teacher.clone()
    ahead[:, CH_X] = teacher[:, CH_X] + 0.3
    ahead[0, CH_P, 0, 0] = 1e-6  # the teacher sees nothing at that pixel: the position there is free
    distillation_loss(student, ahead).backward()
    grad_x, grad_p = student.grad[:, CH_X], student.grad[:, CH_P]
    assert (grad_x[ahead[:, CH_P] > 0.1] < 0).all()  # descent moves x towards the teacher's (+0.3)
    assert abs(grad_x[0, 0, 0].item()) < 1e-5
    assert (grad_p[ahead[:, CH_P] > 0.1] < 0).all()  # and p up towards the teacher's
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(teacher[:, :, :4], teacher)
