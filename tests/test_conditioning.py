"""Conditioned models: the PSF width and the camera's noise as input channels. The channels are built by
one function for training and inference; a conditioned checkpoint round-trips; the localizer feeds the
channels through every backend and through tiles; a model that needs the PSF width says so; an
unconditioned model gains the channels in a fine-tune without changing its outputs at step 0; the range
guard warns when the PSF the model is told differs from the movie's."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from rtsmlm.core.camera import CameraModel
from rtsmlm.core.config import BackendConfig, from_dict
from rtsmlm.localization import checkpoint, conditioning, range_guard
from rtsmlm.localization.backends import open_backend
from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie
from rtsmlm.localization.net import DecodeNet
from rtsmlm.localization.scales import Scales
from rtsmlm.sim.camera import emccd, scmos_random_maps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHANNELS = conditioning.SETS["psf_noise"]


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory) -> str:
    """A small random conditioned checkpoint whose conditioning weights are large, so the channels
    visibly change its outputs; the p head is biased up so it reports localizations."""
    torch.manual_seed(2)
    net = DecodeNet(window=3, width=8, depth=2, in_channels=1 + len(CHANNELS))
    with torch.no_grad():
        net.head_p[-1].bias.fill_(0.0)
        net.encoder.inc[0].weight[:, 1:] *= 20.0
    meta = checkpoint.ModelMeta(width=8, depth=2, window=3, pixel_size_nm=100.0, camera={}, psf={},
                                scales=Scales(50.0, 5000.0, 200.0, 1.0, "anscombe", CHANNELS), train={"broad": True})
    prefix = tmp_path_factory.mktemp("cond") / "cond"
    checkpoint.save(prefix, net, meta)
    return str(prefix)


def _movie(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(90, 2000, size=(n, h, w)).astype(np.uint16)


def test_channels_describe_psf_noise_model_and_per_pixel_read_noise() -> None:
    em = emccd(100.0, em_gain=50.0, read_noise_e=60.0)
    maps = conditioning.channels(CHANNELS, sigma_px=1.35, camera=em, shape=(4, 5))
    assert maps.shape == (3, 4, 5) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0], 0.0, atol=1e-6)  # σ 1.35 px is the middle of the range
    np.testing.assert_allclose(maps[1], 1.0)  # EMCCD
    np.testing.assert_allclose(maps[2], np.log1p(60.0 / 50.0) - 1.0, rtol=1e-6)  # 1.2 photons of read noise
    sc = scmos_random_maps((4, 5), seed=3, read_noise_e=2.0, e_per_adu=0.5, qe=0.8)
    maps = conditioning.channels(CHANNELS, sigma_px=2.0, camera=sc, shape=(4, 5))
    np.testing.assert_allclose(maps[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(maps[1], -1.0)
    expected = np.sqrt(sc.variance_map) * sc.gain_map / 0.8  # ADU σ × e⁻/ADU / QE = photons
    np.testing.assert_allclose(maps[2], np.log1p(expected) - 1.0, atol=1e-6)
    assert maps[2].std() > 0.05  # the map, not its mean
    with pytest.raises(ValueError, match="read-noise map is"):
        conditioning.channels(CHANNELS, sigma_px=1.0, camera=sc, shape=(8, 8))
    with pytest.raises(ValueError, match="unknown conditioning channel 'focus'"):
        conditioning.channels(("focus",), sigma_px=1.0, camera=em, shape=(2, 2))


def test_conditioned_checkpoint_round_trips_and_names_an_unknown_channel(cond_ckpt, tmp_path) -> None:
    net, meta = checkpoint.load(cond_ckpt)
    assert meta.scales.conditioning == CHANNELS and net.in_channels == 4
    data = meta.to_json()
    data["scales"]["conditioning"] = ["psf_sigma", "focus"]
    bad = tmp_path / "bad.json"
    import json

    bad.write_text(json.dumps(data))
    with pytest.raises(checkpoint.CheckpointError, match=r"bad.json: metadata key 'scales.conditioning' names 'focus'"):
        checkpoint.load_meta(bad)


def test_conditioned_model_needs_the_psf_width_and_is_given_it(cond_ckpt) -> None:
    backend, meta = open_backend(BackendConfig(name="torch", device="cpu", precision="fp32", threads=1), cond_ckpt,
                                 jit=False)
    camera = CameraModel()
    with pytest.raises(ValueError, match="conditioned on the PSF width: give psf.sigma_nm"):
        StreamingLocalizer(backend, meta, camera, (16, 16), 0.5, 0.3)
    movie = _movie(5, 16, 16)
    maps: dict[float, list[torch.Tensor]] = {}
    for sigma in (1.0, 1.8):
        got: list[torch.Tensor] = []
        loc = StreamingLocalizer(backend, meta, camera, (16, 16), 0.5, 0.3, psf_sigma_px=sigma,
                                 maps_sink=lambda m, f, got=got: got.append(m.clone()))
        loc.check_range = False
        localize_movie(loc, movie)
        maps[sigma] = got
    # What the model is told reaches it: another PSF width, other output maps.
    assert not torch.allclose(torch.cat(maps[1.0]), torch.cat(maps[1.8]))


def test_conditioned_model_same_through_tiles_and_onnxruntime(cond_ckpt) -> None:
    pytest.importorskip("onnxruntime")
    camera = scmos_random_maps((40, 36), seed=5)
    movie = _movie(6, 40, 36, seed=1)
    tables = {}
    for name, tile in (("torch", None), ("torch", 16), ("onnxruntime", None)):
        backend, meta = open_backend(BackendConfig(name=name, device="cpu", precision="fp32", threads=1), cond_ckpt,
                                     jit=False) if name == "torch" else open_backend(
            BackendConfig(name=name, device="cpu", precision="fp32", threads=1), cond_ckpt)
        loc = StreamingLocalizer(backend, meta, camera, (40, 36), 0.5, 0.3, psf_sigma_px=1.3, tile=tile)
        loc.check_range = False
        tables[(name, tile)] = localize_movie(loc, movie)
    ref = tables[("torch", None)]
    assert len(ref) > 10
    for key, table in tables.items():
        assert len(table) == len(ref), key
        np.testing.assert_allclose(table["x"], ref["x"], atol=1e-2, err_msg=str(key))
        np.testing.assert_allclose(table["y"], ref["y"], atol=1e-2, err_msg=str(key))


def test_fine_tune_adds_conditioning_to_an_unconditioned_model_without_changing_it(tmp_path) -> None:
    from rtsmlm.training.data import TrainingSimulator
    from rtsmlm.training.train import _widen_input, train

    torch.manual_seed(0)
    plain = DecodeNet(window=3, width=4, depth=1)
    widened = DecodeNet(window=3, width=4, depth=1, in_channels=4)
    widened.load_state_dict(_widen_input(plain.state_dict(), widened.state_dict()))
    cfg = from_dict({"train": {"patch_size": 16, "conditioning": "psf_noise", "broad": True}})
    sim = TrainingSimulator(cfg, seed=1, scales=Scales.from_config(cfg))
    batch = sim.batch(2)
    assert batch.frames.shape == (2, 3, 4, 16, 16)
    with torch.no_grad():
        a = plain(torch.from_numpy(batch.frames[:, :, 0].copy()))
        b = widened(torch.from_numpy(batch.frames))
    torch.testing.assert_close(a, b)  # zero weights on the new channels: the same model at step 0
    # And through the trainer: an unconditioned checkpoint fine-tuned with conditioning becomes conditioned.
    base_meta = checkpoint.ModelMeta(width=4, depth=1, window=3, pixel_size_nm=100.0, camera={}, psf={},
                                     scales=Scales.from_config(from_dict({"train": {"broad": True}})), train={})
    checkpoint.save(tmp_path / "plain", plain, base_meta)
    out = train(from_dict({"train": {"steps": 2, "batch_size": 2, "patch_size": 16, "val_samples": 2,
                                     "checkpoint_every": 2, "conditioning": "psf_noise"}}),
                tmp_path / "tuned", progress=False, init=tmp_path / "plain")
    net, meta = checkpoint.load(out)
    assert meta.scales.conditioning == CHANNELS and net.in_channels == 4 and meta.train["conditioning"] == "psf_noise"


def test_range_guard_warns_when_the_told_psf_is_not_the_movies(caplog) -> None:
    from rtsmlm.core.config import from_dict as cfg_from
    from rtsmlm.sim import Simulator

    sim = Simulator(cfg_from({"sim": {"seed": 4, "size": 64, "density": 0.3, "bg_photons": 30.0,
                                      "photons_mean": 4000.0}, "psf": {"sigma_nm": 150.0}}))
    movie, _ = sim.movie(range_guard.FRAMES)
    photons = sim.camera.to_photons(movie)
    meta = checkpoint.load_meta("broad_2d")
    meta = type(meta)(**{**meta.__dict__, "scales": Scales(**{**meta.scales.__dict__, "conditioning": CHANNELS})})
    with caplog.at_level(logging.WARNING, logger="rtsmlm.range"):
        right = range_guard.check(photons, meta, told_sigma_px=1.5)
        wrong = range_guard.check(photons, meta, told_sigma_px=1.0)
    assert "psf_sigma_told" not in right.out_of_range
    assert "psf_sigma_told" in wrong.out_of_range and wrong.psf_sigma_told_px == 1.0
    assert any("but the model is told 1.00 px" in r.message for r in caplog.records)


@pytest.mark.parametrize("camera, sigma_nm, bg, density", [
    ({"pixel_size_nm": 160.0}, 170.0, 20.0, 1.0),  # dense: a dimmer neighbour in the box widened the fits
    ({"pixel_size_nm": 160.0}, 170.0, 20.0, 3.0),  # too crowded to measure: no width rather than a wrong one
    ({"model": "scmos", "pixel_size_nm": 65.0, "em_gain": 1.0, "e_per_adu": 0.5, "read_noise_e": 1.6, "qe": 0.8},
     120.0, 800.0, 0.3),  # a wide PSF on a high, structured background
])
def test_range_guard_measures_the_psf_of_dense_and_high_background_movies(camera, sigma_nm, bg, density) -> None:
    """The guard's PSF width (the same fit as calibrate's) stays within its 15 % tolerance where a fit of
    every brightest-in-its-box spot on one background number read 15-30 % wide (false 'told' warnings)."""
    from rtsmlm.core.config import from_dict as cfg_from
    from rtsmlm.sim import Simulator

    sim = Simulator(cfg_from({"camera": camera, "psf": {"sigma_nm": sigma_nm},
                              "sim": {"seed": 99, "size": 128, "density": density, "bg_photons": bg,
                                      "bg_structured": True, "photons_mean": 5000.0}}))
    movie, _ = sim.movie(range_guard.FRAMES)
    _, sigma, _, n = range_guard.measure(sim.camera.to_photons(movie))
    true = sigma_nm / camera["pixel_size_nm"]
    if density >= 3.0:
        assert sigma is None
        return
    assert sigma is not None and n >= 5
    assert abs(sigma / true - 1.0) < range_guard.TOLD_SIGMA_TOLERANCE / 1.5, (sigma, true)
