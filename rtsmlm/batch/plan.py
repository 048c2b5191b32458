"""What a batch will do: the movies its inputs name, each cut into time chunks, and what is done already.

Inputs are movie files, OME-Zarr folders, folders of movies (searched recursively) and glob patterns.
Each movie gets an output folder named after it under the batch's ``--out``; its chunks' localizations
are kept in ``chunks/`` there, one ``.npy`` file a chunk written atomically, so a rerun skips what is
done. ``batch.json`` records what the chunks were made from (the movie's size and time, the model, the
thresholds, the chunk size): chunks made from anything else are never mixed in.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.core.config import Config
from rtsmlm.core.errors import RtsmlmError
from rtsmlm.io.movies import TIFF_SUFFIXES

__all__ = ["BATCH_JSON", "CHUNKS_DIR", "BatchInputError", "MoviePlan", "chunk_bounds", "find_movies", "plan_movie"]

BATCH_JSON = "batch.json"
CHUNKS_DIR = "chunks"
_MOVIE_SUFFIXES = (*TIFF_SUFFIXES, ".raw", ".dax")


class BatchInputError(RtsmlmError, ValueError):
    """An input names nothing a batch can read, or an output folder holds another batch's chunks."""


def find_movies(inputs: list[str]) -> list[Path]:
    """The movies the inputs name, in order, each once. A folder contributes the movies inside it (an
    OME-Zarr folder is one movie); a pattern its matches. An input that names nothing raises."""
    from rtsmlm.io.zarr_movies import is_ome_zarr

    found: list[Path] = []
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise BatchInputError(f"{item}: no file matches this pattern")
        for path in matches:
            if is_ome_zarr(path) or path.is_file():
                found.append(path)
            elif path.is_dir():
                inner = [p for p in sorted(path.rglob("*"))
                         if (p.is_file() and p.name.lower().endswith(_MOVIE_SUFFIXES)) or is_ome_zarr(p)]
                inner = [p for p in inner if not any(is_ome_zarr(parent) for parent in p.parents)]
                if not inner:
                    raise BatchInputError(f"{path}: the folder holds no movie (.tif, .ome.tif, .raw, .dax, .zarr)")
                found += inner
            else:
                raise BatchInputError(f"{path}: no such file or folder")
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return list(unique)


def chunk_bounds(n_frames: int, chunk_frames: int, context: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, read_start, read_stop) of each chunk: it reports frames start..stop-1 and reads
    ``context`` more on each side (within the movie)."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    return [(a, min(a + chunk_frames, n_frames), max(0, a - context), min(n_frames, a + chunk_frames + context))
            for a in range(0, n_frames, chunk_frames)]


@dataclass(frozen=True)
class MoviePlan:
    """One movie of a batch: where its outputs go and which chunks are still to do."""

    path: Path
    name: str
    out_dir: Path
    n_frames: int
    shape: tuple[int, int]
    dtype: str
    chunks: list[tuple[int, int, int, int]]
    done: frozenset[int]  # starts of the chunks already on disk

    def chunk_file(self, start: int, stop: int) -> Path:
        return self.out_dir / CHUNKS_DIR / f"frames_{start:09d}_{stop:09d}.npy"

    @property
    def todo(self) -> list[tuple[int, int, int, int]]:
        return [c for c in self.chunks if c[0] not in self.done]


def output_names(paths: list[Path]) -> list[str]:
    """A folder name per movie: its file name without the movie suffixes, made unique with the parent
    folder's name (then a number) where two movies share a name."""
    def stem(p: Path) -> str:
        name = p.name
        for suffix in (".ome.tif", ".ome.tiff", ".ome.zarr", *_MOVIE_SUFFIXES, ".zarr"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name

    names = [stem(p) for p in paths]
    out = []
    for p, name in zip(paths, names):
        if names.count(name) > 1:
            name = f"{p.parent.name}_{name}"
        base, k = name, 2
        while name in out:
            name, k = f"{base}_{k}", k + 1
        out.append(name)
    return out


def _fingerprint(path: Path) -> dict[str, Any]:
    """What identifies the movie's content cheaply: size and modification time (a folder: of its files)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [f.stat() for f in files]
    return {"bytes": int(sum(s.st_size for s in stats)), "mtime": max((s.st_mtime for s in stats), default=0.0)}


def settings_of(cfg: Config, chunk_frames: int) -> dict[str, Any]:
    """Everything the chunks' localizations depend on besides the movie (the batch.json ``settings``)."""
    from rtsmlm.core.config import to_dict

    relevant = {k: to_dict(cfg)[k] for k in ("model", "camera", "psf")}
    relevant["backend"] = {k: to_dict(cfg)["backend"][k] for k in ("name", "precision")}
    relevant["chunk_frames"] = chunk_frames
    relevant["checkpoint_sha256"] = _checkpoint_hash(cfg.model.checkpoint)
    return relevant


def _checkpoint_hash(checkpoint: str) -> str:
    from rtsmlm.localization import checkpoint as ckpt
    from rtsmlm.localization.backends import file_sha256

    return file_sha256(ckpt.resolve(checkpoint).with_suffix(".safetensors"))[:16]


def plan_movie(path: Path, name: str, out_root: Path, settings: dict[str, Any], context: int,
               restart: bool = False) -> MoviePlan:
    """Open ``path``'s header, lay out its chunks and find those done by an earlier run of the same batch.
    A movie that cannot be read raises :class:`~rtsmlm.core.errors.SourceError`; an output folder with
    chunks made from another movie or other settings raises :class:`BatchInputError` (unless ``restart``)."""
    from rtsmlm.io.movies import open_movie

    with open_movie(path) as movie:
        n_frames, shape, dtype = movie.n_frames, movie.shape, movie.dtype.name
    out_dir = out_root / name
    record = {"movie": str(path), "fingerprint": _fingerprint(path), "frames": n_frames, "shape": list(shape),
              "dtype": dtype, "settings": settings}
    manifest = out_dir / BATCH_JSON
    chunk_dir = out_dir / CHUNKS_DIR
    if manifest.is_file() and not restart:
        try:
            earlier = json.loads(manifest.read_text())
        except (OSError, ValueError):
            earlier = None
        now = json.loads(json.dumps(record))
        if earlier != now:
            raise BatchInputError(f"{out_dir}: holds chunks of an earlier batch made with other settings "
                                  f"({_differences(earlier, now)}); rerun with --restart to redo this movie, or "
                                  "choose another --out")
    if restart and chunk_dir.is_dir():
        for f in chunk_dir.glob("*.npy"):
            f.unlink()
    chunk_dir.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, manifest)
    chunks = chunk_bounds(n_frames, int(settings["chunk_frames"]), context)
    plan = MoviePlan(path, name, out_dir, n_frames, shape, dtype, chunks, frozenset())
    return dataclasses.replace(plan, done=frozenset(a for a, b, _, _ in chunks if plan.chunk_file(a, b).is_file()))


def _differences(earlier: Any, now: dict[str, Any], prefix: str = "") -> str:
    """The keys whose values differ, as 'key: old -> new' (the first three)."""
    if not isinstance(earlier, dict):
        return "an unreadable batch.json"
    out = []
    for key, value in now.items():
        old = earlier.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            inner = _differences(old, value, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif old != value:
            out.append(f"{prefix}{key}: {old!r} -> {value!r}")
    return "; ".join(out[:3])


def save_chunk(path: Path, locs: np.ndarray) -> None:
    """Write one chunk's localizations atomically: the file exists complete or not at all."""
    tmp = path.with_suffix(".npy.tmp")
    with open(tmp, "wb") as f:
        np.save(f, locs)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
