"""PyTorch backend: CPU (inference mode, channels_last, bf16 on AMX/AVX512-BF16 CPUs, TorchScript with
oneDNN fusion) and CUDA (pinned host memory, non-blocking copies, fp16/bf16 autocast, CUDA graphs for
fixed shapes).

On the CPU the two halves of the network are traced and frozen into TorchScript graphs with oneDNN
graph fusion (convolution + ELU fused, weights pre-packed); measured 1.3-1.5x over eager on this
machine's Sapphire-Rapids-class CPU (benchmarks/bench_inference.py). bf16 on the CPU casts the weights
to bf16 once (rather than autocast re-casting them every call), so features and maps are bf16 too.

The CUDA path has not been run on a GPU yet (no GPU where it was written); it follows the documented
PyTorch APIs and shares every line except the CUDA-specific ones with the tested CPU path.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rtsmlm.localization.backends.protocol import BackendError
from rtsmlm.localization.net import DecodeNet, parameter_count

log = logging.getLogger("rtsmlm.localization")

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


MAX_CUDA_GRAPHS = 4
"""Captured CUDA graphs kept per backend (two streaming shapes: encoder and decoder each)."""


class _CudaGraph:
    """One captured CUDA graph with its static input and output tensors (a fixed input shape)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor) -> None:
        self.static_in = example.clone()
        # Warm up on a side stream before capture, as torch.cuda.graphs documents.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.data_ptr() != self.static_in.data_ptr():  # not assembled in place (TorchBackend.decode_input)
            self.static_in.copy_(x, non_blocking=True)
        self.graph.replay()
        # Not cloned: the next replay overwrites static_out, and the Backend protocol lets it (the localizer
        # copies what it keeps; a clone here would copy every decoder output once more).
        return self.static_out


def widen_uint16(raw: torch.Tensor) -> torch.Tensor:
    """int16 tensor holding uint16 bit patterns -> int32 tensor of the unsigned values (0..65535)."""
    return raw.to(torch.int32).bitwise_and_(0xFFFF)


class HostUploader:
    """Copies host arrays to a device: zero-copy on the CPU; on CUDA through two pinned staging buffers
    used in turn and a dedicated copy stream, so the host-to-device DMA of one batch overlaps the
    network running on the previous one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._events: list[Any] = [None, None]
        self._turn = 0
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        frames = np.ascontiguousarray(frames)
        if not frames.dtype.isnative:
            # A big-endian movie (a .dax file, '>u2'): torch.from_numpy refuses non-native byte order.
            frames = frames.astype(frames.dtype.newbyteorder("="))
        if self._copy_stream is None:
            return torch.from_numpy(frames)
        # uint16 camera data travels as int16 (same bytes; torch's uint16 has few CUDA kernels) and is
        # widened on the device.
        unsigned16 = frames.dtype == np.uint16
        host = torch.from_numpy(frames.view(np.int16) if unsigned16 else frames)
        i, self._turn = self._turn, self._turn ^ 1
        if self._events[i] is not None:
            self._events[i].synchronize()  # the DMA out of this buffer (two calls ago) has finished
        buf = self._buffers[i]
        if buf is None or buf.numel() < host.numel() or buf.dtype != host.dtype:
            buf = self._buffers[i] = torch.empty(host.numel(), dtype=host.dtype).pin_memory()
        staged = buf[: host.numel()].view(host.shape)
        staged.copy_(host)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            on_device = staged.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        compute.wait_event(done)  # kernels queued later on the compute stream see the copied data
        on_device.record_stream(compute)  # the allocator must not reuse it before the compute stream is done
        self._events[i] = done
        return widen_uint16(on_device) if unsigned16 else on_device


class _Encode(nn.Module):
    """The frame encoder as a module (for tracing)."""

    def __init__(self, model: DecodeNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)


class _Decode(nn.Module):
    """The temporal decoder as a module (for tracing). With ``heads`` (an NCHW copy of the network whose
    U-Nets are identities; used on the CPU) the temporal U-Net runs in the model's dtype and memory
    format and the output heads with their sigmoid/tanh in the heads' dtype, in NCHW (see forward).
    fp32 heads under a bf16 U-Net cut the maximum map error about 3x (0.013 -> 0.004 on the default
    model) for about 25% more decoder time."""

    def __init__(self, model: DecodeNet, heads: DecodeNet | None = None) -> None:
        super().__init__()
        self.model = model
        self.heads = heads
        self.heads_dtype = next(heads.parameters()).dtype if heads is not None else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.heads is None:
            return self.model.decode(x)
        # NCHW (contiguous) for the heads: the per-channel-group activations then run on contiguous
        # planes; on channels_last channel slices torch's tanh/sigmoid are strided scalar loops (~70x slower).
        return self.heads.decode(self.model.temporal(x).to(self.heads_dtype).contiguous())


class TorchBackend:
    """Runs a :class:`DecodeNet` with PyTorch. Build it with :func:`rtsmlm.localization.backends.open_backend`.

    Args:
        model: the network (any device; moved to ``device``).
        device: 'cpu', 'cuda' or 'cuda:N'.
        precision: 'fp32', or 'bf16' / 'fp16' autocast (fp16 only on CUDA).
        threads: CPU threads for torch's intra-op pool (0 = all cores). Process-wide in torch.
        cuda_graphs: capture a CUDA graph per fixed input shape seen in :meth:`warmup` (CUDA only).
        jit: on the CPU, trace and freeze both halves with oneDNN fusion at their first call (falls back
            to eager mode, with a warning, if tracing fails).
        fp32_heads: with CPU bf16, run the output heads in fp32 (3x smaller map error, ~25% slower decoder).
    """

    name = "torch"

    def __init__(self, model: DecodeNet, device: str = "cpu", precision: str = "fp32", threads: int = 0,
                 cuda_graphs: bool = True, jit: bool = True, fp32_heads: bool = False) -> None:
        dev = torch.device(device)
        if precision not in ("fp32", "bf16", "fp16"):
            raise BackendError(f"backend.precision {precision!r} is not one of 'fp32', 'bf16', 'fp16'.")
        if dev.type == "cpu" and precision == "fp16":
            raise BackendError("backend.precision = 'fp16' needs a CUDA GPU; on the CPU use 'bf16' or 'fp32'.")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("backend.device = 'cuda' but torch sees no CUDA GPU; set backend.device = 'cpu'.")
        if threads > 0:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.device = str(dev)
        self._dev = dev
        self.precision = precision
        self.fp32_heads = fp32_heads and dev.type == "cpu" and precision == "bf16"
        self.window = model.window
        self.in_channels = model.in_channels
        self.feature_channels = model.width
        self.size_multiple = model.size_multiple
        self.n_parameters = parameter_count(model)
        # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their fastest NHWC convolution kernels.
        self.model = model.to(dev).eval().to(memory_format=torch.channels_last).requires_grad_(False)
        # CPU bf16: weights cast once; inputs are cast on entry. CUDA uses autocast (fp16/bf16 weights
        # cached by cuDNN-friendly casts, fp32 accumulation where it matters).
        self._cpu_dtype = torch.bfloat16 if (dev.type == "cpu" and precision == "bf16") else torch.float32
        heads = None
        if dev.type == "cpu":
            heads = copy.deepcopy(self.model).to(memory_format=torch.contiguous_format)
            heads.encoder, heads.temporal = nn.Identity(), nn.Identity()
            if precision == "bf16" and not fp32_heads:
                heads = heads.to(torch.bfloat16)
        if dev.type == "cpu" and precision == "bf16":
            self.model = self.model.to(torch.bfloat16)
        self._halves: dict[str, nn.Module] = {"encode": _Encode(self.model).eval(),
                                               "decode": _Decode(self.model, heads).eval()}
        self._use_jit = jit and dev.type == "cpu"
        self._jitted: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._use_graphs = cuda_graphs and dev.type == "cuda"
        # Captured graphs by (half, input shape), oldest first: each holds its static tensors and its memory
        # pool, so only the most recent MAX_CUDA_GRAPHS are kept (a run changing frame size does not keep
        # every earlier size's memory).
        self._graphs: OrderedDict[tuple[str, tuple[int, ...]], _CudaGraph] = OrderedDict()
        self._uploader = HostUploader(self._dev)
        if dev.type == "cuda":
            # "fp32" on CUDA is TF32 in cuDNN convolutions by default (10 mantissa bits): an fp32 backend is
            # the reference the others are compared with, so it computes in true fp32. Autocast runs
            # (fp16/bf16) are unaffected. cudnn.benchmark picks the fastest kernels per streaming shape.
            torch.backends.cudnn.allow_tf32 = precision != "fp32"
            torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
            torch.backends.cudnn.benchmark = True

    # -- helpers -------------------------------------------------------------------------------------

    def _autocast(self) -> AbstractContextManager:
        if self.precision == "fp32" or self._dev.type == "cpu":
            return nullcontext()
        # No weight-cast cache: casts cached during a CUDA graph capture would be freed when the autocast
        # context exits while the graph still points at them (torch's CUDA graph + AMP guidance).
        return torch.autocast(self._dev.type, dtype=_AUTOCAST_DTYPES[self.precision], cache_enabled=False)

    def _run(self, kind: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        x = x.to(self._dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self._dev.type == "cpu":
            x = x.to(self._cpu_dtype)
            if self._use_jit:
                fn = self._jitted.get(kind) or self._trace(kind, x)
        graph = self._graphs.get((kind, tuple(x.shape))) if self._use_graphs else None
        if graph is not None:
            self._graphs.move_to_end((kind, tuple(x.shape)))
            return graph(x)
        # inference_mode on the CPU (fastest); no_grad on CUDA because tensors made under inference_mode
        # cannot be used by a later CUDA graph capture.
        ctx = torch.inference_mode() if self._dev.type == "cpu" else torch.no_grad()
        with ctx, self._autocast():
            return fn(x)

    def _trace(self, kind: str, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """TorchScript-trace and freeze one half at its first call; the traced graph is shape-generic
        (the network has no shape-dependent control flow), oneDNN fusion specialises per shape."""
        torch.jit.enable_onednn_fusion(True)
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about the skipped Python shape check
                # check_trace re-runs and compares the graph: seconds of start-up for a net with no
                # data-dependent control flow (equality with eager mode is covered by the tests).
                traced = torch.jit.freeze(torch.jit.trace(self._halves[kind], example, check_trace=False))
                traced(example)  # the first runs optimise the graph; keep them out of the stream
                traced(example)
        except RuntimeError as e:
            log.warning("TorchScript tracing of the %s failed (%s); running eagerly", kind, e)
            traced = self._halves[kind]
        self._jitted[kind] = traced
        return traced

    def _encode_fn(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.encode(x)

    def _decode_fn(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.decode(x)

    # -- Backend protocol ----------------------------------------------------------------------------

    def warmup(self, height: int, width: int, encode_batch: int, decode_batch: int) -> None:
        """Run both halves once at the streaming shapes; on CUDA capture a graph for each of them."""
        enc_in = torch.zeros(encode_batch, self.in_channels, height, width, device=self._dev)
        feats = self.encode(enc_in)
        dec_in = torch.zeros(decode_batch, self.window * self.feature_channels, height, width,
                             device=self._dev, dtype=feats.dtype)
        self.decode(dec_in)
        if self._use_graphs:
            for kind, fn, example in (("encode", self._encode_fn, enc_in), ("decode", self._decode_fn, dec_in)):
                key = (kind, tuple(example.shape))
                if key in self._graphs:
                    continue
                while len(self._graphs) >= MAX_CUDA_GRAPHS:
                    self._graphs.popitem(last=False)
                try:
                    with torch.no_grad():
                        self._graphs[key] = _CudaGraph(fn, example.contiguous(memory_format=torch.channels_last))
                except RuntimeError as e:  # capture is an optimisation: eager mode stays correct
                    log.warning("CUDA graph capture of %s %s failed (%s); running eagerly", kind, key[1], e)
            torch.cuda.synchronize(self._dev)

    def upload(self, frames: np.ndarray) -> torch.Tensor:
        return self._uploader(frames)

    def decode_input(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The tensor the localizer assembles decoder windows in: the captured graph's static input for this
        shape (the replay then copies nothing), else a new channels_last tensor (what the convolutions run
        on, so :meth:`decode` converts nothing)."""
        graph = self._graphs.get(("decode", tuple(shape))) if self._use_graphs else None
        if graph is not None and graph.static_in.dtype == dtype:
            return graph.static_in
        return torch.empty(shape, dtype=dtype, device=self._dev, memory_format=torch.channels_last)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self._run("encode", self._halves["encode"], frames)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self._run("decode", self._halves["decode"], features)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "device": self.device, "precision": self.precision, "threads": self.threads,
            "parameters": self.n_parameters, "window": self.window, "width": self.feature_channels,
            "size_multiple": self.size_multiple, "torch": torch.__version__,
        }
        if self._dev.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self._dev)
            d["cuda_graphs"] = self._use_graphs
            d["tf32"] = bool(torch.backends.cudnn.allow_tf32)
        else:
            d["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            d["graph"] = "torchscript+onednn-fusion" if self._use_jit else "eager"
            d["fp32_heads"] = self.fp32_heads
        return d
