"""The SQLite store on real files: schema, modes, idempotence, redaction, readers, cancellation."""

from __future__ import annotations

from dataclasses import replace

import asyncio
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from machines.observations import ActionObs, AgentObs, EventObs, LogObs, ProbeObs, SnapshotObs
from store.redact import DEFAULT_PATTERNS
from store import (
    LATEST_VERSION,
    NoRun,
    NoStore,
    NotAStore,
    QueryRejected,
    StoreReader,
    StoreVersionError,
    StoreWriteFailed,
    StoreWriter,
)

# the default redaction patterns (what agent.config.RedactionConfig uses)
PATTERNS = list(DEFAULT_PATTERNS)
BASE = 1_714_564_800_000_000_000
CID = "a" * 64


def run(coro):
    return asyncio.run(coro)


def event(at_ns: int, status: str = "start", container: str = "bitcoind", cid: str = CID,
          target: str = "node1") -> EventObs:
    return EventObs(target, container, at_ns, cid, status, image="localhost/tb:latest",
                    attributes=(("name", container),))


def log(i: int, line: str | None = None, container: str = "bitcoind", target: str = "node1") -> LogObs:
    return LogObs(target, container, BASE + i, line if line is not None else f"line {i}")


@dataclass(frozen=True)
class Change:
    """Shaped like machines.container.StateChange (duck typing, as the writer expects)."""

    target: str
    container: str
    at_ns: int
    from_state: str
    to_state: str
    cause: str
    obs_kind: str
    contradiction: bool = False


def raw(path: Path, sql: str, params=()) -> list[tuple]:
    """Plain SQL against the file, the way outside checks read it."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- schema and migrations ------------------------------------------------------------------


def test_migrations_applied_once_and_recorded(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def open_close() -> None:
        async with StoreWriter.open(db, []):
            pass

    run(open_close())
    first = raw(db, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
    assert [v for v, _ in first] == list(range(1, LATEST_VERSION + 1))
    run(open_close())
    assert raw(db, "SELECT version, applied_at FROM schema_migrations ORDER BY version") == first

    columns = {table: {row[1] for row in raw(db, f"PRAGMA table_info({table})")}
               for table in ("runs", "observations", "changes", "findings", "experiments")}
    assert {"id", "command", "targets", "started_ns", "ended_ns", "verdict", "config"} <= columns["runs"]
    assert {"id", "run_id", "target", "container", "container_id", "at_ns", "kind", "status",
            "data"} <= columns["observations"]
    assert {"id", "observation_id", "run_id", "target", "container", "at_ns", "from_state",
            "to_state", "cause", "contradiction"} <= columns["changes"]
    assert {"id", "run_id", "target", "container", "rule", "severity", "message", "cause", "fix",
            "evidence", "at_ns"} <= columns["findings"]
    assert {"id", "run_id", "kind", "subject", "started_ns", "ended_ns", "verdict",
            "steps"} <= columns["experiments"]
    indexes = {row[1]: row for row in raw(db, "PRAGMA index_list(observations)")}
    assert indexes["observations_event_key"][2] == 1  # unique
    assert indexes["observations_event_key"][4] == 1  # partial
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]


def test_newer_schema_is_refused_by_writer_and_reader(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def open_close() -> None:
        async with StoreWriter.open(db, []):
            pass

    run(open_close())
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'later')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreVersionError, match="newer podwarden"):
        run(open_close())
    with pytest.raises(StoreVersionError):
        StoreReader(db)


def test_not_a_store_and_no_store(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    with pytest.raises(NoStore) as info:
        StoreReader(missing)
    assert str(missing) in str(info.value) and "podwarden watch" in str(info.value)

    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a database, just a long enough text file " * 20)
    with pytest.raises(NotAStore, match=str(junk)):
        StoreReader(junk)

    async def open_junk() -> None:
        async with StoreWriter.open(junk, []):
            pass

    with pytest.raises(NotAStore):
        run(open_junk())


# -- files ------------------------------------------------------------------------------


def test_files_are_0600_even_with_a_loose_umask(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    old = os.umask(0o002)
    try:
        async def write() -> dict[str, int]:
            async with StoreWriter.open(db, []) as writer:
                writer.add(log(1))
                await writer.flush()
                return {suffix: stat.S_IMODE(os.stat(f"{db}{suffix}").st_mode)
                        for suffix in ("", "-wal", "-shm", "-writer.lock")}

        modes = run(write())
    finally:
        os.umask(old)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600, "-writer.lock": 0o600}
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_two_writers_share_a_file(tmp_path: Path) -> None:
    """A second writer of a file another writer has open writes into it (no StoreLocked)."""
    db = tmp_path / "pw.db"

    async def two() -> list[int]:
        async with StoreWriter.open(db, []) as first:
            async with StoreWriter.open(db, []) as second:
                ids = [first.add(log(1)), second.add(log(2)), first.add(log(3))]
                await second.flush()
            await first.flush()
        return ids

    ids = run(two())
    assert len(set(ids)) == 3 and ids[0] < ids[2]
    assert sorted(r[0] for r in raw(db, "SELECT id FROM observations")) == sorted(ids)


def test_same_event_twice_is_one_row_and_other_keys_are_not(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> list[int]:
        async with StoreWriter.open(db, []) as writer:
            first = writer.add(event(BASE))
            again = writer.add(event(BASE))
            await writer.flush()
            after_flush = writer.add(event(BASE))
            other_status = writer.add(event(BASE, "died"))
            other_time = writer.add(event(BASE + 1))
            other_container = writer.add(event(BASE, cid="b" * 64))
            # two identical lines in one stamp are two lines (their seq differs); the same
            # line read twice (same seq) is one
            same_line_twice = [writer.add(replace(log(1, "same"), seq=0)),
                               writer.add(replace(log(1, "same"), seq=1)),
                               writer.add(replace(log(1, "same"), seq=1))]
            return [first, again, after_flush, other_status, other_time, other_container,
                    *same_line_twice]

    ids = run(write())
    assert ids[0] == ids[1] == ids[2]
    assert len(set(ids[2:])) == len(ids[2:])  # logs are never deduplicated
    rows = raw(db, "SELECT id, status, at_ns FROM observations WHERE kind = 'event' ORDER BY id")
    assert rows == [(ids[0], "start", BASE), (ids[3], "died", BASE), (ids[4], "start", BASE + 1),
                    (ids[5], "start", BASE)]
    assert raw(db, "SELECT seq FROM observations WHERE kind = 'log' ORDER BY id") == [(0,), (1,)]


def test_backfill_across_sessions_is_idempotent_and_changes_follow(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def session(n: int) -> tuple[int, int]:
        async with StoreWriter.open(db, []) as writer:
            obs_id = writer.add(event(BASE, "died"))  # the backfill replays a stored event
            writer.add(event(BASE + n * 10, "start"))
            change_id = writer.add_change(
                Change("node1", "bitcoind", BASE, "running", "exited", f"died (session {n})", "event"),
                obs_id)
            return obs_id, change_id

    first_id, _ = run(session(1))
    second_id, _ = run(session(2))
    assert second_id != first_id  # this writer could not know the row before the commit
    assert raw(db, "SELECT count(*) FROM observations WHERE status = 'died'") == [(1,)]
    # ...but the change it recorded points at the stored row, not at the refused id.
    assert raw(db, "SELECT observation_id, cause FROM changes ORDER BY id") == [
        (first_id, "died (session 1)"), (first_id, "died (session 2)")]
    assert raw(db, "SELECT count(*) FROM changes c LEFT JOIN observations o "
                   "ON o.id = c.observation_id WHERE o.id IS NULL") == [(0,)]


def test_ids_returned_by_add_are_the_stored_ids(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    observations = [
        event(BASE), log(2, "hello"), SnapshotObs("node1", "lnd", BASE + 3, True, CID, "running"),
        ProbeObs("node1", "lnd", BASE + 4, "rpc", "exec", False, 1.5, "boom"),
        ActionObs("node1", "lnd", BASE + 5, "restart", "experiment 1"),
        AgentObs("node1", "", BASE + 6, "connected"),
    ] * 3
    # the same line three times in one stamp: three lines, told apart by their place
    observations = [replace(obs, seq=index) if isinstance(obs, LogObs) else obs
                    for index, obs in enumerate(observations)]

    async def write() -> tuple[int, list[int]]:
        async with StoreWriter.open(db, [], batch_size=4) as writer:
            run_id = await writer.start_run("watch", ["node1"], {})
            return run_id, [writer.add(obs, run_id) for obs in observations]

    run_id, ids = run(write())
    with StoreReader(db) as reader:
        stored = {rec.id: rec for rec in reader.observation_records()}
    for obs_id, obs in zip(ids, observations):
        assert stored[obs_id].obs == obs
        assert stored[obs_id].run_id == run_id
    assert len(stored) == len(observations) - 2  # the event twice more: deduplicated
    assert raw(db, "SELECT status FROM observations WHERE kind = 'probe'")[0] == ("fail",)


def test_changes_reference_their_observations(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> dict[int, int]:
        async with StoreWriter.open(db, [], batch_size=3) as writer:
            links = {}
            for i, status in enumerate(["create", "start", "died", "start"]):
                obs_id = writer.add(event(BASE + i, status))
                change_id = writer.add_change(
                    Change("node1", "bitcoind", BASE + i, "x", status, f"event {status}", "event",
                           contradiction=status == "died"), obs_id)
                links[change_id] = obs_id
            return links

    links = run(write())
    rows = raw(db, "SELECT c.id, o.id, o.status, c.to_state, c.contradiction FROM changes c "
                   "JOIN observations o ON o.id = c.observation_id ORDER BY c.id")
    assert {c: o for c, o, *_ in rows} == links
    assert all(status == to for _, _, status, to, _ in rows)
    with StoreReader(db) as reader:
        changes = list(reader.changes(container="bitcoind"))
    assert [c.to_state for c in changes] == ["create", "start", "died", "start"]
    assert [c.contradiction for c in changes] == [False, False, True, False]
    assert changes[0].obs_kind == "event"


# -- redaction ----------------------------------------------------------------------------


SECRETS = ["hunter2rpc", "xyzBearerTok3n", "0201036c6e640258030a10" + "f00d" * 10 + "cafe" * 1,
           "s3cretLabel", "stepsecret9"]
MACAROON = "deadbeef" * 8  # 64 hex


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    lines = [
        "bitcoind: rpcpassword=hunter2rpc loaded",
        "GET /v1/getinfo Authorization: Bearer xyzBearerTok3n",
        f"lnd: macaroon {MACAROON} accepted",
        "RPCPASSWORD : hunter2rpc",
    ]
    seen: dict[str, bytes] = {}

    async def write() -> None:
        async with StoreWriter.open(db, PATTERNS) as writer:
            run_id = await writer.start_run("watch", ["node1"], {"redaction": {"patterns": PATTERNS}})
            for i, line in enumerate(lines):
                writer.add(log(i, line), run_id)
            writer.add(ProbeObs("node1", "lnd", BASE, "rpc", "http", False,
                                excerpt=f'{{"macaroon": "{MACAROON}"}}',
                                detail="Authorization: Basic xyzBearerTok3n"), run_id)
            writer.add(ActionObs("node1", "lnd", BASE, "exec", "bitcoin-cli -rpcpassword=hunter2rpc"))
            writer.add(EventObs("node1", "lnd", BASE, CID, "start",
                                attributes=(("env", "password=s3cretLabel"),)))
            writer.add_finding(run_id, target="node1", container="lnd", rule="auth", severity="error",
                               message="healthcheck failed: rpcpassword=hunter2rpc rejected",
                               cause="password: s3cretLabel", fix="set the password",
                               evidence=["Authorization: Bearer xyzBearerTok3n",
                                         {"line": f"macaroon={MACAROON}"}], at_ns=BASE)
            exp = writer.add_experiment(run_id, kind="restart", subject="lnd", started_ns=BASE,
                                        steps=[{"cmd": "curl -H 'Authorization: Bearer xyzBearerTok3n'"}])
            writer.update_experiment(exp, steps=[{"out": "password=stepsecret9"}], verdict="pass",
                                     ended_ns=BASE + 1)
            writer.add_change(Change("node1", "lnd", BASE, "running", "exited",
                                     "log: rpcpassword=hunter2rpc", "log"), None)
            await writer.flush()
            for suffix in ("", "-wal"):
                seen[f"open{suffix}"] = Path(f"{db}{suffix}").read_bytes()

    run(write())
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            seen[f"closed{suffix}"] = Path(f"{db}{suffix}").read_bytes()
    assert seen["open-wal"], "the WAL held the commits while the writer was open"
    for name, content in seen.items():
        for secret in SECRETS + [MACAROON]:
            assert secret.encode() not in content, (name, secret)

    with StoreReader(db) as reader:
        stored = [obs.line for obs in reader.observations(kind="log")]
        finding = reader.findings()[0]
        experiment = reader.experiments()[0]
        config = reader.runs()[0].config
    assert stored == ["bitcoind: rpcpassword=[REDACTED] loaded",
                      "GET /v1/getinfo Authorization: Bearer [REDACTED]",
                      "lnd: macaroon [REDACTED] accepted",
                      "RPCPASSWORD : [REDACTED]"]
    assert finding.message == "healthcheck failed: rpcpassword=[REDACTED] rejected"
    assert finding.evidence == ["Authorization: Bearer [REDACTED]", {"line": "macaroon=[REDACTED]"}]
    assert experiment.steps == [{"out": "password=[REDACTED]"}] and experiment.verdict == "pass"
    # the config is the user's own: stored as given (its redaction patterns must not be eaten)
    assert config == {"redaction": {"patterns": list(PATTERNS)}}


def test_redaction_without_groups_replaces_the_whole_match(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> None:
        async with StoreWriter.open(db, [r"\b[0-9a-f]{64}\b"]) as writer:
            writer.add(log(1, f"token {MACAROON} end"))
            writer.add(event(BASE))  # container ids are identifiers: never redacted

    run(write())
    with StoreReader(db) as reader:
        assert [o.line for o in reader.observations(kind="log")] == ["token [REDACTED] end"]
        assert next(reader.observations(kind="event")).container_id == CID


# -- readers --------------------------------------------------------------------------------


def test_reader_refuses_writes_and_several_statements(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> None:
        async with StoreWriter.open(db, []) as writer:
            writer.add(log(1))

    run(write())
    with StoreReader(db) as reader:
        for sql in ["DELETE FROM observations", "INSERT INTO runs (command, started_ns) VALUES ('x', 1)",
                    "DROP TABLE observations", "UPDATE observations SET target = 'x'",
                    "CREATE TABLE evil (x)", f"ATTACH DATABASE '{tmp_path / 'new.db'}' AS other",
                    "PRAGMA query_only = 0", "SELECT 1; DELETE FROM observations",
                    "SELEC nonsense", ""]:
            with pytest.raises(QueryRejected) as info:
                reader.query(sql)
            assert str(db) in str(info.value)
        with pytest.raises(QueryRejected, match="read-only"):
            reader.query("DELETE FROM observations")
        with pytest.raises(QueryRejected, match="one statement"):
            reader.query("SELECT 1; SELECT 2")
        columns, rows = reader.query("SELECT kind, count(*) AS n FROM observations WHERE target = ? "
                                     "GROUP BY kind", ["node1"])
        assert columns == ["kind", "n"] and rows == [("log", 1)]
        assert reader.query("SELECT 1 -- trailing comment\n;")[1] == [(1,)]
        with pytest.raises(NoRun, match="query runs"):
            reader.run(42)
    assert not (tmp_path / "new.db").exists()
    assert raw(db, "SELECT count(*) FROM observations") == [(1,)]


def test_reader_pages_across_many_rows_with_equal_times(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    containers = ["bitcoind", "lnd", "electrs"]
    # 12,000 rows; 7 share each at_ns, so page boundaries fall inside equal times; out of order.
    observations = [LogObs("node1" if i % 5 else "node2", containers[i % 3], BASE + (i // 7) * 3 % 5000,
                           f"line {i}", seq=i) for i in range(12_000)]

    async def write() -> list[int]:
        async with StoreWriter.open(db, []) as writer:
            return [writer.add(obs) for obs in observations]

    ids = run(write())
    expected = sorted(zip(ids, observations), key=lambda pair: (pair[1].at_ns, pair[0]))
    with StoreReader(db) as reader:
        got = list(reader.observation_records())
        assert [(r.id, r.obs) for r in got] == expected
        for filters in [dict(target="node2"), dict(container="lnd"),
                        dict(target="node1", container="electrs"), dict(kind="log", limit=5001),
                        dict(since_ns=BASE + 100, until_ns=BASE + 4000), dict(limit=10_001),
                        dict(kind="event")]:
            want = [pair for pair in expected if all(
                (getattr(pair[1], k) == v) if k in ("target", "container", "kind") else
                (pair[1].at_ns >= v if k == "since_ns" else pair[1].at_ns < v if k == "until_ns" else True)
                for k, v in filters.items())]
            if "limit" in filters:
                want = want[:filters["limit"]]
            assert [(r.id, r.obs) for r in reader.observation_records(**filters)] == want, filters
    with StoreReader(db, page_size=7) as small:
        assert [r.id for r in small.observation_records(container="lnd")] == [
            i for i, obs in expected if obs.container == "lnd"]


def test_event_count_and_backfill_helpers(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> tuple:
        async with StoreWriter.open(db, [], flush_interval=60) as writer:
            assert await writer.last_event_ns("node1") is None
            writer.add(event(BASE + 5, "start"))
            writer.add(event(BASE + 9, "health_status"))
            writer.add(event(BASE + 7, "died", target="node2"))
            writer.add(log(100))
            # Nothing committed yet (60 s interval): the helpers flush first.
            return (await writer.last_event_ns("node1"), await writer.last_event_ns("node2"),
                    await writer.event_keys_since("node1", BASE + 6))

    last1, last2, keys = run(write())
    assert (last1, last2) == (BASE + 9, BASE + 7)
    assert keys == {(CID, "health_status", BASE + 9)}
    with StoreReader(db) as reader:
        assert reader.event_count() == 3
        assert reader.event_count(target="node1") == 2
        assert reader.event_count(status="died") == 1
        assert reader.event_count(since_ns=BASE + 6, until_ns=BASE + 9) == 1


def test_runs_findings_and_experiments_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> tuple[int, int]:
        async with StoreWriter.open(db, []) as writer:
            run_id = await writer.start_run("experiment", ["node1", "node2"],
                                            {"soak": {"for": 300.0}}, started_ns=BASE)
            writer.add_finding(run_id, target="node1", container="electrs", rule="crashloop",
                               severity="error", message="electrs restarted 5 times",
                               cause="LOCK: Permission denied", fix="chown the volume",
                               evidence=[{"at_ns": BASE, "line": "LOCK: Permission denied"}],
                               at_ns=BASE + 2)
            exp = writer.add_experiment(run_id, kind="restart", subject="lnd", started_ns=BASE + 1,
                                        steps=[{"step": "kill"}])
            await writer.flush()
            writer.update_experiment(exp, steps=[{"step": "kill"}, {"step": "up"}], verdict="pass",
                                     ended_ns=BASE + 3)
            await writer.end_run(run_id, "fail", ended_ns=BASE + 4)
            return run_id, exp

    run_id, exp = run(write())
    with StoreReader(db) as reader:
        record = reader.run(run_id)
        assert (record.command, record.targets, record.started_ns, record.ended_ns, record.verdict,
                record.config, record.pid) == ("experiment", ("node1", "node2"), BASE, BASE + 4,
                                               "fail", {"soak": {"for": 300.0}}, os.getpid())
        assert reader.runs() == [record] and reader.last_run("experiment") == record
        assert reader.last_run("watch") is None
        (finding,) = reader.findings(run_id=run_id)
        assert (finding.rule, finding.severity, finding.cause, finding.fix, finding.evidence) == (
            "crashloop", "error", "LOCK: Permission denied", "chown the volume",
            [{"at_ns": BASE, "line": "LOCK: Permission denied"}])
        (experiment,) = reader.experiments(run_id=run_id)
        assert (experiment.id, experiment.verdict, experiment.ended_ns, experiment.steps) == (
            exp, "pass", BASE + 3, [{"step": "kill"}, {"step": "up"}])


# -- durability, integrity, cancellation -------------------------------------------------------


def integrity(db: Path) -> list[tuple]:
    return raw(db, "PRAGMA integrity_check")


def test_flush_makes_rows_visible_to_a_separate_reader(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> tuple[int, int]:
        async with StoreWriter.open(db, [], flush_interval=60, batch_size=10**6) as writer:
            for i in range(2500):
                writer.add(log(i))
            with StoreReader(db) as reader:
                before = reader.query("SELECT count(*) FROM observations")[1][0][0]
            await writer.flush()
            with StoreReader(db) as reader:  # its own read-only connection
                after = await asyncio.to_thread(lambda: sum(1 for _ in reader.observations()))
            return before, after

    assert run(write()) == (0, 2500)
    assert integrity(db) == [("ok",)]


def test_add_wait_bounds_the_queue(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> int:
        high = 0
        async with StoreWriter.open(db, [], flush_interval=60, batch_size=10**6,
                                    max_pending=100) as writer:
            for i in range(1000):
                await writer.add_wait(log(i))
                high = max(high, writer.pending)
        return high

    assert run(write()) <= 100
    assert raw(db, "SELECT count(*) FROM observations") == [(1000,)]


def _check_complete(db: Path, ids: list[int]) -> None:
    assert integrity(db) == [("ok",)]
    rows = raw(db, "SELECT id FROM observations ORDER BY id")
    assert [r[0] for r in rows] == sorted(ids)  # every row exactly once
    assert raw(db, "SELECT count(*), count(DISTINCT data) FROM observations") == [(len(ids), len(ids))]


def test_cancelling_a_flush_midway_commits_nothing_twice(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> list[int]:
        writer = await StoreWriter.open(db, [], flush_interval=60, batch_size=10**6)
        try:
            ids = [writer.add(log(i)) for i in range(30_000)]
            flushing = asyncio.create_task(writer.flush())
            await asyncio.sleep(0.005)  # the transaction is under way in aiosqlite's thread
            flushing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flushing
            ids += [writer.add(log(i)) for i in range(30_000, 30_100)]
            return ids
        finally:
            await writer.close()

    _check_complete(db, run(write()))


def test_cancelling_the_writer_task_midway_loses_and_doubles_nothing(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> list[int]:
        writer = await StoreWriter.open(db, [], flush_interval=60, batch_size=10**6)
        try:
            ids = [writer.add(log(i)) for i in range(30_000)]
            flushing = asyncio.create_task(writer.flush())
            await asyncio.sleep(0.005)
            writer._task.cancel()  # as a task group would on shutdown
            await asyncio.wait([writer._task])
            flushing.cancel()
            return ids
        finally:
            await writer.close()

    _check_complete(db, run(write()))


def test_close_completes_even_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> list[int]:
        writer = await StoreWriter.open(db, [], flush_interval=60, batch_size=10**6)
        ids = [writer.add(log(i)) for i in range(20_000)]
        closing = asyncio.create_task(writer.close())
        await asyncio.sleep(0.002)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        async with StoreWriter.open(db, []):  # the lock was released: close did finish
            pass
        return ids

    _check_complete(db, run(write()))


def test_a_failed_commit_stops_the_writer_with_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def write() -> None:
        writer = await StoreWriter.open(db, [], flush_interval=60)
        try:
            writer.add(log(1))
            await writer.flush()
            # A rogue second writer (one that ignored the lock) takes the next id.
            conn = sqlite3.connect(db)
            conn.execute("INSERT INTO observations (id, target, at_ns, kind) VALUES (2, 'x', 1, 'log')")
            conn.commit()
            conn.close()
            writer.add(log(2))
            with pytest.raises(StoreWriteFailed, match="UNIQUE constraint failed: observations.id"):
                await writer.flush()
            with pytest.raises(StoreWriteFailed):
                writer.add(log(3))
        finally:
            with pytest.raises(StoreWriteFailed):
                await writer.close()
        async with StoreWriter.open(db, []):  # closed and unlocked all the same
            pass

    run(write())
    assert integrity(db) == [("ok",)]
    assert raw(db, "SELECT id, target FROM observations ORDER BY id") == [(1, "node1"), (2, "x")]


def test_close_in_a_cancelled_anyio_scope_still_commits_and_closes(tmp_path: Path) -> None:
    import anyio

    db = tmp_path / "pw.db"

    async def watch_for_a_moment() -> list[int]:
        writer = await StoreWriter.open(db, [], flush_interval=60, batch_size=10**6)
        ids = [writer.add(log(i)) for i in range(20_000)]
        with anyio.move_on_after(0.01):  # `podwarden watch --for 10ms`
            try:
                await anyio.sleep(10)
            finally:
                await writer.close()  # runs inside the cancelled scope
        return ids

    ids = anyio.run(watch_for_a_moment)
    _check_complete(db, ids)
