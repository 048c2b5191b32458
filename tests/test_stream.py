"""The ZeroMQ localization stream over real sockets on 127.0.0.1 (ephemeral ports, never 5556).

Subscribers are made ready with the publisher's view of their subscription (XPUB), never with sleeps;
``recv`` timeouts and ``join`` timeouts only guard against a hung test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading

import numpy as np
import pytest
import zmq

from rtsmlm.cli.listen import listen_main
from rtsmlm.core.config import StreamConfig, from_dict
from rtsmlm.core.locs import LOC_DTYPE, LocalizationStream, concat
from rtsmlm.outputs.stream import (
    SCHEMA,
    SCHEMA_VERSION,
    Publisher,
    StreamError,
    Subscriber,
    is_local_address,
    subscribe,
)

ANY_PORT = "tcp://127.0.0.1:*"
GUARD_S = 30.0  # generous guard against a hung test on a loaded 2-core machine


def random_locs(rng: np.random.Generator, n: int, first_frame: int, last_frame: int) -> np.ndarray:
    locs = np.zeros(n, LOC_DTYPE)
    locs["frame"] = np.sort(rng.integers(first_frame, last_frame + 1, n))
    for name in LOC_DTYPE.names[1:]:
        locs[name] = rng.uniform(0, 6400, n).astype(np.float32)
    return locs


def fill_stream(rng: np.random.Generator, sizes: list[int], frames_per_batch: int = 4) -> LocalizationStream:
    stream = LocalizationStream()
    for i, n in enumerate(sizes):
        first = i * frames_per_batch
        stream.append(first, first + frames_per_batch - 1, random_locs(rng, n, first, first + frames_per_batch - 1))
    stream.close()
    return stream


def publisher(linger_s: float = 1.0, **cfg) -> Publisher:
    return Publisher(StreamConfig(address=cfg.pop("address", ANY_PORT), **cfg), "run-test", 97.5,
                     linger_s=linger_s)


def test_every_batch_arrives_in_order_and_identical():
    rng = np.random.default_rng(0)
    stream = fill_stream(rng, [5, 0, 17, 1, 300, 2, 0, 44])
    with publisher() as pub, Subscriber(pub.address, ("locs", "stats")) as sub:
        assert pub.wait_for_subscribers(1, timeout=GUARD_S)
        for batch in stream.batches_since(0):
            pub.publish_locs(batch)
        pub.publish_stats({"frames": np.int64(32), "rate": np.float32(12.5), "nan": float("nan")})
        pub.close()
        got = []
        while True:
            msg = sub.recv(timeout=GUARD_S)
            assert msg is not None, "the end-of-run marker never came"
            got.append(msg)
            if msg.final:
                break
    locs_msgs = [m for m in got if m.topic == "locs"]
    batches = stream.batches_since(0)
    assert [m.seq for m in locs_msgs] == list(range(len(batches)))
    for msg, batch in zip(locs_msgs, batches):
        assert (msg.first_frame, msg.last_frame, msg.n) == (batch.first_frame, batch.last_frame, len(batch.locs))
        assert msg.header["batch_seq"] == batch.seq
        assert msg.header["pixel_size_nm"] == 97.5 and msg.run_id == "run-test"
        assert msg.locs.dtype == LOC_DTYPE
        np.testing.assert_array_equal(msg.locs, batch.locs)
        assert msg.missed == 0
    stats = [m for m in got if m.topic == "stats"]
    assert stats[0].stats == {"frames": 32, "rate": 12.5, "nan": None}
    assert stats[-1].final and stats[-1].stats["locs_messages"] == len(batches)
    assert stats[-1].stats["n_locs"] == stream.n_locs
    assert sub.missed == 0 and sub.rejected == 0


def test_columns_are_little_endian_buffers_on_the_wire():
    """A non-Python subscriber reads the raw frames: check them without the Subscriber class."""
    rng = np.random.default_rng(1)
    stream = fill_stream(rng, [7])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"locs")
    try:
        with publisher() as pub:
            sock.connect(pub.address)
            assert pub.wait_for_subscribers(1, timeout=GUARD_S)
            pub.publish_locs(stream.batches_since(0)[0])
            assert sock.poll(int(GUARD_S * 1000))
            parts = sock.recv_multipart()
    finally:
        sock.close(0)
        ctx.term()
    header = json.loads(parts[1])
    assert parts[0] == b"locs" and header["schema"] == SCHEMA and header["version"] == SCHEMA_VERSION
    assert [c[0] for c in header["columns"]] == list(LOC_DTYPE.names)
    locs = stream.batches_since(0)[0].locs
    for (name, dtype), buf in zip(header["columns"], parts[2:]):
        assert dtype[0] == "<"
        np.testing.assert_array_equal(np.frombuffer(buf, dtype=dtype), locs[name])


def test_a_stalled_subscriber_never_blocks_the_publisher_and_counts_what_it_missed():
    """The stalled subscriber holds a full queue while the publisher sends ~44 MB: publishing must run
    to completion (a blocking send would hang the thread), and the stalled side sees sequence gaps."""
    rng = np.random.default_rng(2)
    n_batches, batch_locs = 200, 5000
    locs = random_locs(rng, batch_locs, 0, 0)
    stream = LocalizationStream()
    for i in range(n_batches):
        stream.append(i, i, locs)
    done = threading.Event()
    with publisher(high_water_mark=4, linger_s=0.2) as pub, \
            Subscriber(pub.address, high_water_mark=4) as stalled:
        assert pub.wait_for_subscribers(1, timeout=GUARD_S)

        def publish_all() -> None:
            for batch in stream.batches_since(0):
                pub.publish_locs(batch)
            done.set()

        t = threading.Thread(target=publish_all, daemon=True)
        t.start()
        t.join(GUARD_S)
        assert done.is_set(), "publishing blocked on a stalled subscriber"
        assert pub.n_locs_messages == n_batches
        pub.close()
        seqs, final_seen = [], False
        # The end marker may itself have been dropped: stop when the queue stays empty for a while.
        while (msg := stalled.recv(timeout=0.5)) is not None:
            if msg.final:
                final_seen = True
                break
            seqs.append(msg.seq)
            np.testing.assert_array_equal(msg.locs, locs)  # what does arrive is intact
    assert seqs == sorted(seqs) and 0 < len(seqs) < n_batches
    # Sequence gaps (and the end marker's totals, when it got through) account for every loss.
    tail = n_batches - 1 - seqs[-1] if final_seen else 0
    assert stalled.missed == seqs[-1] + 1 - len(seqs) + tail


def test_sequence_gaps_and_foreign_messages_are_counted_not_fatal(caplog):
    """A foreign XPUB socket sends malformed and valid messages; the subscriber keeps going."""
    ctx = zmq.Context()
    raw = ctx.socket(zmq.XPUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    address = f"tcp://127.0.0.1:{port}"

    def header(seq: int, **extra) -> bytes:
        h = {"schema": SCHEMA, "version": SCHEMA_VERSION, "topic": "locs", "run_id": "r", "seq": seq,
             "first_frame": seq, "last_frame": seq, "n": 2, "columns": [["frame", "<i8"], ["x", "<f4"]]}
        h.update(extra)
        return json.dumps(h).encode()

    good = [np.array([3, 4], "<i8").tobytes(), np.array([1.5, 2.5], "<f4").tobytes()]
    malformed = [
        [b"locs"],
        [b"locsX", b"{}"],  # shares the subscribed prefix, so it is delivered
        [b"locs", b"\xff\xfe not json"],
        [b"locs", b"[1, 2]"],
        [b"locs", header(0, schema="someone.else")] + good,
        [b"locs", header(0, version=99)] + good,
        [b"locs", header(-1)] + good,
        [b"locs", header(0)] + good[:1],
        [b"locs", header(0)] + [good[0], b"\x00" * 3],
        [b"locs", header(0, columns=[["frame", ">i8"], ["x", "<f4"]])] + good,
        [b"locs", header(0, columns=[["frame", "O"], ["x", "<f4"]])] + good,
        [b"stats", json.dumps({"schema": SCHEMA, "version": SCHEMA_VERSION, "topic": "stats",
                               "run_id": "r", "seq": 0}).encode()],
    ]
    try:
        with caplog.at_level(logging.WARNING, logger="rtsmlm.outputs.stream"), Subscriber(address) as sub:
            assert raw.poll(int(GUARD_S * 1000))  # the subscription reached the publisher
            raw.recv()
            for parts in malformed:
                raw.send_multipart(parts)
            for seq in (0, 1, 5):
                raw.send_multipart([b"locs", header(seq)] + good)
            received = [sub.recv(timeout=GUARD_S) for _ in range(3)]
            assert all(m is not None for m in received)
            assert [m.seq for m in received] == [0, 1, 5]
            assert [m.missed for m in received] == [0, 0, 3]
            assert sub.missed == 3 and sub.rejected == len(malformed)
            np.testing.assert_array_equal(received[0].locs["x"], [1.5, 2.5])
    finally:
        raw.close(0)
        ctx.term()
    reasons = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(reasons) == len(malformed)
    assert any("unknown topic" in r for r in reasons)
    assert any("not JSON" in r for r in reasons)
    assert any("foreign publisher" in r for r in reasons)
    assert any("bytes, expected" in r for r in reasons)


def test_port_in_use_is_a_clear_error_or_moves_to_the_next_port(caplog):
    with publisher() as first:
        taken = first.address
        with pytest.raises(StreamError, match="already in use"):
            publisher(address=taken)
        with caplog.at_level(logging.WARNING, logger="rtsmlm.outputs.stream"):
            with publisher(address=taken, on_port_in_use="next") as second:
                assert second.address != taken
                assert int(second.address.rsplit(":", 1)[1]) > int(taken.rsplit(":", 1)[1])
        assert any("in use" in r.getMessage() for r in caplog.records)


def test_bad_address_names_it():
    with pytest.raises(StreamError, match="nonsense"):
        publisher(address="nonsense://x")


def test_which_addresses_count_as_local():
    assert is_local_address("tcp://127.0.0.1:5556")
    assert is_local_address("tcp://localhost:5556")
    assert is_local_address("tcp://[::1]:5556")
    assert is_local_address("ipc:///tmp/rtsmlm.sock")
    assert not is_local_address("tcp://0.0.0.0:5556")
    assert not is_local_address("tcp://*:5556")
    assert not is_local_address("tcp://192.168.1.20:5556")
    assert not is_local_address("tcp://eth0:5556")


def test_disabled_publisher_sends_nothing_and_binds_nothing():
    pub = publisher(enabled=False)
    stream = fill_stream(np.random.default_rng(3), [3])
    pub.publish_locs(stream.batches_since(0)[0])
    pub.publish_stats({"a": 1})
    pub.close()
    assert pub.address is None and pub.summary()["locs_messages"] == 0


def run_in_thread(fn, *args, **kwargs):
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_subscribe_yields_batches_until_the_run_ends():
    stream = fill_stream(np.random.default_rng(4), [4, 0, 9])
    with publisher() as pub:
        t, out = run_in_thread(lambda: list(subscribe(pub.address, timeout=GUARD_S)))
        assert pub.wait_for_subscribers(1, timeout=GUARD_S)
        for batch in stream.batches_since(0):
            pub.publish_locs(batch)
        pub.close()
        t.join(GUARD_S)
    assert "error" not in out
    batches = out["value"]
    assert [b.topic for b in batches] == ["locs"] * 3  # the end marker stops it, stats not asked for
    np.testing.assert_array_equal(np.concatenate([b.locs for b in batches]), stream.snapshot())


def test_subscribe_stops_after_count_batches():
    stream = fill_stream(np.random.default_rng(5), [1, 2, 3, 4])
    with publisher() as pub:
        t, out = run_in_thread(lambda: list(subscribe(pub.address, count=2, timeout=GUARD_S)))
        assert pub.wait_for_subscribers(1, timeout=GUARD_S)
        for batch in stream.batches_since(0):
            pub.publish_locs(batch)
        t.join(GUARD_S)
    assert [b.n for b in out["value"]] == [1, 2]


def test_listen_writes_the_csv_and_a_summary(tmp_path, capsys):
    stream = fill_stream(np.random.default_rng(6), [3, 0, 8, 2])
    csv_path = tmp_path / "live.csv"
    with publisher() as pub:
        t, out = run_in_thread(listen_main, ["--address", pub.address, "--csv", str(csv_path), "--until-end",
                                             "--timeout", str(GUARD_S)])
        assert pub.wait_for_subscribers(1, timeout=GUARD_S)
        for batch in stream.batches_since(0):
            pub.publish_locs(batch)
        pub.publish_stats({"locs_per_s": 123.0})
        pub.close()
        t.join(GUARD_S)
    assert out.get("value") == 0
    table = np.genfromtxt(csv_path, delimiter=",", names=True)
    expected = stream.snapshot()
    assert table.dtype.names == LOC_DTYPE.names
    np.testing.assert_array_equal(table["frame"], expected["frame"])
    for name in LOC_DTYPE.names[1:]:
        np.testing.assert_allclose(table[name], expected[name], rtol=1e-6)
    printed = capsys.readouterr().out
    assert "run run-test" in printed and "locs 13" in printed and "locs_per_s" in printed


def test_listen_reports_silence_with_exit_code_1(capsys):
    ctx = zmq.Context()
    probe = ctx.socket(zmq.PUB)
    port = probe.bind_to_random_port("tcp://127.0.0.1")  # a live port that never publishes
    try:
        assert listen_main(["--address", f"tcp://127.0.0.1:{port}", "--timeout", "0.2"]) == 1
    finally:
        probe.close(0)
        ctx.term()
    assert "no message" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # loads torch and the default model: a few seconds on a 2-core machine
def test_a_real_run_streams_every_batch_in_order_identical_to_the_written_file(tmp_path):
    """Simulated camera → ring → default model on CPU → localization stream → file writer and ZeroMQ
    publisher on their own threads (the pipeline's real listeners); a subscriber on loopback."""
    from rtsmlm.acquisition.registry import open_source
    from rtsmlm.engine.pipeline import Pipeline
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.localizer import StreamingLocalizer
    from rtsmlm.outputs.files import LOCS_CSV, LocalizationFiles
    from rtsmlm.outputs.stream import StreamListener

    address = f"tcp://127.0.0.1:{free_port()}"
    # max_latency_ms 0: never skip a frame live (a loaded machine would, and the catch-up comes later):
    # this test is about the stream's order and content, not the latency bound.
    cfg = from_dict({"sim": {"size": 32, "density": 1.0, "seed": 7}, "source": {"max_frames": 80},
                     "pipeline": {"max_batch": 8, "max_latency_ms": 0},
                     "backend": {"name": "torch", "device": "cpu", "threads": 1}})
    cfg = dataclasses.replace(cfg, stream=StreamConfig(address=address, wait_for_subscribers=1,
                                                      wait_timeout_s=GUARD_S))
    source = open_source(cfg)
    backend, meta = open_backend(cfg.backend, cfg.model.checkpoint)
    localizer = StreamingLocalizer(backend, meta, source.camera, source.shape, cfg.model.p_threshold,
                                   cfg.model.candidate_threshold)
    files = LocalizationFiles(tmp_path, pixel_size_nm=source.camera.pixel_size_nm, shape=source.shape,
                              csv_style="rtsmlm", psf_sigma_nm=None, include_z=False, overwrite=True)
    pipeline = Pipeline(cfg, source, localizer,
                        listeners=[files, StreamListener(cfg, "real-run", source.camera.pixel_size_nm)])

    t, out = run_in_thread(lambda: list(subscribe(address, timeout=GUARD_S)))
    pipeline.start()
    assert pipeline.wait(timeout=4 * GUARD_S)
    summary = pipeline.summary()
    t.join(GUARD_S)
    assert summary["errors"] == [] and "error" not in out
    batches = out["value"]
    assert summary["stream"]["locs_messages"] == pipeline.stream.n_batches == len(batches) > 1
    assert [b.seq for b in batches] == list(range(len(batches)))
    assert all(b.missed == 0 and b.run_id == "real-run" for b in batches)
    # Contiguous frame ranges from 0 to the last analysed frame: nothing skipped, nothing repeated.
    assert batches[0].first_frame == 0 and batches[-1].last_frame == summary["frames_localized"] - 1 == 79
    assert all(b.first_frame == a.last_frame + 1 for a, b in zip(batches, batches[1:]))
    streamed = concat([b.locs for b in batches])
    written = read_locs(tmp_path / LOCS_CSV)
    assert len(streamed) == summary["n_locs"] > 0
    for name in LOC_DTYPE.names:
        np.testing.assert_array_equal(written[name], streamed[name], err_msg=name)


def test_listen_csv_survives_a_schema_change_with_a_message(tmp_path, capsys):
    """A later batch lacks a column of the first (left empty) or adds one (not written): no crash."""
    from rtsmlm.core.locs import LocBatch

    rng = np.random.default_rng(7)
    full = random_locs(rng, 3, 0, 3)
    fewer_dtype = np.dtype([(n, full.dtype[n]) for n in full.dtype.names if n != "photons"])
    fewer = np.zeros(2, fewer_dtype)
    for n in fewer_dtype.names:
        fewer[n] = random_locs(rng, 2, 4, 7)[n]
    more_dtype = np.dtype([*[(n, full.dtype[n]) for n in full.dtype.names], ("x_dc", "<f4")])
    more = np.zeros(1, more_dtype)
    more["frame"] = 9
    batches = [LocBatch(0, 0, 3, full), LocBatch(1, 4, 7, fewer), LocBatch(2, 8, 11, more)]
    csv_path = tmp_path / "live.csv"
    with publisher() as pub:
        t, out = run_in_thread(listen_main, ["--address", pub.address, "--csv", str(csv_path), "--until-end",
                                             "--timeout", str(GUARD_S)])
        assert pub.wait_for_subscribers(1, timeout=GUARD_S)
        for b in batches:
            pub.publish_locs(b)
        pub.close()
        t.join(GUARD_S)
    assert out.get("value") == 0, out
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",") == list(full.dtype.names) and len(lines) == 1 + 3 + 2 + 1
    photons_col = list(full.dtype.names).index("photons")
    assert all(line.split(",")[photons_col] == "" for line in lines[4:6])
    assert lines[6].split(",")[0] == "9"
    err = capsys.readouterr().err
    assert "from frame 4 the stream lacks column(s) photons: left empty" in err
    assert "from frame 8 the stream adds column(s) x_dc: not written" in err
