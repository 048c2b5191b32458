"""Model checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (everything needed to use them).

The metadata records architecture, window, pixel size, camera, PSF, input/output scaling, the training
config and the rtsmlm version. Nothing is unpickled: weights load through safetensors, the training
state (optimizer) through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import rtsmlm
from rtsmlm.model.data import Scales

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL_NAME = "default_2d"


class CheckpointError(ValueError):
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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = "rtsmlm-checkpoint-1"
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str) -> "ModelMeta":
        if d.get("format") != "rtsmlm-checkpoint-1":
            raise CheckpointError(f"{source}: not an rtsmlm checkpoint (format {d.get('format')!r})")
        d = {k: v for k, v in d.items() if k != "format"}
        try:
            d["scales"] = Scales(**d["scales"])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{source}: metadata is incomplete or has unknown fields ({e})") from None


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package (usable as ``model.checkpoint``)."""
    return sorted(p.stem for p in DEFAULT_MODEL_DIR.glob("*.json"))


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

    from rtsmlm.model.net import DecodeNet

    meta = load_meta(path_or_name)
    wpath = resolve(path_or_name).with_suffix(".safetensors")
    try:
        state = load_file(str(wpath), device=device)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint weights {wpath} do not exist") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{wpath}: cannot read weights ({e})") from None
    model = DecodeNet(window=meta.window, width=meta.width, depth=meta.depth)
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


CAMERA_KEYS = ("model", "pixel_size_nm", "baseline_adu", "e_per_adu", "em_gain", "qe")


def check_compatible(meta: ModelMeta, camera: dict[str, Any], source: str = "the run") -> list[str]:
    """Differences between the camera a model was trained for and ``camera``; each is also warned."""
    problems = []
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
