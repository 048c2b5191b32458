"""ZeroMQ publisher and subscriber of the localization stream.

Wire format (``SCHEMA`` version ``SCHEMA_VERSION``): one multipart message per localization batch or
stats update.

* frame 0 — topic: ``b"locs"`` or ``b"stats"`` (subscribers filter on it).
* frame 1 — JSON header (UTF-8 object): ``schema``, ``version``, ``topic``, ``run_id``, ``seq`` (per-topic
  message counter of this run, from 0, without gaps on the publisher side), ``time`` (Unix seconds),
  ``pixel_size_nm``. ``locs`` headers add ``batch_seq``, ``first_frame``, ``last_frame`` (0-based,
  inclusive; frames with nothing found are covered too), ``n`` (rows) and ``columns`` (``[name, dtype]``
  pairs, numpy dtype strings such as ``"<f4"``). ``stats`` headers add ``stats`` (an object) and
  ``final`` (true on the end-of-run marker sent by :meth:`Publisher.close`, whose ``stats`` carry the
  totals ``locs_messages``, ``stats_messages``, ``n_locs``).
* frames 2… — ``locs`` only: one raw little-endian buffer per column, in ``columns`` order, ``n`` items
  each. Coordinates follow DESIGN.md (nm, origin at the top-left corner of the top-left pixel).

A subscriber that falls behind loses whole messages at the publisher's high-water mark; the engine
never waits for it. The per-topic ``seq`` lets it count what it missed, and the end-of-run totals let
it count losses at the tail too.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator, Sequence

import numpy as np
import zmq

from rtsmlm.core.config import StreamConfig
from rtsmlm.core.errors import RtsmlmError
from rtsmlm.core.jsonio import to_jsonable
from rtsmlm.core.locs import LocBatch

log = logging.getLogger(__name__)

SCHEMA = "rtsmlm.outputs.stream"
SCHEMA_VERSION = 1
TOPIC_LOCS = "locs"
TOPIC_STATS = "stats"
TOPICS = (TOPIC_LOCS, TOPIC_STATS)
DEFAULT_ADDRESS = StreamConfig().address

# "next" tries this many following ports before giving up.
_PORT_SEARCH = 100
# Column dtypes a subscriber accepts: little-endian (or byte-order free) numbers only.
_ACCEPTED_KINDS = "biuf"


class StreamError(RtsmlmError, RuntimeError):
    """The stream cannot be opened: bad address, port in use, unreachable interface."""


# --------------------------------------------------------------------------------------------------
# Publisher

class Publisher:
    """Publishes localization batches and stats of one run on a ZeroMQ PUB (XPUB) socket.

    Built and driven by its listener's relay thread (ZeroMQ sockets are not thread-safe):
    ``publish_locs`` for every batch, ``publish_stats`` at the stats interval, ``close`` once at the end.
    Sends never block: a subscriber whose queue reached ``high_water_mark`` messages loses the next
    ones instead of slowing the engine.

    An XPUB socket behaves as PUB on the wire and also reports subscriptions, which
    :meth:`wait_for_subscribers` uses so a scripted experiment can start the run only once its
    subscriber is listening (ZeroMQ drops what is published before a subscription arrives).
    """

    def __init__(self, cfg: StreamConfig, run_id: str, pixel_size_nm: float, *,
                 wait_for_subscribers: int | None = None, wait_timeout_s: float | None = None,
                 linger_s: float = 1.0) -> None:
        """Bind ``cfg.address`` (when ``cfg.enabled``); raise :class:`StreamError` if that fails.

        ``wait_for_subscribers`` (default: ``cfg.wait_for_subscribers`` when the config has it, else 0)
        blocks here until that many subscribers listen to ``locs``, at most ``wait_timeout_s``.
        ``linger_s`` bounds how long :meth:`close` keeps trying to deliver queued messages.
        """
        self.run_id = str(run_id)
        self.pixel_size_nm = float(pixel_size_nm)
        self.enabled = bool(cfg.enabled)
        self.requested_address = cfg.address
        self.address: str | None = None
        self.n_locs_messages = 0
        self.n_stats_messages = 0
        self.n_locs = 0
        self.n_bytes = 0
        self.subscriptions = 0  # current count of subscriptions that receive ``locs``
        self._linger_ms = max(0, int(linger_s * 1000))
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._closed = False
        if not self.enabled:
            return
        self._ctx = zmq.Context(io_threads=1)
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, int(cfg.high_water_mark))
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription, to count subscribers
        sock.setsockopt(zmq.LINGER, 0)  # until close() sets the real value
        self._sock = sock
        try:
            self.address = _bind(sock, cfg.address, cfg.on_port_in_use)
        except BaseException:
            self._teardown(linger_ms=0)
            raise
        if not is_local_address(self.address):
            log.warning("publishing localizations on %s: any host that can reach this machine can read "
                        "them; set stream.address to tcp://127.0.0.1:PORT to keep them local",
                        self.address)
        log.info("localization stream on %s (run %s)", self.address, self.run_id)
        n_wait = wait_for_subscribers
        if n_wait is None:
            n_wait = int(getattr(cfg, "wait_for_subscribers", 0))
        timeout = wait_timeout_s
        if timeout is None:
            timeout = float(getattr(cfg, "wait_timeout_s", 10.0))
        if n_wait > 0 and not self.wait_for_subscribers(n_wait, timeout):
            log.warning("only %d of %d stream subscribers connected to %s within %.1f s; starting anyway",
                        self.subscriptions, n_wait, self.address, timeout)

    # -- called by the pipeline ------------------------------------------------------------------

    def publish_locs(self, batch: LocBatch) -> None:
        """Send one localization batch (columns as separate zero-copy buffers); never blocks."""
        if self._sock is None:
            return
        locs = batch.locs
        columns = []
        buffers = []
        for name in locs.dtype.names:
            col = locs[name]
            # The wire is little-endian whatever this machine is.
            le = col.dtype.newbyteorder("<") if col.dtype.str[0] == ">" else col.dtype
            # A field of a record array is strided; the column buffer must be contiguous.
            buf = np.ascontiguousarray(col, dtype=le)
            columns.append([name, le.str])
            buffers.append(buf)
        header = self._header(TOPIC_LOCS, self.n_locs_messages)
        header.update(batch_seq=int(batch.seq), first_frame=int(batch.first_frame),
                      last_frame=int(batch.last_frame), n=int(len(locs)), columns=columns)
        head = json.dumps(header, separators=(",", ":")).encode()
        self._send([TOPIC_LOCS.encode(), head, *buffers])
        self.n_locs_messages += 1
        self.n_locs += len(locs)
        self.n_bytes += len(head) + sum(b.nbytes for b in buffers)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        """Send a stats update (any JSON-able dict; numpy scalars and non-finite floats are handled)."""
        if self._sock is None:
            return
        self._send_stats(stats, final=False)

    def close(self) -> None:
        """Send the end-of-run marker and release the socket (waits at most ``linger_s``)."""
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            try:
                self._send_stats({"event": "end", "locs_messages": self.n_locs_messages,
                                  "stats_messages": self.n_stats_messages, "n_locs": self.n_locs},
                                 final=True)
            finally:
                self._teardown(self._linger_ms)

    # -- helpers for scripts and the run summary ---------------------------------------------------

    def wait_for_subscribers(self, n: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``n`` subscriptions receive ``locs`` (or ``timeout`` s); True if they do.

        Call from the thread that publishes, before the first batch.
        """
        if self._sock is None:
            return n <= 0
        deadline = time.monotonic() + timeout
        while True:
            self._drain_subscriptions()
            if self.subscriptions >= n:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._sock.poll(int(left * 1000) + 1, zmq.POLLIN)

    def summary(self) -> dict[str, Any]:
        """Counts for the run summary (what the publisher sent; losses are counted by subscribers)."""
        return {"enabled": self.enabled, "address": self.address, "locs_messages": self.n_locs_messages,
                "stats_messages": self.n_stats_messages, "n_locs": self.n_locs, "bytes": self.n_bytes}

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------

    def _header(self, topic: str, seq: int) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "topic": topic, "run_id": self.run_id,
                "seq": seq, "time": time.time(), "pixel_size_nm": self.pixel_size_nm}

    def _send_stats(self, stats: dict[str, Any], final: bool) -> None:
        header = self._header(TOPIC_STATS, self.n_stats_messages)
        header.update(final=final, stats=to_jsonable(dict(stats)))
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        self._send([TOPIC_STATS.encode(), head])
        self.n_stats_messages += 1
        self.n_bytes += len(head)

    def _send(self, parts: list[Any]) -> None:
        assert self._sock is not None
        self._drain_subscriptions()
        # PUB/XPUB drop at the high-water mark instead of blocking; NOBLOCK guards the rest.
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # pragma: no cover - XPUB drops rather than raising
            pass

    def _drain_subscriptions(self) -> None:
        """Read pending (un)subscription messages so they neither pile up nor go uncounted."""
        sock = self._sock
        assert sock is not None
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not msg:
                continue
            prefix = msg[1:]
            if TOPIC_LOCS.encode().startswith(prefix):
                self.subscriptions += 1 if msg[0] == 1 else -1 if msg[0] == 0 else 0

    def _teardown(self, linger_ms: int) -> None:
        if self._sock is not None:
            self._sock.close(linger=linger_ms)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


def _bind(sock: zmq.Socket, address: str, on_port_in_use: str) -> str:
    """Bind ``address``; on a port in use, fail clearly or try the next ports (``"next"``)."""
    try:
        sock.bind(address)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except zmq.ZMQError as e:
        if e.errno != zmq.EADDRINUSE:
            raise StreamError(f"stream.address {address!r} cannot be bound: {e.strerror}") from None
    host, port = _split_tcp(address)
    if on_port_in_use != "next" or port is None:
        raise StreamError(f"stream.address {address!r}: the port is already in use (another rtsmlm run?); "
                          f"choose another port or set stream.on_port_in_use = \"next\"")
    for candidate in range(port + 1, min(port + 1 + _PORT_SEARCH, 65536)):
        alt = f"tcp://{host}:{candidate}"
        try:
            sock.bind(alt)
        except zmq.ZMQError as e:
            if e.errno == zmq.EADDRINUSE:
                continue
            raise StreamError(f"stream.address {alt!r} cannot be bound: {e.strerror}") from None
        log.warning("stream port %d is in use; publishing on %s instead", port, alt)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    raise StreamError(f"stream.address {address!r}: the port and the next {_PORT_SEARCH} are all in use")


def _split_tcp(address: str) -> tuple[str, int | None]:
    """``tcp://host:port`` → (host, port); port None when not a number (``*``) or not TCP."""
    if not address.startswith("tcp://"):
        return "", None
    host, _, port = address[len("tcp://"):].rpartition(":")
    return host, int(port) if port.isdigit() else None


def is_local_address(address: str) -> bool:
    """True for endpoints only this machine can reach (loopback TCP, ipc, inproc)."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host, _ = _split_tcp(address)
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: assume reachable from outside


# --------------------------------------------------------------------------------------------------
# Subscriber

@dataclass(frozen=True)
class StreamMessage:
    """One accepted message. ``missed`` = messages of this topic lost right before it (same run).

    ``columns`` are zero-copy views of the received buffers; :attr:`locs` assembles them into a
    structured array (a copy, with the columns in header order).
    """

    topic: str
    run_id: str
    seq: int
    header: dict[str, Any]
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    missed: int = 0

    @property
    def first_frame(self) -> int | None:
        return self.header.get("first_frame")

    @property
    def last_frame(self) -> int | None:
        return self.header.get("last_frame")

    @property
    def n(self) -> int:
        return int(self.header.get("n", 0))

    @property
    def final(self) -> bool:
        """True on the end-of-run marker."""
        return bool(self.header.get("final", False))

    @property
    def stats(self) -> dict[str, Any] | None:
        return self.header.get("stats")

    @cached_property
    def locs(self) -> np.ndarray:
        """The batch as a structured array (empty for stats messages)."""
        dtype = np.dtype([(name, col.dtype) for name, col in self.columns.items()])
        out = np.empty(self.n, dtype=dtype)
        for name, col in self.columns.items():
            out[name] = col
        return out


class Subscriber:
    """Connects a SUB socket to a publisher and returns validated :class:`StreamMessage` objects.

    Malformed or foreign messages are dropped with a logged reason and counted in ``rejected``; they
    never raise. ``missed`` counts messages lost on the way (sequence gaps, and the tail reported by
    the end-of-run marker). The end-of-run marker is always returned (``final``), even when only
    ``locs`` was asked for, so callers can tell the run ended.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, topics: Sequence[str] = (TOPIC_LOCS,), *,
                 high_water_mark: int = 100_000) -> None:
        unknown = [t for t in topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"unknown stream topic {unknown[0]!r}; topics are {', '.join(TOPICS)}")
        self.address = address
        self.topics = tuple(topics)
        self.received = 0
        self.missed = 0
        self.rejected = 0
        self._last_seq: dict[tuple[str, str], int] = {}
        self._ctx = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, int(high_water_mark))
        self._sock.setsockopt(zmq.LINGER, 0)
        # Always take stats too: the end-of-run marker travels there.
        for topic in TOPICS:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        try:
            self._sock.connect(address)
        except zmq.ZMQError as e:
            self.close()
            raise StreamError(f"cannot connect to stream address {address!r}: {e.strerror}") from None

    def recv(self, timeout: float | None = None) -> StreamMessage | None:
        """The next accepted message, or None after ``timeout`` seconds (None = wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                wait_ms = -1
            else:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(wait_ms, zmq.POLLIN):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            parts = self._sock.recv_multipart(copy=False)
            msg = self._accept(parts)
            if msg is None:
                continue
            if msg.topic in self.topics or msg.final:
                return msg

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None  # type: ignore[assignment]
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None  # type: ignore[assignment]

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- validation ------------------------------------------------------------------------------

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        log.warning("rejected a message on %s: %s", self.address, reason)

    def _accept(self, parts: list[Any]) -> StreamMessage | None:
        try:
            msg, reason = _parse(parts)
        except Exception as e:  # a parser bug must not take the subscriber down either
            msg, reason = None, f"could not be parsed ({type(e).__name__}: {e})"
        if msg is None:
            self._reject(reason)
            return None
        key = (msg.run_id, msg.topic)
        last = self._last_seq.get(key)
        if last is None:
            # Runs are told apart by run id; a new run starts counting from its own seq 0.
            missed = msg.seq
        elif msg.seq <= last:
            log.warning("sequence of %s messages of run %s went back from %d to %d (publisher restarted?)",
                        msg.topic, msg.run_id, last, msg.seq)
            missed = 0
        else:
            missed = msg.seq - last - 1
        self._last_seq[key] = msg.seq
        if msg.final:
            sent = msg.stats.get("locs_messages") if isinstance(msg.stats, dict) else None
            if isinstance(sent, int):
                seen = self._last_seq.get((msg.run_id, TOPIC_LOCS), -1)
                missed_locs = max(0, sent - 1 - seen)
                self.missed += missed_locs
                if missed_locs and TOPIC_LOCS in self.topics:
                    log.warning("run %s ended; %d locs messages at the tail were missed", msg.run_id,
                                missed_locs)
        if missed:
            self.missed += missed
            msg = StreamMessage(msg.topic, msg.run_id, msg.seq, msg.header, msg.columns, missed)
        self.received += 1
        return msg


def _parse(parts: list[Any]) -> tuple[StreamMessage | None, str]:
    """Validate one multipart message; (message, "") or (None, the reason it was rejected)."""
    if len(parts) < 2:
        return None, f"{len(parts)} frame(s), expected a topic and a JSON header"
    topic = bytes(parts[0].buffer).decode("utf-8", "replace")
    if topic not in TOPICS:
        return None, f"unknown topic {topic[:40]!r}"
    try:
        header = json.loads(bytes(parts[1].buffer))
    except (UnicodeDecodeError, ValueError) as e:
        return None, f"header is not JSON ({e})"
    if not isinstance(header, dict):
        return None, "header is not a JSON object"
    if header.get("schema") != SCHEMA:
        return None, f"schema {header.get('schema')!r} is not {SCHEMA!r} (a foreign publisher?)"
    if header.get("version") != SCHEMA_VERSION:
        return None, f"schema version {header.get('version')!r}, this subscriber reads {SCHEMA_VERSION}"
    if header.get("topic") != topic:
        return None, f"header topic {header.get('topic')!r} differs from frame topic {topic!r}"
    run_id, seq = header.get("run_id"), header.get("seq")
    if not isinstance(run_id, str):
        return None, "run_id missing or not a string"
    if not _is_int(seq) or seq < 0:
        return None, f"seq {seq!r} is not a non-negative integer"
    if topic == TOPIC_STATS:
        if len(parts) != 2:
            return None, f"stats message has {len(parts)} frames, expected 2"
        if not isinstance(header.get("stats"), dict):
            return None, "stats message without a 'stats' object"
        return StreamMessage(topic, run_id, seq, header), ""
    n, spec = header.get("n"), header.get("columns")
    if not _is_int(n) or n < 0:
        return None, f"n {n!r} is not a non-negative integer"
    for key in ("first_frame", "last_frame"):
        if not _is_int(header.get(key)):
            return None, f"{key} {header.get(key)!r} is not an integer"
    if not isinstance(spec, list) or not spec:
        return None, "columns missing or empty"
    if len(parts) != 2 + len(spec):
        return None, f"{len(parts) - 2} column buffers for {len(spec)} columns"
    columns: dict[str, np.ndarray] = {}
    for item, part in zip(spec, parts[2:]):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(s, str) for s in item)):
            return None, f"column entry {item!r} is not [name, dtype]"
        name, dstr = item
        if name in columns:
            return None, f"column {name!r} appears twice"
        try:
            dtype = np.dtype(dstr)
        except TypeError:
            return None, f"column {name!r} has unknown dtype {dstr!r}"
        if dtype.kind not in _ACCEPTED_KINDS or dtype.str[0] not in "<|" or dtype.fields or dtype.shape:
            return None, f"column {name!r} has dtype {dstr!r}; only little-endian numbers are accepted"
        buf = part.buffer
        if len(buf) != n * dtype.itemsize:
            return None, f"column {name!r} has {len(buf)} bytes, expected {n} x {dtype.itemsize}"
        columns[name] = np.frombuffer(buf, dtype=dtype)
    return StreamMessage(topic, run_id, seq, header, columns), ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def subscribe(address: str = DEFAULT_ADDRESS, topics: Sequence[str] = (TOPIC_LOCS,), *,
              timeout: float | None = None, count: int | None = None, stop_at_end: bool = True,
              high_water_mark: int = 100_000) -> Iterator[StreamMessage]:
    """Yield messages of ``topics`` from the publisher at ``address`` as they arrive.

    Stops after ``count`` ``locs`` batches, after ``timeout`` seconds without a message, or (when
    ``stop_at_end``) at the end-of-run marker. ``batch.locs`` is the numpy table; ``batch.missed`` says
    how many batches were lost just before it. Example::

        for batch in rtsmlm.outputs.stream.subscribe("tcp://127.0.0.1:5556"):
            print(batch.first_frame, batch.last_frame, len(batch.locs))
    """
    with Subscriber(address, topics, high_water_mark=high_water_mark) as sub:
        n_locs_batches = 0
        while count is None or n_locs_batches < count:
            msg = sub.recv(timeout)
            if msg is None:
                return
            if msg.topic in sub.topics:
                yield msg
                n_locs_batches += msg.topic == TOPIC_LOCS
            if msg.final and stop_at_end:
                return


@dataclass(frozen=True)
class StreamSummary:
    """The stream listener's section of summary.json (``stream``): what the publisher sent."""

    enabled: bool
    address: str
    locs_messages: int
    stats_messages: int
    n_locs: int
    bytes: int


class StreamListener:
    """Listener publishing the localization stream and the stats over ZeroMQ (the socket is used by this
    listener's thread only)."""

    name = "stream"
    critical = False  # subscribers lose the stream; the files still hold everything

    def __init__(self, cfg: Any, run_id: str, pixel_size_nm: float) -> None:
        # Bound here, before acquisition starts, so a port in use fails the run at once; the socket is
        # then used only by this listener's thread (handing it over once is safe in ZeroMQ).
        self.publisher = Publisher(cfg.stream, run_id, pixel_size_nm, wait_for_subscribers=0)
        self._wait = (cfg.stream.wait_for_subscribers, cfg.stream.wait_timeout_s)

    def on_run_start(self, run: Any) -> None:
        # Acquisition starts only after every listener's on_run_start: waiting here means scripted
        # subscribers see the first batch.
        n, timeout = self._wait
        if n and not self.publisher.wait_for_subscribers(n, timeout):
            log.warning("only %d of %d stream subscribers connected within %.1f s; acquiring anyway",
                        self.publisher.subscriptions, n, timeout)

    def on_batch(self, batch: LocBatch) -> None:
        self.publisher.publish_locs(batch)

    def on_stats(self, stats: dict[str, Any]) -> None:
        self.publisher.publish_stats(stats)

    def on_run_end(self, end: Any) -> dict[str, StreamSummary]:
        self.publisher.close()
        return {"stream": StreamSummary(**self.publisher.summary())}

    def close(self) -> None:
        """Release the socket of a run that never started."""
        self.publisher.close()
