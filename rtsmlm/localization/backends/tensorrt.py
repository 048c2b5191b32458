"""TensorRT backend (the production path on NVIDIA GPUs).

The encoder and decoder graphs are exported to ONNX (:mod:`rtsmlm.localization.onnx_export`, dynamic batch and
image size) and each is built into an engine with one optimization profile covering batch 1..B and
image sizes from ``2**depth`` up to the streaming tile size. FP16 is one strongly typed path on TensorRT
10 and 11: the ONNX itself is exported in fp16 (fp16 features and maps, so the feature cache takes 2
bytes an element, as the localizer sizes it).
Serialized engines are cached on disk under a key of what they are built from — the ONNX file's sha256
(so a torch or exporter upgrade that changes the graph never reuses a stale engine), the TensorRT version,
the GPU's compute capability and the builder settings (:class:`EngineKey`) — and not of the shapes: each
engine's optimization profile is stored beside it, and any cached engine whose profile covers the shape
asked for is used. Profiles are rounded up (batch to a power of two, height and width to a multiple of
256) so that a batch size chosen from the free memory at start-up does not force a rebuild. A timing cache
per TensorRT version and GPU makes rebuilds fast. Engines run with ``execute_async_v3`` on a CUDA stream
of the backend's own (TensorRT synchronises on every call enqueued on the legacy default stream), ordered
after torch's current stream and before it again (``wait_stream``), with ``record_stream`` so the caching
allocator keeps the tensors alive across the two streams. A tensor of 2³¹ elements or more is beyond
TensorRT: the localizer caps its tiles per call by :attr:`TensorRTBackend.max_tensor_elements`.

What has been run: the export, the cache keys and lookup, the shape ranges, the element cap and the
fallback decision are unit-tested (tests/test_backends.py, tests/test_export.py, tests/test_localizer.py). TensorRT itself cannot be installed where this was
written, so :class:`TensorRTBackend` (engine build, deserialization, execution) has NOT been run; it is
written against the TensorRT 10 Python API documentation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtsmlm.io.paths import file_sha256
from rtsmlm.localization.backends.protocol import BackendError
from rtsmlm.localization.net import DecodeNet, parameter_count
from rtsmlm.localization.onnx_export import DECODER_INPUT, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUT, cached_onnx

log = logging.getLogger("rtsmlm.localization")

WORKSPACE_BYTES = 2 << 30
"""Builder scratch memory limit (tactics needing more are skipped)."""


@dataclass(frozen=True)
class ShapeRange:
    """An optimization profile: the min / opt / max input shape (N, C, H, W) of one graph."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def covers(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


def shape_range(channels: int, height: int, width: int, batch: int, size_multiple: int) -> ShapeRange:
    """Profile for streaming ``batch`` images of ``height`` x ``width``: optimised for exactly that,
    valid down to one image of ``size_multiple`` pixels (the last, partial batches of a run)."""
    for name, v in (("height", height), ("width", width)):
        if v < size_multiple or v % size_multiple:
            raise ValueError(f"TensorRT profile {name} {v} is not a positive multiple of {size_multiple}.")
    if batch < 1:
        raise ValueError(f"TensorRT profile batch must be >= 1, got {batch}.")
    opt = (batch, channels, height, width)
    return ShapeRange((1, channels, size_multiple, size_multiple), opt, opt)


def merged(a: ShapeRange, shape: tuple[int, int, int, int]) -> ShapeRange:
    """``a`` widened so that its max covers ``shape`` (for a rebuild when a larger input arrives)."""
    mx = tuple(max(x, s) for x, s in zip(a.max, shape))
    return ShapeRange(a.min, a.opt, mx)  # type: ignore[arg-type]


def rounded_range(channels: int, height: int, width: int, batch: int, size_multiple: int) -> ShapeRange:
    """The profile built for streaming ``batch`` images of ``height`` x ``width``: optimised for exactly that,
    valid from one image of ``size_multiple`` pixels up to the batch rounded up to a power of two and the
    sides rounded up to a multiple of 256 — a run whose batch (chosen from free memory) or tile differs a
    little reuses the engine instead of rebuilding it for minutes."""
    exact = shape_range(channels, height, width, batch, size_multiple)
    up = (1 << max(0, batch - 1).bit_length(), channels, -(-height // 256) * 256, -(-width // 256) * 256)
    return ShapeRange(exact.min, exact.opt, up)


@dataclass(frozen=True)
class EngineKey:
    """What a serialized engine is built from (not its shapes: the profile is stored beside the engine)."""

    part: str  # 'encoder' or 'decoder'
    onnx_sha256: str
    precision: str
    tensorrt_version: str
    compute_capability: str  # '9.0' for an H100/H200
    builder: tuple[tuple[str, Any], ...]  # builder settings: workspace, strongly typed, ...

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def prefix(self) -> str:
        return f"{self.part}-{self.precision}-{self.digest()}"


def profile_tag(shapes: ShapeRange) -> str:
    return "x".join(str(v) for v in shapes.max)


def find_cached_engine(folder: Path, key: EngineKey, shape: tuple[int, int, int, int]) -> tuple[Path, ShapeRange] | None:
    """The cached engine of ``key`` whose profile covers ``shape`` (the smallest such), or None."""
    best: tuple[int, Path, ShapeRange] | None = None
    for meta in folder.glob(f"{key.prefix()}-*.json"):
        try:
            stored = json.loads(meta.read_text())["shapes"]
            shapes = ShapeRange(tuple(stored["min"]), tuple(stored["opt"]), tuple(stored["max"]))  # type: ignore[arg-type]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        engine = meta.with_suffix(".engine")
        if engine.is_file() and shapes.covers(shape):
            size = int(np.prod(shapes.max))
            if best is None or size < best[0]:
                best = (size, engine, shapes)
    return (best[1], best[2]) if best is not None else None


def is_strongly_typed(tensorrt_version: str) -> bool:
    """Networks are built strongly typed (precision from the ONNX: fp16 I/O, an fp16 feature cache) on
    TensorRT 10, where weak typing with the FP16 flag is deprecated (10.12), and 11, where it is gone;
    only TensorRT 9 and older take an fp32 ONNX and the FP16 builder flag."""
    return int(tensorrt_version.split(".")[0]) >= 10


def onnx_precision(tensorrt_version: str, precision: str) -> str:
    """Precision of the ONNX to export for ``precision`` on this TensorRT version."""
    return precision if is_strongly_typed(tensorrt_version) else "fp32"


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("the tensorrt backend needs NVIDIA TensorRT (pip install tensorrt, on a machine "
                           "with an NVIDIA GPU and driver); set backend.name = 'auto' to fall back.") from None
    return trt


_LOGGER: Any = None


def trt_logger(trt: Any) -> Any:
    """One TensorRT logger for the process (TensorRT expects a single logger object)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def build_serialized_engine(trt: Any, onnx_path: Path, input_name: str, shapes: ShapeRange, precision: str,
                            workspace_bytes: int = WORKSPACE_BYTES, timing_cache: Path | None = None) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one optimization profile; ``timing_cache`` is
    read before and written after the build (tactic timings: later builds take seconds, not minutes)."""
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly = is_strongly_typed(trt.__version__)
    if strongly and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16" and not strongly:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} for shapes {shapes}.")
    if cache is not None and timing_cache is not None:
        tmp = timing_cache.with_name(timing_cache.name + f".tmp{os.getpid()}")
        tmp.write_bytes(bytes(cache.serialize()))
        tmp.replace(timing_cache)
    return bytes(serialized)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise BackendError(f"TensorRT engine tensor has unsupported data type {dtype}.")
    return table[dtype]


class _Engine:
    """One deserialized engine with its execution context and I/O names."""

    def __init__(self, trt: Any, runtime: Any, blob: bytes, shapes: ShapeRange, input_name: str,
                 output_name: str, stream: torch.cuda.Stream) -> None:
        self.stream = stream
        self.engine = runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendError("TensorRT could not deserialize the cached engine.")
        self.context = self.engine.create_execution_context()
        self.shapes = shapes
        self.input_name, self.output_name = input_name, output_name
        self.in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(input_name))
        self.out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(output_name))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.in_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise BackendError(f"TensorRT rejected input shape {tuple(x.shape)} (profile {self.shapes}).")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.out_dtype,
                          device=x.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        # The engine's own stream runs after the torch ops that produced x, and torch's stream waits for it
        # before using out; record_stream keeps both tensors alive until the engine's stream is done.
        current = torch.cuda.current_stream(x.device)
        self.stream.wait_stream(current)
        x.record_stream(self.stream)
        out.record_stream(self.stream)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed.")
        current.wait_stream(self.stream)
        return out


class TensorRTBackend:
    """Runs the encoder and decoder as two TensorRT engines on a CUDA GPU.

    Engines are built (or loaded from ``cache_dir``) in :meth:`warmup`, when the streaming shapes are
    known; an input larger than the profile triggers a rebuild with a widened profile.
    """

    name = "tensorrt"
    max_tensor_elements = 2**31 - 1
    """TensorRT's limit on a tensor's element count; the localizer sizes its calls below it."""

    def __init__(self, model: DecodeNet, model_hash: str, cache_dir: str | Path, precision: str = "fp16",
                 device: str = "cuda") -> None:
        self._trt = _import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs a CUDA GPU, and torch sees none.")
        if precision not in ("fp16", "fp32"):
            raise BackendError(f"backend.precision {precision!r} is not supported by TensorRT here; use 'fp16' or 'fp32'.")
        from rtsmlm.localization.backends.torch_backend import HostUploader

        self.device = str(torch.device(device))
        self._dev = torch.device(device)
        self.precision = precision
        self.window = model.window
        self.in_channels = model.in_channels
        self.feature_channels = model.width
        self.size_multiple = model.size_multiple
        self.threads = 0
        self.n_parameters = parameter_count(model)
        self.model_hash = model_hash
        self.cache_dir = Path(cache_dir).expanduser()
        self.gpu_name = torch.cuda.get_device_name(self._dev)
        major, minor = torch.cuda.get_device_capability(self._dev)
        self.compute_capability = f"{major}.{minor}"
        self.exported = cached_onnx(model, model_hash, self.cache_dir,
                                    onnx_precision(self._trt.__version__, precision))
        self._onnx_sha256 = {"encoder": file_sha256(self.exported.encoder),
                             "decoder": file_sha256(self.exported.decoder)}
        self._runtime = self._trt.Runtime(trt_logger(self._trt))
        self._stream = torch.cuda.Stream(self._dev)
        self._engines: dict[str, _Engine] = {}
        self._uploader = HostUploader(self._dev)

    def engine_key(self, part: str) -> EngineKey:
        builder = (("workspace_bytes", WORKSPACE_BYTES), ("strongly_typed", is_strongly_typed(self._trt.__version__)))
        return EngineKey(part, self._onnx_sha256[part], self.precision, self._trt.__version__,
                         self.compute_capability, builder)

    def _load_or_build(self, part: str, shapes: ShapeRange) -> _Engine:
        onnx_path = self.exported.encoder if part == "encoder" else self.exported.decoder
        in_name, out_name = ((ENCODER_INPUT, ENCODER_OUTPUT) if part == "encoder" else (DECODER_INPUT, DECODER_OUTPUT))
        key = self.engine_key(part)
        folder = self.cache_dir / "tensorrt"
        found = find_cached_engine(folder, key, shapes.max) if folder.is_dir() else None
        if found is not None:
            try:
                return _Engine(self._trt, self._runtime, found[0].read_bytes(), found[1], in_name, out_name, self._stream)
            except BackendError:
                log.warning("cached TensorRT engine %s is unreadable; rebuilding", found[0])
        log.info("building TensorRT %s engine (%s, %s) — this takes a minute", part, self.precision, shapes)
        folder.mkdir(parents=True, exist_ok=True)
        timing = folder / f"timing-{self._trt.__version__}-sm{self.compute_capability}.cache"
        blob = build_serialized_engine(self._trt, onnx_path, in_name, shapes, self.precision, timing_cache=timing)
        path = folder / f"{key.prefix()}-{profile_tag(shapes)}.engine"
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_bytes(blob)
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps({**asdict(key), "shapes": asdict(shapes)}, indent=2))
        return _Engine(self._trt, self._runtime, blob, shapes, in_name, out_name, self._stream)

    def _engine(self, part: str, shape: tuple[int, int, int, int]) -> _Engine:
        engine = self._engines.get(part)
        if engine is None or not engine.shapes.covers(shape):
            base = engine.shapes if engine is not None else rounded_range(shape[1], shape[2], shape[3], shape[0],
                                                                           self.size_multiple)
            engine = self._engines[part] = self._load_or_build(part, merged(base, shape))
        return engine

    def warmup(self, height: int, width: int, encode_batch: int, decode_batch: int) -> None:
        c = self.feature_channels
        self._engines["encoder"] = self._load_or_build("encoder", rounded_range(self.in_channels, height, width, encode_batch,
                                                                                self.size_multiple))
        self._engines["decoder"] = self._load_or_build(
            "decoder", rounded_range(self.window * c, height, width, decode_batch, self.size_multiple))
        feats = self.encode(torch.zeros(encode_batch, self.in_channels, height, width, device=self._dev))
        self.decode(torch.zeros(decode_batch, self.window * c, height, width, device=self._dev, dtype=feats.dtype))
        torch.cuda.synchronize(self._dev)

    def upload(self, frames: np.ndarray) -> torch.Tensor:
        return self._uploader(frames)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self._dev, non_blocking=True)
        return self._engine("encoder", tuple(frames.shape))(frames)  # type: ignore[arg-type]

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self._dev, non_blocking=True)
        return self._engine("decoder", tuple(features.shape))(features)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "device": self.device, "precision": self.precision, "threads": self.threads,
            "parameters": self.n_parameters, "window": self.window, "width": self.feature_channels,
            "size_multiple": self.size_multiple, "tensorrt": self._trt.__version__, "gpu": self.gpu_name,
            "strongly_typed": is_strongly_typed(self._trt.__version__), "compute_capability": self.compute_capability,
        }
