"""Cost of publishing localizations over ZeroMQ, and what a stalled subscriber does to the engine.

Run: python benchmarks/bench_stream.py [--repeats 3] [--turn-pushes 10] [--threads 1] [--rate 100000]

1. Publisher cost. ``Publisher.publish_locs`` on batches of ``--batch-locs`` localizations to a
   subscriber in another process that drains them (so its CPU is not counted): (a) as fast as it goes,
   CPU per 1000 localizations in the publishing thread and in the whole process (which includes
   ZeroMQ's I/O thread); (b) paced at ``--rate`` for ``--cost-seconds``: the share of one core it
   takes, the operating cost a run pays.
2. Localizer throughput. The real StreamingLocalizer (default model, torch backend, ``--threads``)
   runs on 64×64 simulated frames in the main thread, in turns: alone; with a consumer
   thread publishing ``--rate`` localizations/s (paced, synthetic batches) to a draining subscriber
   process; and the same with a stalled subscriber (connected, never reads, high-water marks ``--hwm``
   and 10, so it overflows within a turn) added; and, as a control, a thread that wakes at the same
   rate but publishes nothing (what any consumer thread costs on this machine). Printed: frames/s and
   the localizer thread's CPU ms per frame per turn, medians per condition and the change from
   "alone", the publish call time (median / p99), what each subscriber received and missed. The issue's targets: publishing
   100,000 locs/s costs ≤ 5 % of the localizer's throughput, and a stalled subscriber changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from rtsmlm.core.config import StreamConfig, from_dict
from rtsmlm.core.locs import LOC_DTYPE, LocBatch
from rtsmlm.outputs.stream import Publisher, Subscriber

# ------------------------------------------------------------------------------ subscriber processes

def role_drain(address: str) -> None:
    """Receive everything until stdin closes; print per-run counts as JSON."""
    runs: dict[str, dict[str, int]] = {}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with Subscriber(address) as sub:
        print("ready", flush=True)
        cpu0 = time.process_time()  # not the interpreter's start-up and imports
        while True:
            # After stdin closes, keep going until the socket stays quiet (the tail still in flight).
            msg = sub.recv(timeout=0.5 if stop.is_set() else 0.2)
            if msg is None:
                if stop.is_set():
                    break
                continue
            r = runs.setdefault(msg.run_id, {"batches": 0, "locs": 0, "missed": 0})
            if msg.topic == "locs":
                r["batches"] += 1
                r["locs"] += msg.n
                r["missed"] += msg.missed
            elif msg.final:
                r["sent"] = msg.stats["locs_messages"]
                r["missed"] = r["sent"] - r["batches"]
    print(json.dumps({"runs": runs, "cpu_s": time.process_time() - cpu0}), flush=True)


def role_stall(address: str) -> None:
    """Connect and subscribe, never read until stdin closes; then take what was queued and report the
    count and the losses the sequence numbers reveal."""
    with Subscriber(address, high_water_mark=10) as sub:
        print("ready", flush=True)
        sys.stdin.read()
        batches = 0
        while (msg := sub.recv(timeout=0.5)) is not None:
            batches += msg.topic == "locs"
        print(json.dumps({"batches": batches, "missed": sub.missed}), flush=True)


class SubscriberProcess:
    def __init__(self, role: str, address: str) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", role, address],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def finish(self) -> dict:
        out, _ = self.proc.communicate("", timeout=60)
        return json.loads(out) if out.strip() else {}


# ------------------------------------------------------------------------------------------ helpers

def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def synthetic_batches(n_locs: int, frames: int, count: int) -> list[LocBatch]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        locs = np.zeros(n_locs, LOC_DTYPE)
        locs["frame"] = np.sort(rng.integers(i * frames, (i + 1) * frames, n_locs))
        for name in LOC_DTYPE.names[1:]:
            locs[name] = rng.uniform(0, 6400, n_locs)
        out.append(LocBatch(i, i * frames, (i + 1) * frames - 1, locs))
    return out


def publisher_cost(address: str, batch_locs: int, n_batches: int, rate: float, seconds: float) -> None:
    batches = synthetic_batches(batch_locs, 16, 64)
    n_locs = n_batches * batch_locs
    # a) As fast as it goes: the publisher's ceiling.
    drain = SubscriberProcess("drain", address)
    pub = Publisher(StreamConfig(address=address, high_water_mark=100_000), "max", 100.0)
    assert pub.wait_for_subscribers(1, 30.0)
    for b in batches[:8]:  # warm-up
        pub.publish_locs(b)
    wall0, thread0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
    for i in range(n_batches):
        pub.publish_locs(batches[i % len(batches)])
    wall, thread_cpu = time.perf_counter() - wall0, time.thread_time() - thread0
    pub.close()
    proc_cpu = time.process_time() - proc0  # + ZeroMQ's I/O thread, which finishes sending in close()
    got = drain.finish()["runs"].get("max", {})
    print(f"1a. publisher ceiling: {n_batches:,} batches x {batch_locs:,} locs as fast as it goes: "
          f"{n_locs / wall:,.0f} locs/s ({pub.n_bytes / wall / 1e6:,.0f} MB/s); subscriber got "
          f"{got.get('batches', 0):,}/{n_batches + 8:,} batches")
    print(f"    CPU per 1000 locs: {1e6 * thread_cpu / n_locs * 1000:.1f} µs in the publishing thread, "
          f"{1e6 * proc_cpu / n_locs * 1000:.1f} µs in the whole process (with ZeroMQ's I/O thread)")

    # b) Paced at the target rate, as a run publishes: includes per-message wake-ups of the I/O thread.
    drain = SubscriberProcess("drain", address)
    pub = Publisher(StreamConfig(address=address), "paced", 100.0)
    assert pub.wait_for_subscribers(1, 30.0)
    interval = batch_locs / rate
    proc0, wall0 = time.process_time(), time.perf_counter()
    t_next, i, sent = wall0, 0, 0
    while time.perf_counter() - wall0 < seconds:
        pub.publish_locs(batches[i % len(batches)])
        sent += batch_locs
        i += 1
        t_next += interval
        time.sleep(max(0.0, t_next - time.perf_counter()))
    wall = time.perf_counter() - wall0
    pub.close()
    proc_cpu = time.process_time() - proc0
    res = drain.finish()
    got = res["runs"].get("paced", {})
    print(f"1b. paced at {sent / wall:,.0f} locs/s for {wall:.1f} s ({batch_locs} locs per batch): this process "
          f"used {100 * proc_cpu / wall:.2f} % of one core (publisher + I/O thread + the pacing loop); "
          f"the subscriber process {100 * res['cpu_s'] / wall:.2f} % (it got {got.get('batches', 0)}/{i} "
          f"batches)")


# -------------------------------------------------------------------------------- localizer rate

class PacedPublisher(threading.Thread):
    """A consumer thread publishing ``rate`` locs/s in batches, as the pipeline's stream consumer does."""

    def __init__(self, address: str, run_id: str, rate: float, batches: list[LocBatch], n_subs: int,
                 dry: bool = False, hwm: int = 1000) -> None:
        super().__init__(daemon=True)
        self.address, self.run_id, self.rate, self.batches, self.n_subs = address, run_id, rate, batches, n_subs
        self.dry = dry  # wake up at the same rate but publish nothing: the cost of the thread alone
        self.hwm = hwm
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.call_s: list[float] = []
        self.sent_locs = 0

    def run(self) -> None:
        pub = Publisher(StreamConfig(address=self.address, enabled=not self.dry, high_water_mark=self.hwm),
                        self.run_id, 100.0, linger_s=0.2)
        try:
            assert pub.wait_for_subscribers(self.n_subs, 30.0), "subscribers did not connect"
            self.ready.set()
            interval = len(self.batches[0].locs) / self.rate
            t_next = time.perf_counter()
            i = 0
            while not self.stop.is_set():
                t0 = time.perf_counter()
                pub.publish_locs(self.batches[i % len(self.batches)])
                if not self.dry:
                    self.call_s.append(time.perf_counter() - t0)
                self.sent_locs += len(self.batches[i % len(self.batches)].locs)
                i += 1
                t_next += interval
                delay = t_next - time.perf_counter()
                if delay > 0:
                    self.stop.wait(delay)
        finally:
            self.ready.set()
            pub.close()


def make_localizer(size: int, threads: int):
    from rtsmlm.acquisition.simulated import SimulatedCamera
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.localizer import StreamingLocalizer
    from rtsmlm.sim import Simulator

    cfg = from_dict({"sim": {"size": size, "density": 0.5},
                     "backend": {"name": "torch", "device": "auto", "threads": threads}})
    cam = SimulatedCamera(cfg)
    sim = Simulator(cfg)
    frames = np.stack([sim.step()[0] for _ in range(64)])
    backend, meta = open_backend(cfg.backend, cfg.model.checkpoint)
    loc = StreamingLocalizer(backend, meta, cam.camera, cam.shape, cfg.model.p_threshold,
                             cfg.model.candidate_threshold,
                             psf_sigma_px=cfg.psf.sigma_nm / cam.camera.pixel_size_nm)
    return loc, frames, backend.describe()


def localizer_rate(loc, frames: np.ndarray, n_pushes: int, start_index: int) -> tuple[float, float, int]:
    """``n_pushes`` calls of ``loc.push`` on 16-frame batches: (frames/s, CPU ms per frame of this thread,
    next index). With one torch thread the network runs in this thread, so its CPU time is the
    localizer's own work and the rest of the wall time is waiting (for a core or for the GIL)."""
    idx = start_index
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(n_pushes):
        k = (idx // 16 % (len(frames) // 16)) * 16
        loc.push(frames[k:k + 16], np.arange(idx, idx + 16))
        idx += 16
    n = 16 * n_pushes
    return n / (time.perf_counter() - t0), 1e3 * (time.thread_time() - c0) / n, idx


def localizer_with_publishing(args: argparse.Namespace) -> None:
    loc, frames, backend = make_localizer(args.size, args.threads)
    batches = synthetic_batches(args.batch_locs, 16, 64)
    print(f"2. localizer: {args.size}x{args.size} frames, torch {backend.get('device')} "
          f"{backend.get('precision')} on {backend.get('threads')} thread(s), {os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.1f}; {args.repeats} turns of {args.turn_pushes} x 16 frames per "
          f"condition, conditions alternating")
    idx = 0
    _, _, idx = localizer_rate(loc, frames, 2, idx)  # warm-up (allocations, caches)
    conditions = ["alone", "control: thread waking, no publish", "publishing, draining subscriber",
                  "publishing, + stalled subscriber"]
    rates: dict[str, list[float]] = {c: [] for c in conditions}
    cpu_ms: dict[str, list[float]] = {c: [] for c in conditions}
    calls: dict[str, list[float]] = {c: [] for c in conditions[1:]}
    for turn in range(args.repeats):
        for cond in conditions:
            address = free_address()
            subs, pub = [], None
            if cond.startswith("publishing"):
                subs.append(SubscriberProcess("drain", address))
                if "stalled" in cond:
                    subs.append(SubscriberProcess("stall", address))
            if cond != "alone":
                pub = PacedPublisher(address, f"t{turn}", args.rate, batches, len(subs),
                                     dry=cond.startswith("control"), hwm=args.hwm)
                pub.start()
                pub.ready.wait(60)
            t0 = time.perf_counter()
            rate, cpu, idx = localizer_rate(loc, frames, args.turn_pushes, idx)
            wall = time.perf_counter() - t0
            rates[cond].append(rate)
            cpu_ms[cond].append(cpu)
            line = f"   turn {turn + 1} {cond:36} {rate:7.1f} frames/s  {cpu:5.1f} CPU ms/frame"
            if pub is not None and not pub.dry:
                pub.stop.set()
                pub.join(60)
                calls[cond] += pub.call_s
                drained = subs[0].finish()["runs"].get(f"t{turn}", {})
                line += (f"   published {pub.sent_locs / wall:,.0f} locs/s; draining subscriber got "
                         f"{drained.get('batches', 0)}/{len(pub.call_s)} batches")
                for sp in subs[1:]:
                    # Dropped at the high-water mark; the drops are all at its tail (it never read during
                    # the run), where the end marker was dropped too, so it cannot count them itself.
                    st = sp.finish()
                    line += f", stalled one {st.get('batches')} (the rest dropped)"
            elif pub is not None:
                pub.stop.set()
                pub.join(60)
            print(line, flush=True)
    base = statistics.median(rates["alone"])
    spread = (max(rates["alone"]) - min(rates["alone"])) / base
    print(f"   condition                            median frames/s  change  CPU ms/frame  core share  "
          f"(turn-to-turn spread of 'alone': {100 * spread:.1f} %)")
    for cond in conditions:
        med = statistics.median(rates[cond])
        cpu = statistics.median(cpu_ms[cond])
        extra = ""
        if calls.get(cond):
            c = np.array(calls[cond]) * 1e6
            extra = f"   publish call median {np.median(c):.0f} µs, p99 {np.percentile(c, 99):.0f} µs"
        # frames/s x CPU s/frame = the share of one core the localizer thread actually got.
        print(f"   {cond:36} {med:10.1f}    {100 * (med / base - 1):+6.1f} %  {cpu:8.2f}    "
              f"{100 * med * cpu / 1000:7.1f} %{extra}")
    print(f"   load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. Where the localizer gets "
          f"a small share of a core, any other work in the process shows up magnified in its frames/s;\n"
          f"   compare with part 1b: the engine-side cost of publishing at {args.rate:,.0f} locs/s in CPU terms.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100_000, help="localizations per second to publish")
    ap.add_argument("--batch-locs", type=int, default=1600, help="localizations per batch (16 frames x 100)")
    ap.add_argument("--cost-batches", type=int, default=5000, help="batches for the publisher ceiling")
    ap.add_argument("--cost-seconds", type=float, default=5.0, help="length of the paced publisher run")
    ap.add_argument("--turn-pushes", type=int, default=10, help="16-frame localizer calls per turn")
    ap.add_argument("--repeats", type=int, default=3, help="turns per condition (alternating)")
    ap.add_argument("--size", type=int, default=64, help="frame size for the localizer")
    ap.add_argument("--hwm", type=int, default=20,
                    help="publisher high-water mark in part 2 (small, so the stalled subscriber reaches it)")
    ap.add_argument("--threads", type=int, default=1,
                    help="localizer threads (0 = all cores; on a shared 2-core machine all cores oversubscribe)")
    ap.add_argument("--skip-localizer", action="store_true", help="only the publisher cost")
    ap.add_argument("--role", nargs=2, metavar=("ROLE", "ADDRESS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        {"drain": role_drain, "stall": role_stall}[args.role[0]](args.role[1])
        return
    publisher_cost(free_address(), args.batch_locs, args.cost_batches, args.rate, args.cost_seconds)
    if not args.skip_localizer:
        localizer_with_publishing(args)


if __name__ == "__main__":
    main()
