"""The morning after: reading a night's store, against raw sqlite3 on the same file.

Not a test. Builds a store of N observations through StoreWriter (default 5,000,000:
2 targets x 10 containers, 10 h; `--quick`: 200,000 over 24 min, the same mix): mostly
log lines (bursts sharing a conmon stamp, ~3% errors, a few `connection refused`), a
snapshot of every container every 30 s, a health check of 12 containers every 10 s (probe
+ `health_status` + `exec_died`), a crash loop (electrs on node2, every 20 s for a fifth
of the night), a few crashes, experiment actions and agent records; two `watch` runs
(the agent restarted half way). The writer indexes the log text in its idle time
(`StoreWriter.index_logs`, timed). Then each figure against raw sqlite3 on the same file
in the same run (medians of `--rounds`):

- container_hour: one container's log lines over one hour (a tenth of the span in quick
  mode) through `store.query` as dicts, vs the raw indexed SELECT of the same columns
  (goal: within 1.5x);
- window: every observation of one hour in time order through `StoreReader.observation_rows`
  (keyset pages) vs one raw cursor's `fetchmany` (goal: at least 0.8x); the whole store
  too; the old paging (a start bound plus a row-value keyset) for comparison; rebuilt
  observations (`observation_records`, `arrival_records`, lean) per row;
- errors: error lines per container (`StoreReader.error_line_counts`) vs the raw query on
  the partial index (goal: within 2x); the JSON scan it replaces;
- search: a phrase through `store.query` (FTS5 candidates, checked by REGEXP) vs raw FTS5
  MATCH, vs LIKE over the JSON (the old way), vs a single-word regex (a scan);
- bytes per observation, and where they go (dbstat);
- first page of the second run, one container without its target, last snapshots before a
  time, counts for the report;
- retention: pruning the oldest tenth in the writer's idle time while another task adds
  rows and flushes (prune rate, slowest flush).

    .venv/bin/python bench/bench_morning.py --quick      # ~200k observations, < 1 min
    .venv/bin/python bench/bench_morning.py              # 5M observations (~10 min)
    .venv/bin/python bench/bench_morning.py --db /tmp/night.db   # build once, then reuse it

Ends with `morning: obs=N bytes_per_obs=B container_hour_ratio=R window_ratio=R
errors_ratio=R fts_s=S like_s=S ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import common  # noqa: F401  (puts the project on sys.path)
from common import machine_line, median, summary

from machines.observations import (  # noqa: E402
    ActionObs,
    AgentObs,
    EventObs,
    LogObs,
    ProbeObs,
    SnapshotObs,
    obs_to_json,
)
import agent.report as report_module  # noqa: E402
from agent.replay import replay_verb  # noqa: E402
from store import StoreReader, StoreWriter  # noqa: E402
from store import query as q  # noqa: E402
from store.redact import DEFAULT_PATTERNS  # noqa: E402
from store.schema import MIGRATIONS, migrate, split_statements  # noqa: E402
from store.writer import _INSERT_OBS, _PRAGMAS, observation_row  # noqa: E402

T0 = 1_795_000_000_000_000_000
S = 1_000_000_000
FULL = 5_000_000
FULL_SECONDS = 10 * 3600
TARGETS = ("node1", "node2")
CONTAINERS = ("bitcoind", "lnd", "electrs", "mempool-api", "mempool-db", "btcpay", "nbxplorer",
              "postgres", "tor", "nginx")
HEALTH_CHECKED = 6  # per target: the first six
LOG_WEIGHTS = (30, 20, 12, 10, 6, 6, 6, 4, 3, 3)
IMAGE = "localhost/podwarden-testbed:f1ef07d239d4"
PHRASE = "connection refused"

LOG_TEMPLATES = (
    "UpdateTip: new best={hash} height={height} version=0x20000000 log2_work=94.83 tx={tx} "
    "date='2026-11-19T02:{mm:02d}:{ss:02d}Z' progress=1.000000 cache=12.1MiB(8841txo)",
    "[INF] NTFN: New block: height={height}",
    "[INF] PEER: Peer 10.0.0.{peer}:9735 connected (inbound)",
    "Saw new header hash={hash} height={height}",
    "[DBG] HSWC: Sent 0 satoshis and received 0 satoshis in the last 10 seconds (0.000000 tx/sec)",
    "GET /api/v1/blocks/tip/height 200 {tx}us",
    "INFO  electrs::index] indexing {tx} blocks: [{height}..{height}]",
    "LOG:  checkpoint complete: wrote {peer} buffers (0.1%); 0 WAL file(s) added",
)
ERROR_TEMPLATES = (
    "[ERR] RPCS: [/v1/getinfo]: expected 1 macaroon, got 0",
    "Failed to connect to peer 10.0.0.{peer}: timeout",
    "ERROR: could not write block {height}: disk quota exceeded",
    "[ERR] CHDB: unable to fetch channel graph: context deadline exceeded",
)
REFUSED = "ERROR: connection refused to 127.0.0.1:8332, retrying in 5s"
SECRET = "startup args: -rpcuser=node -rpcpassword=hunter2{tx} -server=1"


# ---------------------------------------------------------------- the night


def cid(target: str, container: str) -> str:
    return f"{abs(hash((target, container, 'bench'))) % 16**16:016x}" * 4


def night(count: int, seed: int = 5) -> Iterator[tuple[int, Any]]:
    """(run number 0/1, observation) in arrival order, about `count` of them."""
    rng = random.Random(seed)
    seconds = max(60, int(FULL_SECONDS * count / FULL))
    pairs = [(t, c) for t in TARGETS for c in CONTAINERS]
    ids = {pair: cid(*pair) for pair in pairs}
    checked = [(t, c) for t in TARGETS for c in CONTAINERS[:HEALTH_CHECKED]]
    non_log = len(pairs) * seconds / 30 + len(checked) * seconds / 10 * 3
    log_rate = max(1.0, (count - non_log) / seconds)
    weight = sum(LOG_WEIGHTS) * len(TARGETS)
    rates = {(t, c): log_rate * LOG_WEIGHTS[i] / weight for t in TARGETS for i, c in enumerate(CONTAINERS)}
    offsets = {pair: 0 for pair in pairs}
    restarts = {pair: 0 for pair in pairs}
    started = {pair: T0 - 3600 * S for pair in pairs}
    loop = (int(seconds * 0.3), int(seconds * 0.5))
    crash = {("node1", "lnd"): int(seconds * 0.6), ("node1", "bitcoind"): int(seconds * 0.8)}
    height = 870_000
    for second in range(seconds):
        run = 0 if second < seconds // 2 else 1
        base = T0 + second * S
        batch: list[Any] = []
        if second in (0, seconds // 2):
            batch += [AgentObs(t, "", base, "connected", "ssh") for t in TARGETS]
        if second == int(seconds * 0.4):
            batch += [AgentObs("node1", "", base + S // 2, "lost", "keepalive timeout"),
                      AgentObs("node1", "", base + S // 2 + 1, "backfilled", "events since")]
        if second % 600 == 0:
            height += 1
        for pair in pairs:
            target, container = pair
            rate = rates[pair]
            n = int(rate) + (1 if rng.random() < rate - int(rate) else 0)
            lines_left = n
            while lines_left:
                burst = min(lines_left, rng.randint(1, 70))
                lines_left -= burst
                stamp = base + rng.randrange(S)
                for _ in range(burst):
                    r = rng.random()
                    if r < 0.004:
                        text, error = REFUSED, True
                    elif r < 0.03:
                        text, error = ERROR_TEMPLATES[rng.randrange(len(ERROR_TEMPLATES))], True
                    elif r < 0.032:
                        text, error = SECRET, False
                    else:
                        text, error = LOG_TEMPLATES[rng.randrange(len(LOG_TEMPLATES))], False
                    line = "2026-11-19T02:00:00Z " + text.format(
                        hash=f"{rng.getrandbits(80):020x}".rjust(64, "0"), height=height,
                        tx=rng.randrange(10**9), peer=rng.randrange(256), mm=second // 60 % 60,
                        ss=second % 60)
                    batch.append(LogObs(target, container, stamp, line, "stderr" if error else "stdout",
                                        error, offsets[pair]))
                    offsets[pair] += len(line) + 40
            if second % 30 == (hash(pair) % 30):
                batch.append(SnapshotObs(target, container, base + S // 3, True, ids[pair], "running",
                                         "healthy" if pair in checked else None, None, 4000 + restarts[pair],
                                         restarts[pair], started[pair], 0, "always", 0, IMAGE, False,
                                         0, 3 if pair in checked else 0, 0, None, 0))
            if pair in checked and second % 10 == (hash(pair) % 10):
                at = base + S // 5
                batch += [
                    ProbeObs(target, container, at, "podman-healthcheck", "podman-healthcheck", True, 180.0),
                    EventObs(target, container, at + 170 * 10**6, ids[pair], "health_status",
                             health_status="healthy", image=IMAGE,
                             attributes=(("image", IMAGE), ("name", container),
                                         ("podwarden.role", container))),
                    EventObs(target, container, at + 175 * 10**6, ids[pair], "exec_died", exit_code=0,
                             image=IMAGE, attributes=(("image", IMAGE), ("name", container))),
                ]
            dies = ((pair == ("node2", "electrs") and loop[0] <= second < loop[1] and second % 20 == 0)
                    or crash.get(pair) == second)
            if dies:
                at = base + S // 2
                restarts[pair] += 1
                started[pair] = at + 100 * 10**6
                batch += [LogObs(target, container, at - 10**6, "LOCK: Permission denied (os error 13)",
                                 "stderr", True, offsets[pair])]
                offsets[pair] += 80
                batch += [EventObs(target, container, at + k * 50 * 10**6, ids[pair], status,
                                   exit_code=1 if status == "died" else None, image=IMAGE,
                                   attributes=(("image", IMAGE), ("name", container)))
                          for k, status in enumerate(("died", "cleanup", "init", "start", "restart"))]
        if second == int(seconds * 0.7):
            for k, step in enumerate(("stop", "wait", "start", "verify")):
                batch.append(ActionObs("node1", "nginx", base + k * S // 10, step, "experiment restart nginx"))
        batch.sort(key=lambda obs: obs.at_ns)
        for i in range(1, len(batch), 37):  # arrival jitter: now and then two swap
            batch[i - 1], batch[i] = batch[i], batch[i - 1]
        for obs in batch:
            yield run, obs


async def build(db: Path, count: int) -> dict[str, Any]:
    """Write the night through StoreWriter (default redaction patterns) with `maintain`
    running beside it, as a watch would; then wait until the text index has caught up.
    Every maintenance step and every flush of the writer is timed."""
    writer = await StoreWriter.open(db, list(DEFAULT_PATTERNS))
    written = 0
    steps: list[float] = []
    real_index = writer.index_logs

    async def timed_index(**kwargs: Any) -> int:
        started = time.perf_counter()
        try:
            return await real_index(**kwargs)
        finally:
            steps.append(time.perf_counter() - started)

    writer.index_logs = timed_index  # type: ignore[method-assign]
    maintenance = asyncio.create_task(writer.maintain(interval=0.2))
    try:
        runs = [await writer.start_run("watch", list(TARGETS), {"bench": True}, started_ns=T0)]
        start = time.perf_counter()
        for run, obs in night(count):
            if run == len(runs):
                await writer.end_run(runs[-1], "pass", ended_ns=obs.at_ns)
                runs.append(await writer.start_run("watch", list(TARGETS), {"bench": True},
                                                   started_ns=obs.at_ns))
            await writer.add_wait(obs, runs[run])
            written += 1
        await writer.flush()
        ingest = time.perf_counter() - start
        await writer.end_run(runs[-1], "pass", ended_ns=T0 + FULL_SECONDS * S)
        start = time.perf_counter()
        conn = raw_connection(db)
        try:
            while conn.execute("SELECT (SELECT max(id) FROM observations) - "
                               "(SELECT value FROM store_state WHERE key = 'fts_indexed_upto')").fetchone()[0]:
                await asyncio.sleep(0.05)
        finally:
            conn.close()
        caught_up = time.perf_counter() - start
    finally:
        await writer.close()
        await maintenance
    return {"written": written, "ingest_s": ingest, "caught_up_s": caught_up, "index_steps": len(steps),
            "index_s": sum(steps), "index_step_max_ms": max(steps, default=0) * 1000}


def schema_before_and_after(tmp: Path, count: int) -> dict[str, dict[str, float]]:
    """The same night's rows by plain executemany (1000 a transaction) into the schema and
    row format before migration 3 (every field in `data`, no is_error column, no new
    indexes) and after it (plus the text index built the way `index_logs` does): bytes
    per observation and insert rate of each, unredacted."""
    old_insert = ("INSERT INTO observations (id, run_id, target, container, container_id, at_ns, kind, "
                  "status, seq, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
    results = {}
    for name in ("before", "after"):
        path = tmp / f"{name}.db"
        conn = sqlite3.connect(path, isolation_level=None)
        if name == "before":
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
            for script in MIGRATIONS[:2]:
                for statement in split_statements(script):
                    conn.execute(statement)
        else:
            migrate(conn)
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        insert_s = 0.0
        batch: list[tuple] = []

        def flush() -> float:
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(old_insert if name == "before" else _INSERT_OBS, batch)
            conn.execute("COMMIT")
            batch.clear()
            return time.perf_counter() - started

        for i, (run, obs) in enumerate(night(count), 1):
            if name == "before":
                kind = str(obs.kind)
                batch.append((i, run + 1, obs.target, obs.container,
                              (getattr(obs, "container_id", None) or None) if kind in ("event", "snapshot") else None,
                              obs.at_ns, kind, obs.status if kind == "event" else
                              ("ok" if obs.ok else "fail") if kind == "probe" else None,
                              obs.seq if kind == "log" else None, obs_to_json(obs)))
            else:
                batch.append(observation_row(obs, i, run + 1, None))
            if len(batch) == 1000:
                insert_s += flush()
        if batch:
            insert_s += flush()
        index_s = 0.0
        if name == "after":
            started = time.perf_counter()
            last = conn.execute("SELECT max(id) FROM observations").fetchone()[0]
            for low in range(0, last, 20_000):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO log_fts (rowid, line) SELECT id, json_extract(data, '$.line') "
                             "FROM observations NOT INDEXED WHERE id > ? AND id <= ? AND kind = 'log'",
                             (low, low + 20_000))
                conn.execute("COMMIT")
            index_s = time.perf_counter() - started
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = conn.execute("SELECT count(*) FROM observations").fetchone()[0]
        fts = conn.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name LIKE 'log_fts%'").fetchone()[0]
        conn.close()
        size = os.path.getsize(path)
        results[name] = {"bytes_per_obs": size / rows, "fts_bytes_per_obs": fts / rows,
                         "insert_rows_per_s": rows / insert_s, "index_rows_per_s": rows / index_s if index_s else 0}
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return results


# ---------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Median seconds of `rounds` calls, and the last call's result."""
    (seconds, result), = compare({"": fn}, rounds).values()
    return seconds, result


def compare(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, Any]]:
    """Median seconds of each function over `rounds` rounds, interleaved (machine noise hits
    them alike), and each one's last result."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (median(times[name]), results[name]) for name in fns}


def raw_rows(conn: sqlite3.Connection, run_id: int) -> Iterator[tuple]:
    """One run's observations as raw sqlite3 reads them, in id order, a page at a time."""
    cursor = conn.execute("SELECT id, target, container, container_id, at_ns, kind, status, seq, is_error, data "
                          "FROM observations WHERE run_id = ? ORDER BY id", (run_id,))
    while page := cursor.fetchmany(1000):
        yield from page


def drain(rows) -> int:
    n = 0
    for _ in rows:
        n += 1
    return n


def raw_connection(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only = 1")
    return conn


def fetchmany_all(conn: sqlite3.Connection, sql: str, params: tuple, size: int = 5000) -> int:
    cursor = conn.execute(sql, params)
    n = 0
    while True:
        rows = cursor.fetchmany(size)
        if not rows:
            return n
        n += len(rows)


def old_pages(conn: sqlite3.Connection, since: int, until: int, page: int = 5000) -> int:
    """The paging the reader did before: a start bound and a row-value keyset."""
    n = 0
    after = None
    while True:
        where, args = ["at_ns >= ?", "at_ns < ?"], [since, until]
        if after is not None:
            where.append("(at_ns, id) > (?, ?)")
            args += after
        rows = conn.execute(f"SELECT {', '.join(q.OBSERVATION_COLUMNS)} FROM observations "
                            f"WHERE {' AND '.join(where)} ORDER BY at_ns, id LIMIT ?", [*args, page]).fetchall()
        n += len(rows)
        if len(rows) < page:
            return n
        after = (rows[-1][4], rows[-1][0])


def size_report(db: Path, count: int) -> tuple[float, list[tuple[str, float]]]:
    conn = raw_connection(db)
    try:
        pages = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    finally:
        conn.close()
    total = os.path.getsize(db) + (os.path.getsize(f"{db}-wal") if Path(f"{db}-wal").exists() else 0)
    return total / count, [(name, size / count) for name, size in pages if size / count >= 0.5]


async def prune_while_writing(db: Path, before_ns: int) -> dict[str, float]:
    """Run `maintain` with a retention that makes everything before `before_ns` old, while
    another task adds a row every 2 ms and flushes every 50 rows, until the old rows are
    gone: the prune rate, the slowest maintenance step and the slowest flush."""
    writer = await StoreWriter.open(db, [])
    keep_ns = 3600 * S
    flushes: list[float] = []
    steps: list[float] = []
    real_prune = writer.prune

    async def timed_prune(*args: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        try:
            return await real_prune(*args, **kwargs)
        finally:
            steps.append(time.perf_counter() - started)

    writer.prune = timed_prune  # type: ignore[method-assign]
    conn = raw_connection(db)
    ((old,),) = conn.execute("SELECT count(*) FROM observations WHERE at_ns < ?", (before_ns,)).fetchall()
    maintenance = asyncio.create_task(writer.maintain(keep_ns, interval=0.05,
                                                      now_ns=lambda: before_ns + keep_ns))
    start = time.perf_counter()
    try:
        i = 0
        while conn.execute("SELECT count(*) FROM observations WHERE at_ns < ?", (before_ns,)).fetchone()[0]:
            for _ in range(50):
                writer.add(LogObs("node9", "live", T0 + FULL_SECONDS * S + i, f"live line {i}", seq=i))
                i += 1
                await asyncio.sleep(0.002)
            started = time.perf_counter()
            await writer.flush()
            flushes.append(time.perf_counter() - started)
        seconds = time.perf_counter() - start
    finally:
        conn.close()
        await writer.close()
        await maintenance
    return {"pruned": old, "prune_s": seconds, "flushes": len(flushes),
            "flush_max_ms": max(flushes, default=0) * 1000,
            "flush_median_ms": median(flushes) * 1000 if flushes else 0,
            "step_max_ms": max(steps, default=0) * 1000, "steps": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~200k observations (< 1 min)")
    parser.add_argument("--count", type=int, default=None, help="observations (default 5,000,000)")
    parser.add_argument("--rounds", type=int, default=None, help="timings per figure (median)")
    parser.add_argument("--dir", default=None, help="where to put the store (e.g. /dev/shm)")
    parser.add_argument("--db", default=None, help="use (or build) this store file; it is kept")
    parser.add_argument("--no-prune", action="store_true", help="skip the retention figure")
    parser.add_argument("--no-before", action="store_true",
                        help="skip the schema comparison (the night again, before and after migration 3)")
    args = parser.parse_args()
    count = args.count or (200_000 if args.quick else FULL)
    rounds = args.rounds or 3
    tmp = Path(tempfile.mkdtemp(prefix="bench-morning-", dir=args.dir))
    db = Path(args.db) if args.db else tmp / "night.db"
    try:
        built: dict[str, float] = {}
        if not db.exists():
            built = asyncio.run(build(db, count))
            print(f"  built {built['written']} observations in {built['ingest_s']:.1f} s "
                  f"({built['written'] / built['ingest_s']:.0f} obs/s through StoreWriter, `maintain` "
                  f"beside it); text index: {built['index_steps']} steps, {built['index_s']:.1f} s in all "
                  f"({built['written'] / max(built['index_s'], 1e-9):.0f} ids/s), slowest step "
                  f"{built['index_step_max_ms']:.0f} ms, caught up {built['caught_up_s']:.1f} s after the "
                  "last commit")
        run_measurements(db, count, rounds, built, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_measurements(db: Path, count: int, rounds: int, built: dict, args, tmp: Path) -> None:
    raw = raw_connection(db)
    reader = StoreReader(db)
    stored = raw.execute("SELECT count(*), min(at_ns), max(at_ns) FROM observations").fetchone()
    count, first_ns, last_ns = stored
    span = last_ns - first_ns
    hour = min(3600 * S, span // 10)
    since = first_ns + span // 2
    until = since + hour
    print(f"  {count} observations over {span / S / 3600:.2f} h; window {hour / S / 60:.1f} min; "
          f"{machine_line()}")
    figures: dict[str, Any] = {"obs": count}

    # one container over one hour: the query module vs the raw indexed SELECT
    spec = q.SUBJECTS["logs"]
    columns = ", ".join(expr for _, expr in spec.columns)
    raw_sql = (f"SELECT {columns} FROM observations INDEXED BY observations_target_container_at "
               "WHERE target = ? AND container = ? AND kind = 'log' AND at_ns >= ? AND at_ns < ? "
               "ORDER BY at_ns, id")
    args_ = ("node1", "bitcoind", since, until)
    filters = q.Filters(target="node1", container="bitcoind", since_ns=since, until_ns=until)
    got = compare({
        "raw": lambda: drain(raw.execute(raw_sql, args_)),
        "dicts": lambda: drain(reader.select("logs", filters)),
        "tuples": lambda: drain(reader.select_rows("logs", filters)[1]),
    }, rounds * 3)
    (t_raw, n_raw), (t_dicts, n_q), (t_tuples, _) = got.values()
    assert n_q == n_raw, (n_q, n_raw)
    figures["container_hour_ratio"] = t_dicts / t_raw
    print(f"  container_hour: {n_raw} rows; raw indexed SELECT {t_raw * 1e3:.1f} ms, query dicts "
          f"{t_dicts * 1e3:.1f} ms ({t_dicts / t_raw:.2f}x), query tuples {t_tuples * 1e3:.1f} ms "
          f"({t_tuples / t_raw:.2f}x)  [goal <= 1.5x]")
    container_only = q.Filters(container="bitcoind", since_ns=since, until_ns=until)
    t_ctr, n_ctr = timed(lambda: drain(reader.select("logs", container_only)), rounds)
    print(f"  container without target: {n_ctr} rows in {t_ctr * 1e3:.1f} ms (both targets, merged)")

    # a window in time order: the reader vs one raw cursor's fetchmany
    obs_cols = ", ".join(q.OBSERVATION_COLUMNS)
    window_sql = f"SELECT {obs_cols} FROM observations WHERE at_ns >= ? AND at_ns < ? ORDER BY at_ns, id"
    got = compare({
        "raw": lambda: fetchmany_all(raw, window_sql, (since, until)),
        "reader": lambda: drain(reader.observation_rows(since_ns=since, until_ns=until)),
        "old": lambda: old_pages(raw, since, until),
    }, rounds)
    (t_raw_w, n_w), (t_reader_w, n_rw), (t_old_w, n_ow) = got.values()
    assert n_w == n_rw == n_ow, (n_w, n_rw, n_ow)
    figures["window_ratio"] = t_raw_w / t_reader_w
    print(f"  window: {n_w} rows; raw fetchmany {t_raw_w * 1e3:.0f} ms, reader {t_reader_w * 1e3:.0f} ms "
          f"({t_raw_w / t_reader_w:.2f}x of raw) [goal >= 0.8x]; old paging {t_old_w * 1e3:.0f} ms "
          f"({t_raw_w / t_old_w:.2f}x)")
    all_sql = f"SELECT {obs_cols} FROM observations WHERE at_ns >= ? ORDER BY at_ns, id"
    got = compare({"raw": lambda: fetchmany_all(raw, all_sql, (first_ns,)),
                   "reader": lambda: drain(reader.observation_rows(since_ns=first_ns))},
                  1 if count > 10**6 else rounds)
    (t_raw_all, _), (t_reader_all, _) = got.values()
    figures["store_ratio"] = t_raw_all / t_reader_all
    print(f"  whole store: raw fetchmany {t_raw_all:.2f} s, reader {t_reader_all:.2f} s "
          f"({t_raw_all / t_reader_all:.2f}x of raw)")
    t_rec, _ = timed(lambda: drain(reader.observation_records(since_ns=since, until_ns=until)), 1)
    t_arr, n_arr = timed(lambda: drain(reader.arrival_records(since_ns=since, until_ns=until)), 1)
    t_lean, _ = timed(lambda: drain(reader.arrival_records(since_ns=since, until_ns=until, lean_logs=True)), 1)
    print(f"  rebuilt observations per row: observation_records {t_rec / n_w * 1e6:.2f} us, "
          f"arrival_records {t_arr / n_arr * 1e6:.2f} us, lean {t_lean / n_arr * 1e6:.2f} us "
          f"(raw fetchmany {t_raw_w / n_w * 1e6:.2f} us)")

    # error lines per container
    err_sql = ("SELECT target, container, count(*) FROM observations INDEXED BY observations_log_errors "
               "WHERE kind = 'log' AND is_error = 1 GROUP BY target, container")
    got = compare({"raw": lambda: raw.execute(err_sql).fetchall(),
                   "reader": lambda: reader.error_line_counts()}, rounds * 3)
    (t_err_raw, err_raw), (t_err, err) = got.values()
    assert {(t, c): n for t, c, n in err_raw} == err, "error counts differ"
    t_err_json, _ = timed(lambda: raw.execute(
        "SELECT target, container, count(*) FROM observations WHERE kind = 'log' "
        "AND json_extract(data, '$.is_error') GROUP BY target, container").fetchall(), 1)
    t_err_w, _ = timed(lambda: reader.error_line_counts(since_ns=since, until_ns=until), rounds)
    figures["errors_ratio"] = t_err / t_err_raw
    print(f"  errors per container ({sum(err.values())} lines): raw partial index {t_err_raw * 1e3:.1f} ms, "
          f"reader {t_err * 1e3:.1f} ms ({t_err / t_err_raw:.2f}x) [goal <= 2x]; one window "
          f"{t_err_w * 1e3:.1f} ms; JSON scan (before) {t_err_json * 1e3:.0f} ms")

    # text search
    grep = q.Filters(grep=PHRASE)
    t_grep, n_grep = timed(lambda: drain(reader.select("logs", grep)), rounds)
    t_fts, n_fts = timed(lambda: drain(raw.execute(
        "SELECT id, at_ns, json_extract(data, '$.line') FROM observations WHERE id IN (SELECT rowid FROM log_fts "
        "WHERE log_fts MATCH ?) ORDER BY at_ns, id", ('"connection refused"',))), rounds)
    t_like, n_like = timed(lambda: drain(raw.execute(
        "SELECT id, at_ns, data FROM observations WHERE kind = 'log' AND data LIKE ? ORDER BY at_ns, id",
        (f"%{PHRASE}%",))), 1)
    t_word, n_word = timed(lambda: drain(reader.select("logs", q.Filters(grep="refused"))), 1)
    t_re, n_re = timed(lambda: drain(reader.select("logs", q.Filters(grep=r"refused to \d+\.0\.0\.1"))), 1)
    figures["fts_s"] = t_grep
    figures["like_s"] = t_like
    print(f"  search {PHRASE!r}: query grep {t_grep * 1e3:.0f} ms ({n_grep} rows), raw FTS5 "
          f"{t_fts * 1e3:.0f} ms ({n_fts}), LIKE over data {t_like * 1e3:.0f} ms ({n_like}); "
          f"one word 'refused' (scan) {t_word * 1e3:.0f} ms ({n_word}); regex 'refused to \\d+...' "
          f"{t_re * 1e3:.0f} ms ({n_re})")

    # bytes per observation
    per_obs, parts = size_report(db, count)
    figures["bytes_per_obs"] = per_obs
    print(f"  bytes per observation: {per_obs:.0f} (file {os.path.getsize(db) / 2**20:.0f} MiB): "
          + ", ".join(f"{name} {size:.0f}" for name, size in parts))

    # replay and report helpers
    runs = reader.runs()
    t_run, n_run = timed(lambda: drain(reader.select("observations", q.Filters(run_id=runs[-1].id, limit=100))),
                         rounds)
    t_run_old, _ = timed(lambda: raw.execute(
        "SELECT id FROM observations NOT INDEXED WHERE run_id = ? ORDER BY at_ns, id LIMIT 100",
        (runs[-1].id,)).fetchall(), 1)
    t_snap, snaps = timed(lambda: reader.last_snapshots_before(until), rounds)
    t_counts, counts = timed(lambda: reader.container_counts(since_ns=first_ns), rounds)
    t_first, _ = timed(lambda: next(reader.arrival_records(run_id=runs[-1].id)), rounds)
    print(f"  first page of run {runs[-1].id}: {t_run * 1e3:.1f} ms (without its index: "
          f"{t_run_old * 1e3:.0f} ms); first arrival record of it {t_first * 1e3:.1f} ms; "
          f"last snapshots before a time: {len(snaps)} in {t_snap * 1e3:.1f} ms; container counts "
          f"(deaths, changes, errors) for the night: {len(counts)} containers in {t_counts * 1e3:.0f} ms")
    # replay through the machines, and the report of the night, against a raw scan of the rows
    night_runs = [run.id for run in runs]
    t_scan, n_scan = timed(lambda: sum(drain(raw_rows(raw, run_id)) for run_id in night_runs), 1)
    t_replay, n_replay = timed(lambda: sum(replay_verb(reader, run_id=run_id).observations
                                           for run_id in night_runs), 1)
    figures["replay_obs_per_s"] = n_replay / t_replay
    figures["replay_ratio"] = (n_replay / t_replay) / (n_scan / t_scan)
    t_report, pages = timed(lambda: [report_module.render(report_module.build(reader, run_id), "html")
                                     for run_id in night_runs], 1)
    figures["report_s"] = t_report
    print(f"  replay of the night's {len(night_runs)} runs through fresh machines: {n_replay} observations in "
          f"{t_replay:.1f} s = {n_replay / t_replay:.0f} obs/s (goal >= 100,000), "
          f"{figures['replay_ratio']:.2f}x a raw scan of the same rows ({n_scan / t_scan:.0f} rows/s; goal >= 0.33); "
          f"the HTML report of each run: {t_report:.2f} s in all (goal < 5 s), {sum(map(len, pages)) // 1024} KiB")
    reader.close()
    raw.close()

    if not args.no_prune:
        copy = tmp / "prune.db"
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").exists():
                shutil.copy(f"{db}{suffix}", f"{copy}{suffix}")
        os.sync()  # else the first checkpoint's fsync writes the whole fresh copy (~0.4 s at 5M)
        pruned = asyncio.run(prune_while_writing(copy, first_ns + span // 10))
        figures["prune_rows_per_s"] = pruned["pruned"] / pruned["prune_s"]
        figures["flush_max_ms"] = pruned["flush_max_ms"]
        print(f"  retention: pruned {pruned['pruned']} rows (the oldest tenth) in {pruned['prune_s']:.1f} s "
              f"({pruned['pruned'] / pruned['prune_s']:.0f} rows/s) by `maintain` while writing; "
              f"{pruned['steps']} steps, slowest {pruned['step_max_ms']:.0f} ms; {pruned['flushes']} "
              f"flushes, median {pruned['flush_median_ms']:.1f} ms, slowest {pruned['flush_max_ms']:.1f} ms")

    if not args.no_before:
        compared = schema_before_and_after(tmp, count)
        before, after = compared["before"], compared["after"]
        figures["bytes_per_obs_before"] = before["bytes_per_obs"]
        print(f"  schema, raw executemany of the same night: before migration 3 {before['bytes_per_obs']:.0f} "
              f"bytes/obs, {before['insert_rows_per_s']:.0f} rows/s; after {after['bytes_per_obs']:.0f} "
              f"bytes/obs of which text index {after['fts_bytes_per_obs']:.0f}, "
              f"{after['insert_rows_per_s']:.0f} rows/s (+ text index {after['index_rows_per_s']:.0f} rows/s)")

    if built:
        figures["ingest_obs_per_s"] = built["written"] / built["ingest_s"]
        figures["index_ids_per_s"] = built["written"] / max(built["index_s"], 1e-9)
        figures["index_step_max_ms"] = built["index_step_max_ms"]
    print(summary("morning", **figures))


if __name__ == "__main__":
    main()
