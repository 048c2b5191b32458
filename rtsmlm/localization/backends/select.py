"""Choosing and opening a backend: ``backend = "auto"`` picks TensorRT > torch CUDA > the fastest CPU
option, and says which and why.

The choice is a pure function of the configuration and a probe of the machine
(:class:`Environment`), so the decision is testable on machines without a GPU or TensorRT.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rtsmlm.io.paths import file_sha256
from rtsmlm.localization.backends.flips import FlippedBackend, check_flips
from rtsmlm.localization.backends.protocol import Backend, BackendError

if TYPE_CHECKING:
    from rtsmlm.core.config import BackendConfig, Config
    from rtsmlm.localization.checkpoint import ModelMeta

log = logging.getLogger("rtsmlm.localization")


@dataclass(frozen=True)
class Environment:
    """What this machine offers for inference."""

    has_cuda: bool
    gpu_name: str
    has_tensorrt: bool
    has_onnxruntime: bool
    cpu_bf16: bool  # AMX-BF16 or AVX512-BF16: bf16 matrix instructions oneDNN uses
    cpu_count: int


@dataclass(frozen=True)
class BackendChoice:
    """The backend to open and the sentence explaining the choice (logged by :func:`open_backend`)."""

    name: str
    device: str
    precision: str
    reason: str


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be conservative, fp32 is always correct
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def probe_environment() -> Environment:
    """Probe this machine (imports torch; TensorRT and ONNX Runtime are only looked up, not imported)."""
    import torch

    has_cuda = torch.cuda.is_available()
    return Environment(
        has_cuda=has_cuda,
        gpu_name=torch.cuda.get_device_name(0) if has_cuda else "",
        has_tensorrt=importlib.util.find_spec("tensorrt") is not None,
        has_onnxruntime=importlib.util.find_spec("onnxruntime") is not None,
        cpu_bf16=cpu_has_bf16() and torch.backends.mkldnn.is_available(),
        cpu_count=os.cpu_count() or 1,
    )


def choose_backend(cfg: "BackendConfig", env: Environment) -> BackendChoice:
    """Resolve ``cfg`` ('auto' name/device/precision allowed) into one concrete backend on ``env``:
    TensorRT when a CUDA GPU and TensorRT are present, else torch on CUDA, else torch on the CPU (bf16
    where the CPU has native bf16, else fp32). ONNX Runtime is used when asked for by name.

    Raises :class:`BackendError` when an explicitly requested backend, device or precision is not
    available here; 'auto' never raises.
    """
    name, device, precision = cfg.name, cfg.device, cfg.precision
    if device == "cuda" and not env.has_cuda:
        raise BackendError("backend.device = 'cuda' but no CUDA GPU is visible to torch; "
                           "set backend.device = 'cpu' or 'auto'.")
    gpu_ok = env.has_cuda and device in ("auto", "cuda")

    if name == "tensorrt":
        if not env.has_tensorrt:
            raise BackendError("backend.name = 'tensorrt' but the tensorrt package is not installed "
                               "(pip install tensorrt on a machine with an NVIDIA GPU), or set backend.name = 'auto'.")
        if not gpu_ok:
            raise BackendError("backend.name = 'tensorrt' needs a CUDA GPU (backend.device 'cuda' or 'auto').")
        if precision == "bf16":
            raise BackendError("backend.precision = 'bf16' is not supported by the TensorRT backend; use 'fp16' or 'fp32'.")
        return BackendChoice("tensorrt", "cuda", "fp16" if precision == "auto" else precision,
                             "backend.name = 'tensorrt' requested")
    if name == "onnxruntime":
        if not env.has_onnxruntime:
            raise BackendError("backend.name = 'onnxruntime' but onnxruntime is not installed "
                               "(pip install 'rtsmlm[onnx]').")
        if device == "cuda":
            raise BackendError("the onnxruntime backend runs ONNX Runtime's CPU execution provider; "
                               "for a GPU use backend.name = 'tensorrt' or 'torch'.")
        if precision not in ("auto", "fp32"):
            raise BackendError(f"backend.precision = {precision!r} is not supported by the onnxruntime CPU "
                               "backend; use 'fp32' (or backend.name = 'torch' for bf16).")
        return BackendChoice("onnxruntime", "cpu", "fp32", "backend.name = 'onnxruntime' requested")
    if name == "torch":
        if gpu_ok:
            return BackendChoice("torch", "cuda", "fp16" if precision == "auto" else precision,
                                 f"backend.name = 'torch' requested; CUDA GPU {env.gpu_name} present")
        return _torch_cpu(precision, env, "backend.name = 'torch' requested")
    if name != "auto":
        raise BackendError(f"backend.name {name!r} is not one of 'auto', 'tensorrt', 'torch', 'onnxruntime'.")

    # auto: TensorRT > torch CUDA > fastest CPU option.
    if gpu_ok and env.has_tensorrt and precision != "bf16":
        return BackendChoice("tensorrt", "cuda", "fp16" if precision == "auto" else precision,
                             f"CUDA GPU {env.gpu_name} and TensorRT are available (fastest path)")
    if gpu_ok:
        why = "TensorRT is not installed" if not env.has_tensorrt else "backend.precision = 'bf16' (TensorRT runs fp16/fp32)"
        return BackendChoice("torch", "cuda", "fp16" if precision == "auto" else precision,
                             f"CUDA GPU {env.gpu_name} present but {why}: torch on CUDA")
    no_gpu = "no CUDA GPU" if not env.has_cuda else "backend.device = 'cpu'"
    return _torch_cpu(precision, env, no_gpu)


def _torch_cpu(precision: str, env: Environment, why: str) -> BackendChoice:
    if precision == "fp16":
        raise BackendError("backend.precision = 'fp16' needs a CUDA GPU; on the CPU use 'bf16' or 'fp32'.")
    if precision == "auto":
        if env.cpu_bf16:
            return BackendChoice("torch", "cpu", "bf16", f"{why}; the CPU has AMX/AVX512-BF16: torch with bf16 "
                                 "autocast is the fastest CPU option")
        # fp32: torch's TorchScript/oneDNN graphs measured slightly faster than ONNX Runtime's CPU provider
        # (default model, 1 thread: 8.1 vs 9.0 CPU-ms per 64x64 frame, 133 vs 147 per 256x256 frame).
        return BackendChoice("torch", "cpu", "fp32", f"{why}; the CPU has no native bf16: torch fp32 "
                             "(TorchScript + oneDNN), the fastest fp32 CPU option measured")
    if precision == "bf16" and not env.cpu_bf16:
        why += " (warning: this CPU has no native bf16, bf16 is emulated and slow)"
    return BackendChoice("torch", "cpu", precision, why)


def default_threads(cpu_count: int | None = None) -> int:
    """Intra-op threads for ``backend.threads = 0``: all cores but one (of ``cpu_count``, default this
    machine's), at least one.

    The run's other threads (acquisition, writers, rendering, the stream) need a core, and torch's and
    ONNX Runtime's thread pools wait for every thread at every layer: measured on this 2-core machine
    under load, bf16 64x64 frames ran at 119 frames/s with one thread and 3.5 frames/s with two."""
    return max(1, (cpu_count or os.cpu_count() or 1) - 1)


def backend_threads(cfg: "BackendConfig", cpu_count: int | None = None) -> int:
    """The intra-op threads a backend of ``cfg`` runs on a machine of ``cpu_count`` cores (default this one):
    ``backend.threads``, or :func:`default_threads` for 0."""
    return cfg.threads or default_threads(cpu_count)


def model_for_backend(cfg: "Config", env: Environment | None = None) -> "Config":
    """``cfg`` with ``[model]`` as a live run on the backend ``cfg.backend`` resolves to on this machine (or
    ``env``) uses it: on a GPU, or a CPU with native bf16, two threads and a core to spare, a shipped model's larger
    sibling (:func:`rtsmlm.localization.checkpoint.for_backend`).
    Idempotent, so every entry point of a live run may apply it."""
    from dataclasses import replace

    from rtsmlm.localization.checkpoint import for_backend

    env = env or probe_environment()
    choice = choose_backend(cfg.backend, env)
    threads = backend_threads(cfg.backend, env.cpu_count)
    model = for_backend(cfg.model, choice.device, choice.precision, threads, env.cpu_count)
    return cfg if model is cfg.model else replace(cfg, model=model)


def open_backend(cfg: "BackendConfig", checkpoint: str, *, jit: bool = True,
                 fp32_heads: bool = False) -> tuple[Backend, "ModelMeta"]:
    """Load ``checkpoint`` ('default' or a path) and open the backend ``cfg`` asks for; logs the choice
    and the reason at INFO level. Returns the backend and the checkpoint's metadata. With
    ``cfg.test_time_flips`` > 1 the backend is wrapped in a :class:`FlippedBackend`.

    ``jit=False`` keeps the torch CPU backend in eager mode (no TorchScript tracing, which costs
    seconds at the first call of each half; useful for short runs and tests). ``fp32_heads=True`` runs
    the output heads of the torch CPU bf16 backend in fp32 (smaller bf16 error, slower decoder)."""
    from rtsmlm.localization import checkpoint as ckpt

    model, meta = ckpt.load(checkpoint, device="cpu")
    check_flips(cfg.test_time_flips, meta, checkpoint)
    choice = choose_backend(cfg, probe_environment())
    threads = backend_threads(cfg)
    backend: Backend
    if choice.name == "torch":
        from rtsmlm.localization.backends.torch_backend import TorchBackend

        backend = TorchBackend(model, device=choice.device, precision=choice.precision, threads=threads,
                               jit=jit, fp32_heads=fp32_heads)
    else:
        model_hash = file_sha256(ckpt.resolve(checkpoint).with_suffix(".safetensors"))
        cache_dir = Path(cfg.engine_cache_dir).expanduser()
        if choice.name == "onnxruntime":
            from rtsmlm.localization.backends.onnxrt import OnnxRuntimeBackend

            backend = OnnxRuntimeBackend(model, model_hash, cache_dir, threads=threads)
        else:
            from rtsmlm.localization.backends.tensorrt import TensorRTBackend

            backend = TensorRTBackend(model, model_hash, cache_dir, precision=choice.precision)
    log.info("inference backend: %s on %s, %s — %s", choice.name, choice.device, choice.precision, choice.reason)
    if cfg.test_time_flips > 1:
        backend = FlippedBackend(backend, cfg.test_time_flips)
        log.info("test-time flips: the network runs on %d mirror images of every frame, maps averaged",
                 cfg.test_time_flips)
    return backend, meta
