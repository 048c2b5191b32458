"""``rtsmlm watch DIR``: analyse every Micro-Manager acquisition written into DIR while it is written."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["add_watch_parser", "watch_main"]


def add_watch_parser(sub: argparse._SubParsersAction, add_config_args: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("watch", help="analyse Micro-Manager acquisitions in a folder while they are written",
                       description="Follow DIR (and its sub-folders) for Micro-Manager stacks "
                                   "(NAME_MMStack_Pos0.ome.tif and continuation files); analyse each one while "
                                   "it grows, as `rtsmlm run` would, into --out/<acquisition>/. Ctrl-C ends.")
    add_config_args(p)
    p.add_argument("folder", metavar="DIR", help="where Micro-Manager saves its acquisitions")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (one sub-folder per acquisition)")
    p.add_argument("--live", action="store_true", help="show each acquisition in the live window")
    p.add_argument("--idle-timeout-s", type=float, default=None,
                   help="an acquisition not grown for this long has ended (default: source.idle_timeout_s)")
    p.add_argument("--max-acquisitions", type=int, default=0, help="stop after this many (default 0: never)")
    p.add_argument("--model", metavar="CHECKPOINT", help="model checkpoint (default: model.checkpoint)")
    p.add_argument("--no-stream", action="store_true", help="do not publish over ZeroMQ")
    return p


def _live_runner(run: Any, stop: threading.Event) -> dict[str, Any]:
    from PyQt5 import QtCore

    from rtsmlm.gui.app import open_live_window

    window = open_live_window(run.pipeline.cfg, run=run)
    loop = QtCore.QEventLoop()
    window.run_finished.connect(lambda: QtCore.QTimer.singleShot(2000, window.close))
    window.closed.connect(loop.quit)
    loop.exec_()
    return dict(run.finish())


def watch_main(args: argparse.Namespace, cfg: Any) -> int:
    import logging

    from rtsmlm.core.errors import SourceError
    from rtsmlm.engine.run import signal_name, stop_signals
    from rtsmlm.engine.watch import run_headless, watch_folder

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"rtsmlm watch: {folder}: no such folder", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int) -> None:
        print(f"\nstopping ({signal_name(signum)}): finishing the acquisition being analysed", file=sys.stderr)
        stop.set()

    runner = run_headless
    if args.live:
        from rtsmlm.gui.app import ensure_app

        ensure_app()
        runner = _live_runner
    print(f"watching {folder} for Micro-Manager acquisitions (Ctrl-C to end)", flush=True)
    try:
        with stop_signals(on_signal):
            summaries = watch_folder(cfg, folder, Path(args.out), stop=stop, max_acquisitions=args.max_acquisitions,
                                     runner=runner,
                                     on_summary=lambda out, s: print(
                                         f"{out}: {s.get('frames_acquired', 0)} frames, {s.get('n_locs', 0)} "
                                         f"localizations, status {s.get('status')}", flush=True))
    except SourceError as e:
        print(f"rtsmlm watch: {e}", file=sys.stderr)
        return 1
    return 1 if any(s.get("errors") for s in summaries) else 0
