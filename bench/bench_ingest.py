"""End-to-end ingest: podman events and conmon's log files through the watcher's live path into the store.

Not a test. Synthetic `podman events --format json` lines (4.3 shape) and conmon k8s-file
log files of 20 containers go through exactly what a watcher does with them:

  events: LineSplitter (the transport) -> `await TargetWatcher._on_event_line` (parse_event,
          the replay dedupe, the log follow's run boundaries, the kernel-log read before a
          `died` with exit 137) -> `await Sink.backpressure()`, as `_follow_events` does;
  logs:   the perl follower's output -> `LogFollow._follow_conmon` (parse_follower_line,
          parse_k8s_record, LogJoiner, the per-container identity dedupe, the error
          patterns, the backpressure) -> LogObs;

both into `Sink.put` (redaction once, StoreWriter.add, Fleet.feed, StoreWriter.add_change,
then what `podwarden watch` feeds through `on_fed`: the drift window and the hooks, as
agent.watch.Window, hooks in dry run) of a `recording(...)` on a temp file, one task per
stream like the watcher's, timed until `flush()` returns. Two variants:

  stream:     events from a real `cat FILE` and logs from the real perl follower
              (agent.container_logs.FOLLOWER reading the 20 files), both through
              LocalTransport.stream (the headline figure);
  inprocess:  the same event bytes and the follower output captured once from the real
              follower, fed in 64 KiB chunks to LineSplitter in-process through a fake
              transport (no subprocess, no pipe: for comparing changes to the parsing).

Baselines in the same run, on the very rows the live path stored (read back from its
file, observations and changes, the writer's own INSERT statements and PRAGMAs):

  executemany: plain sqlite3, 1000 observations (and their changes) per transaction;
  naive:       one INSERT and one commit per row, on a subset, extrapolated.

    .venv/bin/python bench/bench_ingest.py             # 200k lines, 3 rounds
    .venv/bin/python bench/bench_ingest.py --quick     # 50k lines, 3 rounds
    .venv/bin/python bench/bench_ingest.py --profile   # + cProfile of the in-process path

Ends with `ingest: obs_per_s=N ratio_vs_executemany=R ratio_vs_naive=R ...` (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import random
import re
import sqlite3
import subprocess
import tempfile
import time
from contextlib import asynccontextmanager, closing
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
from common import machine_line, median, print_profile, remove_db, runs_text, summary

from agent import podman  # noqa: E402
from agent.config import config_from_dict  # noqa: E402
from agent.container_logs import LogJoiner, follower_argv, parse_follower_line, parse_k8s_record  # noqa: E402
from agent.log_follow import LogMatcher  # noqa: E402
from agent.recording import machine_settings, recording  # noqa: E402
from agent.transport import READ_CHUNK, LineSplitter, LocalTransport  # noqa: E402
from agent.watch import Window, drift_detector  # noqa: E402
from agent.watcher import TargetWatcher  # noqa: E402
from machines.container import Fleet  # noqa: E402
from machines.observations import LogObs  # noqa: E402
from store import StoreWriter  # noqa: E402
from store.redact import Redactor  # noqa: E402
from store.schema import migrate  # noqa: E402
from store.writer import _INSERT_CHANGE, _INSERT_OBS, _PRAGMAS, observation_row  # noqa: E402

TARGET = "bench"
T0 = 1_795_000_000_000_000_000  # 2026-11-19T...Z: in the past, so no log line waits for events
S = 1_000_000_000
BATCH = 1000  # the writer's batch_size
IMAGE = "localhost/podwarden-testbed:f1ef07d239d4"
CONMON_BUFFER = 8192  # conmon reads the pipe in 8 KiB: a longer line becomes P records + an F record
POLL_S = 0.005  # how often the bench looks at the follow's progress and the writer's queue
STALL_S = 60.0  # no progress this long: the run is reported as stuck, not waited on forever

# 20 containers of a node stack; the first 12 have a health check.
CONTAINERS = (
    "bitcoind", "lnd", "electrs", "mempool-api", "mempool-db", "btcpay", "nbxplorer", "postgres",
    "fulcrum", "lnbits", "tor", "nginx",  # health-checked
    "mempool-web", "rtl", "thunderhub", "specter", "grafana", "prometheus", "node-exporter", "redis",
)
HEALTH_CHECKED = 12

LOG_TEMPLATES = (
    "{date} UpdateTip: new best={hash} height={height} version=0x20000000 log2_work=94.83 "
    "tx={tx} date='{date}' progress=1.000000 cache=12.1MiB(8841txo)",
    "{date} [INF] NTFN: New block: height={height}",
    "{date} [INF] PEER: Peer 10.0.0.{peer}:9735 connected (inbound)",
    "{date} Saw new header hash={hash} height={height}",
    "{date} [DBG] HSWC: Sent 0 satoshis and received 0 satoshis in the last 10 seconds (0.000000 tx/sec)",
    "{date} GET /api/v1/blocks/tip/height 200 {tx}us",
    "{date} INFO  electrs::index] indexing {tx} blocks: [{height}..{height}]",
    "{date} LOG:  checkpoint complete: wrote {peer} buffers (0.1%); 0 WAL file(s) added",
)
ERROR_TEMPLATES = (  # match the default error patterns; written to stderr
    "{date} [ERR] RPCS: [/v1/getinfo]: expected 1 macaroon, got 0",
    "{date} ERROR: connection refused to 127.0.0.1:8332, retrying in 5s",
    "{date} Failed to connect to peer 10.0.0.{peer}: timeout",
)
BURST_TEMPLATES = (  # what a flood repeats, byte for byte, inside one conmon read
    "{date} [DBG] HSWC: Sent 0 satoshis and received 0 satoshis in the last 10 seconds (0.000000 tx/sec)",
    "{date} ERROR: connection refused to 127.0.0.1:8332, retrying in 5s",
    "{date} [WRN] CRTR: Unable to find node for channel, skipping",
)
SECRET_TEMPLATE = "{date} startup args: -rpcuser=node -rpcpassword=hunter2{tx} -server=1"  # redacted


def go_rfc3339nano(ns: int) -> str:
    """What Go's RFC3339Nano prints (podman 4.3's event `Time`): trailing zeros trimmed."""
    text = podman.format_time_ns(ns)  # ...SS.fffffffffZ
    head, frac = text[:-1].split(".")
    frac = frac.rstrip("0")
    return f"{head}.{frac}Z" if frac else f"{head}Z"


def conmon_time(ns: int) -> str:
    """conmon's k8s-file stamp: nine fraction digits and a numeric zone."""
    return podman.format_time_ns(ns)[:-1] + "+00:00"


def event_line(name: str, cid: str, role: str, status: str, at_ns: int, *, exit_code: int | None = None,
               health: str | None = None) -> str:
    """One podman 4.3 `events --format json` line (ContainerExitCode omitted when 0)."""
    parts = []
    if exit_code:
        parts.append(f'"ContainerExitCode":{exit_code}')
    parts.append(f'"ID":"{cid}","Image":"{IMAGE}","Name":"{name}","Status":"{status}",'
                 f'"Time":"{go_rfc3339nano(at_ns)}","Type":"container"')
    if health is not None:
        parts.append(f'"health_status":"{health}"')
    parts.append('"Attributes":{"org.opencontainers.image.title":"podwarden-testbed",'
                 f'"podwarden.role":"{role}","podwarden.testbed":"tb-"}}')
    return "{" + ",".join(parts) + "}"


class Synthetic:
    """The input: event lines, one k8s-file log per container, the containers' ids, and counts."""

    def __init__(self, total_lines: int, seed: int = 7) -> None:
        """About `total_lines` event lines + whole log lines (~63% log lines), in time order.

        Per container and second one read of the pipe (1-3 lines sharing a conmon stamp;
        3% errors on stderr; a few with a password to redact); 2% of the seconds a flood
        of 10-70 identical lines in one stamp; 0.3% of the lines longer than conmon's
        8 KiB buffer (P records + F, one stamp) and 0.3% written without their newline
        first (a P record, the rest 30 ms later). Health-checked containers add
        health_status + exec_died (an unhealthy flap now and then); every 5 s a probe exec
        + exec_died; now and then a crash: died (137, 1 or 139), restart, init, start
        (+ health_status starting).
        """
        rng = random.Random(seed)
        self.ids = {name: f"{rng.getrandbits(256):064x}" for name in CONTAINERS}
        events: list[tuple[int, str]] = []
        logs: dict[str, list[str]] = {name: [] for name in CONTAINERS}
        self.counts = dict(died=0, health_status=0, log_errors=0, log_lines=0, records=0, flood_lines=0,
                           long_lines=0, unfinished_writes=0, largest_stamp=0)
        second = 0
        height = 840_000
        while len(events) + self.counts["log_lines"] < total_lines:
            base = T0 + second * S
            if second % 10 == 0:
                height += 1
            for i, name in enumerate(CONTAINERS):
                cid, role = self.ids[name], name.split("-")[0]
                at = base + i * 37_000_000 + rng.randrange(1_000_000)
                crashes = (second * len(CONTAINERS) + i) % 487 == 17
                self._read(rng, logs[name], i, at + 1_000_000, height, allow_unfinished=not crashes)
                if i < HEALTH_CHECKED:
                    flap = (second + 3 * i) % 97
                    health = "unhealthy" if flap == 0 else "healthy"
                    events.append((at + 5_000_000, event_line(name, cid, role, "health_status", at + 5_000_000,
                                                             health=health)))
                    events.append((at + 9_000_000, event_line(name, cid, role, "exec_died", at + 9_000_000)))
                    self.counts["health_status"] += 1
                if (second + i) % 5 == 0:
                    events.append((at + 11_000_000, event_line(name, cid, role, "exec", at + 11_000_000)))
                    events.append((at + 15_000_000, event_line(name, cid, role, "exec_died", at + 15_000_000)))
                if crashes:
                    died = at + 120_000_000
                    code = rng.choice((137, 1, 139))
                    events.append((died, event_line(name, cid, role, "died", died, exit_code=code)))
                    events.append((died + 3_000_000, event_line(name, cid, role, "restart", died + 3_000_000)))
                    events.append((died + 95_000_000, event_line(name, cid, role, "init", died + 95_000_000)))
                    events.append((died + 110_000_000, event_line(name, cid, role, "start", died + 110_000_000)))
                    if i < HEALTH_CHECKED:
                        events.append((died + 130_000_000, event_line(name, cid, role, "health_status",
                                                                      died + 130_000_000, health="starting")))
                    self.counts["died"] += 1
                    self.counts["died_137"] = self.counts.get("died_137", 0) + (code == 137)
            second += 1
        events.sort(key=lambda pair: pair[0])
        self.events = ("\n".join(line for _, line in events) + "\n").encode()
        self.logs = {name: ("\n".join(records) + "\n").encode() if records else b"" for name, records in logs.items()}
        self.counts.update(events=len(events), seconds=second)

    def _read(self, rng: random.Random, out: list[str], i: int, at: int, height: int, *,
              allow_unfinished: bool) -> None:
        """One read of a container's pipe: every record it makes shares conmon's stamp `at`."""
        stamp = conmon_time(at)

        def fields() -> dict:
            return dict(date=go_rfc3339nano(at)[:19] + "Z", hash=f"{rng.getrandbits(256):064x}", height=height,
                        tx=rng.randrange(1, 99_999), peer=rng.randrange(2, 250))

        lines: list[tuple[str, str]] = []  # (stream, text)
        if rng.random() < 0.02:
            text = BURST_TEMPLATES[rng.randrange(len(BURST_TEMPLATES))].format(**fields())
            stream = "stderr" if "ERROR" in text else "stdout"
            burst = rng.randint(10, 70)
            lines += [(stream, text)] * burst
            self.counts["flood_lines"] += burst
            self.counts["log_errors"] += burst if stream == "stderr" else 0
        for k in range(rng.randint(1, 3)):
            roll = rng.random()
            if roll < 0.03:
                lines.append(("stderr", ERROR_TEMPLATES[rng.randrange(len(ERROR_TEMPLATES))].format(**fields())))
                self.counts["log_errors"] += 1
            elif roll < 0.035:
                lines.append(("stdout", SECRET_TEMPLATE.format(**fields())))
            else:
                lines.append(("stdout", LOG_TEMPLATES[(i + k) % len(LOG_TEMPLATES)].format(**fields())))
        self.counts["largest_stamp"] = max(self.counts["largest_stamp"], len(lines))
        for stream, text in lines:
            roll = rng.random()
            if roll < 0.003:  # longer than conmon's buffer: P records, then the F record
                text = text + " " + json.dumps({"mempool": [f"{rng.getrandbits(256):064x}" for _ in range(150)]})
                self.counts["long_lines"] += 1
                pieces = [text[j:j + CONMON_BUFFER] for j in range(0, len(text), CONMON_BUFFER)]
                for piece in pieces[:-1]:
                    out.append(f"{stamp} {stream} P {piece}")
                out.append(f"{stamp} {stream} F {pieces[-1]}")
                self.counts["records"] += len(pieces)
            elif roll < 0.006 and allow_unfinished:  # written without its newline, finished 30 ms later
                cut = len(text) // 2
                out.append(f"{stamp} {stream} P {text[:cut]}")
                out.append(f"{conmon_time(at + 30_000_000)} {stream} F {text[cut:]}")
                self.counts["unfinished_writes"] += 1
                self.counts["records"] += 2
            else:
                out.append(f"{stamp} {stream} F {text}")
                self.counts["records"] += 1
            self.counts["log_lines"] += 1

    def inspect_facts(self, log_dir: Path) -> list[podman.InspectFacts]:
        """What the watcher's reconcile would know of the 20 containers (k8s-file logs in `log_dir`)."""
        created = go_rfc3339nano(T0 - 3600 * S)
        items = [{"Name": name, "Id": cid, "Created": created,
                  "State": {"Status": "running", "Running": True, "Pid": 1000 + n, "StartedAt": created},
                  "HostConfig": {"LogConfig": {"Type": "k8s-file", "Path": str(log_dir / f"{name}.log")},
                                 "RestartPolicy": {"Name": "always"}},
                  "Config": {"Image": IMAGE}}
                 for n, (name, cid) in enumerate(self.ids.items())]
        facts = podman.parse_inspect(json.dumps(items), TARGET, T0)
        assert not isinstance(facts, podman.ParseError), facts
        return facts


def bench_config():
    """A validated Config watching the 20 containers (default error and redaction patterns)."""
    return config_from_dict({
        "podwarden": {"default_target": TARGET},
        "targets": {TARGET: {"transport": "local"}},
        "containers": {name: {"role": name.split("-")[0]} for name in CONTAINERS},
        "watch": {"run_healthchecks": "never"},
    })


def capture_follower(facts: list[podman.InspectFacts], sizes: dict[str, int]) -> bytes:
    """The real perl follower's output for the files, from offset 0 to their end (then stopped)."""
    argv = follower_argv([(index, "0", fact.log_path) for index, fact in enumerate(sorted(facts, key=lambda f: f.name))])
    names = [fact.name for fact in sorted(facts, key=lambda f: f.name)]
    left = {index: sizes[name] for index, name in enumerate(names)}
    out = bytearray()
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            out += raw
            if raw.startswith(b"R "):
                _, index, _, length, _ = raw.split(b" ", 4)
                left[int(index)] -= int(length)
                if not any(left.values()):
                    break
        proc.kill()
    return bytes(out)


# ---------------------------------------------------------------- the live path


class FakeLines:
    """A fake LineStream (named as such: the in-process variant): the captured follower output
    in 64 KiB chunks through LineSplitter, yielding to the loop once per chunk as a pipe read
    does; at the end it calls `at_end` and then stays open, like the real follower."""

    def __init__(self, data: bytes, errors: str, at_end) -> None:
        self.data, self.errors, self.at_end = data, errors, at_end
        self.exit_status, self.stderr = None, ""

    async def __aiter__(self):
        splitter = LineSplitter(errors=self.errors)
        for offset in range(0, len(self.data), READ_CHUNK):
            for line in splitter.feed(self.data[offset:offset + READ_CHUNK]):
                yield line
            await asyncio.sleep(0)
        self.at_end()
        await asyncio.Event().wait()


class FakeFollowerTransport:
    """A fake transport for the in-process variant: `stream` gives FakeLines of the captured output."""

    def __init__(self, data: bytes, at_end) -> None:
        self.data, self.at_end = data, at_end
        self.connected = True

    @asynccontextmanager
    async def stream(self, argv, *, errors: str = "replace"):
        yield FakeLines(self.data, errors, self.at_end)


async def live_path(config, path: Path, variant: str, data: dict) -> dict:
    """One run of the live path into a fresh store at `path`; what it stored and how long it took."""
    synthetic: Synthetic = data["synthetic"]
    facts: list[podman.InspectFacts] = data["facts"]
    sizes: dict[str, int] = data["sizes"]
    async with recording(config, "bench-ingest", [TARGET], str(path)) as rec:
        watcher = TargetWatcher(config.targets[TARGET], config, rec.sink, start_ns=T0)
        # what `podwarden watch` adds: the drift window and the hooks, fed what the machines are
        # fed (sink.on_fed), the window open as once the watcher is ready; hooks in dry run
        # (the synthetic containers do not exist), their firing task not started
        window = Window(rec, [watcher], dry_run=True)
        watcher.ready.set()
        await window.open_when_ready(asyncio.Event())
        follow = watcher.logs
        follow.mode = "conmon"
        local = LocalTransport(config.targets[TARGET])
        await local.connect()
        watcher._transport_now = local  # the kernel log read before a died 137 (dmesg, as root)
        changes_before = len(rec.sink.changes)
        peak = 0
        running = 2  # the events and logs tasks

        def follow_finished() -> None:
            follow._restart.set()  # ends _follow_conmon as a new log file would: reader cancelled, joiners released

        def finished() -> None:
            nonlocal running
            running -= 1

        async def events() -> None:
            await read_events()
            finished()

        async def read_events() -> None:
            if variant == "stream":
                async with local.stream(["cat", str(data["events_file"])]) as lines:
                    async for line in lines:  # as TargetWatcher._follow_events
                        await watcher._on_event_line(line)
                        await rec.sink.backpressure()
            else:
                splitter = LineSplitter()
                blob = synthetic.events
                for offset in range(0, len(blob), READ_CHUNK):
                    for line in splitter.feed(blob[offset:offset + READ_CHUNK]):
                        await watcher._on_event_line(line)
                        await rec.sink.backpressure()
                    await asyncio.sleep(0)  # a pipe read yields to the loop once per chunk

        async def logs() -> None:
            transport = local if variant == "stream" else FakeFollowerTransport(data["follower"], follow_finished)
            await follow._follow_conmon(transport, facts)
            finished()

        async def watch_progress() -> None:
            nonlocal peak
            last, stalled = None, time.monotonic()
            while running:
                peak = max(peak, rec.store.pending)
                sources = follow._sources
                offsets = {s.name: s.next_offset for s in sources.values()}
                if variant == "stream" and len(offsets) == len(facts) and all(
                        offset == sizes[name] for name, offset in offsets.items()):
                    follow_finished()
                if offsets != last or rec.store.pending:
                    last, stalled = offsets, time.monotonic()
                elif time.monotonic() - stalled > STALL_S:
                    raise RuntimeError(f"{variant}: no progress for {STALL_S:.0f} s; read so far {offsets} "
                                       f"of {sizes}; watcher {watcher.view}")
                await asyncio.sleep(POLL_S)

        start = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(events())
                group.create_task(logs())
                group.create_task(watch_progress())
            await rec.store.flush()
            elapsed = time.perf_counter() - start
        finally:
            await local.close()
        stored = rec.store._next_obs_id - 1  # ids handed out (the run row is not one)
        drifts = len(window.detector.drifts)
        window.close()
        rec.verdict = "recorded"
        view = watcher.view
        outcome = {"seconds": elapsed, "obs": stored, "changes": len(rec.sink.changes) - changes_before,
                   "events": view.events, "logs": view.logs, "errors": view.errors,
                   "parse_errors": view.parse_errors, "peak_pending": peak, "kernel_log": watcher._kernel_log,
                   "drifts": drifts}
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        outcome["stored_logs"] = conn.execute("SELECT count(*) FROM observations WHERE kind = 'log'").fetchone()[0]
        outcome["kernel_reads"] = conn.execute(
            "SELECT count(*) FROM observations WHERE kind = 'probe' AND data LIKE '%oom-kill%'").fetchone()[0]
    return outcome


# ---------------------------------------------------------------- baselines


def _columns(insert: str) -> str:
    """The column list of one of the writer's INSERT statements (so the baseline follows the writer)."""
    return re.search(r"\(([^)]*)\)", insert).group(1)


def stored_rows(path: Path) -> tuple[list[tuple], list[tuple]]:
    """The observations and changes rows the live path committed, as it inserted them."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        obs = conn.execute(f"SELECT {_columns(_INSERT_OBS)} FROM observations ORDER BY id").fetchall()
        changes = conn.execute(f"SELECT {_columns(_INSERT_CHANGE)} FROM changes ORDER BY id").fetchall()
    finally:
        conn.close()
    return obs, changes


def _fresh(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    for pragma in _PRAGMAS:
        conn.execute(pragma)
    conn.execute("INSERT INTO runs (id, command, started_ns) VALUES (1, 'bench', 0)")
    return conn


def executemany_path(path: Path, obs: list[tuple], changes: list[tuple]) -> float:
    """Seconds for plain sqlite3 executemany of the same rows, BATCH observations (and the
    changes that point at them) per transaction, as the writer groups them."""
    conn = _fresh(path)
    try:
        start = time.perf_counter()
        c = 0
        for i in range(0, len(obs), BATCH):
            chunk = obs[i:i + BATCH]
            last_id = chunk[-1][0]
            j = c
            while j < len(changes) and changes[j][1] <= last_id:
                j += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT_OBS, chunk)
            if j > c:
                conn.executemany(_INSERT_CHANGE, changes[c:j])
            conn.execute("COMMIT")
            c = j
        if c < len(changes):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT_CHANGE, changes[c:])
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def naive_path(path: Path, obs: list[tuple]) -> float:
    """Seconds for one INSERT + commit per row (autocommit), same schema and PRAGMAs."""
    conn = _fresh(path)
    try:
        start = time.perf_counter()
        for row in obs:
            conn.execute(_INSERT_OBS, row)
        return time.perf_counter() - start
    finally:
        conn.close()


# ---------------------------------------------------------------- where the time goes


async def _store_only(path: Path, observations: list, patterns: list[str]) -> float:
    store = await StoreWriter.open(path, patterns)
    try:
        run_id = await store.start_run("bench-stage", [TARGET], {})
        start = time.perf_counter()
        for obs in observations:
            store.add(obs, run_id, redacted=True)
        await store.flush()
        return time.perf_counter() - start
    finally:
        await store.close()


def stages(config, data: dict, tmp: Path) -> dict[str, float]:
    """µs per observation of each stage alone, on the same input (no overlap, no event loop):
    split, parse (events; follower lines + k8s records), join, match (error patterns), redact,
    fleet, drift (the detector after the fleet), row (the data JSON), store (add + commit)."""
    synthetic: Synthetic = data["synthetic"]
    names = [fact.name for fact in sorted(data["facts"], key=lambda f: f.name)]
    timings = dict.fromkeys(("split", "parse", "join", "match", "redact", "fleet", "drift", "row", "store"), 0.0)
    t = time.perf_counter()
    raw_events: list[str] = []
    raw_follower: list[str] = []
    for blob, out, errors in ((synthetic.events, raw_events, "replace"),
                              (data["follower"], raw_follower, "surrogateescape")):
        splitter = LineSplitter(errors=errors)
        for offset in range(0, len(blob), READ_CHUNK):
            out.extend(splitter.feed(blob[offset:offset + READ_CHUNK]))
    timings["split"] = time.perf_counter() - t
    t = time.perf_counter()
    events = [podman.parse_event(line, TARGET) for line in raw_events]
    records = []
    for raw in raw_follower:
        line = parse_follower_line(raw)
        if line.what == "R":
            records.append((line.index, line.offset, line.length, parse_k8s_record(line.record)))
    timings["parse"] = time.perf_counter() - t
    joiners = [LogJoiner(name, lambda *_: False) for name in names]
    t = time.perf_counter()
    lines = [whole for index, offset, length, record in records
             for whole in joiners[index].feed(offset, record, offset + length)]
    timings["join"] = time.perf_counter() - t
    matchers = {name: LogMatcher(config.error_patterns(name), config.containers[name].log_ignore) for name in names}
    t = time.perf_counter()
    flags = [matchers[line.container].is_error(line.text) for line in lines]
    timings["match"] = time.perf_counter() - t
    observations = events + [LogObs(TARGET, line.container, line.at_ns, line.text, line.stream, flag, line.seq,
                                    line.resume) for line, flag in zip(lines, flags)]
    observations.sort(key=lambda o: o.at_ns)
    redactor = Redactor(config.redaction.patterns)
    t = time.perf_counter()
    observations = [redactor.observation(obs) for obs in observations]
    timings["redact"] = time.perf_counter() - t
    fleet = Fleet(machine_settings(config))
    for name in names:
        fleet.expect(TARGET, name)
    t = time.perf_counter()
    for obs in observations:
        fleet.feed(obs)
    timings["fleet"] = time.perf_counter() - t
    fleet.close()
    # the drift detector needs the fleet fed first: a second pass with both, less the fleet alone
    fleet = Fleet(machine_settings(config))
    for name in names:
        fleet.expect(TARGET, name)
    detector = drift_detector(config, [TARGET])
    detector.start(fleet, T0)
    t = time.perf_counter()
    for obs in observations:
        detector.feed(obs, fleet.feed(obs))
    timings["drift"] = max(0.0, time.perf_counter() - t - timings["fleet"])
    fleet.close()
    t = time.perf_counter()
    for i, obs in enumerate(observations):
        observation_row(obs, i, 1, None)
    timings["row"] = time.perf_counter() - t
    path = tmp / "stage-store.db"
    timings["store"] = asyncio.run(_store_only(path, observations, config.redaction.patterns))
    remove_db(path)
    per_obs = len(observations) / 1e6
    return {key: value / per_obs for key, value in timings.items()}


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50k lines, 3 rounds")
    parser.add_argument("--lines", type=int, default=None, help="event + log lines per round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--naive-rows", type=int, default=None, help="rows for the naive baseline")
    parser.add_argument("--profile", action="store_true", help="cProfile one in-process live run")
    parser.add_argument("--dir", default=None, help="where to put the files (default: the temp dir)")
    args = parser.parse_args()
    lines = args.lines or (50_000 if args.quick else 200_000)
    rounds = args.rounds or 3
    naive_rows = args.naive_rows or (1_000 if args.quick else 3_000)

    from loguru import logger
    logger.remove()  # the watcher's own log lines are not the bench's output

    config = bench_config()
    synthetic = Synthetic(lines)
    counts = synthetic.counts
    results: dict[str, list[float]] = {"stream": [], "inprocess": [], "executemany": [], "naive": []}
    detail: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        log_dir = tmp / "logs"
        log_dir.mkdir()
        for name, blob in synthetic.logs.items():
            (log_dir / f"{name}.log").write_bytes(blob)
        facts = synthetic.inspect_facts(log_dir)
        sizes = {name: len(blob) for name, blob in synthetic.logs.items()}
        data = {"synthetic": synthetic, "facts": facts, "sizes": sizes, "events_file": tmp / "events.jsonl"}
        data["events_file"].write_bytes(synthetic.events)
        data["follower"] = capture_follower(facts, sizes)
        rows: tuple[list, list] | None = None
        for n in range(rounds):
            for variant in ("stream", "inprocess"):  # interleaved: noise hits every path alike
                path = tmp / f"{variant}-{n}.db"
                outcome = asyncio.run(live_path(config, path, variant, data))
                results[variant].append(outcome["obs"] / outcome["seconds"])
                detail.setdefault(variant, outcome)
                if outcome["stored_logs"] != counts["log_lines"]:
                    print(f"  LOST OR DOUBLED: {variant} stored {outcome['stored_logs']} log lines of "
                          f"{counts['log_lines']} written", flush=True)
                if rows is None:
                    rows = stored_rows(path)
                remove_db(path)
            assert rows is not None
            path = tmp / f"executemany-{n}.db"
            results["executemany"].append(len(rows[0]) / executemany_path(path, *rows))
            remove_db(path)
            path = tmp / f"naive-{n}.db"
            results["naive"].append(naive_rows / naive_path(path, rows[0][:naive_rows]))
            remove_db(path)
        per_stage = stages(config, data, tmp)
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            asyncio.run(live_path(config, tmp / "profile.db", "inprocess", data))
            profile.disable()

    stream, inproc = median(results["stream"]), median(results["inprocess"])
    raw, naive = median(results["executemany"]), median(results["naive"])
    d = detail["stream"]
    print(f"  lines={lines}: {counts['events']} events, {counts['log_lines']} log lines in {counts['records']} "
          f"k8s-file records ({counts['flood_lines']} in floods of 10-70 identical lines sharing a stamp, "
          f"up to {counts['largest_stamp']} a stamp; {counts['long_lines']} longer than 8 KiB, "
          f"{counts['unfinished_writes']} written without newline first), {counts['seconds']} s of "
          f"{len(CONTAINERS)} containers, {counts['died']} crashes ({counts.get('died_137', 0)} exit 137); "
          f"rounds={rounds} {machine_line()}")
    print(f"  stored per run: {d['obs']} observations ({d['stored_logs']} log lines of {counts['log_lines']} "
          f"written), {d['changes']} state changes, {d['errors']} error lines, {d['parse_errors']} parse errors, "
          f"{d['kernel_reads']} kernel-log reads (before each died 137), {d['drifts']} drifts; peak writer queue {d['peak_pending']} rows "
          "(the sink flushes above 20000)")
    print(f"  live path, LocalTransport.stream (cat + perl follower): {stream:.0f} obs/s = {1e6 / stream:.1f} us/obs "
          f"(runs: {runs_text(results['stream'])})")
    print(f"  live path, in-process (captured follower output):       {inproc:.0f} obs/s = {1e6 / inproc:.1f} us/obs "
          f"(runs: {runs_text(results['inprocess'])})")
    print(f"  baseline executemany x{BATCH} of the same rows: {raw:.0f} obs/s "
          f"(runs: {runs_text(results['executemany'])})")
    print(f"  baseline naive insert+commit per row ({naive_rows} rows): {naive:.0f} rows/s "
          f"(runs: {runs_text(results['naive'])})")
    print("  stages alone, us/obs: " + " ".join(f"{k}={v:.2f}" for k, v in per_stage.items())
          + f" (sum {sum(per_stage.values()):.2f}; in-process live path {1e6 / inproc:.2f}; store = the main "
          "thread's add + the writer thread's SQL, which overlap in the live path)")
    if args.profile:
        print("  cProfile of one in-process live run (main thread; top by tottime):")
        print_profile(profile, 24)
    print(summary("ingest", obs_per_s=stream, ratio_vs_executemany=stream / raw, ratio_vs_naive=stream / naive,
                  inprocess_obs_per_s=inproc, executemany_obs_per_s=raw, naive_rows_per_s=naive))


if __name__ == "__main__":
    main()
