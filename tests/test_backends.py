"""Backends: the 'auto' choice and its fallbacks on every kind of machine, clear errors for unavailable
explicit choices, open_backend with torch (eager and TorchScript, fp32 and bf16) and ONNX Runtime giving
the same streamed maps as the reference, and the TensorRT engine cache keys and shape profiles (TensorRT
itself is skipped where it is not installed)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging

import numpy as np
import pytest
import torch

from rtsmlm.acquisition.source import CameraModel
from rtsmlm.core.config import BackendConfig
from rtsmlm.localization import checkpoint
from rtsmlm.localization.backends import (
    Backend,
    BackendError,
    Environment,
    choose_backend,
    cpu_has_bf16,
    file_sha256,
    model_for_backend,
    open_backend,
    probe_environment,
)
from rtsmlm.localization.backends.tensorrt import (
    EngineKey,
    ShapeRange,
    is_strongly_typed,
    merged,
    onnx_precision,
    shape_range,
)
from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie
from rtsmlm.localization.net import DecodeNet
from rtsmlm.localization.scales import Scales

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env(**kw) -> Environment:
    base = dict(has_cuda=False, gpu_name="", has_tensorrt=False, has_onnxruntime=True, cpu_bf16=False, cpu_count=2)
    base.update(kw)
    return Environment(**base)


H100 = dict(has_cuda=True, gpu_name="NVIDIA H100 80GB HBM3")


@pytest.mark.parametrize("env,cfg,expected,why", [
    (_env(**H100, has_tensorrt=True), {}, ("tensorrt", "cuda", "fp16"), "TensorRT are available"),
    (_env(**H100), {}, ("torch", "cuda", "fp16"), "TensorRT is not installed"),
    (_env(**H100, has_tensorrt=True), {"precision": "bf16"}, ("torch", "cuda", "bf16"), "bf16"),
    (_env(**H100, has_tensorrt=True), {"device": "cpu"}, ("torch", "cpu", "fp32"), "backend.device = 'cpu'"),
    (_env(cpu_bf16=True), {}, ("torch", "cpu", "bf16"), "AMX/AVX512-BF16"),
    (_env(), {}, ("torch", "cpu", "fp32"), "no native bf16"),
    (_env(has_onnxruntime=False), {}, ("torch", "cpu", "fp32"), "no native bf16"),
    (_env(cpu_bf16=True), {"precision": "fp32"}, ("torch", "cpu", "fp32"), "no CUDA GPU"),
    (_env(), {"precision": "bf16"}, ("torch", "cpu", "bf16"), "emulated and slow"),
    (_env(cpu_bf16=True), {"name": "torch"}, ("torch", "cpu", "bf16"), "requested"),
    (_env(**H100), {"name": "torch", "device": "cpu", "precision": "fp32"}, ("torch", "cpu", "fp32"), "requested"),
])
def test_auto_choice_prefers_tensorrt_then_cuda_then_fastest_cpu(env, cfg, expected, why) -> None:
    choice = choose_backend(BackendConfig(**cfg), env)
    assert (choice.name, choice.device, choice.precision) == expected
    assert why in choice.reason


@pytest.mark.parametrize("env,cfg,message", [
    (_env(), {"name": "tensorrt"}, "tensorrt package is not installed"),
    (_env(has_tensorrt=True), {"name": "tensorrt"}, "needs a CUDA GPU"),
    (_env(), {"device": "cuda"}, "backend.device = 'cuda'"),
    (_env(), {"name": "torch", "precision": "fp16"}, "'fp16' needs a CUDA GPU"),
    (_env(has_onnxruntime=False), {"name": "onnxruntime"}, "onnxruntime is not installed"),
    (_env(**H100), {"name": "onnxruntime", "device": "cuda"}, "CPU execution provider"),
    (_env(), {"name": "onnxruntime", "precision": "bf16"}, "'bf16' is not supported"),
    (_env(**H100, has_tensorrt=True), {"name": "tensorrt", "precision": "bf16"}, "'bf16' is not supported"),
])
def test_unavailable_explicit_choices_raise_a_clear_error(env, cfg, message) -> None:
    with pytest.raises(BackendError, match=message):
        choose_backend(BackendConfig(**cfg), env)


def test_probe_reflects_this_machine() -> None:
    env = probe_environment()
    assert env.has_cuda == torch.cuda.is_available()
    assert env.has_tensorrt == HAS_TRT
    assert env.has_onnxruntime == (importlib.util.find_spec("onnxruntime") is not None)
    assert env.cpu_bf16 == (cpu_has_bf16() and torch.backends.mkldnn.is_available())


def test_file_sha256(tmp_path) -> None:
    p = tmp_path / "blob"
    p.write_bytes(b"rtsmlm" * 1000)
    assert file_sha256(p) == hashlib.sha256(b"rtsmlm" * 1000).hexdigest()


# -- opened backends ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    torch.manual_seed(2)
    net = DecodeNet(window=3, width=8, depth=2)
    with torch.no_grad():
        net.head_p[-1].bias.fill_(0.0)
    meta = checkpoint.ModelMeta(width=8, depth=2, window=3, pixel_size_nm=100.0, camera={}, psf={},
                                scales=Scales(50.0, 5000.0, 200.0, 1.0), train={})
    prefix = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save(prefix, net, meta)
    return str(prefix)


MOVIE = np.random.default_rng(4).integers(90, 2000, size=(5, 20, 24)).astype(np.uint16)


def _stream_maps(backend, meta) -> torch.Tensor:
    return _stream_maps_of(backend, meta, MOVIE)


def _stream_maps_of(backend, meta, movie: np.ndarray) -> torch.Tensor:
    got = {}
    loc = StreamingLocalizer(backend, meta, CameraModel(), movie.shape[1:], 0.5, 0.3, batch_size=2,
                             maps_sink=lambda m, f: got.update({i: x.float().clone() for i, x in zip(f, m)}))
    localize_movie(loc, movie)
    return torch.stack([got[i] for i in range(len(movie))])


@pytest.fixture(scope="module")
def reference(ckpt):
    backend, meta = open_backend(BackendConfig(name="torch", device="cpu", precision="fp32", threads=1), ckpt,
                                 jit=False)
    return _stream_maps(backend, meta)


def test_open_backend_logs_the_choice_and_describes_itself(ckpt, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="rtsmlm.localization"):
        backend, meta = open_backend(BackendConfig(name="torch", device="cpu", precision="fp32", threads=1),
                                     ckpt, jit=False)
    assert isinstance(backend, Backend)
    assert meta.window == backend.window == 3
    d = backend.describe()
    assert {"name", "device", "precision", "threads"} <= d.keys()
    assert (d["name"], d["device"], d["precision"], d["threads"]) == ("torch", "cpu", "fp32", 1)
    assert any("inference backend: torch on cpu, fp32" in r.getMessage() and "requested" in r.getMessage()
               for r in caplog.records)


def test_open_backend_names_a_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="missing.json"):
        open_backend(BackendConfig(name="torch", device="cpu"), str(tmp_path / "missing"))


@pytest.mark.slow
def test_torchscript_cpu_backend_matches_eager(ckpt, reference) -> None:
    backend, meta = open_backend(BackendConfig(name="torch", device="cpu", precision="fp32", threads=1), ckpt)
    assert backend.describe()["graph"] == "torchscript+onednn-fusion"
    assert (_stream_maps(backend, meta) - reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fp32_heads", [False, True])
def test_bf16_cpu_backend_stays_close_to_fp32(ckpt, reference, fp32_heads) -> None:
    backend, meta = open_backend(BackendConfig(name="torch", device="cpu", precision="bf16", threads=1), ckpt,
                                 jit=False, fp32_heads=fp32_heads)
    assert backend.describe()["fp32_heads"] == fp32_heads
    maps = _stream_maps(backend, meta)
    # bf16 keeps ~3 significant digits; the maps live in (-1, 3.01).
    assert (maps - reference).abs().max().item() < 0.05
    assert (maps - reference).abs().mean().item() < 5e-3


def test_onnxruntime_backend_streams_the_same_maps(ckpt, reference, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    cfg = BackendConfig(name="onnxruntime", threads=1, engine_cache_dir=str(tmp_path))
    backend, meta = open_backend(cfg, ckpt)
    assert backend.describe()["name"] == "onnxruntime"
    assert (_stream_maps(backend, meta) - reference).abs().max().item() <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the torch CUDA path "
                    "(pinned uploads, autocast, CUDA graphs) cannot run here")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("fp16", 0.05)])
def test_torch_cuda_backend_streams_the_same_maps(ckpt, reference, precision, tol) -> None:
    backend, meta = open_backend(BackendConfig(name="torch", device="cuda", precision=precision), ckpt)
    assert (_stream_maps(backend, meta).cpu() - reference).abs().max().item() <= tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: CUDA graphs cannot run here")
def test_torch_cuda_windows_are_assembled_in_the_graphs_static_input(ckpt) -> None:
    backend, meta = open_backend(BackendConfig(name="torch", device="cuda", precision="fp16"), ckpt)
    loc = StreamingLocalizer(backend, meta, CameraModel(), MOVIE.shape[1:], 0.5, 0.3, batch_size=2)
    plan = loc.plan
    shape = (2 * plan.n_tiles, backend.window * backend.feature_channels, plan.tile_height, plan.tile_width)
    graph = backend._graphs[("decode", shape)]
    buffer = backend.decode_input(shape, graph.static_in.dtype)
    assert buffer.data_ptr() == graph.static_in.data_ptr()  # the replay copies nothing in
    assert backend.decode(buffer).data_ptr() == graph.static_out.data_ptr()  # and nothing out


def test_uint16_frames_travel_as_int16_and_widen_exactly() -> None:
    from rtsmlm.localization.backends.torch_backend import widen_uint16

    frames = np.arange(0, 65536, dtype=np.uint16).reshape(1, 256, 256)
    raw = torch.from_numpy(frames.view(np.int16))  # what the CUDA upload copies to the device
    assert torch.equal(widen_uint16(raw), torch.from_numpy(frames.astype(np.int32)))


# -- test-time flips --------------------------------------------------------------------------------

FP32 = dict(name="torch", device="cpu", precision="fp32", threads=1)


def _mirrored(maps: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Output maps of a mirrored movie expressed in the original's frame: mirrored back, offsets negated."""
    from rtsmlm.localization.net import CH_X, CH_Y

    out = torch.flip(maps, axes).clone()
    for axis, channel in ((-1, CH_X), (-2, CH_Y)):
        if axis in axes:
            out[:, channel] = -out[:, channel]
    return out


@pytest.mark.parametrize("flips", [2, 4])
def test_flipped_backend_streams_the_average_of_the_mirrored_movies(ckpt, flips) -> None:
    from rtsmlm.localization.backends.flips import FLIP_SETS, FlippedBackend

    plain, meta = open_backend(BackendConfig(**FP32), ckpt, jit=False)
    expected = torch.stack([_mirrored(_stream_maps_of(plain, meta, np.flip(MOVIE, axes).copy() if axes else MOVIE),
                                      axes) for axes in FLIP_SETS[flips]]).mean(0)
    backend, meta = open_backend(BackendConfig(**FP32, test_time_flips=flips), ckpt, jit=False)
    assert isinstance(backend, FlippedBackend)
    assert backend.feature_channels == flips * plain.feature_channels
    assert backend.describe()["test_time_flips"] == flips
    assert (_stream_maps(backend, meta) - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("flips,axes", [(4, (-1,)), (4, (-2,)), (2, (-2, -1))])
def test_averaged_maps_mirror_exactly_with_the_movie(ckpt, flips, axes) -> None:
    # Averaging over a group of mirrors makes the answer for a mirrored movie the mirrored answer, whatever the
    # network learned: no side of a pixel is preferred.
    backend, meta = open_backend(BackendConfig(**FP32, test_time_flips=flips), ckpt, jit=False)
    maps = _stream_maps(backend, meta)
    mirrored = _stream_maps_of(backend, meta, np.flip(MOVIE, axes).copy())
    assert (_mirrored(mirrored, axes) - maps).abs().max().item() <= 1e-5


def test_flips_are_refused_for_a_psf_without_mirror_symmetry_and_for_other_counts(ckpt) -> None:
    from rtsmlm.core.config import ConfigError, from_dict
    from rtsmlm.localization.backends.flips import check_flips

    meta = checkpoint.load_meta(ckpt)
    spline = checkpoint.ModelMeta(**{**meta.__dict__, "psf": {"model": "spline", "file": "beads.npz"}})
    with pytest.raises(BackendError, match="test_time_flips = 4 needs a mirror-symmetric PSF.*spline"):
        check_flips(4, spline, "mine")
    check_flips(1, spline, "mine")  # off: any PSF
    with pytest.raises(BackendError, match="test_time_flips = 3"):
        check_flips(3, meta, "mine")
    with pytest.raises(ConfigError, match="backend.test_time_flips"):
        from_dict({"backend": {"test_time_flips": 3}})


# -- TensorRT ----------------------------------------------------------------------------------------

def test_engine_cache_key_changes_with_what_the_engine_is_built_from_not_with_shapes() -> None:
    base = dict(part="decoder", onnx_sha256="f" * 64, precision="fp16", tensorrt_version="10.3.0",
                compute_capability="9.0", builder=(("workspace_bytes", 2 << 30), ("strongly_typed", False)))
    key = EngineKey(**base)
    assert key.digest() == EngineKey(**base).digest()
    variants = [dict(part="encoder"), dict(onnx_sha256="e" * 64), dict(precision="fp32"),
                dict(tensorrt_version="10.4.0"), dict(compute_capability="8.0"),
                dict(builder=(("workspace_bytes", 1 << 30), ("strongly_typed", False)))]
    digests = {EngineKey(**{**base, **v}).digest() for v in variants}
    assert key.digest() not in digests and len(digests) == len(variants)
    assert key.prefix().startswith("decoder-fp16-")


def test_a_cached_engine_is_found_for_any_shape_its_profile_covers(tmp_path) -> None:
    import json
    from dataclasses import asdict

    from rtsmlm.localization.backends.tensorrt import find_cached_engine, profile_tag, rounded_range

    key = EngineKey("decoder", "a" * 64, "fp16", "10.3.0", "9.0", (("workspace_bytes", 1),))
    small, big = rounded_range(72, 256, 256, 12, 4), rounded_range(72, 1024, 1024, 16, 4)
    assert small.max == (16, 72, 256, 256) and small.opt == (12, 72, 256, 256)  # batch to 2**k, sides to 256
    assert rounded_range(72, 300, 260, 16, 4).max == (16, 72, 512, 512)
    for shapes in (small, big):
        engine = tmp_path / f"{key.prefix()}-{profile_tag(shapes)}.engine"
        engine.write_bytes(b"engine")
        engine.with_suffix(".json").write_text(json.dumps({**asdict(key), "shapes": asdict(shapes)}))
    found = find_cached_engine(tmp_path, key, (16, 72, 256, 256))  # another batch than built for: reused
    assert found is not None and found[1] == small  # the smallest covering profile
    assert find_cached_engine(tmp_path, key, (8, 72, 512, 768))[1] == big
    assert find_cached_engine(tmp_path, key, (32, 72, 256, 256)) is None
    other = EngineKey("decoder", "b" * 64, "fp16", "10.3.0", "9.0", (("workspace_bytes", 1),))
    assert find_cached_engine(tmp_path, other, (8, 72, 256, 256)) is None  # another ONNX: never reused


def test_shape_ranges_cover_streaming_and_partial_batches() -> None:
    r = shape_range(72, 256, 320, 8, 4)
    assert r.min == (1, 72, 4, 4) and r.opt == r.max == (8, 72, 256, 320)
    assert r.covers((1, 72, 256, 320)) and r.covers((8, 72, 256, 320))
    assert not r.covers((9, 72, 256, 320)) and not r.covers((8, 72, 260, 320))
    wider = merged(r, (12, 72, 512, 320))
    assert wider.covers((12, 72, 512, 320)) and wider.min == r.min and wider.opt == r.opt
    with pytest.raises(ValueError, match="height 250"):
        shape_range(72, 250, 256, 8, 4)
    assert isinstance(r, ShapeRange)


def test_precision_handling_by_tensorrt_version() -> None:
    assert is_strongly_typed("10.13.0.35") and is_strongly_typed("11.0.0") and not is_strongly_typed("9.3.0")
    assert onnx_precision("10.13.0", "fp16") == "fp16"  # one strongly typed fp16 path on TensorRT 10 and 11
    assert onnx_precision("9.3.0", "fp16") == "fp32"  # TensorRT 9: fp32 ONNX + FP16 builder flag
    assert onnx_precision("11.0.0", "fp16") == "fp16"  # strongly typed: the ONNX carries the precision
    assert onnx_precision("11.0.0", "fp32") == "fp32"


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-package message cannot be shown")
def test_tensorrt_backend_without_tensorrt_says_what_to_install(tmp_path) -> None:
    from rtsmlm.localization.backends.tensorrt import TensorRTBackend

    with pytest.raises(BackendError, match="pip install tensorrt"):
        TensorRTBackend(DecodeNet(width=4), "0" * 64, tmp_path)


@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()),
                    reason="TensorRT and a CUDA GPU are not both available here; the engine build and run "
                           "path is untested on this machine")
def test_tensorrt_backend_streams_close_maps_and_caches_engines(ckpt, reference, tmp_path) -> None:
    cfg = BackendConfig(name="tensorrt", precision="fp16", engine_cache_dir=str(tmp_path))
    backend, meta = open_backend(cfg, ckpt)
    assert (_stream_maps(backend, meta).cpu() - reference).abs().max().item() < 0.05
    engines = sorted((tmp_path / "tensorrt").glob("*.engine"))
    assert len(engines) == 2
    stamps = [p.stat().st_mtime_ns for p in engines]
    backend2, meta2 = open_backend(cfg, ckpt)
    _stream_maps(backend2, meta2)
    assert [p.stat().st_mtime_ns for p in engines] == stamps  # loaded from the cache, not rebuilt


# -- rtsmlm bench ------------------------------------------------------------------------------------

def test_bench_main_times_each_backend_and_writes_json(ckpt, tmp_path, capsys) -> None:
    import json

    from rtsmlm.cli.bench import bench_main

    out = tmp_path / "bench.json"
    code = bench_main(["--checkpoint", ckpt, "--backends", "torch:fp32,torch:fp32+flips2", "--sizes", "16,20",
                       "--threads", "1", "--seconds", "0", "--min-frames", "6", "--pool", "3", "--batch", "2",
                       "--no-jit", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["spec"], r["height"], r["width"]) for r in rows] == [
        ("torch:fp32", 16, 16), ("torch:fp32", 20, 20), ("torch:fp32+flips2", 16, 16), ("torch:fp32+flips2", 20, 20)]
    assert [r["describe"].get("test_time_flips") for r in rows] == [None, None, 2, 2]
    for r in rows:
        assert r["frames"] >= 6 and r["frames_per_s"] > 0
        assert r["mb_per_s"] == pytest.approx(r["frames_per_s"] * r["height"] * r["width"] * 2 / 1e6)
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
        assert (r["precision"], r["threads"], r["batch"]) == ("fp32", 1, 2)
    assert report["machine"]["cores"] >= 1 and len(report["machine"]["load_avg_1_5_15"]) == 3
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "16x16" in printed and "20x20" in printed


def test_bench_accuracy_scores_every_backend_with_the_evaluate_code(ckpt, tmp_path, capsys) -> None:
    import json

    from rtsmlm.cli.bench import bench_main

    out = tmp_path / "acc.json"
    code = bench_main(["--checkpoint", ckpt, "--backends", "torch:fp32,torch:bf16", "--sizes", "16", "--threads",
                       "1", "--accuracy", "6", "--no-jit", "--out", str(tmp_path / "acc"), "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["accuracy"]
    assert [r["spec"] for r in rows] == ["torch:fp32", "torch:bf16"]
    assert rows[0]["rel_diff_jaccard"] in (0.0, None)
    assert all(r["n_true"] > 0 for r in rows)
    assert (tmp_path / "acc" / "truth.csv").is_file() and (tmp_path / "acc" / "locs_torch_bf16.csv").is_file()
    assert "rtsmlm evaluate --locs" in rows[1]["command"]


def test_bench_rejects_a_malformed_backend_spec(capsys) -> None:
    from rtsmlm.cli.bench import bench_main

    assert bench_main(["--backends", "torch:fp32:cpu:extra", "--json", ""]) == 2
    assert "NAME[:PRECISION[:DEVICE]]" in capsys.readouterr().err
    assert bench_main(["--backends", "torch:fp32+flips3", "--json", ""]) == 2
    assert "'flips3' is unknown; one of '+fp32heads', '+flips2', '+flips4'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the acceptance run itself applies")
def test_the_gpu_acceptance_run_says_no_gpu_in_one_line_on_a_cpu_machine(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_acceptance.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "acc")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().startswith("no GPU:") and len(proc.stdout.splitlines()) == 1
    assert not (tmp_path / "acc").exists()  # nothing else ran


def test_a_gpu_runs_the_larger_sibling_of_a_shipped_model_and_says_so(caplog):
    """model.larger_on_gpu: broad_2d on a GPU backend becomes broad_2d_wide, logged; thresholds calibrated for
    broad_2d carry over to it; a CPU, an unshipped path, or the key off keep the model."""
    from rtsmlm.core import config as rconfig
    from rtsmlm.localization.checkpoint import LARGER_ON_GPU, for_backend, shipped_models, thresholds_for_run

    assert set(LARGER_ON_GPU.values()) <= set(shipped_models())  # every sibling ships with the package
    for name, sibling in LARGER_ON_GPU.items():  # wider, the same inputs and units: a config serves both
        meta, larger = checkpoint.load_meta(name), checkpoint.load_meta(sibling)
        assert larger.width > meta.width and (larger.window, larger.scales) == (meta.window, meta.scales)
    calibrated = rconfig.from_dict({"model": {"checkpoint": "broad_2d", "p_threshold": 0.35, "min_photons": 200.0,
                                              "thresholds_for": "broad_2d"}})
    with caplog.at_level(logging.INFO, logger="rtsmlm.localization"):
        on_gpu = model_for_backend(calibrated, _env(**H100))
    assert on_gpu.model.checkpoint == "broad_2d_wide"
    assert "broad_2d -> broad_2d_wide" in caplog.text and "model.larger_on_gpu = false" in caplog.text
    run_model = thresholds_for_run(on_gpu.model)
    assert (run_model.p_threshold, run_model.min_photons, run_model.thresholds_for) == (0.35, 200.0, "broad_2d_wide")
    # Hand-set thresholds without thresholds_for apply to any model; those chosen for another model do not.
    by_hand = rconfig.from_dict({"model": {"checkpoint": "broad_2d", "p_threshold": 0.35}})
    assert thresholds_for_run(model_for_backend(by_hand, _env(**H100)).model).p_threshold == 0.35
    other = rconfig.from_dict({"model": {"checkpoint": "broad_2d", "p_threshold": 0.35, "thresholds_for": "default"}})
    assert thresholds_for_run(model_for_backend(other, _env(**H100)).model).p_threshold < 0
    assert model_for_backend(on_gpu, _env(**H100)) is on_gpu  # idempotent: the sibling has none
    assert model_for_backend(calibrated, _env()) is calibrated  # CPU
    off = rconfig.replace(calibrated.model, larger_on_gpu=False)
    assert for_backend(off, "cuda") is off
    path = rconfig.replace(calibrated.model, checkpoint="/data/models/broad_2d")
    assert for_backend(path, "cuda") is path  # a user's own checkpoint is run as named


def test_a_bf16_cpu_with_two_threads_runs_the_mid_size_sibling_and_says_so(caplog):
    """model.larger_on_bf16_cpu: broad_2d on a CPU backend resolved to bf16 with at least two threads and a core
    to spare becomes broad_2d_mid (pruned from the GPU sibling: same inputs and units, fewer channels than it,
    more than broad_2d), logged, thresholds calibrated for broad_2d carried over; fp32, one thread, no spare
    core (this 2-core machine's case: measured borderline), or the key off keep broad_2d; a GPU still runs
    the GPU sibling."""
    from rtsmlm.core import config as rconfig
    from rtsmlm.localization.checkpoint import LARGER_ON_BF16_CPU, LARGER_ON_GPU, for_backend, shipped_models

    assert set(LARGER_ON_BF16_CPU.values()) <= set(shipped_models())
    for name, sibling in LARGER_ON_BF16_CPU.items():
        meta, mid, wide = (checkpoint.load_meta(m) for m in (name, sibling, LARGER_ON_GPU[name]))
        assert meta.width < mid.width < wide.width
        assert (mid.window, mid.scales) == (meta.window, meta.scales)
    calibrated = rconfig.from_dict({"model": {"checkpoint": "broad_2d", "p_threshold": 0.35, "thresholds_for": "broad_2d"},
                                    "backend": {"threads": 2}})
    with caplog.at_level(logging.INFO, logger="rtsmlm.localization"):
        on_cpu = model_for_backend(calibrated, _env(cpu_bf16=True, cpu_count=4))
    assert (on_cpu.model.checkpoint, on_cpu.model.thresholds_for, on_cpu.model.p_threshold) == (
        "broad_2d_mid", "broad_2d_mid", 0.35)
    assert "broad_2d -> broad_2d_mid" in caplog.text and "model.larger_on_bf16_cpu = false" in caplog.text
    assert model_for_backend(on_cpu, _env(cpu_bf16=True, cpu_count=4)) is on_cpu  # idempotent
    assert model_for_backend(calibrated, _env(cpu_bf16=True, cpu_count=2)) is calibrated  # no core to spare
    assert model_for_backend(calibrated, _env(cpu_bf16=False, cpu_count=4)) is calibrated  # fp32
    fp32 = rconfig.replace(calibrated, backend={**rconfig.to_dict(calibrated.backend), "precision": "fp32"})
    assert model_for_backend(fp32, _env(cpu_bf16=True, cpu_count=4)) is fp32
    assert for_backend(calibrated.model, "cpu", "bf16", threads=1, cpu_count=4) is calibrated.model
    assert for_backend(calibrated.model, "cpu", "bf16", threads=3, cpu_count=4).checkpoint == "broad_2d_mid"
    off = rconfig.replace(calibrated.model, larger_on_bf16_cpu=False)
    assert for_backend(off, "cpu", "bf16", threads=3, cpu_count=4) is off
    assert model_for_backend(calibrated, _env(cpu_bf16=True, **H100)).model.checkpoint == "broad_2d_wide"
    # backend.threads = 0 (all cores but one) resolves against the machine described, not the one running the test
    all_but_one = rconfig.replace(calibrated, backend={**rconfig.to_dict(calibrated.backend), "threads": 0})
    assert model_for_backend(all_but_one, _env(cpu_bf16=True, cpu_count=4)).model.checkpoint == "broad_2d_mid"
    assert model_for_backend(all_but_one, _env(cpu_bf16=True, cpu_count=2)) is all_but_one
