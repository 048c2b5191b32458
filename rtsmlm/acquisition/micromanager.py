"""Micro-Manager as a frame source, over any MMCore-style core.

It works with three kinds of core, through the same methods (camelCase or snake_case names alike):

* the **headless Python backend** (:meth:`MicroManagerSource.headless`): pycromanager's
  ``start_headless(..., python_backend=True)`` runs Micro-Manager's C++ core in this process through
  pymmcore and loads the device adapters of a Micro-Manager installation (or of this project's own
  adapter in ``plugins/micromanager``); frames never leave the process;
* a **running Micro-Manager application** (:meth:`MicroManagerSource.attach`): pycromanager's Java
  bridge on port 4827. Every frame crosses a ZeroMQ socket, which its maintainers put at roughly
  100-200 MB/s; the source logs the frame rate that allows for the current frame size;
* a core you built yourself (``pymmcore.CMMCore``, pymmcore-plus's ``CMMCorePlus``): pass it to
  :class:`MicroManagerSource`.

Acquisition is MMCore's own continuous sequence acquisition into its circular buffer. MMCore has no
blocking pop, so :meth:`MicroManagerSource.frames` drains ``getRemainingImageCount()`` frames at a time
and, when the buffer is empty, sleeps for half a frame period (measured, starting from the exposure),
bounded to 0.2-5 ms: no busy-waiting, and a frame waits at most about half a frame before it is taken.

Frame indices are MMCore's ``ImageNumber`` (0-based, counted by the core for every image the camera
inserted), so a frame the circular buffer dropped shows up as a gap: the source counts it in
:attr:`MicroManagerSource.lost_frames` and lists it in ``lost_ranges``. Indices of delivered frames are
therefore the camera's frame numbers, and localizations line up with the frames the camera took. (The
source starts acquisitions that overwrite a full buffer, which MMCore does by dropping what it held. A
core set to stop on overflow instead reports ``isBufferOverflowed()``; the source then drains and clears
the buffer and counts one lost frame per overflow, since clearing restarts MMCore's numbering.)
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtsmlm.acquisition.source import CameraModel, Frame, SourceError

if TYPE_CHECKING:  # pragma: no cover
    from rtsmlm.core.config import Config

__all__ = [
    "JAVA_BRIDGE_PORT",
    "JAVA_BRIDGE_MB_PER_S",
    "CAMERA_PROPERTY_NAMES",
    "MicroManagerControl",
    "MicroManagerSource",
    "open_micromanager_source",
]

log = logging.getLogger("rtsmlm.acquisition.micromanager")

JAVA_BRIDGE_PORT = 4827
"""Port of the ZeroMQ server a running Micro-Manager opens (Tools > Options > Run server on port 4827)."""

JAVA_BRIDGE_MB_PER_S = 150.0
"""Pixel throughput of pycromanager's Java bridge as its maintainers state it (100-200 MB/s); used to
tell the user which frame rate an attached session can sustain."""

CAMERA_PROPERTY_NAMES: dict[str, tuple[str, ...]] = {
    "em_gain": ("EMGain", "EM Gain", "MultiplierGain", "Multiplier Gain"),
    "baseline_adu": ("Offset", "Baseline", "BaselineADU"),
    "e_per_adu": ("ElectronsPerADU", "Conversion Factor", "ConversionFactor", "e/ADU"),
    "read_noise_e": ("ReadNoiseElectrons", "ReadNoise", "Read Noise"),
}
"""Camera-device property names read into the camera model, tried in order. Cameras name these
differently; a camera that exposes none of them keeps the value from the ``[camera]`` config."""

MIN_POLL_S = 0.0002
MAX_POLL_S = 0.005

MAX_BUFFER_FRAMES = 16384
"""A headless core's circular buffer is capped at this many frames: MMCore allocates (and zeroes) every
slot separately, which takes seconds for hundreds of thousands of small frames, while 16k frames are
already many seconds of buffering at any realistic frame size and rate."""


# ------------------------------------------------------------------------------------------ core access

def _snake(name: str) -> str:
    """camelCase → snake_case the way pycromanager and pyjavaz convert MMCore's method names."""
    import re

    s1 = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", s1).lower()


def _is_native_core(core: Any) -> bool:
    """A pymmcore ``CMMCore`` in this process (pycromanager's headless core, pymmcore-plus, bare pymmcore)."""
    return any(cls.__name__ == "CMMCore" for cls in type(core).__mro__)


def _metadata_class(core: Any) -> type:
    """The ``Metadata`` class of the SWIG module the core's ``CMMCore`` comes from (pymmcore or a fork)."""
    import sys

    for cls in type(core).__mro__:
        if cls.__name__ == "CMMCore":
            found = getattr(sys.modules.get(cls.__module__), "Metadata", None)
            if found is not None:
                return found
    import pymmcore

    return pymmcore.Metadata


class _Core:
    """The MMCore calls the source needs, resolved once for camelCase (pymmcore) or snake_case (Java
    bridge, pycromanager) naming, plus the two ways to pop a frame with its metadata."""

    def __init__(self, core: Any, transfer: str) -> None:
        self.raw = core
        self.native = _is_native_core(core)
        if transfer == "auto":
            transfer = "native" if self.native else "tagged"
        if transfer == "native" and not self.native:
            raise SourceError(f"{type(core).__name__} is not a pymmcore core; use transfer='tagged'")
        self.transfer = transfer
        self._cache: dict[str, Callable[..., Any]] = {}
        self._metadata_cls = _metadata_class(core) if transfer == "native" else None

    def fn(self, camel: str) -> Callable[..., Any]:
        f = self._cache.get(camel)
        if f is None:
            for name in (camel, _snake(camel)):
                try:
                    f = getattr(self.raw, name)
                    break
                except AttributeError:
                    continue
            else:
                raise SourceError(f"the Micro-Manager core ({type(self.raw).__name__}) has no method {camel}")
            self._cache[camel] = f
        return f

    def __call__(self, camel: str, *args: Any) -> Any:
        return self.fn(camel)(*args)

    def pop(self) -> tuple[int | None, np.ndarray] | None:
        """The next frame and its MMCore ImageNumber; None if the buffer was emptied under us."""
        if self.transfer == "native":
            md = self._metadata_cls()
            try:
                pix = self.fn("popNextImageMD")(md)
            except Exception:  # the buffer was cleared (overflow) between the count and the pop
                return None
            try:
                number: int | None = int(md.GetSingleTag("ImageNumber").GetValue())
            except Exception:
                number = None
            return number, pix
        try:
            tagged = self.fn("popNextTaggedImage")()
        except Exception:
            return None
        tags = tagged.tags
        pix = np.asarray(tagged.pix)
        if pix.ndim == 1:
            pix = pix.reshape(int(tags["Height"]), int(tags["Width"]))
        if pix.dtype == np.int16:  # Java has no unsigned short; the bits are the camera's uint16
            pix = pix.view(np.uint16)
        try:
            number = int(tags["ImageNumber"])
        except (KeyError, TypeError, ValueError):
            number = None
        return number, pix


def _property_text(value: Any) -> str:
    """How a Python value is written to a Micro-Manager property (which stores strings)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


# ------------------------------------------------------------------------------------------ control

class MicroManagerControl:
    """Device properties through the Micro-Manager core (implements :class:`rtsmlm.acquisition.source.Control`).

    Used by feedback plugins, e.g. ``control.set_property("Laser", "Power", 12.5)``. Safe to call from
    any thread while the source streams: MMCore serializes device access itself.
    """

    def __init__(self, core: _Core) -> None:
        self._core = core

    @property
    def core(self) -> Any:
        """The underlying MMCore object, for calls this handle does not wrap."""
        return self._core.raw

    def set_property(self, device: str, prop: str, value: Any) -> None:
        """Set ``device.prop`` and wait until the device is no longer busy, so the change holds for
        every frame the camera starts after this returns."""
        text = _property_text(value)
        try:
            self._core("setProperty", device, prop, text)
            self._core("waitForDevice", device)
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"Micro-Manager refused {device}.{prop} = {text!r}: "
                              f"{_mm_message(e, self._core, device)}") from None

    def get_property(self, device: str, prop: str) -> Any:
        """Read ``device.prop`` from the device: a float or int for numeric properties, else a string."""
        try:
            text = self._core("getProperty", device, prop)
            kind = self._core("getPropertyType", device, prop)
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"Micro-Manager cannot read {device}.{prop}: {_mm_message(e)}") from None
        kind_name = {2: "Float", 3: "Integer"}.get(kind, str(kind)) if isinstance(kind, int) else str(kind)
        try:
            if "Float" in kind_name:
                return float(text)
            if "Integer" in kind_name:
                return int(float(text))
        except ValueError:
            pass
        return str(text)

    def has_property(self, device: str, prop: str) -> bool:
        """Whether ``device`` has a property ``prop`` (False for an unknown device)."""
        try:
            return bool(self._core("hasProperty", device, prop))
        except Exception:
            return False

    def property_names(self, device: str) -> tuple[str, ...]:
        """All property names of ``device``."""
        try:
            names = self._core("getDevicePropertyNames", device)
            if hasattr(names, "size") and hasattr(names, "get"):  # a Java StrVector over the bridge
                names = [names.get(i) for i in range(int(names.size()))]
            return tuple(str(p) for p in names)
        except Exception as e:
            raise SourceError(f"Micro-Manager has no device {device!r}: {_mm_message(e)}") from None


def _mm_message(e: BaseException, core: _Core | None = None, device: str | None = None) -> str:
    """The text of an MMCore error, plus the device's own explanation where it keeps one.

    pymmcore's exceptions carry only MMCore's outer message ("Cannot set property ..."), not the
    device's error text; devices that keep their last error in a ``LastError`` property (this
    project's adapter does) can still say what was wrong.
    """
    text = " ".join(str(e).split()) or type(e).__name__
    if core is not None and device:
        try:
            if core("hasProperty", device, "LastError"):
                detail = str(core("getProperty", device, "LastError")).strip()
                if detail and detail not in text:
                    text = f"{text} ({detail})"
        except Exception:
            pass
    return text


# ------------------------------------------------------------------------------------------ camera model

@dataclass(frozen=True)
class CameraReadout:
    """What Micro-Manager says about the camera: geometry, exposure and where each model value came from."""

    label: str
    shape: tuple[int, int]
    dtype: np.dtype
    roi: tuple[int, int, int, int]  # x, y, width, height in binned sensor pixels
    binning: int
    exposure_ms: float
    pixel_size_nm: float | None  # None: no pixel-size calibration in the configuration
    properties: dict[str, str]  # CameraModel field -> "Camera.Property" it was read from


def _read_camera(core: _Core, control: MicroManagerControl) -> tuple[CameraReadout, dict[str, float]]:
    label = str(core("getCameraDevice"))
    if not label:
        raise SourceError("Micro-Manager has no camera selected; the hardware configuration must set "
                          "'Property,Core,Camera,<label>'")
    width = int(core("getImageWidth"))
    height = int(core("getImageHeight"))
    bpp = int(core("getBytesPerPixel"))
    try:
        components = int(core("getNumberOfComponents"))
    except Exception:
        components = 1
    if components != 1 or bpp not in (1, 2, 4):
        raise SourceError(f"camera {label!r} delivers {components}-component images of {bpp} byte(s) per "
                          "pixel; rtsmlm needs a monochrome camera (8, 16 or 32 bit)")
    dtype = np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32}[bpp])
    try:
        roi_raw = core("getROI")
        roi = tuple(int(v) for v in (roi_raw if not hasattr(roi_raw, "x") else
                                     (roi_raw.x, roi_raw.y, roi_raw.width, roi_raw.height)))
        if len(roi) != 4:
            raise ValueError
    except Exception:
        roi = (0, 0, width, height)
    binning = 1
    if control.has_property(label, "Binning"):
        text = str(control.get_property(label, "Binning"))
        digits = text.split("x")[0].strip()  # some cameras say "2x2"
        binning = int(float(digits)) if digits.replace(".", "", 1).isdigit() else 1
    exposure_ms = float(core("getExposure"))
    try:
        pixel_um = float(core("getPixelSizeUm"))
    except Exception:
        pixel_um = 0.0
    pixel_size_nm = pixel_um * 1000.0 if pixel_um > 0 else None

    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for field_name, names in CAMERA_PROPERTY_NAMES.items():
        for name in names:
            if not control.has_property(label, name):
                continue
            try:
                value = float(control.get_property(label, name))
            except (SourceError, TypeError, ValueError):
                continue
            lowest = 1.0 if field_name == "em_gain" else (0.0 if field_name != "e_per_adu" else 1e-9)
            if math.isfinite(value) and value >= lowest:
                values[field_name] = value
                sources[field_name] = f"{label}.{name}"
                break
    readout = CameraReadout(label, (height, width), dtype, roi, binning, exposure_ms, pixel_size_nm, sources)
    return readout, values


def _camera_model(defaults: CameraModel, readout: CameraReadout, values: dict[str, float]) -> CameraModel:
    updates: dict[str, Any] = dict(values)
    updates["exposure_ms"] = readout.exposure_ms
    if readout.pixel_size_nm is not None:
        updates["pixel_size_nm"] = readout.pixel_size_nm
    if values.get("em_gain", 1.0) > 1.0:
        updates["model"] = "emccd"
    return replace(defaults, **updates)


# ------------------------------------------------------------------------------------------ the source

class MicroManagerSource:
    """Frames from a Micro-Manager camera (implements :class:`rtsmlm.acquisition.source.Source`).

    ``core`` is any MMCore-style object (see the module docstring). ``camera_defaults`` supplies the
    camera-model values Micro-Manager does not report (the ``[camera]`` config); ``max_frames`` makes the
    camera take that many frames and stop (None = run until :meth:`stop`); ``transfer`` is "native"
    (pymmcore's ``popNextImageMD``), "tagged" (``popNextTaggedImage``, the Java bridge's way) or "auto".
    ``on_close`` runs once in :meth:`close` (the headless constructor shuts its core down there).
    ``buffer_mb`` (for cores this process owns) sizes MMCore's circular buffer when acquisition starts,
    at most :data:`MAX_BUFFER_FRAMES` frames; None leaves the core's buffer as it is.

    The camera geometry, exposure and calibration are read when the source is built; :attr:`camera` says
    what was found and :attr:`camera_from_device` which model fields Micro-Manager set.
    """

    def __init__(self, core: Any, *, camera_defaults: CameraModel | None = None,
                 max_frames: int | None = None, transfer: str = "auto",
                 on_close: Callable[[], None] | None = None, description: str = "Micro-Manager",
                 buffer_mb: int | None = None) -> None:
        if transfer not in ("auto", "native", "tagged"):
            raise ValueError(f"transfer must be 'auto', 'native' or 'tagged', got {transfer!r}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
        self.description = description
        self._core = _Core(core, transfer)
        self._control = MicroManagerControl(self._core)
        self._defaults = camera_defaults or CameraModel()
        self.max_frames = max_frames
        self._on_close = on_close
        self._buffer_mb = buffer_mb
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        self._we_started_acquisition = False
        self.readout, values = _read_camera(self._core, self._control)
        self._camera = _camera_model(self._defaults, self.readout, values)
        if self.readout.pixel_size_nm is None:
            log.warning("%s: no pixel-size calibration for camera %r; using camera.pixel_size_nm = %g nm",
                        description, self.readout.label, self._camera.pixel_size_nm)
        # Counters: written by the thread iterating frames(), read by anyone.
        self.frames_delivered = 0
        self.lost_frames = 0
        self.lost_ranges: list[list[int]] = []  # [first, last] inclusive runs of lost frame indices
        self.overflow_events = 0
        self.empty_polls = 0
        self._last_loss_log = -math.inf
        self._period_s = self.readout.exposure_ms / 1000.0

    # ---------------------------------------------------------------- constructors for the two CLI paths

    @classmethod
    def headless(cls, mm_dir: str | os.PathLike[str], config_file: str | os.PathLike[str], *,
                 camera_defaults: CameraModel | None = None, max_frames: int | None = None,
                 buffer_mb: int = 512, adapter_dirs: tuple[str | os.PathLike[str], ...] = (),
                 transfer: str = "native") -> MicroManagerSource:
        """Start Micro-Manager's core in this process (pycromanager's headless Python backend) with the
        device adapters in ``mm_dir`` (a Micro-Manager installation, or ``plugins/micromanager/build``)
        and the hardware configuration ``config_file``; :meth:`close` shuts the core down again.

        ``adapter_dirs`` are searched for adapters after ``mm_dir``; ``buffer_mb`` sizes MMCore's
        circular buffer. A relative ``config_file`` is looked up in the working directory, then in
        ``mm_dir`` (where Micro-Manager keeps its own configurations).
        """
        mm_path = Path(mm_dir).expanduser()
        if not mm_path.is_dir():
            raise SourceError(f"Micro-Manager folder {mm_path} (source.mm_dir / --mm-dir) does not exist")
        search = [mm_path.resolve(), *(Path(d).expanduser().resolve() for d in adapter_dirs)]
        if not any(p.name.startswith(("libmmgr_dal_", "mmgr_dal_")) for d in search for p in d.iterdir()):
            raise SourceError(f"Micro-Manager folder {mm_path} holds no device adapters (libmmgr_dal_*); "
                              "point --mm-dir at a Micro-Manager installation, or build this project's "
                              "adapter with 'python plugins/micromanager/build.py' and use "
                              "plugins/micromanager/build")
        cfg_path = Path(config_file).expanduser()
        if not cfg_path.is_absolute() and not cfg_path.exists() and (mm_path / cfg_path).exists():
            cfg_path = mm_path / cfg_path
        if not cfg_path.is_file():
            raise SourceError(f"Micro-Manager configuration {config_file} (source.mm_config / --mm-config) "
                              "does not exist")
        cfg_path = cfg_path.resolve()
        try:
            from mmpycorex import is_pymmcore_active
            from pycromanager import Core, start_headless, stop_headless
        except ImportError:
            raise SourceError("the Micro-Manager source needs pycromanager: pip install 'rtsmlm[mm]' "
                              "(or pip install pycromanager)") from None
        if is_pymmcore_active():
            raise SourceError("a headless Micro-Manager core is already running in this process; close the "
                              "MicroManagerSource that started it first")
        # The buffer is sized when acquisition starts (see MAX_BUFFER_FRAMES); 1 MB until then.
        start_headless(str(search[0]), config_file=None, python_backend=True, buffer_size_mb=1)
        try:
            core = Core()
            core.setDeviceAdapterSearchPaths([str(p) for p in search])
            try:
                core.loadSystemConfiguration(str(cfg_path))
            except Exception as e:
                raise SourceError(f"Micro-Manager could not load {cfg_path}: {_mm_message(e)}") from None
            return cls(core, camera_defaults=camera_defaults, max_frames=max_frames, transfer=transfer,
                       on_close=stop_headless, description=f"Micro-Manager ({cfg_path.name})",
                       buffer_mb=buffer_mb)
        except BaseException:
            stop_headless()
            raise

    @classmethod
    def attach(cls, port: int = JAVA_BRIDGE_PORT, *, camera_defaults: CameraModel | None = None,
               max_frames: int | None = None) -> MicroManagerSource:
        """Use the core of a running Micro-Manager application through pycromanager's Java bridge.

        A thin path: each frame crosses a ZeroMQ socket (about JAVA_BRIDGE_MB_PER_S MB/s), so fast or
        large cameras belong on :meth:`headless`. Stop Live mode in Micro-Manager before starting; the
        source runs its own sequence acquisition. The application keeps running after :meth:`close`.
        """
        try:
            from mmpycorex import is_pymmcore_active
            from pycromanager import Core
        except ImportError:
            raise SourceError("attaching to Micro-Manager needs pycromanager: pip install 'rtsmlm[mm]'") from None
        if is_pymmcore_active():
            raise SourceError("a headless Micro-Manager core runs in this process; pycromanager would hand "
                              "it out instead of the application's core, so close it before attaching")
        import socket

        # pycromanager waits seconds (and leaves a thread traceback) when nothing listens: ask first.
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        except OSError:
            raise SourceError(f"no Micro-Manager answers on port {port}: start Micro-Manager and enable "
                              f"Tools > Options > 'Run server on port {JAVA_BRIDGE_PORT}'") from None
        try:
            core = Core(port=port)
        except Exception:
            raise SourceError(f"no Micro-Manager answers on port {port}: start Micro-Manager and enable "
                              f"Tools > Options > 'Run server on port {JAVA_BRIDGE_PORT}'") from None
        source = cls(core, camera_defaults=camera_defaults, max_frames=max_frames, transfer="tagged",
                     description=f"Micro-Manager application (port {port})")
        frame_mb = source.shape[0] * source.shape[1] * source.dtype.itemsize / 1e6
        log.warning("attached to Micro-Manager through the Java bridge: about %.0f MB/s, i.e. at most "
                    "~%.0f frames/s at %dx%d; use --mm-dir/--mm-config (headless) for faster cameras",
                    JAVA_BRIDGE_MB_PER_S, JAVA_BRIDGE_MB_PER_S / frame_mb, source.shape[1], source.shape[0])
        return source

    # ---------------------------------------------------------------- Source protocol

    @property
    def shape(self) -> tuple[int, int]:
        return self.readout.shape

    @property
    def dtype(self) -> np.dtype:
        return self.readout.dtype

    @property
    def camera(self) -> CameraModel:
        return self._camera

    @property
    def camera_from_device(self) -> tuple[str, ...]:
        """Camera-model fields Micro-Manager supplied (the rest are the config's)."""
        fields = set(self.readout.properties) | {"exposure_ms"}
        if self.readout.pixel_size_nm is not None:
            fields.add("pixel_size_nm")
        return tuple(sorted(fields))

    @property
    def n_frames(self) -> int | None:
        return self.max_frames

    @property
    def control(self) -> MicroManagerControl:
        return self._control

    @property
    def core(self) -> Any:
        """The MMCore object this source reads from."""
        return self._core.raw

    def start(self) -> None:
        """Start the camera's sequence acquisition (continuous, or ``max_frames`` long)."""
        if self._closed:
            raise SourceError(f"{self.description}: the source is closed")
        if self._started:
            return
        label = self.readout.label
        if self._core("isSequenceRunning"):
            raise SourceError(f"{self.description}: camera {label!r} is already acquiring (Live mode?); "
                              "stop it before starting rtsmlm")
        readout, values = _read_camera(self._core, self._control)
        if readout.shape != self.readout.shape or readout.dtype != self.readout.dtype:
            raise SourceError(f"{self.description}: camera {label!r} changed from {self.readout.shape} "
                              f"{self.readout.dtype} to {readout.shape} {readout.dtype} after the source "
                              "was opened; set ROI and binning before opening it")
        self.readout = readout
        self._camera = _camera_model(self._defaults, readout, values)
        self._period_s = readout.exposure_ms / 1000.0
        if self._buffer_mb is not None:
            frame_bytes = readout.shape[0] * readout.shape[1] * readout.dtype.itemsize
            capped = math.ceil(MAX_BUFFER_FRAMES * frame_bytes / 2 ** 20)
            self._core("setCircularBufferMemoryFootprint", max(1, min(int(self._buffer_mb), capped)))
        try:
            if self.max_frames is not None:
                # stopOnOverflow=False: a full buffer drops frames (seen as gaps) instead of ending the run.
                self._core("startSequenceAcquisition", int(self.max_frames), 0.0, False)
            else:
                self._core("startContinuousSequenceAcquisition", 0.0)
        except Exception as e:
            raise SourceError(f"{self.description}: camera {label!r} cannot start acquiring: "
                              f"{_mm_message(e, self._core, label)}") from None
        self._we_started_acquisition = True
        self._started = True

    def frames(self) -> Iterator[Frame]:
        """Yield frames as the camera delivers them, until the camera stops (``max_frames`` taken, a movie
        without looping ended), :meth:`stop` is called or the source is closed."""
        if not self._started:
            raise RuntimeError(f"{self.description}: call start() before frames()")
        core = self._core
        remaining = core.fn("getRemainingImageCount")
        running = core.fn("isSequenceRunning")
        overflowed = core.fn("isBufferOverflowed")
        expected = 0  # the next frame index in sequence
        index_base = 0  # added to ImageNumber if the core restarts its numbering
        limit = self.max_frames
        last_batch_t: float | None = None
        renumbered = False  # the buffer was cleared: the next ImageNumber starts again from 0
        try:
            while not self._stop.is_set():
                n = int(remaining())
                if n == 0:
                    if overflowed():
                        # Only with a core set to stop on overflow (this source never asks for it):
                        # the buffer refuses frames until cleared, and clearing restarts MMCore's image
                        # numbers, so the refused frames cannot be counted; one is known lost.
                        self.overflow_events += 1
                        self._record_loss(expected, expected)
                        expected += 1
                        core("clearCircularBuffer")
                        renumbered = True
                        continue
                    if not running():
                        if int(remaining()) == 0:  # nothing slipped in between the two checks
                            break
                        continue
                    self.empty_polls += 1
                    self._stop.wait(min(MAX_POLL_S, max(MIN_POLL_S, 0.5 * self._period_s)))
                    continue
                now = time.perf_counter()
                if last_batch_t is not None:
                    # Track the frame period from arrivals, so the idle wait follows the real frame
                    # rate (interval, readout, a changed exposure) rather than the exposure setting.
                    self._period_s = 0.8 * self._period_s + 0.2 * (now - last_batch_t) / n
                last_batch_t = now
                for _ in range(n):
                    if self._stop.is_set():
                        return
                    popped = core.pop()
                    if popped is None:
                        break
                    number, pix = popped
                    if renumbered and number is not None:
                        index_base, renumbered = expected - int(number), False
                    index = expected if number is None else number + index_base
                    if index < expected:
                        log.warning("%s: MMCore restarted its image numbers (got %d after %d); continuing "
                                    "the frame count", self.description, number, expected - 1)
                        index_base = expected - int(number)
                        index = expected
                    if index > expected:
                        self._record_loss(expected, index - 1)
                    expected = index + 1
                    if limit is not None and index >= limit:
                        return
                    self.frames_delivered += 1
                    yield Frame(index=index, timestamp=time.perf_counter(), data=pix)
                    if limit is not None and expected >= limit:
                        return
        finally:
            self._stop_acquisition()

    def stop(self) -> None:
        """Make :meth:`frames` end before its next frame (any thread, any number of times)."""
        self._stop.set()

    def close(self) -> None:
        """Stop the camera and, for a headless core, shut the core down (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        try:
            self._stop_acquisition()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> MicroManagerSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- reporting

    def stats(self) -> dict[str, Any]:
        """Counters for the run summary: frames delivered and lost (with their index ranges)."""
        return {
            "frames_delivered": self.frames_delivered,
            "frames_lost_camera": self.lost_frames,
            "frames_lost_camera_ranges": [list(r) for r in self.lost_ranges],
            "buffer_overflows": self.overflow_events,
            "idle_polls": self.empty_polls,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description of the camera as Micro-Manager reports it."""
        r = self.readout
        return {
            "source": self.description,
            "camera_label": r.label,
            "transfer": self._core.transfer,
            "shape": list(r.shape),
            "roi_xywh": list(r.roi),
            "binning": r.binning,
            "exposure_ms": r.exposure_ms,
            "pixel_size_nm": r.pixel_size_nm,
            "camera_properties": dict(r.properties),
            "camera": self._camera.describe(),
            **({"bridge_mb_per_s": JAVA_BRIDGE_MB_PER_S} if not self._core.native else {}),
        }

    # ---------------------------------------------------------------- internals

    def _record_loss(self, first: int, last: int) -> None:
        self.lost_frames += last - first + 1
        if self.lost_ranges and self.lost_ranges[-1][1] == first - 1:
            self.lost_ranges[-1][1] = last
        else:
            self.lost_ranges.append([first, last])
        now = time.monotonic()
        if now - self._last_loss_log >= 1.0:  # at most one line a second however often frames drop
            self._last_loss_log = now
            log.warning("%s: frames %d-%d were lost in Micro-Manager's circular buffer (%d lost so far); "
                        "the consumer is slower than the camera", self.description, first, last,
                        self.lost_frames)

    def _stop_acquisition(self) -> None:
        if not self._we_started_acquisition:
            return
        self._we_started_acquisition = False
        try:
            if self._core("isSequenceRunning"):
                self._core("stopSequenceAcquisition")
        except Exception as e:  # the core may already be gone at interpreter exit
            log.debug("stopping the sequence acquisition failed: %s", e)


def open_micromanager_source(cfg: Config) -> MicroManagerSource:
    """The Micro-Manager source ``cfg.source`` describes: attached (``mm_attach``) or headless
    (``mm_dir`` + ``mm_config``); ``max_frames`` 0 means until stopped."""
    from rtsmlm.core.config import effective_max_frames

    src = cfg.source
    defaults = CameraModel.from_config(cfg.camera)
    max_frames = effective_max_frames(src) or None
    if src.mm_attach:
        return MicroManagerSource.attach(src.mm_port, camera_defaults=defaults, max_frames=max_frames)
    missing = [flag for flag, value in (("--mm-dir (source.mm_dir)", src.mm_dir),
                                        ("--mm-config (source.mm_config)", src.mm_config)) if not value]
    if missing:
        raise SourceError("source.kind is 'micromanager' but " + " and ".join(missing) + " is not set; "
                          "give both for a headless core, or --attach for a running Micro-Manager")
    return MicroManagerSource.headless(src.mm_dir, src.mm_config, camera_defaults=defaults,
                                       max_frames=max_frames, buffer_mb=src.mm_buffer_mb)
