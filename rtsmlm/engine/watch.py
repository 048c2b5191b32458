"""``rtsmlm watch``: follow a folder where Micro-Manager writes, analyse every acquisition as it grows.

Micro-Manager's multi-dimensional acquisition writes each acquisition as ``NAME_MMStack_Pos0.ome.tif``
(+ ``_1``, ``_2``, … continuation files), usually in a sub-folder of its own. The watcher scans the
folder; each new stack becomes a normal run (:func:`rtsmlm.engine.run.build_run` with ``source.kind =
"watch"``): frames are localized as they are written, the outputs go to ``OUT/<acquisition>/`` as for
``rtsmlm run``, with the stream, plugins and (``--live``) the live window. Acquisitions are analysed one
after another, in the order they appear. An acquisition that cannot be analysed (no frame, pixel maps
of another size) is one line and the watcher goes on; a watched folder that disappears ends the watch.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtsmlm.core import config as config_mod
from rtsmlm.core.config import Config
from rtsmlm.core.errors import SourceError
from rtsmlm.io.mm_tiff import is_first_mm_file

__all__ = ["run_headless", "watch_folder"]

log = logging.getLogger("rtsmlm.engine.watch")


def run_headless(run: Any, stop: threading.Event) -> dict[str, Any]:
    """Start ``run``, wait for its end (``stop`` ends the acquisition early), finish it."""
    run.start()
    while not run.wait(timeout=0.2):
        if stop.is_set():
            run.stop()
    return dict(run.finish())


def _acquisition_name(first: Path, folder: Path, taken: set[str]) -> str:
    name = first.parent.name if first.parent != folder else first.name.split("_MMStack")[0]
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def watch_folder(cfg: Config, folder: Path, out_root: Path, *, stop: threading.Event | None = None,
                 poll_interval_s: float = 0.2, max_acquisitions: int = 0,
                 runner: Callable[[Any, threading.Event], dict[str, Any]] = run_headless,
                 on_summary: Callable[[Path, dict[str, Any]], None] | None = None,
                 extra_listeners: Callable[[], list[object]] | None = None,
                 backend: tuple[Any, Any] | None = None) -> list[dict[str, Any]]:
    """Analyse each new Micro-Manager stack under ``folder`` into ``out_root/<name>/`` until ``stop`` is
    set (or ``max_acquisitions`` were analysed). Stacks already in the folder when the watch starts are
    analysed too. Returns the runs' summaries. Raises :class:`SourceError` when the folder disappears.
    ``extra_listeners`` makes listeners that follow each run after rtsmlm's own (scripts, benchmarks);
    ``backend`` is an opened (backend, metadata) pair to use (default: opened here, before any acquisition)."""
    from rtsmlm.engine.run import build_run
    from rtsmlm.localization.backends import model_for_backend, open_backend

    stop = stop or threading.Event()
    cfg = model_for_backend(cfg)  # the model build_run will name (a GPU's larger sibling): opened once here
    # The model is opened and traced once, before the first acquisition appears: that takes seconds, and
    # frames written meanwhile would wait.
    opened = backend if backend is not None else open_backend(cfg.backend, cfg.model.checkpoint)
    size = opened[0].size_multiple * 8
    opened[0].warmup(size, size, 1, 1)
    seen: set[Path] = set()
    taken: set[str] = {p.name for p in out_root.iterdir()} if out_root.is_dir() else set()
    summaries: list[dict[str, Any]] = []
    while not stop.is_set():
        if not folder.is_dir():
            raise SourceError(f"{folder}: the watched folder has disappeared")
        try:
            found = [p for p in folder.rglob("*.ome.tif") if is_first_mm_file(p) and p not in seen]
            found.sort(key=lambda p: p.stat().st_mtime)
        except FileNotFoundError:  # an acquisition folder removed while scanning: scan again
            found = []
        for first in found:
            seen.add(first)
            name = _acquisition_name(first, folder, taken)
            taken.add(name)
            out = out_root / name
            tables = config_mod.to_dict(cfg)
            run_cfg = config_mod.replace(cfg, source={**tables["source"], "kind": "watch", "path": str(first)},
                                         output={**tables["output"], "dir": str(out)})
            print(f"watch: {first} -> {out}", flush=True)
            try:
                run = build_run(run_cfg, realtime=False, backend=opened,
                                extra_listeners=extra_listeners() if extra_listeners is not None else ())
            except SourceError as e:
                print(f"rtsmlm watch: {e}; skipping this acquisition", file=sys.stderr, flush=True)
                continue
            summary = runner(run, stop)
            summaries.append(summary)
            if on_summary is not None:
                on_summary(out, summary)
            for err in summary.get("errors", []):
                print(f"rtsmlm watch: {first}: {err}", file=sys.stderr, flush=True)
            if max_acquisitions and len(summaries) >= max_acquisitions:
                return summaries
            if stop.is_set():
                break
        stop.wait(poll_interval_s)
    return summaries
