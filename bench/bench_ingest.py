"""End-to-end ingest: podman event and log lines through the watcher's live path into the store.

Not a test. Synthetic `podman events --format json` lines (4.3 shape) and
`podman logs --names --timestamps` lines of ~20 containers go through exactly what a
watcher does with them: LineSplitter (the transport) -> TargetWatcher._on_event_line /
_read_logs (parse_event / split_glued_log_line + parse_log_line, the replay dedupe, the
log error patterns) -> Sink.put (StoreWriter.add, Fleet.feed, StoreWriter.add_change)
-> the writer task's batched commits to a temp file, timed until `flush()` returns.
Two variants of that path:

  stream:     the lines come out of a real `cat FILE` subprocess through
              LocalTransport.stream, one stream for events and one for logs, as the
              watcher's two tasks read them (the headline figure);
  inprocess:  the same bytes fed in 64 KiB chunks to LineSplitter in-process (no
              subprocess, no pipe: a steadier figure for comparing changes).

Baselines in the same run, on the very rows the live path stored (read back from its
file, observations and changes, same schema, PRAGMAs and INSERT statements):

  executemany: plain sqlite3, 1000 observations (and their changes) per transaction;
  naive:       one INSERT and one commit per row, on a subset, extrapolated.

    .venv/bin/python bench/bench_ingest.py             # 200k lines, 3 rounds
    .venv/bin/python bench/bench_ingest.py --quick     # 30k lines, 2 rounds (< 30 s)
    .venv/bin/python bench/bench_ingest.py --profile   # + cProfile of the in-process path

Ends with `ingest: obs_per_s=N ratio_vs_executemany=R ratio_vs_naive=R ...` (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
from common import machine_line, median, print_profile, remove_db, runs_text, summary

from agent import podman  # noqa: E402
from agent.config import config_from_dict  # noqa: E402
from agent.session import machine_settings  # noqa: E402
from agent.transport import READ_CHUNK, LineSplitter, LocalTransport  # noqa: E402
from agent.watcher import Sink, TargetWatcher  # noqa: E402
from machines.container import Fleet  # noqa: E402
from store import StoreWriter  # noqa: E402
from store.redact import Redactor  # noqa: E402
from store.schema import migrate  # noqa: E402
from store.writer import _INSERT_CHANGE, _INSERT_OBS, _PRAGMAS, observation_row  # noqa: E402

TARGET = "bench"
T0 = 1_795_000_000_000_000_000  # 2026-11-19T...Z
S = 1_000_000_000
BATCH = 1000  # the writer's batch_size
IMAGE = "localhost/podwarden-testbed:f1ef07d239d4"

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
ERROR_TEMPLATES = (  # match the default error patterns
    "{date} [ERR] RPCS: [/v1/getinfo]: expected 1 macaroon, got 0",
    "{date} ERROR: connection refused to 127.0.0.1:8332, retrying in 5s",
    "{date} Failed to connect to peer 10.0.0.{peer}: timeout",
)
SECRET_TEMPLATE = "{date} startup args: -rpcuser=node -rpcpassword=hunter2{tx} -server=1"  # redacted


def go_rfc3339nano(ns: int) -> str:
    """What Go's RFC3339Nano prints (podman 4.3's event `Time`): trailing zeros trimmed."""
    text = podman.format_time_ns(ns)  # ...SS.fffffffffZ
    head, frac = text[:-1].split(".")
    frac = frac.rstrip("0")
    return f"{head}.{frac}Z" if frac else f"{head}Z"


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


def synthetic(total_lines: int, seed: int = 7) -> tuple[bytes, bytes, dict[str, int]]:
    """(events bytes, logs bytes, counts): ~63% log lines, the rest events, in time order.

    Per container and second: 3 log lines (3% errors, a few with a password to redact);
    health-checked containers add health_status + exec_died (an unhealthy flap now and
    then); every 5 s a probe exec + exec_died; now and then a crash: died, restart,
    init, start (+ health_status starting).
    """
    rng = random.Random(seed)
    ids = {name: f"{rng.getrandbits(256):064x}" for name in CONTAINERS}
    events: list[str] = []
    logs: list[str] = []
    counts = {"died": 0, "health_status": 0, "log_errors": 0}
    second = 0
    height = 840_000
    while len(events) + len(logs) < total_lines:
        base = T0 + second * S
        if second % 10 == 0:
            height += 1
        for i, name in enumerate(CONTAINERS):
            cid, role = ids[name], name.split("-")[0]
            at = base + i * 37_000_000 + rng.randrange(1_000_000)
            for k in range(3):
                t = at + k * 211_000_000 + rng.randrange(100_000)
                fields = dict(date=go_rfc3339nano(t)[:19] + "Z", hash=f"{rng.getrandbits(256):064x}",
                              height=height, tx=rng.randrange(1, 99_999), peer=rng.randrange(2, 250))
                roll = rng.random()
                if roll < 0.03:
                    template = ERROR_TEMPLATES[rng.randrange(len(ERROR_TEMPLATES))]
                    counts["log_errors"] += 1
                elif roll < 0.035:
                    template = SECRET_TEMPLATE
                else:
                    template = LOG_TEMPLATES[(i + k) % len(LOG_TEMPLATES)]
                logs.append(f"{name} {podman.format_time_ns(t)} {template.format(**fields)}")
            if i < HEALTH_CHECKED:
                flap = (second + 3 * i) % 97
                health = "unhealthy" if flap == 0 else "healthy"
                events.append(event_line(name, cid, role, "health_status", at + 5_000_000, health=health))
                events.append(event_line(name, cid, role, "exec_died", at + 9_000_000))
                counts["health_status"] += 1
            if (second + i) % 5 == 0:
                events.append(event_line(name, cid, role, "exec", at + 11_000_000))
                events.append(event_line(name, cid, role, "exec_died", at + 15_000_000))
            if (second * len(CONTAINERS) + i) % 487 == 17:
                died = at + 20_000_000
                events.append(event_line(name, cid, role, "died", died, exit_code=rng.choice((137, 1, 139))))
                events.append(event_line(name, cid, role, "restart", died + 3_000_000))
                events.append(event_line(name, cid, role, "init", died + 95_000_000))
                events.append(event_line(name, cid, role, "start", died + 110_000_000))
                if i < HEALTH_CHECKED:
                    events.append(event_line(name, cid, role, "health_status", died + 130_000_000,
                                             health="starting"))
                counts["died"] += 1
        second += 1
    events.sort(key=lambda line: podman.parse_time_ns(line.split('"Time":"')[1].split('"')[0]))
    counts["events"], counts["logs"], counts["seconds"] = len(events), len(logs), second
    return ("\n".join(events) + "\n").encode(), ("\n".join(logs) + "\n").encode(), counts


def bench_config():
    """A validated Config watching the 20 containers (default error and redaction patterns)."""
    return config_from_dict({
        "podwarden": {"default_target": TARGET},
        "targets": {TARGET: {"transport": "local"}},
        "containers": {name: {"role": name.split("-")[0]} for name in CONTAINERS},
        "watch": {"run_healthchecks": "never"},
    })


# ---------------------------------------------------------------- the live path


class Live:
    """What open_session builds: a StoreWriter, a run, a Fleet, a Sink, a TargetWatcher."""

    def __init__(self, config, store: StoreWriter, run_id: int) -> None:
        self.store = store
        self.fleet = Fleet(machine_settings(config))
        self.sink = Sink(self.fleet, store, run_id)
        self.changes: list = []
        self.sink.on_change.append(self.changes.append)
        self.watcher = TargetWatcher(config.targets[TARGET], config, self.sink, start_ns=T0)
        self.names = sorted(config.containers)
        self.peak_pending = 0

    @classmethod
    async def open(cls, config, path: Path) -> "Live":
        store = await StoreWriter.open(path, config.redaction.patterns)
        run_id = await store.start_run("bench", [TARGET], {})
        return cls(config, store, run_id)

    async def close(self) -> None:
        self.fleet.close()
        await self.store.close()

    def _note_pending(self) -> None:
        self.peak_pending = max(self.peak_pending, self.store.pending)

    # the stream variant: real subprocess pipes through LocalTransport.stream
    async def stream_files(self, events_file: Path, logs_file: Path) -> None:
        transport = LocalTransport(self.watcher.target)
        await transport.connect()

        async def events() -> None:
            async with transport.stream(["cat", str(events_file)]) as lines:
                async for line in lines:  # as TargetWatcher._follow_events
                    self.watcher._on_event_line(line)
                    if self.store.pending > self.peak_pending:
                        self._note_pending()

        async def logs() -> None:
            async with transport.stream(["cat", str(logs_file)]) as lines:
                await self.watcher._read_logs(lines, self.names)  # as TargetWatcher._follow_logs
            self._note_pending()

        try:
            await asyncio.gather(events(), logs())
        finally:
            await transport.close()

    # the in-process variant: 64 KiB chunks through LineSplitter, one task per stream
    async def feed_bytes(self, events_data: bytes, logs_data: bytes) -> None:
        names = self.names
        watcher = self.watcher

        async def events() -> None:
            splitter = LineSplitter()
            for offset in range(0, len(events_data), READ_CHUNK):
                for line in splitter.feed(events_data[offset:offset + READ_CHUNK]):
                    watcher._on_event_line(line)
                self._note_pending()
                await asyncio.sleep(0)  # a pipe read yields to the loop once per chunk

        async def logs() -> None:
            splitter = LineSplitter()
            assembler = podman.LogAssembler(names)
            for offset in range(0, len(logs_data), READ_CHUNK):
                for raw in splitter.feed(logs_data[offset:offset + READ_CHUNK]):
                    for record in assembler.feed(raw):
                        watcher._on_log_line(record)
                self._note_pending()
                await asyncio.sleep(0)

        await asyncio.gather(events(), logs())


async def live_path(config, path: Path, variant: str, data: dict) -> dict:
    live = await Live.open(config, path)
    try:
        start = time.perf_counter()
        if variant == "stream":
            await live.stream_files(data["events_file"], data["logs_file"])
        else:
            await live.feed_bytes(data["events"], data["logs"])
        await live.store.flush()
        elapsed = time.perf_counter() - start
        stored = live.store._next_obs_id - 1  # ids handed out (the run row is not one)
    finally:
        await live.close()
    view = live.watcher.view
    return {"seconds": elapsed, "obs": stored, "changes": len(live.changes), "events": view.events,
            "logs": view.logs, "errors": view.errors, "parse_errors": view.parse_errors,
            "peak_pending": live.peak_pending}


# ---------------------------------------------------------------- baselines


def stored_rows(path: Path) -> tuple[list[tuple], list[tuple]]:
    """The observations and changes rows the live path committed, as it inserted them."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        obs = conn.execute("SELECT id, run_id, target, container, container_id, at_ns, kind, status, data "
                           "FROM observations ORDER BY id").fetchall()
        changes = conn.execute("SELECT id, observation_id, run_id, target, container, at_ns, from_state, "
                               "to_state, cause, contradiction, obs_kind FROM changes ORDER BY id").fetchall()
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


async def _store_only(path: Path, parsed: list, patterns: list[str]) -> float:
    store = await StoreWriter.open(path, patterns)
    try:
        start = time.perf_counter()
        for obs in parsed:
            store.add(obs, 1)
        await store.flush()
        return time.perf_counter() - start
    finally:
        await store.close()


def stages(config, data: dict, tmp: Path) -> dict[str, float]:
    """µs per observation of each stage alone, on the same lines (no overlap, no event loop):
    LineSplitter, split_glued_log_line, parse_event/parse_log_line, Fleet.feed,
    observation_row (JSON + redaction), StoreWriter add + commit of the parsed observations."""
    from machines.observations import LogObs

    names = sorted(config.containers)
    timings = dict.fromkeys(("split", "unglue", "parse", "fleet", "row", "store"), 0.0)
    t = time.perf_counter()
    raw_events: list[str] = []
    raw_logs: list[str] = []
    for blob, out in ((data["events"], raw_events), (data["logs"], raw_logs)):
        splitter = LineSplitter()
        for offset in range(0, len(blob), READ_CHUNK):
            out.extend(splitter.feed(blob[offset:offset + READ_CHUNK]))
    timings["split"] = time.perf_counter() - t
    t = time.perf_counter()
    log_lines = [line for raw in raw_logs for line in podman.split_glued_log_line(raw, names)]
    timings["unglue"] = time.perf_counter() - t
    t = time.perf_counter()
    parsed: list = [podman.parse_event(line, TARGET) for line in raw_events]
    parsed += [podman.parse_log_line(line, None, names) for line in log_lines]
    timings["parse"] = time.perf_counter() - t
    parsed = [p if not isinstance(p, tuple) else LogObs(TARGET, p[0], p[1], p[2], "merged", False)
              for p in parsed]
    parsed.sort(key=lambda o: o.at_ns)
    fleet = Fleet(machine_settings(config))
    t = time.perf_counter()
    for obs in parsed:
        fleet.feed(obs)
    timings["fleet"] = time.perf_counter() - t
    fleet.close()
    redactor = Redactor(config.redaction.patterns)
    t = time.perf_counter()
    for i, obs in enumerate(parsed):
        observation_row(obs, i, 1, redactor)
    timings["row"] = time.perf_counter() - t
    path = tmp / "stage-store.db"
    timings["store"] = asyncio.run(_store_only(path, parsed, config.redaction.patterns))
    remove_db(path)
    per_obs = len(parsed) / 1e6
    return {key: value / per_obs for key, value in timings.items()}


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30k lines, 2 rounds (under 30 s)")
    parser.add_argument("--lines", type=int, default=None, help="event + log lines per round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--naive-rows", type=int, default=None, help="rows for the naive baseline")
    parser.add_argument("--profile", action="store_true", help="cProfile one in-process live run")
    parser.add_argument("--dir", default=None, help="where to put the files (default: the temp dir)")
    args = parser.parse_args()
    lines = args.lines or (30_000 if args.quick else 200_000)
    rounds = args.rounds or (2 if args.quick else 3)
    naive_rows = args.naive_rows or (1_000 if args.quick else 3_000)

    config = bench_config()
    events, logs, counts = synthetic(lines)
    results: dict[str, list[float]] = {"stream": [], "inprocess": [], "executemany": [], "naive": []}
    detail: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        data = {"events": events, "logs": logs, "events_file": tmp / "events.jsonl",
                "logs_file": tmp / "logs.txt"}
        data["events_file"].write_bytes(events)
        data["logs_file"].write_bytes(logs)
        rows: tuple[list, list] | None = None
        for n in range(rounds):
            for variant in ("stream", "inprocess"):  # interleaved: noise hits every path alike
                path = tmp / f"{variant}-{n}.db"
                outcome = asyncio.run(live_path(config, path, variant, data))
                results[variant].append(outcome["obs"] / outcome["seconds"])
                detail[variant] = outcome
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

            async def profiled() -> None:
                live = await Live.open(config, tmp / "profile.db")
                try:
                    profile.enable()
                    await live.feed_bytes(events, logs)
                    await live.store.flush()
                    profile.disable()
                finally:
                    await live.close()

            asyncio.run(profiled())

    stream, inproc = median(results["stream"]), median(results["inprocess"])
    raw, naive = median(results["executemany"]), median(results["naive"])
    d = detail["stream"]
    total_us = 1e6 / stream
    print(f"  lines={lines} ({counts['events']} events, {counts['logs']} log lines, {counts['seconds']} s of "
          f"{len(CONTAINERS)} containers, {counts['died']} crashes) rounds={rounds} {machine_line()}")
    print(f"  stored per run: {d['obs']} observations, {d['changes']} state changes, {d['errors']} error "
          f"lines, {d['parse_errors']} parse errors; peak queue {d['peak_pending']} rows "
          f"(writer max_pending 50000)")
    print(f"  live path, LocalTransport.stream(cat): {stream:.0f} obs/s = {total_us:.1f} us/obs "
          f"(runs: {runs_text(results['stream'])})")
    print(f"  live path, in-process LineSplitter:    {inproc:.0f} obs/s = {1e6 / inproc:.1f} us/obs "
          f"(runs: {runs_text(results['inprocess'])})")
    print(f"  baseline executemany x{BATCH} of the same rows: {raw:.0f} obs/s "
          f"(runs: {runs_text(results['executemany'])})")
    print(f"  baseline naive insert+commit per row ({naive_rows} rows): {naive:.0f} rows/s "
          f"(runs: {runs_text(results['naive'])})")
    print("  stages alone, us/obs: " + " ".join(f"{k}={v:.2f}" for k, v in per_stage.items())
          + f" (sum {sum(per_stage.values()):.2f}; in-process live path {1e6 / inproc:.2f}; store = the "
          "main thread's add + the writer thread's SQL, which overlap in the live path)")
    if args.profile:
        print("  cProfile of one in-process live run (main thread; top by tottime):")
        print_profile(profile, 22)
    print(summary("ingest", obs_per_s=stream, ratio_vs_executemany=stream / raw, ratio_vs_naive=stream / naive,
                  inprocess_obs_per_s=inproc, executemany_obs_per_s=raw, naive_rows_per_s=naive))


if __name__ == "__main__":
    main()
