"""StreamingLocalizer: the cached-feature stream equals the full-window network (edge padding at the
first and last frame, sequence breaks at lost frames), any frame size, ADU → photon scaling with sCMOS
maps, batch independence, last_done bookkeeping and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtsmlm.acquisition.source import CameraModel
from rtsmlm.core.config import BackendConfig
from rtsmlm.core.locs import LOC_DTYPE
from rtsmlm.localization import checkpoint
from rtsmlm.localization.backends import open_backend
from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie
from rtsmlm.localization.net import DecodeNet
from rtsmlm.training.data import Scales

INPUT_SCALE = 50.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A small random-weight checkpoint whose p head is biased up so that it reports localizations."""
    torch.manual_seed(1)
    net = DecodeNet(window=3, width=8, depth=2)
    with torch.no_grad():
        net.head_p[-1].bias.fill_(0.0)
    meta = checkpoint.ModelMeta(width=8, depth=2, window=3, pixel_size_nm=100.0, camera={}, psf={},
                                scales=Scales(INPUT_SCALE, 5000.0, 200.0, 1.0), train={})
    prefix = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save(prefix, net, meta)
    return str(prefix)


@pytest.fixture(scope="module")
def opened(ckpt):
    return open_backend(BackendConfig(name="torch", device="cpu", precision="fp32", threads=1), ckpt, jit=False)


def _movie(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(90, 2000, size=(n, h, w)).astype(np.uint16)


def _reference_maps(ckpt: str, camera: CameraModel, movie: np.ndarray) -> torch.Tensor:
    """The full-window network on one sequence: photons / input scale, reflect padding in time (frame 1
    before frame 0, frame n−2 after frame n−1; copies of the frame for a sequence of one) and replicate
    padding in space (to a multiple of 4), output cropped."""
    net, meta = checkpoint.load(ckpt)
    x = torch.from_numpy(camera.to_photons(movie) / meta.scales.input_scale)
    n, h, w = x.shape
    ph, pw = -h % 4, -w % 4
    x = F.pad(x.unsqueeze(1), (0, pw, 0, ph), mode="replicate").squeeze(1)
    padded = torch.cat([x[1:2], x, x[-2:-1]]) if n > 1 else torch.cat([x, x, x])
    windows = torch.stack([padded[i : i + 3] for i in range(n)])
    with torch.no_grad():
        return net(windows)[:, :, :h, :w]


def _collect(localizer_kwargs: dict, opened, camera, shape, p=0.5, c=0.3):
    backend, meta = opened
    got: dict[int, torch.Tensor] = {}

    def sink(maps: torch.Tensor, frames: list[int]) -> None:
        for m, f in zip(maps, frames):
            assert f not in got, f"frame {f} was decoded twice"
            got[f] = m.float().clone()

    loc = StreamingLocalizer(backend, meta, camera, shape, p, c, maps_sink=sink, **localizer_kwargs)
    return loc, got


@pytest.mark.parametrize("shape", [(16, 16), (10, 14)])
def test_streamed_maps_equal_full_window_model_including_first_and_last_frame(ckpt, opened, shape) -> None:
    camera = CameraModel()
    movie = _movie(7, *shape)
    loc, got = _collect({"batch_size": 3}, opened, camera, shape)
    localize_movie(loc, movie)
    assert sorted(got) == list(range(7))
    ref = _reference_maps(ckpt, camera, movie)
    streamed = torch.stack([got[i] for i in range(7)])
    assert streamed.shape == ref.shape
    assert (streamed - ref).abs().max().item() <= 1e-4


def test_gap_in_indices_finishes_the_sequence_and_starts_a_new_one(ckpt, opened) -> None:
    camera = CameraModel()
    movie = _movie(6, 12, 12, seed=3)
    idx = np.array([0, 1, 2, 6, 7, 8])  # frames 3..5 lost
    loc, got = _collect({"batch_size": 4}, opened, camera, (12, 12))
    locs1, done1 = loc.push(movie[:4], idx[:4])
    # The gap finished frames 0..2 with edge padding; frame 6 still waits for frame 7.
    assert done1 == 2 and sorted(got) == [0, 1, 2]
    locs2, done2 = loc.push(movie[4:], idx[4:])
    assert done2 == 7
    locs3, done3 = loc.finish()
    assert done3 == 8 and sorted(got) == [0, 1, 2, 6, 7, 8]
    for part, frames in ((movie[:3], [0, 1, 2]), (movie[3:], [6, 7, 8])):
        ref = _reference_maps(ckpt, camera, part)
        streamed = torch.stack([got[f] for f in frames])
        assert (streamed - ref).abs().max().item() <= 1e-4
    all_locs = np.concatenate([locs1, locs2, locs3])
    assert set(np.unique(all_locs["frame"])) <= {0, 1, 2, 6, 7, 8}


@pytest.mark.parametrize("lengths", [[1, 2, 1], [2, 2], [1, 3]])
def test_short_sequences_reflect_their_neighbours_or_copy_a_lone_frame(ckpt, opened, lengths) -> None:
    """Between gaps, a sequence of two frames is completed by mirroring (each frame stands in for the missing
    neighbour of the other) and a lone frame by copies of itself, whatever the batches; a lone frame never
    waits for one that is not its neighbour."""
    camera = CameraModel()
    movie = _movie(sum(lengths), 12, 12, seed=8)
    starts = np.cumsum([0] + lengths[:-1])
    idx = np.concatenate([np.arange(n) + 10 * k for k, n in enumerate(lengths)])  # gaps between the sequences
    loc, got = _collect({"batch_size": 2}, opened, camera, (12, 12))
    for k in range(len(idx)):  # one frame at a time: the padding is settled only when the next frames come
        loc.push(movie[k : k + 1], idx[k : k + 1])
    loc.finish()
    assert sorted(got) == idx.tolist()
    for k, (a, n) in enumerate(zip(starts, lengths)):
        ref = _reference_maps(ckpt, camera, movie[a : a + n])
        streamed = torch.stack([got[int(f)] for f in idx[a : a + n]])
        assert (streamed - ref).abs().max().item() <= 1e-4, (lengths, k)


def test_scmos_pixel_maps_are_applied(ckpt, opened) -> None:
    rng = np.random.default_rng(5)
    shape = (8, 12)
    camera = CameraModel(model="scmos", em_gain=1.0, e_per_adu=0.5, baseline_adu=100.0,
                         offset_map=rng.uniform(95, 105, shape), gain_map=rng.uniform(0.4, 0.6, shape))
    movie = _movie(4, *shape, seed=6)
    loc, got = _collect({"batch_size": 2}, opened, camera, shape)
    localize_movie(loc, movie)
    ref = _reference_maps(ckpt, camera, movie)
    assert (torch.stack([got[i] for i in range(4)]) - ref).abs().max().item() <= 1e-4


def test_pushing_one_frame_at_a_time_gives_the_same_localizations_and_last_done(opened) -> None:
    backend, meta = opened
    camera = CameraModel()
    movie = _movie(6, 16, 16, seed=2)
    whole = StreamingLocalizer(backend, meta, camera, (16, 16), 0.5, 0.3, batch_size=8)
    expected = localize_movie(whole, movie)
    assert len(expected) > 0 and expected.dtype == LOC_DTYPE

    single = StreamingLocalizer(backend, meta, camera, (16, 16), 0.5, 0.3, batch_size=1)
    parts, dones = [], []
    for i in range(6):
        locs, done = single.push(movie[i : i + 1], np.array([i]))
        parts.append(locs)
        dones.append(done)
    locs, done = single.finish()
    parts.append(locs)
    assert dones == [-1, 0, 1, 2, 3, 4] and done == 5
    got = np.concatenate(parts)
    assert np.array_equal(got["frame"], expected["frame"])
    for name in ("x", "y", "photons", "p"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-2)
    # Localizations lie inside the frame, in nm with the pixel-corner origin.
    assert (got["x"] >= 0).all() and (got["x"] < 16 * camera.pixel_size_nm).all()


def test_a_brightness_floor_holds_each_frame_until_the_next_one_confirms_or_not(opened) -> None:
    from rtsmlm.localization.brightness_floor import CONFIRM_RADIUS_PX, kept_by_floor

    backend, meta = opened
    camera = CameraModel()
    movie = _movie(6, 16, 16, seed=2)
    unfloored = localize_movie(StreamingLocalizer(backend, meta, camera, (16, 16), 0.5, 0.3, batch_size=8), movie)
    floor = float(np.median(unfloored["photons"]))
    expected = unfloored[kept_by_floor(unfloored, floor, CONFIRM_RADIUS_PX * camera.pixel_size_nm)]
    assert (expected["photons"] < floor).any() and len(expected) < len(unfloored)  # the waiver and the floor act
    single = StreamingLocalizer(backend, meta, camera, (16, 16), 0.5, 0.3, batch_size=1, min_photons=floor)
    parts, dones = [], []
    for i in range(6):
        locs, done = single.push(movie[i : i + 1], np.array([i]))
        assert (locs["frame"] <= done).all()
        parts.append(locs)
        dones.append(done)
    locs, done = single.finish()
    parts.append(locs)
    assert dones == [-1, -1, 0, 1, 2, 3] and done == 5  # one frame later than without a floor
    got = np.concatenate(parts)
    assert np.array_equal(got["frame"], expected["frame"])
    np.testing.assert_allclose(got["photons"], expected["photons"], rtol=1e-4)


def test_single_frame_run_and_empty_push(opened) -> None:
    backend, meta = opened
    loc = StreamingLocalizer(backend, meta, CameraModel(), (10, 10), 0.5, 0.3, batch_size=4)
    locs, done = loc.push(np.empty((0, 10, 10), np.uint16), np.empty(0, np.int64))
    assert len(locs) == 0 and done == -1
    loc.push(_movie(1, 10, 10), np.array([41]))
    _, done = loc.finish()
    assert done == 41
    assert loc.finish()[1] == 41  # finishing twice is harmless


def test_bad_input_is_rejected_with_a_clear_message(opened) -> None:
    backend, meta = opened
    loc = StreamingLocalizer(backend, meta, CameraModel(), (16, 16), 0.5, 0.3, batch_size=2)
    with pytest.raises(ValueError, match=r"shape \(n, 16, 16\)"):
        loc.push(_movie(2, 16, 12), np.array([0, 1]))
    with pytest.raises(ValueError, match="2 frames but 1 indices"):
        loc.push(_movie(2, 16, 16), np.array([0]))
    loc.push(_movie(2, 16, 16), np.array([0, 1]))
    with pytest.raises(ValueError, match="increase strictly"):
        loc.push(_movie(1, 16, 16), np.array([1]))
    with pytest.raises(ValueError, match="offset_map"):
        StreamingLocalizer(backend, meta, CameraModel(offset_map=np.zeros((4, 4))), (16, 16), 0.5, 0.3)


def test_nonfinite_pixels_are_contained_to_their_frame_and_counted(opened):
    """NaN/inf in one frame of a float movie: the other frames' localizations are unchanged (the windows
    that include the bad frame change only by what the replaced pixels carry), and the frame is counted."""
    backend, meta = opened
    camera = CameraModel("emccd", 100.0, 100.0, 45.0, 100.0, 1.0, 74.4, 10.0)
    movie = _movie(12, 32, 32).astype(np.float32)
    bad = movie.copy()
    bad[5, 3:9, 4:20] = np.nan
    bad[5, 20, 20] = np.inf

    def run(m):
        loc = StreamingLocalizer(backend, meta, camera, (32, 32), 0.5, 0.3, batch_size=4)
        return loc, localize_movie(loc, m)

    _, clean = run(movie)
    loc, got = run(bad)
    assert loc.nonfinite == {5: 6 * 16 + 1}
    assert np.isfinite(got["x"]).all() and np.isfinite(got["photons"]).all()
    far = lambda t: t[(t["frame"] < 4) | (t["frame"] > 6)]  # noqa: E731 - windows not touching frame 5
    np.testing.assert_array_equal(far(got), far(clean))
    for f in (4, 5, 6):
        assert (got["frame"] == f).sum() > 0, f"frame {f} lost its localizations"


@pytest.mark.slow  # simulates two short movies and fits their spots
def test_the_range_guard_names_a_background_outside_the_training_range(caplog):
    """The shipped model was trained on 20–150 photons/px of background: a 600 photons/px movie gets one
    warning naming the quantity, the measured value and the trained range; a movie inside gets none."""
    import logging

    from rtsmlm.core.config import from_dict
    from rtsmlm.localization.range_guard import check
    from rtsmlm.sim import Simulator

    meta = checkpoint.load_meta("default")
    for bg, expect in ((60.0, []), (600.0, ["background_photons"])):
        sim = Simulator(from_dict({"sim": {"size": 64, "bg_photons": bg, "density": 0.3, "seed": 7}}))
        frames = np.stack([sim.step()[0] for _ in range(20)])
        with caplog.at_level(logging.WARNING, logger="rtsmlm.range"):
            caplog.clear()
            verdict = check(sim.camera.to_photons(frames), meta)
        assert verdict.out_of_range == expect
        assert verdict.background_photons == pytest.approx(bg, rel=0.1)
        assert verdict.psf_sigma_px == pytest.approx(1.3, rel=0.05)
        if expect:
            assert "background is 6" in caplog.text and "20–150 photons/px" in caplog.text
        else:
            assert caplog.text == ""


def test_without_spots_to_measure_the_configured_psf_width_is_checked(caplog) -> None:
    """No spot to fit (here: background only; in practice a crowded field): the configured σ in pixels stands in
    for the measured one, so a camera whose pixels make the default model's PSF too narrow is still named."""
    import logging

    from rtsmlm.localization.range_guard import check

    meta = checkpoint.load_meta("default")  # trained on 130 nm / 100 nm = 1.3 px
    photons = np.random.default_rng(3).poisson(60.0, (20, 64, 64)).astype(np.float32)
    for told, expect in ((1.3, []), (130.0 / 160.0, ["psf_sigma_px"])):
        with caplog.at_level(logging.WARNING, logger="rtsmlm.range"):
            caplog.clear()
            verdict = check(photons, meta, told_sigma_px=told)
        assert verdict.psf_sigma_px is None and verdict.out_of_range == expect
        assert ("configured PSF sigma" in caplog.text) == bool(expect)


def test_only_a_camera_difference_the_photon_conversion_leaves_is_warned() -> None:
    """Another pixel size (the PSF's width in pixels is the range guard's to measure), baseline or gain is no
    mismatch for the default model; another noise model is."""
    import warnings

    meta = checkpoint.load_meta("default")
    same_noise = {**meta.camera, "pixel_size_nm": 107.0, "baseline_adu": 400.0, "e_per_adu": 12.0, "em_gain": 50.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint.check_compatible(meta, same_noise) == []
    with pytest.warns(UserWarning, match="camera.model: model trained for emccd"):
        assert checkpoint.check_compatible(meta, {**meta.camera, "model": "scmos"}) != []


def test_big_endian_frames_give_the_same_localizations(opened):
    """A .dax movie arrives big-endian ('>u2'); the localizer takes it as the same counts."""
    backend, meta = opened
    camera = CameraModel("emccd", 100.0, 100.0, 45.0, 100.0, 1.0, 74.4, 10.0)
    movie = _movie(6, 32, 32)

    def run(m):
        return localize_movie(StreamingLocalizer(backend, meta, camera, (32, 32), 0.5, 0.3, batch_size=3), m)

    np.testing.assert_array_equal(run(movie.astype(">u2")), run(movie))


class _CappedBackend:
    """The CPU backend with a tensor-size limit, as TensorRT has one (2**31 elements), scaled down here."""

    def __init__(self, backend, max_elements: int) -> None:
        self._backend = backend
        self.max_tensor_elements = max_elements
        self.calls: list[tuple[int, ...]] = []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def decode(self, features):
        self.calls.append(tuple(features.shape))
        return self._backend.decode(features)


def test_a_backend_tensor_limit_bounds_the_tiles_and_frames_of_each_call(ckpt, opened) -> None:
    backend, meta = opened
    per_frame = 3 * 8 * 16 * 16  # window × features × a 16² tile
    capped = _CappedBackend(backend, max_elements=3 * per_frame + 5)
    movie = _movie(12, 16, 16, seed=4)
    camera = CameraModel()
    free = StreamingLocalizer(backend, meta, camera, (16, 16), 0.5, 0.3, batch_size=8)
    loc = StreamingLocalizer(capped, meta, camera, (16, 16), 0.5, 0.3, batch_size=8)
    assert loc.batch_size == 3
    got, expected = localize_movie(loc, movie), localize_movie(free, movie)
    assert all(int(np.prod(shape)) <= capped.max_tensor_elements for shape in capped.calls)
    assert np.array_equal(got["frame"], expected["frame"])
    np.testing.assert_allclose(got["x"], expected["x"], atol=1e-2)
    with pytest.raises(ValueError, match="give a smaller tile"):
        StreamingLocalizer(_CappedBackend(backend, per_frame - 1), meta, camera, (16, 16), 0.5, 0.3)
