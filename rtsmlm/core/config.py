"""Load and validate ``config.toml`` into typed, frozen dataclasses.

Every setting has a default here; ``config.toml`` at the repository root documents each one. Errors
name the key path and the allowed values, with a did-you-mean for typos. CLI flags override single
keys through :func:`apply_overrides` (``section.key=value``, value in TOML syntax).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtsmlm.core.errors import RtsmlmError


class ConfigError(RtsmlmError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _f(default: Any, *, range: tuple[float | None, float | None] | None = None,
       choices: tuple[Any, ...] | None = None, doc: str = "") -> Any:
    """A dataclass field carrying its validation rule."""
    meta = {"range": range, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CameraConfig:
    model: str = _f("emccd", choices=("emccd", "scmos"))
    pixel_size_nm: float = _f(100.0, range=(1.0, 10_000.0))
    baseline_adu: float = _f(100.0, range=(0.0, 65_535.0))
    e_per_adu: float = _f(45.0, range=(1e-3, 1e4))
    em_gain: float = _f(100.0, range=(1.0, 10_000.0))
    qe: float = _f(1.0, range=(0.01, 1.0))
    read_noise_e: float = _f(74.4, range=(0.0, 1e4))
    spurious_charge: float = _f(0.0015, range=(0.0, 1.0))
    exposure_ms: float = _f(10.0, range=(0.01, 100_000.0))
    scmos_offset_sigma_adu: float = _f(2.0, range=(0.0, 1000.0))
    scmos_gain_sigma: float = _f(0.03, range=(0.0, 1.0))
    scmos_map_seed: int = _f(0, range=(0, None))
    maps_file: str = _f("", doc="sCMOS per-pixel maps measured from dark frames (.npz with offset_adu, "
                                "variance_adu2; written by rtsmlm calibrate --dark): the localizer subtracts "
                                "each pixel's own offset")


@dataclass(frozen=True)
class PSFConfig:
    model: str = _f("gaussian", choices=("gaussian", "astigmatic", "spline"),
                    doc="spline: the PSF measured from beads (rtsmlm calibrate-psf), voxels in psf.file")
    sigma_nm: float = _f(130.0, range=(10.0, 2000.0))
    astig_focal_offset_nm: float = _f(300.0, range=(0.0, 5000.0))
    astig_depth_nm: float = _f(400.0, range=(10.0, 10_000.0))
    z_range_nm: float = _f(0.0, range=(0.0, 5000.0))
    file: str = _f("", doc="spline: the .npz written by rtsmlm calibrate-psf (voxels on the camera's pixel grid)")


@dataclass(frozen=True)
class DriftSimConfig:
    enabled: bool = _f(False)
    random_walk_nm_per_frame: float = _f(0.3, range=(0.0, 1000.0))
    sinusoid_amplitude_nm: float = _f(150.0, range=(0.0, 100_000.0))
    sinusoid_period_frames: float = _f(20_000.0, range=(1.0, None))
    linear_nm_per_frame: float = _f(0.01, range=(-1000.0, 1000.0))
    z_nm_per_frame: float = _f(0.0, range=(-1000.0, 1000.0),
                               doc="axial (focus) creep: the sample moves this much in z per frame (3D runs)")
    z_random_walk_nm_per_frame: float = _f(0.0, range=(0.0, 1000.0), doc="axial random walk step per frame")


@dataclass(frozen=True)
class SimConfig:
    size: int = _f(64, range=(8, 8192))
    frames: int = _f(2000, range=(1, None))
    seed: int = _f(0, range=(0, None))
    structure: str = _f("filaments", choices=("uniform", "filaments", "rings"),
                        doc="the sample: microtubule-like filaments (the default: a render a microscopist "
                            "recognises), labels spread evenly, or ring-shaped complexes (nuclear pores)")
    density: float = _f(0.3, range=(0.0, 20.0))
    labels_per_um2: float = _f(200.0, range=(1e-3, 1e5), doc="uniform structure: label density")
    filament_count: int = _f(6, range=(1, 10_000))
    labels_per_um: float = _f(100.0, range=(1e-3, 1e5), doc="filaments: labels per µm of filament")
    rings_per_um2: float = _f(0.6, range=(1e-3, 100.0))
    ring_radius_nm: float = _f(53.0, range=(1.0, 10_000.0))
    label_jitter_nm: float = _f(5.0, range=(0.0, 1000.0), doc="label/linker displacement (Gaussian)")
    photons_mean: float = _f(2500.0, range=(1.0, 1e7))
    photons_sigma: float = _f(1000.0, range=(0.0, 1e7))
    bg_photons: float = _f(75.0, range=(0.0, 1e6))
    bg_structured: bool = _f(False)
    mean_on_frames: float = _f(2.0, range=(0.01, 1e5))
    frame_locked: bool = _f(False, doc="molecules switch only between frames, each on-frame at full brightness "
                                       "(synthetic movies; excitation pulsed within the exposure)")
    bleach_probability: float = _f(0.02, range=(0.0, 1.0))
    activation_power: float = _f(1.0, range=(0.0, 1e6))
    fiducials: int = _f(0, range=(0, 10_000))
    fiducial_photons: float = _f(20_000.0, range=(1.0, 1e8))
    beyond_field_px: float = _f(0.0, range=(0.0, 1000.0),
                                doc="the sample continues this far beyond the field of view: its emitters there "
                                    "are drawn where their light reaches the frame, not in the ground truth "
                                    "(0: the sample ends at the frame's edge)")
    drift: DriftSimConfig = field(default_factory=DriftSimConfig)


@dataclass(frozen=True)
class SourceConfig:
    kind: str = _f("simulator", choices=("simulator", "file", "micromanager", "watch", "push"),
                   doc="watch: a Micro-Manager stack being written (source.path, its first file); push: frames "
                       "handed over by the user's acquisition script (rtsmlm.embedded)")
    path: str = _f("")
    fps: float = _f(0.0, range=(0.0, 1e6), doc="pacing; 0 = as fast as possible")
    max_frames: int = _f(-1, range=(-1, None),
                         doc="-1 = the source's default (simulator 2000, a file the whole movie, a camera 2000); "
                             "0 = until the source ends")
    loop: bool = _f(False, doc="file source: replay from the start when it ends")
    mm_config: str = _f("")
    mm_dir: str = _f("")
    mm_attach: bool = _f(False)
    mm_port: int = _f(4827, range=(1, 65535), doc="attach: Micro-Manager's server port")
    mm_buffer_mb: int = _f(512, range=(1, 1_000_000), doc="headless: MMCore circular buffer size")
    idle_timeout_s: float = _f(10.0, range=(0.1, 1e6),
                               doc="watch: an acquisition that has not grown for this long is taken as ended")


ON_DISK_SOURCES = ("file", "watch")
"""Sources whose frames are already on disk: the producer may wait for the readers (nothing is lost by
waiting) and there is no raw recording to make."""


SOURCE_DEFAULT_MAX_FRAMES = {"simulator": 2000, "file": 0, "micromanager": 2000, "watch": 0, "push": 0}
"""What ``source.max_frames = -1`` means per source kind: a recorded movie is analysed whole."""


def effective_max_frames(src: SourceConfig) -> int:
    """The frame limit of ``src`` (0 = none), with -1 resolved to the source kind's default."""
    return SOURCE_DEFAULT_MAX_FRAMES[src.kind] if src.max_frames < 0 else int(src.max_frames)


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: str = _f("default", doc="'default' = the model shipped for the default camera, or a path")
    p_threshold: float = _f(-1.0, range=(-1.0, 1.0),
                            doc="detection threshold (integrated probability); negative = the model's own, chosen "
                                "on its training conditions when it was trained (0.6 for a model without one)")
    candidate_threshold: float = _f(0.3, range=(0.0, 1.0),
                                    doc="local maxima of p below this are not considered (at most p_threshold)")
    split_threshold: float = _f(0.6, range=(0.0, 1.0))
    residual_threshold: float = _f(0.5, range=(0.0, 1.0),
                                   doc="a second detection pass: p mass left unexplained beside a detection (3x3 sum) "
                                       "above this is a second emitter (close pairs); 0 = off; rtsmlm calibrate "
                                       "turns it off where it reports emitters of a wide PSF twice")
    min_photons: float = _f(0.0, range=(0.0, 1e7),
                            doc="detections the network reads out dimmer than this many photons are dropped unless "
                                "one at or above it lies within a pixel in the frame before or after (0 = none; a "
                                "floor delays each localization by a frame); rtsmlm calibrate sets it when the "
                                "movie's simulated conditions gain from it")
    thresholds_for: str = _f("", doc="the checkpoint p_threshold, candidate_threshold, min_photons and "
                                     "residual_threshold were chosen for (rtsmlm calibrate writes it); a run of another "
                                     "checkpoint (a model fine-tuned on this config) uses that model's own threshold, "
                                     "no floor and the default second pass instead; empty = they apply to any "
                                     "checkpoint")
    larger_on_gpu: bool = _f(True, doc="a live run on a GPU backend runs a shipped model's larger sibling trained for "
                                        "GPUs where there is one (broad_2d -> broad_2d_wide), logged, with the "
                                        "thresholds set for the named model; false runs the named model (batch runs "
                                        "always do, for results that do not depend on the worker)")
    larger_on_bf16_cpu: bool = _f(True, doc="a live run on a CPU backend running bf16 natively (AMX/AVX512-BF16) on at "
                                             "least 2 threads, with a core left for the rest of the run, runs a "
                                             "shipped model's mid-size sibling where there is "
                                             "one (broad_2d -> broad_2d_mid: better close pairs for 2.2x the "
                                             "arithmetic), logged, with the thresholds set for the named model; false "
                                             "runs the named model")
    refine: str = _f("off", choices=("off", "mle", "fuse"),
                     doc="isolated localizations refined by a maximum-likelihood fit of the PSF (psf.sigma_nm; a 3D "
                         "model's astigmatic focus curves, z fitted too) to the frame: mle = the fit's position (emitters on for one frame), fuse = its "
                         "inverse-variance mean with the network's (keeps the neighbouring frames' help)")
    merge_splits: bool = _f(True, doc="with refine (2D): two localizations of a frame closer than 2 px, alone "
                                       "together and not repeated in the frame before or after, become one when a "
                                       "one-emitter fit explains the frame as well as two (one emitter the network "
                                       "read as two); holds each sequence's newest frame until the next")


@dataclass(frozen=True)
class BackendConfig:
    name: str = _f("auto", choices=("auto", "tensorrt", "torch", "onnxruntime"))
    device: str = _f("auto", choices=("auto", "cuda", "cpu"))
    precision: str = _f("auto", choices=("auto", "fp32", "fp16", "bf16"))
    batch_size: int = _f(0, range=(0, 4096), doc="0 = automatic")
    threads: int = _f(0, range=(0, 1024), doc="0 = all cores but one (at least one)")
    engine_cache_dir: str = _f("~/.cache/rtsmlm/engines")
    test_time_flips: int = _f(1, choices=(1, 2, 4),
                              doc="run the network on each frame and its mirror images and average the maps "
                                  "(2: also rotated by 180°; 4: mirrored in x, in y and both); that many times "
                                  "the network's arithmetic. 1 = off. Gaussian and astigmatic PSFs only")


@dataclass(frozen=True)
class PipelineConfig:
    ring_frames: int = _f(512, range=(4, 1_000_000))
    memory_mb: float = _f(4096.0, range=(64.0, 1e7),
                          doc="memory budget of a run: the ring takes at most a quarter (fewer slots for "
                              "large frames), the localizer sizes its tiles and batches from the rest")
    stats_interval_s: float = _f(1.0, range=(0.05, 3600.0))
    max_batch: int = _f(16, range=(1, 4096))
    max_latency_ms: float = _f(1000.0, range=(0.0, 3.6e6),
                               doc="live camera: once a frame has waited this long the localizer skips the "
                                   "backlog and goes on with the newest two frames (the skipped ones are analysed "
                                   "from the raw recording after the acquisition); 0 = never skip")
    hook_timeout_s: float = _f(5.0, range=(0.01, 3600.0),
                               doc="a plugin hook that runs longer is abandoned and the plugin disabled")
    drain_timeout_s: float = _f(30.0, range=(0.1, 86400.0),
                                doc="after the last localization, a listener still busy this long is abandoned")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = _f("", doc="'' = a new folder runs/run-YYYYmmdd-HHMMSS in the working directory")
    overwrite: bool = _f(False)
    csv_style: str = _f("rtsmlm", choices=("rtsmlm", "thunderstorm"))
    record_raw: bool = _f(True)
    raw_format: str = _f("tiff", choices=("tiff", "raw"), doc="BigTIFF or Picasso .raw + .yaml")
    flush_interval_s: float = _f(1.0, range=(0.01, 60.0))


@dataclass(frozen=True)
class RenderConfig:
    pixel_size_nm: float = _f(10.0, range=(0.1, 10_000.0))
    mode: str = _f("gaussian", choices=("histogram", "gaussian"))
    min_sigma_nm: float = _f(5.0, range=(0.0, 1000.0))
    max_sigma_nm: float = _f(50.0, range=(0.0, 10_000.0))
    frc_interval_s: float = _f(10.0, range=(0.1, 3600.0))


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = _f(True)
    block_frames: int = _f(200, range=(1, 1_000_000))
    min_block_locs: int = _f(2000, range=(1, 100_000_000))
    bin_nm: float = _f(10.0, range=(0.1, 1000.0))
    search_nm: float = _f(100.0, range=(1.0, 100_000.0))


@dataclass(frozen=True)
class StreamConfig:
    enabled: bool = _f(True)
    address: str = _f("tcp://127.0.0.1:5556")
    high_water_mark: int = _f(1000, range=(1, 10_000_000))
    on_port_in_use: str = _f("error", choices=("error", "next"))
    wait_for_subscribers: int = _f(0, range=(0, 1000), doc="start acquiring once this many subscribers listen")
    wait_timeout_s: float = _f(10.0, range=(0.0, 3600.0))


@dataclass(frozen=True)
class GuiConfig:
    refresh_hz: float = _f(20.0, range=(1.0, 120.0))
    colormap: str = _f("inferno")
    contrast_percentile: float = _f(99.5, range=(50.0, 100.0))


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are those of the shipped default model (configs/train_default_2d.toml)."""

    seed: int = _f(1, range=(0, None), doc="simulation and initialisation seed; the data of a step depend only on "
                                           "(seed, step), so a run is reproducible and resumable")
    steps: int = _f(15_000, range=(1, None), doc="optimizer steps (the learning rate drops 0.3x at 60 % and 85 %)")
    batch_size: int = _f(16, range=(1, 4096), doc="simulated samples (windows of frames) per step")
    patch_size: int = _f(32, range=(8, 1024), doc="side of a simulated sample in camera pixels")
    lr: float = _f(6e-4, range=(1e-7, 1.0), doc="AdamW learning rate")
    density_min: float = _f(0.0, range=(0.0, 100.0), doc="active emitters per µm² per frame, lowest")
    density_max: float = _f(2.5, range=(0.0, 100.0), doc="active emitters per µm² per frame, highest")
    photons_min: float = _f(500.0, range=(0.0, 1e7), doc="emitter brightness per frame (photons), lowest")
    photons_max: float = _f(8000.0, range=(0.0, 1e7), doc="emitter brightness per frame (photons), highest")
    bg_min: float = _f(20.0, range=(0.0, 1e6), doc="background photons per pixel, lowest")
    bg_max: float = _f(150.0, range=(0.0, 1e6), doc="background photons per pixel, highest")
    width: int = _f(16, range=(4, 512), doc="feature channels of the network (speed ∝ width²)")
    narrow_to: int = _f(0, range=(0, 512),
                        doc="fine-tune only (--init): prune the initial model to this many channels first "
                            "(net.narrowed, structured pruning; the fine-tune recovers its outputs); 0 keeps its width")
    teacher: str = _f("", doc="a larger checkpoint (path or shipped name) whose output maps the model also learns "
                              "to match (knowledge distillation: its detection probabilities at close pairs carry "
                              "more than the simulated truth's one pixel per emitter); its input scales must be "
                              "the model's. Empty: no teacher")
    distill_weight: float = _f(1.0, range=(0.0, 1e3), doc="weight of the teacher term in the loss (train.teacher)")
    depth: int = _f(2, range=(1, 6), doc="U-Net levels (frames are padded to a multiple of 2**depth)")
    window: int = _f(3, range=(1, 15), doc="frames the temporal network sees (odd; 3 = the frame and its two neighbours)")
    val_samples: int = _f(256, range=(1, 1_000_000), doc="fixed simulated samples the checkpoints are scored on")
    checkpoint_every: int = _f(500, range=(1, None),
                               doc="steps between validations; the best-scoring weights are kept as the checkpoint")
    keep: str = _f("best", choices=("best", "last"),
                   doc="which weights the checkpoint holds at the end: best = the best validation score (Jaccard "
                       "minus RMSE/100), last = the last step's (a polishing stage whose validation differences are "
                       "within its noise)")
    threads: int = _f(1, range=(0, 1024), doc="CPU threads of the training process; 0 = all cores; 1 is robust on a "
                                                "shared machine")
    device: str = _f("auto", choices=("auto", "cpu", "cuda"), doc="auto = CUDA when torch sees a GPU")
    sim_workers: int = _f(-1, range=(-1, 256),
                          doc="processes simulating training batches ahead of the steps; 0 = in the training "
                              "process; -1 = automatic (on CUDA all cores but one, at most 8; on the CPU 0)")
    mixed_precision: bool = _f(True, doc="CUDA: bf16 autocast for the forward pass and loss (fp32 weights)")
    input_transform: str = _f("linear", choices=("linear", "anscombe"),
                              doc="photons → network input: linear (one camera) or anscombe (broad model)")
    conditioning: str = _f("none", choices=("none", "psf_noise"),
                           doc="psf_noise: the network also gets the PSF sigma and the camera's noise (EMCCD/sCMOS, "
                               "read noise per pixel) as input channels, from the run's config at inference")
    broad: bool = _f(False, doc="draw camera (EMCCD/sCMOS), PSF sigma, background (log) and brightness band "
                                "per sample: one model for many microscopes")
    sigma_min_px: float = _f(0.7, range=(0.1, 20.0), doc="broad: smallest PSF sigma in camera pixels")
    sigma_max_px: float = _f(2.0, range=(0.1, 20.0), doc="broad: largest PSF sigma in camera pixels")
    min_target_snr: float = _f(0.0, range=(0.0, 100.0),
                               doc="broad: emitters of the central frame below this SNR are not targets")
    on_frames_min: float = _f(0.3, range=(0.01, 1e5), doc="broad: shortest mean on-time in frames")
    on_frames_max: float = _f(0.0, range=(0.0, 1e5),
                              doc="> 0: mean on-time drawn log-uniformly per sample from "
                                  "[on_frames_min, on_frames_max]; 0: sim.mean_on_frames")
    pair_fraction: float = _f(0.0, range=(0.0, 1.0),
                              doc="this fraction of blinking events gets a partner 0.5–2.5 px away, on in "
                                  "overlapping frames with its own brightness: close pairs to learn to split")
    edge_target_px: float = _f(0.0, range=(0.0, 1.0),
                               doc="emitters up to this far outside the patch are targets too; the read-out "
                                   "drops localizations outside the frame, so an emitter at the frame's edge is "
                                   "kept or dropped by its localized position instead of half-detected")


@dataclass(frozen=True)
class Config:
    camera: CameraConfig = field(default_factory=CameraConfig)
    psf: PSFConfig = field(default_factory=PSFConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    gui: GuiConfig = field(default_factory=GuiConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plugins: dict[str, dict[str, Any]] = _f({}, doc="[plugins.NAME] tables, passed to each plugin")


# --------------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, path: str, source: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{path}' must be a table, got {value!r}")
        return _build(tp, value, path, source)
    origin = typing.get_origin(tp)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{path}' must be a table, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{path}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{path}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{path}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{path}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: '{path}' has unsupported type {tp}")  # pragma: no cover


def _check_rule(value: Any, f: dataclasses.Field, path: str, source: str) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{source}: '{path}' is {value!r}; allowed values: {allowed}{extra}")
    rng = f.metadata.get("range")
    if rng is not None:
        lo, hi = rng
        out = (lo is not None and value < lo) or (hi is not None and value > hi)
        if out or (isinstance(value, float) and not math.isfinite(value)):
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            raise ConfigError(f"{source}: '{path}' is {value!r}; allowed range: {lo_s} to {hi_s}")


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            path = f"{prefix}.{key}" if prefix else key
            hint = difflib.get_close_matches(key, list(fields), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            allowed = ", ".join(fields)
            raise ConfigError(f"{source}: unknown key '{path}'{extra}; allowed keys: {allowed}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        path = f"{prefix}.{name}" if prefix else name
        value = _coerce(data[name], hints[name], path, source)
        if not dataclasses.is_dataclass(hints[name]):
            _check_rule(value, f, path, source)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a validated :class:`Config` from a nested dict (missing keys take their defaults)."""
    return _build(Config, data, "", source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a nested dict (for summaries and checkpoint metadata)."""
    return dataclasses.asdict(cfg)


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (or the defaults when None) and apply ``section.key=value`` overrides.

    An error in the file names the file; an error in an override names that ``--set`` argument. Each
    ``[plugins.NAME]`` table of a file learns the file's folder (reserved key ``config_dir``), where its
    plugin is looked for first.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            data = _parse(p.read_text(encoding="utf-8"), source)
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        for table in (data.get("plugins") or {}).values():
            if isinstance(table, dict):
                table.setdefault("config_dir", str(p.resolve().parent))
    return _overridden(data, source, overrides)


def loads(text: str, overrides: list[str] | None = None, source: str = "config text") -> Config:
    """A config from TOML ``text`` (a config written by a program, e.g. ``rtsmlm calibrate``), as :func:`load`
    from a file; errors name ``source``."""
    return _overridden(_parse(text, source), source, overrides)


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None


def _overridden(data: dict[str, Any], source: str, overrides: list[str] | None) -> Config:
    cfg = from_dict(data, source)
    for ov in overrides or []:
        label = f"--set {ov}"
        _set_path(data, ov, label)
        cfg = from_dict(data, label)
    return cfg


def _set_path(data: dict[str, Any], override: str, source: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key, raw = override.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word is taken as a string: backend.name=torch
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: cannot override '{key}': '{part}' is not a table")
    node[parts[-1]] = value


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that validates through the same rules (for programmatic overrides)."""
    merged = {**to_dict(cfg), **changes}
    return _build(type(cfg), merged, "", "override")


def field_docs(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Key path → inline doc, for generating documentation and checks."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_docs(hints[f.name], path))
        else:
            out[path] = f.metadata.get("doc", "")
    return out

