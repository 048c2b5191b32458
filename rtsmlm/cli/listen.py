"""``rtsmlm listen``: subscribe to a running rtsmlm localization stream; print a live summary or write
its localizations to CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.outputs.stream import DEFAULT_ADDRESS, TOPIC_LOCS, TOPIC_STATS, StreamError, StreamMessage, Subscriber


def listen_main(argv: list[str]) -> int:
    """``rtsmlm listen``: print a live summary of the stream, or write its localizations to CSV."""
    ap = argparse.ArgumentParser(prog="rtsmlm listen",
                                 description="Subscribe to a running rtsmlm localization stream.")
    ap.add_argument("--address", default=None,
                    help=f"publisher address (default: stream.address of --config, else {DEFAULT_ADDRESS})")
    ap.add_argument("--config", default=None, help="config.toml to take stream.address from")
    ap.add_argument("--csv", default=None, metavar="FILE",
                    help="write every received localization to FILE (header row, 0-based frames, nm)")
    ap.add_argument("--count", type=int, default=None, metavar="N", help="stop after N localization batches")
    ap.add_argument("--timeout", type=float, default=None, metavar="S",
                    help="stop after S seconds without a message (default: wait forever)")
    ap.add_argument("--until-end", action="store_true", help="stop when the run ends")
    ap.add_argument("--interval", type=float, default=1.0, metavar="S", help="summary line every S seconds")
    args = ap.parse_args(argv)
    if args.count is not None and args.count < 1:
        ap.error(f"--count must be at least 1, got {args.count}")
    if args.timeout is not None and args.timeout <= 0:
        ap.error(f"--timeout must be positive, got {args.timeout}")

    address = args.address
    if address is None:
        if args.config:
            from rtsmlm.core.config import ConfigError, load
            try:
                address = load(args.config).stream.address
            except ConfigError as e:
                print(f"rtsmlm listen: {e}", file=sys.stderr)
                return 2
        else:
            address = DEFAULT_ADDRESS
    if address.startswith("tcp://*") or address.startswith("tcp://0.0.0.0"):
        address = "tcp://127.0.0.1" + address[address.rindex(":"):]  # a bind-all address, seen locally

    try:
        writer = _CsvSink(Path(args.csv)) if args.csv else None
    except OSError as e:
        print(f"rtsmlm listen: cannot write {args.csv}: {e.strerror}", file=sys.stderr)
        return 2
    stats_topics = (TOPIC_LOCS, TOPIC_STATS)
    summary = _Summary(sys.stdout, args.interval)
    print(f"listening on {address} (Ctrl-C to stop)", file=sys.stderr)
    sub: Subscriber | None = None
    try:
        sub = Subscriber(address, stats_topics)
        n_batches = 0
        while args.count is None or n_batches < args.count:
            msg = sub.recv(args.timeout)
            if msg is None:
                break
            if msg.topic == TOPIC_LOCS:
                n_batches += 1
                if writer is not None:
                    writer.write(msg)
            summary.add(msg, sub)
            if msg.final and args.until_end:
                break
    except KeyboardInterrupt:
        pass
    except StreamError as e:
        print(f"rtsmlm listen: {e}", file=sys.stderr)
        return 2
    finally:
        if sub is not None:
            summary.finish(sub)
            sub.close()
        if writer is not None:
            writer.close()
    if summary.n_messages == 0:
        print(f"rtsmlm listen: no message from {address}"
              + (f" within {args.timeout:g} s" if args.timeout else ""), file=sys.stderr)
        return 1
    return 0


class _CsvSink:
    """Appends every batch to a CSV with the columns of the first batch.

    The schema may change between batches (a run restarted with drift correction, a publisher of another
    version): a column a later batch lacks is left empty in its rows, a column it adds is not written;
    each change is reported once on stderr, naming the columns and the frame where it happened.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("w", newline="", encoding="utf-8")
        self._names: list[str] | None = None
        self._fmt: list[str] = []
        self._reported: set[tuple[str, str]] = set()

    def write(self, msg: StreamMessage) -> None:
        if self._names is None:
            self._names = list(msg.columns)
            self._fmt = ["%d" if msg.columns[n].dtype.kind in "iub" else
                         "%.7g" if msg.columns[n].dtype.itemsize <= 4 else "%.15g" for n in self._names]
            csv.writer(self._fh).writerow(self._names)
        if msg.n == 0:
            return
        self._report_changes(msg)
        cells = []
        for name, fmt in zip(self._names, self._fmt):
            col = msg.columns.get(name)
            if col is None:
                cells.append(np.full(msg.n, "", dtype=object))
            else:
                cells.append(np.char.mod(fmt, np.asarray(col)))
        self._fh.write("".join(",".join(row) + "\n" for row in zip(*cells)))
        self._fh.flush()

    def _report_changes(self, msg: StreamMessage) -> None:
        assert self._names is not None
        missing = [n for n in self._names if n not in msg.columns]
        extra = [n for n in msg.columns if n not in self._names]
        for kind, names, what in (("missing", missing, "left empty"), ("extra", extra, "not written")):
            key = (kind, ",".join(names))
            if names and key not in self._reported:
                self._reported.add(key)
                print(f"rtsmlm listen: from frame {msg.first_frame} the stream "
                      f"{'lacks' if kind == 'missing' else 'adds'} column(s) {', '.join(names)}: {what} in "
                      f"{self.path}", file=sys.stderr)

    def close(self) -> None:
        self._fh.close()


class _Summary:
    """The live one-line-per-interval report of ``rtsmlm listen``."""

    def __init__(self, out: Any, interval: float) -> None:
        self.out = out
        self.interval = interval
        self.n_messages = 0
        self.n_batches = 0
        self.n_locs = 0
        self.last_frame = -1
        self.run_id = ""
        self._t0 = time.monotonic()
        self._t_last = self._t0
        self._locs_at_last = 0

    def add(self, msg: StreamMessage, sub: Subscriber) -> None:
        self.n_messages += 1
        if msg.run_id != self.run_id:
            self.run_id = msg.run_id
            print(f"run {msg.run_id}", file=self.out, flush=True)
        if msg.topic == TOPIC_LOCS:
            self.n_batches += 1
            self.n_locs += msg.n
            self.last_frame = max(self.last_frame, int(msg.last_frame or 0))
        elif msg.final:
            print(f"run {msg.run_id} ended: {json.dumps(msg.stats)}", file=self.out, flush=True)
        else:
            text = json.dumps(msg.stats, separators=(",", ":"))
            print(f"stats {text if len(text) <= 200 else text[:197] + '...'}", file=self.out, flush=True)
        now = time.monotonic()
        if now - self._t_last >= self.interval:
            rate = (self.n_locs - self._locs_at_last) / (now - self._t_last)
            self._t_last, self._locs_at_last = now, self.n_locs
            self._line(sub, rate)

    def _line(self, sub: Subscriber, rate: float) -> None:
        print(f"batches {self.n_batches} locs {self.n_locs} ({rate:.0f}/s) up to frame {self.last_frame}"
              f" missed {sub.missed} rejected {sub.rejected}", file=self.out, flush=True)

    def finish(self, sub: Subscriber) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        self._line(sub, self.n_locs / elapsed)
