"""Plain JSON out of rtsmlm's values: the one converter every JSON writer uses (summary.json, the
stream's headers, movie metadata, ``rtsmlm evaluate``)."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["to_jsonable", "write_json_atomically"]


def to_jsonable(obj: Any, *, strict: bool = False) -> Any:
    """``obj`` as plain JSON types: numpy scalars and arrays unwrapped, dataclasses and mappings as
    objects, paths as strings, enums by value, non-finite floats as None (JSON has no NaN).

    Anything else becomes its ``str()``, or with ``strict`` raises :class:`TypeError` naming its type
    (where a silent conversion would store something unreadable, e.g. movie metadata)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, strict=strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, strict=strict) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name), strict=strict) for f in dataclasses.fields(obj)}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), strict=strict)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, strict=strict)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if strict:
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
    return str(obj)


def write_json_atomically(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON; on failure (a full disk) the old file stays as it was."""
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False)
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
