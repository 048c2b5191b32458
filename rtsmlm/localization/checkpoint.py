"""Model checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (everything needed to use them).

The metadata records architecture, window, pixel size, camera, PSF, input/output scaling, the training
config and the rtsmlm version. Nothing is unpickled: weights load through safetensors, the training
state (optimizer) through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rtsmlm
from rtsmlm.core.errors import RtsmlmError
from rtsmlm.localization.scales import INPUT_TRANSFORMS, Scales

if TYPE_CHECKING:
    from rtsmlm.core.config import ModelConfig

log = logging.getLogger("rtsmlm.localization")

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL_NAME = "default_2d"


class CheckpointError(RtsmlmError, ValueError):
    """A checkpoint is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class ModelMeta:
    width: int
    depth: int
    window: int
    pixel_size_nm: float
    camera: dict[str, Any]
    psf: dict[str, Any]
    scales: Scales
    train: dict[str, Any]
    step: int = 0
    rtsmlm_version: str = rtsmlm.__version__
    metrics: dict[str, Any] | None = None
    detection: dict[str, Any] | None = None
    """The detection threshold chosen for this model on its training conditions, simulated
    (:func:`rtsmlm.analysis.thresholds.choose_for_model`): ``p_threshold``, the ``jaccard`` it gave, the
    ``conditions`` and ``frames`` simulated. Used when ``model.p_threshold`` is left at its default."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = "rtsmlm-checkpoint-1"
        return d

    @classmethod
    def from_json(cls, d: Any, source: str) -> "ModelMeta":
        """Validate the JSON metadata against :data:`_SCHEMA`: one sentence naming the file and key."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: metadata must be a JSON object, got {type(d).__name__}")
        if d.get("format") != "rtsmlm-checkpoint-1":
            raise CheckpointError(f"{source}: not an rtsmlm checkpoint (format {d.get('format')!r})")
        d = {k: v for k, v in d.items() if k != "format"}
        _check_table(source, d, _SCHEMA, "")
        scales = d["scales"]
        _check_table(source, scales, _SCALES_SCHEMA, "scales.")
        if scales.get("input_transform", "linear") not in INPUT_TRANSFORMS:
            raise CheckpointError(f"{source}: metadata key 'scales.input_transform' is "
                                  f"{scales['input_transform']!r}; allowed: {', '.join(INPUT_TRANSFORMS)}")
        if d["window"] % 2 == 0:
            raise CheckpointError(f"{source}: metadata key 'window' must be odd, got {d['window']}")
        from rtsmlm.localization.conditioning import CHANNELS

        unknown = [c for c in scales.get("conditioning", []) if c not in CHANNELS]
        if unknown:
            raise CheckpointError(f"{source}: metadata key 'scales.conditioning' names {unknown[0]!r}; "
                                  f"known channels: {', '.join(CHANNELS)}")
        d["scales"] = Scales(**{**scales, "conditioning": tuple(scales.get("conditioning", []))})
        if d.get("detection") is not None:
            _check_table(source, d["detection"], _DETECTION_SCHEMA, "detection.")
        return cls(**d)


# key: (type, min, max, required). Ranges are what a network this code builds can have; they turn a
# corrupted or hand-edited file into one sentence instead of a traceback deep in torch.
_SCHEMA: dict[str, tuple[type | tuple[type, ...], float | None, float | None, bool]] = {
    "width": (int, 1, 1024, True),
    "depth": (int, 0, 8, True),
    "window": (int, 1, 31, True),
    "pixel_size_nm": ((int, float), 1.0, 100_000.0, True),
    "camera": (dict, None, None, True),
    "psf": (dict, None, None, True),
    "scales": (dict, None, None, True),
    "train": (dict, None, None, True),
    "step": (int, 0, None, False),
    "rtsmlm_version": (str, None, None, False),
    "metrics": ((dict, type(None)), None, None, False),
    "detection": ((dict, type(None)), None, None, False),
}
_DETECTION_SCHEMA: dict[str, tuple[type | tuple[type, ...], float | None, float | None, bool]] = {
    "p_threshold": ((int, float), 0.0, 1.0, True),
    "jaccard": ((int, float), 0.0, 1.0, False),
    "frames": (int, 1, None, False),
    "conditions": (list, None, None, False),
}
_SCALES_SCHEMA: dict[str, tuple[type | tuple[type, ...], float | None, float | None, bool]] = {
    "input_scale": ((int, float), 1e-9, 1e12, True),
    "photon_scale": ((int, float), 1e-9, 1e12, True),
    "bg_scale": ((int, float), 1e-9, 1e12, True),
    "z_scale": ((int, float), 1e-9, 1e12, True),
    "input_transform": (str, None, None, False),
    "conditioning": (list, None, None, False),
}


def _check_table(source: str, table: dict[str, Any], schema: dict[str, Any], prefix: str) -> None:
    """Every key of ``table`` known to ``schema``, every required one present, every value valid."""
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise CheckpointError(f"{source}: unknown metadata key '{prefix}{unknown[0]}'")
    for key, (kind, lo, hi, required) in schema.items():
        if key in table:
            _check_value(source, prefix + key, table[key], kind, lo, hi)
        elif required:
            raise CheckpointError(f"{source}: metadata key '{prefix}{key}' is missing")


_TYPE_NAMES = {int: "an integer", float: "a number", dict: "an object", str: "a string", list: "a list",
               type(None): "null"}


def _check_value(source: str, key: str, value: Any, kind: Any, lo: float | None, hi: float | None) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(_TYPE_NAMES[k] for k in kinds if not (k is int and float in kinds))
        raise CheckpointError(f"{source}: metadata key {key!r} must be {names}, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo:g}..{hi:g}" if hi is not None else f">= {lo:g}"
            raise CheckpointError(f"{source}: metadata key {key!r} is {value!r}; allowed: {bounds}")


DEFAULT_P_THRESHOLD = 0.6
"""The detection threshold of a model whose metadata holds none (trained before thresholds were chosen)."""


THRESHOLD_SOURCES = {"config": "model.p_threshold of the config",
                     "model": "the model's own, chosen on its training conditions",
                     "default": "the default; the model holds none"}
"""Where :func:`detection_threshold`'s threshold came from, in words (the run's log line)."""


def detection_threshold(meta: ModelMeta, configured: float) -> tuple[float, str]:
    """The p threshold a run uses and where it came from: ``configured`` when set (≥ 0: the user's
    ``model.p_threshold`` or ``rtsmlm calibrate``'s choice), else the model's own (``meta.detection``,
    chosen on its training conditions), else :data:`DEFAULT_P_THRESHOLD`; the source is a key of
    :data:`THRESHOLD_SOURCES`."""
    if configured >= 0:
        return float(configured), "config"
    if meta.detection is not None:
        return float(meta.detection["p_threshold"]), "model"
    return DEFAULT_P_THRESHOLD, "default"


def store_detection(path_or_name: str | Path, detection: dict[str, Any]) -> ModelMeta:
    """Write ``detection`` (see :attr:`ModelMeta.detection`) into a checkpoint's metadata, atomically;
    the weights are untouched. Returns the new metadata (validated like a loaded one)."""
    jpath = resolve(path_or_name).with_suffix(".json")
    meta = load_meta(path_or_name)
    data = meta.to_json()
    data["detection"] = detection
    new = ModelMeta.from_json(json.loads(json.dumps(data)), str(jpath))
    tmp = jpath.with_name(jpath.stem + ".tmp.json")
    tmp.write_text(json.dumps(new.to_json(), indent=2))
    tmp.replace(jpath)
    return new


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package (usable as ``model.checkpoint``)."""
    return sorted(p.stem for p in DEFAULT_MODEL_DIR.glob("*.json"))


LARGER_ON_GPU = {"broad_2d": "broad_2d_wide"}
"""Shipped models with a larger sibling for GPUs: the model widened (``net.widened``, 32 instead of 16
channels) and trained on. Four times the arithmetic, which keeps a GPU far above the camera's frame rate but
takes a 2-core CPU below its 100 frames/s at 64², so CPUs run the smaller one."""

LARGER_ON_BF16_CPU = {"broad_2d": "broad_2d_mid"}
"""Shipped models with a mid-size sibling for CPUs with native bf16: the GPU sibling pruned to 24 channels
(``net.narrowed``) and fine-tuned. Separates close pairs nearly as well as the GPU sibling for 2.2 times the
smaller model's arithmetic (README, "Which model"): 174 frames/s at 64² in bf16 on two threads of a 2-core
CPU, 91 on one, 102 in fp32. A live run on those two cores, its camera and writers sharing them, kept up with a
100 frames/s camera in 4 of 6 runs and analysed 3 % of the frames after the acquisition in the others: a CPU
runs it when the localizer has two threads and the rest of the run a core of its own."""

MIN_THREADS_BF16_SIBLING = 2
"""Localizer threads from which a bf16 CPU with a further core runs :data:`LARGER_ON_BF16_CPU`'s sibling."""


def for_backend(model_cfg: ModelConfig, device: str, precision: str = "fp32", threads: int = 1,
                cpu_count: int = 1) -> ModelConfig:
    """``[model]`` for a live run whose backend runs on ``device`` in ``precision`` with ``threads`` of the
    machine's ``cpu_count`` cores: a shipped model with a larger sibling for that backend becomes the sibling —
    on a GPU :data:`LARGER_ON_GPU` (unless ``model.larger_on_gpu`` is off), on a CPU running bf16 natively on
    at least :data:`MIN_THREADS_BF16_SIBLING` threads with a core left for the rest of the run
    :data:`LARGER_ON_BF16_CPU` (unless ``model.larger_on_bf16_cpu`` is off); the switch is logged.
    Thresholds and brightness floor calibrated for the named model carry over to the sibling
    (``model.thresholds_for`` follows): trained from it, it gets the same choice from ``rtsmlm calibrate`` in
    most conditions (bench_cameras, the GPU sibling: 14 of 18 cells, the floor in 17), whereas its own
    threshold with no floor loses up to 0.08 Jaccard in sparse movies on a high background."""
    from dataclasses import replace

    name = model_cfg.checkpoint
    shipped = DEFAULT_MODEL_NAME if name == "default" else name
    if device == "cuda":
        sibling, wanted, key = LARGER_ON_GPU.get(shipped), model_cfg.larger_on_gpu, "model.larger_on_gpu"
        why = "the backend runs on a GPU, where the larger sibling costs little time"
    elif precision == "bf16" and MIN_THREADS_BF16_SIBLING <= threads < cpu_count:
        sibling, wanted = LARGER_ON_BF16_CPU.get(shipped), model_cfg.larger_on_bf16_cpu
        key = "model.larger_on_bf16_cpu"
        why = (f"the CPU runs bf16 natively on {threads} threads with a core to spare, fast enough for the "
               "mid-size sibling")
    else:
        return model_cfg
    if sibling is None:
        return model_cfg
    if not wanted:
        log.info("model %s: its larger sibling %s is not used (%s = false)", name, sibling, key)
        return model_cfg
    log.info("model %s -> %s: %s (%s = false keeps %s)", name, sibling, why, key, name)
    chosen_for = model_cfg.thresholds_for
    if chosen_for and _same_checkpoint(chosen_for, name):
        chosen_for = sibling
    return replace(model_cfg, checkpoint=sibling, thresholds_for=chosen_for)


def thresholds_for_run(model_cfg: ModelConfig) -> ModelConfig:
    """``[model]`` as a run of ``model_cfg.checkpoint`` uses it: thresholds and brightness floor chosen for another
    checkpoint (``model.thresholds_for``: rtsmlm calibrate's choice for the model it picked) give way to the
    run's model's own threshold and no floor — a model fine-tuned on the calibrated config carries its own,
    chosen on the same conditions, and the picked model's would be wrong for it."""
    from dataclasses import replace

    from rtsmlm.core.config import ModelConfig

    chosen_for = model_cfg.thresholds_for
    if not chosen_for or _same_checkpoint(chosen_for, model_cfg.checkpoint):
        return model_cfg
    log.info("model.p_threshold, candidate_threshold, min_photons and residual_threshold were chosen for %s "
             "(model.thresholds_for), not for %s: the model's own threshold is used, no brightness floor and the "
             "default second pass", chosen_for, model_cfg.checkpoint)
    default = ModelConfig()
    return replace(model_cfg, p_threshold=default.p_threshold, candidate_threshold=default.candidate_threshold,
                   min_photons=default.min_photons, residual_threshold=default.residual_threshold)


def _same_checkpoint(a: str, b: str) -> bool:
    """Do two ``model.checkpoint`` values name the same checkpoint ('broad_2d' and its path do)?"""
    return resolve(a).resolve() == resolve(b).resolve()


def resolve(path_or_name: str | Path) -> Path:
    """Path prefix of a checkpoint: 'default' or the name of a shipped model (e.g. 'storm_analysis'),
    else a path with or without its suffix."""
    name = str(path_or_name)
    if name == "default":
        return DEFAULT_MODEL_DIR / DEFAULT_MODEL_NAME
    if "/" not in name and "\\" not in name and name in shipped_models():
        return DEFAULT_MODEL_DIR / name
    p = Path(path_or_name).expanduser()
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p


def save(prefix: str | Path, model, meta: ModelMeta) -> Path:
    """Write ``prefix.safetensors`` and ``prefix.json`` atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = prefix.with_name(prefix.name + ".tmp.safetensors")
    save_file(state, str(tmp))
    tmp.replace(prefix.with_suffix(".safetensors"))
    tmpj = prefix.with_name(prefix.name + ".tmp.json")
    tmpj.write_text(json.dumps(meta.to_json(), indent=2))
    tmpj.replace(prefix.with_suffix(".json"))
    return prefix


def load_meta(path_or_name: str | Path) -> ModelMeta:
    prefix = resolve(path_or_name)
    jpath = prefix.with_suffix(".json")
    try:
        data = json.loads(jpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint metadata {jpath} does not exist") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{jpath}: not valid JSON ({e})") from None
    return ModelMeta.from_json(data, str(jpath))


def load(path_or_name: str | Path, device: str = "cpu"):
    """Load (model in eval mode, metadata) from a checkpoint."""
    from safetensors.torch import load_file

    from rtsmlm.localization.net import DecodeNet

    meta = load_meta(path_or_name)
    wpath = resolve(path_or_name).with_suffix(".safetensors")
    try:
        state = load_file(str(wpath), device=device)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint weights {wpath} do not exist") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{wpath}: cannot read weights ({e})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise CheckpointError(f"{wpath}: weight tensor {name!r} holds NaN or infinite values "
                                  "(a diverged or damaged training); use another checkpoint")
    model = DecodeNet(window=meta.window, width=meta.width, depth=meta.depth, in_channels=meta.scales.in_channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        # torch lists every mismatching tensor over many lines: name the first problem only.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise CheckpointError(f"{wpath}: weights do not fit the architecture in its metadata "
                              f"(width {meta.width}, depth {meta.depth}, window {meta.window}): "
                              f"{detail[:200]}") from None
    model.to(device).eval()
    return model, meta


CAMERA_KEYS = ("model",)
"""Camera differences that matter to a model trained for one camera and that only the configuration tells:
the noise model (EMCCD excess noise or sCMOS). Baseline, e⁻/ADU, EM gain and QE do not: the localizer
converts ADU to photons with the run's camera. Nor does the pixel size itself: what matters is the PSF's width
in pixels, which the range guard (rtsmlm.localization.range_guard) measures on the movie (a 107 nm camera
with a 140 nm PSF is the 100 nm / 130 nm camera the default model was trained for, and was warned about). A
broad model (trained over cameras and PSF widths) is checked by the range guard only."""


def check_compatible(meta: ModelMeta, camera: dict[str, Any], source: str = "the run") -> list[str]:
    """Differences between the camera a model was trained for and ``camera``; each is also warned."""
    problems: list[str] = []
    if (meta.train or {}).get("broad"):
        return problems
    for key in CAMERA_KEYS:
        trained, actual = meta.camera.get(key), camera.get(key)
        if trained is None or actual is None:
            continue
        if isinstance(trained, str) or isinstance(actual, str):
            differs = trained != actual
        else:
            differs = abs(float(trained) - float(actual)) > 1e-6 * max(1.0, abs(float(trained)))
        if differs:
            problems.append(f"camera.{key}: model trained for {trained}, {source} has {actual}")
    for p in problems:
        warnings.warn(f"model/camera mismatch — {p}; localizations may be biased "
                      "(train a model for this camera with `rtsmlm train`)", stacklevel=2)
    return problems
