"""Postprocessor: spatial integration of hand-built output maps into localizations — counts, sub-pixel
positions, units and origin, frame indices, thresholds — and agreement with a plain-Python reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtsmlm.core.locs import LOC_DTYPE
from rtsmlm.localization.net import CH_BG, CH_P, CH_PHOT, CH_SIG_PHOT, CH_SIG_X, CH_SIG_Y, CH_SIG_Z, CH_X, CH_Y, CH_Z
from rtsmlm.localization.postprocess import Postprocessor

PX = 100.0


@pytest.fixture()
def post() -> Postprocessor:
    return Postprocessor(pixel_size_nm=PX, photon_scale=5000.0, z_scale=700.0, bg_scale=200.0)


def _maps(b: int = 1, h: int = 8, w: int = 8) -> torch.Tensor:
    out = torch.zeros(b, 10, h, w)
    out[:, CH_P] = 0.001
    out[:, CH_SIG_PHOT : CH_SIG_Z + 1] = 0.5
    return out


def test_single_emitter_spread_over_two_pixels_gives_one_localization(post: Postprocessor) -> None:
    out = _maps()
    # Emitter near the right border of pixel (row 3, col 4): most of p there, the rest in col 5.
    out[0, CH_P, 3, 4] = 0.55
    out[0, CH_P, 3, 5] = 0.40
    out[0, CH_X, 3, 4] = 0.45
    out[0, CH_Y, 3, 4] = -0.2
    locs = post(out, [0])
    assert len(locs) == 1
    assert locs["x"][0] == pytest.approx((4 + 0.5 + 0.45) * PX, abs=1e-3)
    assert locs["y"][0] == pytest.approx((3 + 0.5 - 0.2) * PX, abs=1e-3)
    # Integrated probability: 0.55 + 0.40 + the 0.001 neighbours above, below and left.
    assert locs["p"][0] == pytest.approx(0.55 + 0.40 + 0.003, abs=1e-5)


def test_evenly_split_emitter_gives_one_localization(post: Postprocessor) -> None:
    out = _maps()
    out[0, CH_P, 2, 2] = 0.45  # an exact tie on a pixel border
    out[0, CH_P, 3, 2] = 0.45
    assert len(post(out, [0])) == 1


def test_two_emitters_in_adjacent_pixels_with_high_p_give_two(post: Postprocessor) -> None:
    out = _maps()
    out[0, CH_P, 5, 1] = 0.95
    out[0, CH_P, 5, 2] = 0.85
    out[0, CH_X, 5, 1] = -0.1
    out[0, CH_X, 5, 2] = 0.2
    locs = post(out, [0])
    assert len(locs) == 2
    np.testing.assert_allclose(sorted(locs["x"]), [(1.5 - 0.1) * PX, (2.5 + 0.2) * PX], atol=1e-3)
    np.testing.assert_allclose(locs["y"], [5.5 * PX, 5.5 * PX], atol=1e-3)
    assert (locs["p"] <= 1.0).all()


def test_separate_emitters_are_found_independently(post: Postprocessor) -> None:
    out = _maps(h=16, w=16)
    out[0, CH_P, 2, 2] = 0.9
    out[0, CH_P, 2, 4] = 0.7  # two pixels away: its own local maximum
    out[0, CH_P, 12, 9] = 0.8
    locs = post(out, [0])
    got = sorted(zip((locs["y"] / PX - 0.5).round().astype(int), (locs["x"] / PX - 0.5).round().astype(int)))
    assert got == [(2, 2), (2, 4), (12, 9)]


def test_below_thresholds_gives_nothing(post: Postprocessor) -> None:
    out = _maps()
    out[0, CH_P, 1, 1] = 0.25  # below candidate_threshold
    out[0, CH_P, 6, 6] = 0.45  # a candidate, but its integrated p stays below p_threshold
    locs = post(out, [0])
    assert locs.dtype == LOC_DTYPE and len(locs) == 0


def test_emitters_at_image_corners(post: Postprocessor) -> None:
    out = _maps()
    out[0, CH_P, 0, 0] = 0.9
    out[0, CH_P, 7, 7] = 0.9
    locs = post(out, [0])
    assert len(locs) == 2


def test_frame_indices_are_carried(post: Postprocessor) -> None:
    out = _maps(b=3)
    out[0, CH_P, 1, 1] = 0.9
    out[2, CH_P, 4, 4] = 0.9
    out[2, CH_P, 6, 1] = 0.9
    locs = post(out, np.array([17, 18, 19]))
    assert locs["frame"].tolist() == [17, 19, 19]
    assert locs.dtype == LOC_DTYPE
    assert post(out, torch.tensor([5, 6, 7]))["frame"].tolist() == [5, 7, 7]


def test_units_and_origin_are_exact(post: Postprocessor) -> None:
    out = _maps()
    out[0, CH_P, 0, 0] = 0.99
    out[0, CH_X, 0, 0] = -0.5  # the top-left corner of the top-left pixel is (0, 0) nm
    out[0, CH_Y, 0, 0] = -0.5
    out[0, CH_Z, 0, 0] = -0.25
    out[0, CH_PHOT, 0, 0] = 0.3
    out[0, CH_BG, 0, 0] = 0.6
    out[0, CH_SIG_X, 0, 0] = 0.2
    out[0, CH_SIG_Y, 0, 0] = 0.3
    out[0, CH_SIG_Z, 0, 0] = 0.1
    out[0, CH_SIG_PHOT, 0, 0] = 0.05
    (loc,) = post(out, [0])
    assert loc["x"] == pytest.approx(0.0, abs=1e-4) and loc["y"] == pytest.approx(0.0, abs=1e-4)
    assert loc["z"] == pytest.approx(-0.25 * 700.0)
    assert loc["photons"] == pytest.approx(0.3 * 5000.0)
    assert loc["bg"] == pytest.approx(0.6 * 200.0)
    assert loc["sigma_x"] == pytest.approx(0.2 * PX)
    assert loc["sigma_y"] == pytest.approx(0.3 * PX)
    assert loc["sigma_z"] == pytest.approx(0.1 * 700.0)
    assert loc["sigma_photons"] == pytest.approx(0.05 * 5000.0)
    assert loc["p"] == pytest.approx(0.99 + 0.002)


def test_low_precision_maps_are_accepted(post: Postprocessor) -> None:
    out = _maps()
    out[0, CH_P, 3, 3] = 0.9
    out[0, CH_X, 3, 3] = 0.25
    (loc,) = post(out.to(torch.bfloat16), [4])
    assert loc["frame"] == 4 and loc["x"] == pytest.approx(3.75 * PX, abs=0.5)


def _reference(p: np.ndarray, cand: float, split: float, thresh: float) -> set[tuple[int, int, int]]:
    """The algorithm written out with loops (random maps have no ties, so plain >= is enough)."""
    found = set()
    b, h, w = p.shape
    for s in range(b):
        for i in range(h):
            for j in range(w):
                neighbours = [p[s, a, c] for a in range(max(i - 1, 0), min(i + 2, h))
                              for c in range(max(j - 1, 0), min(j + 2, w)) if (a, c) != (i, j)]
                is_max = p[s, i, j] > cand and all(p[s, i, j] >= q for q in neighbours)
                score = p[s, i, j] + sum(p[s, a, c] for a, c in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                                         if 0 <= a < h and 0 <= c < w)
                if (is_max or p[s, i, j] > split) and score > thresh:
                    found.add((s, i, j))
    return found


def test_agrees_with_loop_reference_on_random_maps(post: Postprocessor) -> None:
    rng = np.random.default_rng(7)
    p = (rng.random((3, 12, 10)) ** 3).astype(np.float32)  # mostly low, some peaks
    out = _maps(b=3, h=12, w=10)
    out[:, CH_P] = torch.from_numpy(p)
    locs = post(out, [0, 1, 2])
    got = {(int(f), int(y / PX), int(x / PX)) for f, y, x in zip(locs["frame"], locs["y"], locs["x"])}
    expected = _reference(p, 0.3, 0.6, 0.6)
    assert len(expected) > 3
    assert got == expected


def _residual_reference(p: np.ndarray, first: set[tuple[int, int, int]], residual_threshold: float,
                        p_threshold: float) -> set[tuple[int, int, int]]:
    """The residual pass written out with loops over pixels (random maps: no ties, no duplicates)."""
    b, h, w = p.shape

    def cross(s: int, i: int, j: int) -> list[tuple[int, int]]:
        return [(a, c) for a, c in ((i, j), (i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)) if 0 <= a < h and 0 <= c < w]

    explained = np.zeros_like(p, dtype=np.float64)
    for s, i, j in first:
        share = 1.0 / max(1.0, sum(float(p[s, a, c]) for a, c in cross(s, i, j)))
        for a, c in cross(s, i, j):
            explained[s, a, c] += share
    residual = p * (1.0 - np.minimum(explained, 1.0))
    found = set()
    for s, i, j in np.ndindex(b, h, w):
        box = [(a, c) for a in range(i - 1, i + 2) for c in range(j - 1, j + 2) if 0 <= a < h and 0 <= c < w]
        mass = sum(residual[s, a, c] for a, c in box)
        is_max = all(residual[s, i, j] >= residual[s, a, c] for a, c in box)
        beside = any(abs(fi - i) <= 2 and abs(fj - j) <= 2 for fs, fi, fj in first if fs == s)
        if (s, i, j) not in first and is_max and beside and mass > max(residual_threshold, p_threshold):
            found.add((s, i, j))
    return found


def _merged_pair() -> torch.Tensor:
    """One maximum whose 4-neighbour score (1.1) holds one emitter, and mass it does not reach two rows down:
    the second emitter of a close pair that the network drew without a maximum of its own."""
    out = _maps(h=16, w=16)
    out[0, CH_P, 6, 6] = 0.6
    out[0, CH_P, 7, 6] = 0.5
    out[0, CH_P, 8, 6] = 0.3
    out[0, CH_P, 7, 7] = 0.25
    out[0, CH_X, 8, 6] = 0.2
    return out


def test_the_residual_pass_finds_the_second_emitter_of_a_merged_pair() -> None:
    first_only = Postprocessor(PX, 5000.0, 700.0, 200.0, p_threshold=0.3, residual_threshold=0.0)
    assert len(first_only(_merged_pair(), [0])) == 1
    post = Postprocessor(PX, 5000.0, 700.0, 200.0, p_threshold=0.3, residual_threshold=0.5)
    locs = post(_merged_pair(), [0])
    assert len(locs) == 2
    second = locs[np.argmax(locs["y"])]
    assert second["x"] == pytest.approx((6 + 0.5 + 0.2) * PX) and second["y"] == pytest.approx(8.5 * PX)
    # Scored with the mass it was found on: 0.3 + 0.25 + what the first left of 0.5 (and the 0.001 floor).
    left = 0.5 * (1 - 1 / (0.6 + 0.5 + 3 * 0.001))  # its score: 0.6, 0.5 below, 0.001 above, left, right
    assert second["p"] == pytest.approx(0.3 + 0.25 + left + 0.001 * 6, abs=1e-4)
    # A residual must pass the p threshold as well; and a higher residual threshold turns it down.
    assert len(Postprocessor(PX, 5000.0, 700.0, 200.0, p_threshold=0.7, residual_threshold=0.5)(_merged_pair(), [0])) == 1
    assert len(Postprocessor(PX, 5000.0, 700.0, 200.0, p_threshold=0.3, residual_threshold=0.7)(_merged_pair(), [0])) == 1


def test_one_emitter_within_its_four_neighbours_leaves_no_residual() -> None:
    out = _maps()
    out[0, CH_P, 3, 3] = 0.6
    out[0, CH_P, 2:5, 3] += 0.15
    out[0, CH_P, 3, 2:5] += 0.15
    out[0, CH_P, 3, 3] -= 0.3  # the centre got two additions
    post = Postprocessor(PX, 5000.0, 700.0, 200.0, p_threshold=0.3, residual_threshold=0.1)
    assert len(post(out, [0])) == 1


def test_residual_mass_far_from_any_detection_is_not_a_detection() -> None:
    """A spread of low p with no maximum above the candidate threshold is what the first pass turned down; the
    residual pass looks only beside detections (within 2 px)."""
    out = _maps(h=16, w=16)
    out[0, CH_P, 2, 2] = 0.9
    out[0, CH_P, 9:12, 9:12] = 0.2  # 1.8 of mass, 7 px away
    post = Postprocessor(PX, 5000.0, 700.0, 200.0, p_threshold=0.3, residual_threshold=0.5)
    assert len(post(out, [0])) == 1
    out[0, CH_P, 2, 2] = 0.001
    out[0, CH_P, 8, 8] = 0.9  # a detection 1–3 px from the spread: its residual is beside it
    assert len(post(out, [0])) == 2


def test_residual_pass_agrees_with_loop_reference_on_random_maps() -> None:
    rng = np.random.default_rng(17)
    p = (rng.random((3, 14, 12)) ** 2.5).astype(np.float32)
    out = _maps(b=3, h=14, w=12)
    out[:, CH_P] = torch.from_numpy(p)
    post = Postprocessor(PX, 5000.0, 700.0, 200.0, p_threshold=0.6, residual_threshold=0.5)
    locs = post(out, [0, 1, 2])
    got = {(int(f), int(y / PX), int(x / PX)) for f, y, x in zip(locs["frame"], locs["y"], locs["x"])}
    first = _reference(p, 0.3, 0.6, 0.6)
    residual = _residual_reference(p, first, 0.5, 0.6)
    assert len(residual) >= 3
    assert got == first | residual


def test_score_is_the_pixel_plus_its_four_neighbours_in_a_fixed_order(post: Postprocessor) -> None:
    """The integrated probability is p + up + down + left + right (zero beyond the edge), added in that order,
    so every device gives the same bits."""
    rng = np.random.default_rng(11)
    p = rng.random((2, 7, 9)).astype(np.float32)
    out = _maps(b=2, h=7, w=9)
    out[:, CH_P] = torch.from_numpy(p)
    _, score = post.detection_map(out)
    z = np.pad(p, ((0, 0), (1, 1), (1, 1)))
    expected = p + z[:, :-2, 1:-1] + z[:, 2:, 1:-1] + z[:, 1:-1, :-2] + z[:, 1:-1, 2:]
    np.testing.assert_array_equal(score.numpy(), expected)


def test_read_outs_beyond_the_frame_are_dropped(post: Postprocessor) -> None:
    """A border pixel's offset reaches past the frame's edge (an emitter just outside): not a localization of
    this frame. The same pixel read out just inside is kept."""
    out = _maps(b=2)
    out[:, CH_P, 3, 0] = 0.9
    out[0, CH_X, 3, 0] = -0.8  # x = -0.3 px
    out[1, CH_X, 3, 0] = -0.3  # x = +0.2 px
    locs = post(out, [0, 1])
    assert locs["frame"].tolist() == [1]
    assert locs["x"][0] == pytest.approx(0.2 * PX)


def test_bad_inputs_are_named(post: Postprocessor) -> None:
    with pytest.raises(ValueError, match="frame indices"):
        post(_maps(b=2), [0])
    with pytest.raises(ValueError, match="shape"):
        post(torch.zeros(1, 9, 8, 8), [0])
    with pytest.raises(ValueError, match="pixel_size_nm"):
        Postprocessor(pixel_size_nm=0, photon_scale=1, z_scale=1, bg_scale=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("residual_threshold", [0.0, 0.5])
def test_cuda_maps_give_the_cpu_result(residual_threshold: float) -> None:
    post = Postprocessor(PX, 5000.0, 700.0, 200.0, p_threshold=0.3, residual_threshold=residual_threshold)
    out = torch.cat([_maps(b=2, h=16, w=16), _merged_pair()])  # the third frame: a pair the residual pass splits
    out[0, CH_P, 2, 3] = 0.8
    out[1, CH_P, 5, 5] = 0.7
    out[1, CH_X, 5, 5] = 0.3
    cpu = post(out, [0, 1, 2])
    gpu = post(out.cuda(), [0, 1, 2])
    assert len(cpu) == (4 if residual_threshold else 3)
    # Same detections; values equal to float32 rounding (the score is a fixed-order sum on both devices, but
    # the read-out's arithmetic may fuse differently on the GPU).
    assert len(cpu) == len(gpu)
    np.testing.assert_array_equal(cpu["frame"], gpu["frame"])
    for name in cpu.dtype.names[1:]:
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=2e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("residual_threshold", [0.0, 0.5])
def test_strips_of_a_huge_map_give_the_same_localizations(monkeypatch, residual_threshold):
    """Post-processing in strips of rows (huge frames) equals the whole map, in the same order (with the
    residual pass, whose detections depend on rows further away)."""
    import rtsmlm.localization.postprocess as pp

    rng = np.random.default_rng(5)
    out = torch.zeros(2, 10, 96, 64)
    out[:, 0] = torch.from_numpy(rng.random((2, 96, 64)).astype(np.float32)) ** 4
    out[:, 1:] = torch.from_numpy(rng.uniform(-0.9, 0.9, (2, 9, 96, 64)).astype(np.float32)).abs()
    out[:, 2:4] = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, 2, 96, 64)).astype(np.float32))
    post = pp.Postprocessor(pixel_size_nm=100.0, photon_scale=5000.0, z_scale=1.0, bg_scale=200.0,
                            p_threshold=0.5, candidate_threshold=0.3, residual_threshold=residual_threshold)
    whole = post(out, [3, 4])
    monkeypatch.setattr(pp, "STRIP_PIXELS", 64 * 7)  # strips of 7 rows
    strips = post(out, [3, 4])
    assert len(whole) > 50
    np.testing.assert_array_equal(strips, whole)
