"""Detection latency on the real testbed: from podman's `died` to the state change in the store.

Not a test. Needs local podman as root (rootless works too: the kill goes through
`podman unshare`). Brings up the testbed with prefix `tbl-` and port_base 21330, runs a
recording session in-process (open_session + record, the config from
example_config(prefix="tbl-", port_base=21330) with crash-loop detection pushed out of
reach so that every death is its own `exited` change) into a temp store, then N times
crashes one of the three UIs by SIGKILL of its main process from the host (a crash, not a
user stop: the restart policy brings it back). For each crash:

  latency      podman's died timestamp (EventObs.at_ns) -> the matching `changes` row
               (that container, to_state exited/crashlooping, at that at_ns) is seen by a
               separate read-only sqlite3 connection polling every 5 ms in its own thread;
  podman       the kill -> podman's died timestamp (podman's own delay; baseline);
  bare_events  died timestamp -> the line arriving on a bare `podman events` subprocess
               reader (the floor for any watcher; baseline);
  to_sink      died timestamp -> the watcher's Sink receiving the parsed event;
  to_store     Sink -> visible in the store (the writer's flush interval and commit).

Each crash waits a random 0-0.5 s first: podman 4.3's file events logger polls its log
every 250 ms, and kills paced by the previous detection would lock onto that cycle.

The testbed is always torn down (`testbed.down`) in `finally`; only `tbl-` containers
are touched.

    .venv/bin/python bench/bench_latency.py            # 20 crashes
    .venv/bin/python bench/bench_latency.py --quick    # 5 crashes

Ends with `latency: median_ms=... p90_ms=... max_ms=... n=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import tempfile
import threading
import time
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

import common  # noqa: F401  (puts the project on sys.path)
from common import machine_line, median, percentile, remove_db, summary

from agent import podman, testbed  # noqa: E402
from agent.config import TargetConfig, TestbedConfig, config_from_dict  # noqa: E402
from agent.session import open_session, record  # noqa: E402
from agent.transport import LocalTransport, Transport  # noqa: E402
from machines.observations import EventObs  # noqa: E402
from machines.states import State  # noqa: E402

PREFIX = "tbl-"
PORT_BASE = 21330
VICTIMS = tuple(PREFIX + suffix for suffix in (testbed.NODE_UI, testbed.LIGHTNING_UI, testbed.INDEXER_UI))
DEAD_STATES = ("exited", "crashlooping")
POLL_S = 0.005
DETECT_TIMEOUT_S = 15.0
RESTART_TIMEOUT_S = 20.0
MS = 1e6
# podman's file events logger tails events.log by polling (Poll: true, every 250 ms), so a
# line's delivery depends on where the death falls in the poll cycle. A kill paced by the
# previous detection would lock onto that cycle: a random pause decorrelates them.
JITTER_S = 0.5


def _require_prefix(name: str) -> str:
    if not name.startswith(PREFIX):  # never touch another engineer's containers
        raise RuntimeError(f"refusing to touch {name!r}: not a {PREFIX} container")
    return name


# ---------------------------------------------------------------- the separate reader


@dataclass
class Seen:
    id: int
    container: str
    at_ns: int
    to_state: str
    obs_kind: str | None
    cause: str
    seen_ns: int


class StorePoller(threading.Thread):
    """A separate read-only connection that notes when each `changes` row becomes visible."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="store-poller", daemon=True)
        self.path = path
        self.rows: list[Seen] = []
        self.polls = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            conn.execute("PRAGMA query_only = 1")
            last = 0
            while not self._stop_event.is_set():
                try:
                    rows = conn.execute(
                        "SELECT id, container, at_ns, to_state, obs_kind, cause FROM changes "
                        "WHERE id > ? ORDER BY id", (last,)).fetchall()
                except sqlite3.OperationalError:  # schema not there yet, or busy
                    rows = []
                now = time.time_ns()
                self.polls += 1
                if rows:
                    last = rows[-1][0]
                    with self._lock:
                        self.rows.extend(Seen(*row, seen_ns=now) for row in rows)
                self._stop_event.wait(POLL_S)
            conn.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def find(self, container: str, after_ns: int) -> Seen | None:
        with self._lock:
            for row in self.rows:
                if (row.container == container and row.to_state in DEAD_STATES and row.at_ns >= after_ns
                        and row.obs_kind == "event"):
                    return row
        return None


# ---------------------------------------------------------------- the bare podman events reader


@dataclass
class BareEvents:
    """`podman events` read straight off its pipe: when each died line arrives.

    podman 4.3 ends the stream (exit 0) when its file logger rotates events.log (at 1 MB,
    sooner with other testbeds busy): restart at once, replaying the last second.
    """

    transport: Transport
    arrivals: dict[tuple[str, int], int] = field(default_factory=dict)  # (name, at_ns) -> arrival ns
    lines: int = 0
    restarts: int = 0

    async def run(self, since_ns: int) -> None:
        while True:
            argv = podman.events_cmd(["podman"], since_ns=since_ns, containers=VICTIMS)
            async with self.transport.stream(argv) as lines:
                async for line in lines:
                    now = time.time_ns()
                    self.lines += 1
                    parsed = podman.parse_event(line, "bare")
                    if isinstance(parsed, EventObs) and parsed.status == "died":
                        self.arrivals.setdefault((parsed.container, parsed.at_ns), now)
            self.restarts += 1
            since_ns = time.time_ns() - 1_000_000_000


# ---------------------------------------------------------------- helpers


async def inspect_state(transport: Transport, name: str) -> tuple[str, int]:
    """(State.Status, State.Pid) of one tbl- container."""
    result = await transport.run(["podman", "container", "inspect", "--format", "{{.State.Status}} {{.State.Pid}}",
                                  _require_prefix(name)], timeout=30)
    if not result.ok:
        return "missing", 0
    status, _, pid = result.stdout.strip().partition(" ")
    return status, int(pid) if pid.isdigit() else 0


async def wait_running(transport: Transport, name: str, not_pid: int, timeout: float) -> int:
    """The pid of `name` once it runs again with a pid other than `not_pid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, pid = await inspect_state(transport, name)
        if status == "running" and pid > 1 and pid != not_pid:
            return pid
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{name} did not run again within {timeout:.0f}s")


async def crash(transport: Transport, name: str, pid: int, rootless: bool) -> int:
    """SIGKILL the container's main process from the host; returns the wall time of the kill."""
    _require_prefix(name)
    if not rootless and os.geteuid() == 0:
        kill_ns = time.time_ns()
        os.kill(pid, signal.SIGKILL)  # what `kill -9 PID` does, without spawning it
        return kill_ns
    argv = podman.kill_main_process_cmd(["podman"], pid, rootless)
    kill_ns = time.time_ns()
    result = await transport.run(argv, timeout=30)
    if not result.ok:
        raise RuntimeError(f"kill of {name} (pid {pid}) failed: {result.stderr.strip()}")
    return kill_ns


def _events_log_size() -> int | None:
    """Size of root podman's events.log (the file logger rotates it at 1 MB), if readable."""
    try:
        return os.path.getsize("/run/libpod/events/events.log")
    except OSError:
        return None


def bench_config():
    """The testbed's example config, with crash-loop detection out of reach."""
    data = tomllib.loads(testbed.example_config(prefix=PREFIX, port_base=PORT_BASE))
    # every death its own `exited` change: a crash loop would swallow the later ones
    data["machine"]["crashloop_deaths"] = 1_000_000
    return config_from_dict(data, "<example_config tbl->")


# ---------------------------------------------------------------- the run


@dataclass
class Sample:
    victim: str
    kill_ns: int
    died_ns: int
    visible_ns: int
    sink_ns: int | None
    bare_ns: int | None

    @property
    def latency_ms(self) -> float:
        return (self.visible_ns - self.died_ns) / MS


async def run(crashes: int, settle_s: float, db: Path, progress) -> tuple[list[Sample], dict]:
    target = TargetConfig(name="local", transport="local")
    transport = LocalTransport(target)
    await transport.connect()
    cfg = TestbedConfig(prefix=PREFIX, port_base=PORT_BASE)
    info: dict = {}
    samples: list[Sample] = []
    misses: list[str] = []
    info["misses"] = misses
    try:
        started = time.monotonic()
        status = await testbed.up(transport, cfg, (), progress=lambda text: progress(f"  testbed: {text}"))
        info["up_s"] = time.monotonic() - started
        rootless = status.rootless
        config = bench_config()
        sink_arrivals: dict[tuple[str, int], int] = {}

        def on_observation(obs) -> None:
            if isinstance(obs, EventObs) and obs.status == "died" and obs.container in VICTIMS:
                sink_arrivals.setdefault((obs.container, obs.at_ns), time.time_ns())

        bare = BareEvents(transport)
        poller: StorePoller | None = None
        async with open_session(config, [config.targets["local"]], str(db), "bench-latency") as session:
            session.sink.on_observation.append(on_observation)
            stop = asyncio.Event()
            recorder = asyncio.create_task(record(session, stop, None, dashboard=False, json_lines=False))
            bare_task = asyncio.create_task(bare.run(time.time_ns()))
            poller = StorePoller(db)
            poller.start()
            try:
                # ready: the watcher is connected and its first reconcile put the victims in running
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    machines = [session.fleet.get("local", v) for v in VICTIMS]
                    if (session.watchers[0].view.link == "up"
                            and all(m is not None and m.state is State.RUNNING for m in machines)):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError("the watcher did not see the UIs running within 30 s")
                await asyncio.sleep(1.0)  # let `podman events` (ours and the bare one) get going
                for i in range(crashes):
                    if recorder.done():
                        recorder.result()  # the session ended: raise what ended it
                        raise RuntimeError("the recording session ended early")
                    victim = VICTIMS[i % len(VICTIMS)]
                    await asyncio.sleep(random.uniform(0, JITTER_S))
                    state, pid = await inspect_state(transport, victim)
                    if state != "running" or pid <= 1:
                        pid = await wait_running(transport, victim, 0, RESTART_TIMEOUT_S)
                    kill_ns = await crash(transport, victim, pid, rootless)
                    deadline = time.monotonic() + DETECT_TIMEOUT_S
                    found = None
                    while found is None and time.monotonic() < deadline:
                        await asyncio.sleep(POLL_S)
                        found = poller.find(victim, kill_ns)
                    if found is None:
                        view = session.watchers[0].view
                        rows = [r for r in poller.rows if r.container == victim][-4:]
                        died = sorted(at for (name, at) in sink_arrivals if name == victim and at >= kill_ns)
                        machine = session.fleet.get("local", victim)
                        await asyncio.sleep(0.5)
                        bare_died = sorted(at for (name, at) in bare.arrivals if name == victim and at >= kill_ns)
                        misses.append(
                            f"no exited change for {victim} within {DETECT_TIMEOUT_S:.0f}s of the kill at "
                            f"{kill_ns}: died events since then at the Sink {died}, at the bare reader {bare_died} "
                            f"(restarts {bare.restarts}), events.log {_events_log_size()} bytes; its last change rows {rows}, "
                            f"machine {machine}, link {view.link} ({view.detail}), reconnects {view.reconnects}, "
                            f"poller error {poller.error}")
                        print("  MISSED: " + misses[-1], flush=True)
                        await wait_running(transport, victim, pid, RESTART_TIMEOUT_S)
                        continue
                    sample = Sample(victim, kill_ns, found.at_ns, found.seen_ns,
                                    sink_arrivals.get((victim, found.at_ns)), None)
                    samples.append(sample)
                    progress(f"  crash {i + 1}/{crashes} {victim}: latency {sample.latency_ms:.0f} ms "
                             f"(kill->died {(sample.died_ns - kill_ns) / MS:.0f} ms, cause {found.cause!r})")
                    await wait_running(transport, victim, pid, RESTART_TIMEOUT_S)
                    await asyncio.sleep(settle_s)
                await asyncio.sleep(0.5)  # the bare reader may trail the watcher by a poll cycle
            finally:
                for sample in samples:
                    sample.bare_ns = bare.arrivals.get((sample.victim, sample.died_ns))
                info["reconnects"] = session.watchers[0].view.reconnects
                stop.set()
                bare_task.cancel()
                await asyncio.gather(bare_task, return_exceptions=True)
                try:
                    await asyncio.wait_for(recorder, 30)
                except BaseException as exc:  # noqa: BLE001  (reported, the testbed still comes down)
                    print(f"  recording ended with {exc!r}", flush=True)
                if poller is not None:
                    poller.stop()
                info["polls"] = poller.polls if poller else 0
                info["bare_lines"] = bare.lines
                info["bare_restarts"] = bare.restarts
    finally:
        started = time.monotonic()
        try:
            await testbed.down(transport, cfg, progress=lambda text: progress(f"  testbed: {text}"))
        finally:
            info["down_s"] = time.monotonic() - started
            await transport.close()
    return samples, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 crashes")
    parser.add_argument("--crashes", type=int, default=None, help="how many crashes (default 20)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait after a restart before the next crash (default 1.0, quick 0.5)")
    parser.add_argument("--verbose", action="store_true", help="print each crash and the testbed steps")
    args = parser.parse_args()
    crashes = args.crashes or (5 if args.quick else 20)
    settle = args.settle if args.settle is not None else (0.5 if args.quick else 1.0)

    def progress(text: str) -> None:
        if args.verbose:
            print(text, flush=True)

    if not args.verbose:  # the session logs through loguru: keep the bench output to its figures
        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        db = Path(tmp, "latency.db")
        started = time.monotonic()
        samples, info = asyncio.run(run(crashes, settle, db, progress))
        elapsed = time.monotonic() - started
        remove_db(db)

    lat = [s.latency_ms for s in samples]
    podman_ms = [(s.died_ns - s.kill_ns) / MS for s in samples]
    bare_ms = [(s.bare_ns - s.died_ns) / MS for s in samples if s.bare_ns is not None]
    sink_ms = [(s.sink_ns - s.died_ns) / MS for s in samples if s.sink_ns is not None]
    store_ms = [(s.visible_ns - s.sink_ns) / MS for s in samples if s.sink_ns is not None]

    def stats(values: list[float]) -> str:
        if not values:
            return "n=0"
        return (f"median {median(values):.0f} ms, p90 {percentile(values, 90):.0f} ms, max {max(values):.0f} ms"
                f" (n={len(values)})")

    print(f"  {len(samples)} crashes of {', '.join(VICTIMS)} in {elapsed:.1f} s (testbed up {info['up_s']:.1f} s, "
          f"down {info['down_s']:.1f} s); {machine_line()}")
    print(f"  died -> change visible to a read-only reader: {stats(lat)}")
    print(f"    died -> parsed event at the Sink:    {stats(sink_ms)}")
    print(f"    Sink -> visible in the store:        {stats(store_ms)}")
    print(f"  baseline kill -> podman's died time:   {stats(podman_ms)}")
    print(f"  baseline died -> bare `podman events`: {stats(bare_ms)}")
    print(f"  kill -> change visible: {stats([(s.visible_ns - s.kill_ns) / MS for s in samples])}")
    print(f"  reader polls={info['polls']} (every {POLL_S * 1000:.0f} ms); bare reader lines={info['bare_lines']} "
          f"restarts={info['bare_restarts']}; watcher reconnects={info['reconnects']} (podman ends `events` "
          "when it rotates events.log)")
    if info["misses"]:
        print(f"  MISSED {len(info['misses'])} crash(es): no change row within {DETECT_TIMEOUT_S:.0f} s")
    print(summary("latency", median_ms=median(lat), p90_ms=percentile(lat, 90), max_ms=max(lat) if lat else 0.0,
                  n=len(lat), missed=len(info["misses"]), podman_ms=median(podman_ms), bare_events_ms=median(bare_ms),
                  to_sink_ms=median(sink_ms), to_store_ms=median(store_ms)))


if __name__ == "__main__":
    main()
