"""The reading side of the store on real files: query subjects, paging, text search,
read-only user SQL, replay helpers, report counts, retention and the text index.

The query module plans on indexes, pages by keyset, merges branches and takes search
candidates from FTS5; every answer is checked against one naive SQL statement (no paging,
no index chosen, REGEXP in Python) over the same file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machines.observations import ActionObs, AgentObs, EventObs, LogObs, ProbeObs, SnapshotObs, obs_to_json
from store import QueryRejected, StoreReader, StoreWriter
from store import query as q
from store.schema import MIGRATIONS, migrate, split_statements

BASE = 1_714_564_800_000_000_000
CID = "c" * 64


def run(coro):
    return asyncio.run(coro)


def raw(path: Path, sql: str, params=()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def naive(db: Path, subject: str, filters: q.Filters) -> list[tuple]:
    """The reference: one plain SELECT with every filter in its WHERE clause."""
    spec = q.SUBJECTS[subject]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.create_function("regexp", 2, lambda p, t: None if t is None else int(bool(re.search(p, t))))
    where: list[str] = []
    params: list = []
    if spec.kind:
        where.append(f"kind = '{spec.kind}'")
    for name in ("target", "container", "kind", "status", "run_id"):
        values = getattr(filters, name)
        if values is None:
            continue
        values = (values,) if isinstance(values, (str, int)) else tuple(values)
        expr = spec.filters[name]
        predicate = expr if "?" in expr else f"{expr} = ?"
        where.append("(" + " OR ".join([predicate] * len(values)) + ")")
        params.extend(values)
    if filters.errors is not None:
        where.append("coalesce(is_error, 0) = ?")
        params.append(1 if filters.errors else 0)
    if filters.grep is not None:
        where.append("json_extract(data, '$.line') REGEXP ?")
        params.append(filters.grep)
    if filters.since_ns is not None:
        where.append(f"{spec.time} >= ?")
        params.append(filters.since_ns)
    if filters.until_ns is not None:
        where.append(f"{spec.time} < ?")
        params.append(filters.until_ns)
    order = "DESC" if filters.newest_first else ""
    columns = ", ".join(expr for _, expr in spec.columns)
    sql = (f"SELECT {columns} FROM {spec.table} WHERE {' AND '.join(where) or '1'} "
           f"ORDER BY {spec.time} {order}, id {order}")
    if filters.limit is not None:
        sql += f" LIMIT {filters.limit}"
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    positions = [(spec.names.index(name), decode) for name, decode in spec.decoders.items()]
    out = []
    for row in rows:
        values = list(row)
        for index, decode in positions:
            values[index] = decode(values[index])
        out.append(tuple(values))
    return out


async def write(db: Path, items: list, *, run_split: int | None = None, index_chunks: int | None = None,
                batch_size: int = 7) -> list[int]:
    """Write `items` (the first `run_split` in run 1, the rest in run 2); then index the log
    text in `index_chunks` steps of 3 ids (None: all of it)."""
    async with StoreWriter.open(db, [], batch_size=batch_size) as writer:
        first = await writer.start_run("watch", ["node1", "node2"], {}, started_ns=BASE)
        second = await writer.start_run("check", ["node1"], {}, started_ns=BASE + 1)
        ids = [writer.add(obs, first if run_split is None or i < run_split else second)
               for i, obs in enumerate(items)]
        await writer.flush()
        if index_chunks is None:
            while await writer.index_logs():
                pass
        else:
            for _ in range(index_chunks):
                await writer.index_logs(chunk=3)
        await writer.end_run(first, "pass", ended_ns=BASE + 10**12)
        return ids


# -- a night in miniature -----------------------------------------------------------------------

WORDS = ["connection", "refused", "Connection", "REFUSED", "xconnection", "refusedy", "LOCK",
         "Permission", "denied", "to", "peer", "127.0.0.1", "8332", "é", "naïve", "", "ERROR", "[ERR]",
         "height=870000", "0x2000", "abc1def", "\u0131d", "\u0130D", "id", "\u017fecret", "\u212aelvin"]
SEPARATORS = [" ", "  ", ": ", "-", "_", ".", "\t", "/", ""]
lines = st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)), max_size=6).map(
    lambda parts: "".join(word + sep for word, sep in parts))
targets = st.sampled_from(["node1", "node2"])
containers = st.sampled_from(["bitcoind", "lnd", "electrs"])
times = st.integers(0, 6).map(lambda t: BASE + t)  # few stamps: many ties at page boundaries

night_items = st.one_of(
    st.builds(LogObs, targets, containers, times, lines, st.sampled_from(["stdout", "stderr"]),
              st.booleans(), st.integers(0, 10**6)),
    st.builds(EventObs, targets, containers, times, st.sampled_from([CID, "d" * 64]),
              st.sampled_from(["start", "died", "health_status"]), st.none() | st.integers(0, 137),
              st.none() | st.sampled_from(["healthy", "unhealthy"]), st.just("img"),
              st.just((("name", "x"),))),
    st.builds(SnapshotObs, targets, containers, times, st.booleans(), st.sampled_from([CID, ""]),
              st.sampled_from(["running", "exited"])),
    st.builds(ProbeObs, targets, containers, times, st.sampled_from(["rpc", "http"]),
              st.sampled_from(["exec", "podman-healthcheck"]), st.booleans(), st.floats(0, 1000)),
    st.builds(ActionObs, targets, containers, times, st.sampled_from(["stop", "start"])),
    st.builds(AgentObs, targets, st.just(""), times, st.sampled_from(["connected", "lost"])),
)

GREPS = ["connection refused", "refused", "Connection refused", "(?i)connection refused", r"refused\b",
         "LOCK: Permission denied", "Permission", "to 127.0.0.1", r"refused to \d+", "é", "naïve ",
         r"^\[ERR\]", "denied$", r"x{2}", ".", "abc1def", "1def", "height=8", " to ", "0x", r"[ ](to|peer) ",
         "(?i) id ", "(?i) secret", "(?i) kelvin", "(?i)-Refused"]


def one_or_many(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | values | st.lists(values, min_size=1, max_size=2, unique=True)


@st.composite
def filter_sets(draw) -> tuple[str, q.Filters]:
    subject = draw(st.sampled_from(["logs", "logs", "logs", "events", "observations", "snapshots",
                                    "probes", "actions", "agent", "changes", "runs"]))
    spec = q.SUBJECTS[subject]
    values = {}
    if "target" in spec.filters:
        values["target"] = draw(one_or_many(targets))
    if "container" in spec.filters:
        values["container"] = draw(one_or_many(containers))
    if "run_id" in spec.filters:
        values["run_id"] = draw(st.none() | st.integers(1, 3))
    if "kind" in spec.filters and subject in ("observations", "logs", "probes"):
        values["kind"] = draw(st.none() | st.sampled_from(
            {"observations": ["log", "event", "snapshot"], "logs": ["stdout", "stderr"],
             "probes": ["exec", "podman-healthcheck"]}[subject]))
    if "status" in spec.filters and subject in ("events", "probes"):
        values["status"] = draw(st.none() | st.sampled_from(["died", "start", "ok", "fail"]))
    if subject == "logs":
        values["grep"] = draw(st.none() | st.sampled_from(GREPS))
        values["errors"] = draw(st.none() | st.booleans())
    since = draw(st.none() | times)
    until = draw(st.none() | times)
    return subject, q.Filters(since_ns=since, until_ns=until, limit=draw(st.none() | st.integers(0, 40)),
                              newest_first=draw(st.booleans()), **values)


def rounded(value):
    """Floats to 12 digits: SQLite writes JSON numbers with 15 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(night_items, min_size=1, max_size=80), st.data())
def test_query_subjects_give_exactly_what_naive_sql_gives(items: list, data) -> None:
    index_chunks = data.draw(st.none() | st.integers(0, 30), label="index_chunks")
    small_limits = data.draw(st.booleans(), label="small FTS limits")
    with tempfile.TemporaryDirectory(prefix="pw-query-") as tmp:
        db = Path(tmp) / "pw.db"
        run(write(db, items, run_split=len(items) // 2, index_chunks=index_chunks))
        saved = q.FTS_TAIL_LIMIT, q.FTS_CANDIDATE_LIMIT
        if small_limits:  # the other plans: no text index, or a tail too long for it
            q.FTS_TAIL_LIMIT, q.FTS_CANDIDATE_LIMIT = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
        try:
            for page_size in (1, 3, 5000):
                with StoreReader(db, page_size=page_size) as reader:
                    for _ in range(4):
                        subject, filters = data.draw(filter_sets(), label="query")
                        got = list(reader.select_rows(subject, filters)[1])
                        expected = naive(db, subject, filters)
                        assert got == expected, (subject, filters, page_size)
                        if page_size == 3:
                            names = q.SUBJECTS[subject].names
                            assert list(reader.select(subject, filters)) == [dict(zip(names, row)) for row in expected]
                            as_json = [json.loads(text) for text in q.json_lines(
                                reader._conn, str(db), subject, filters, page_size=page_size)]
                            assert rounded(as_json) == rounded([dict(zip(names, row)) for row in expected])
        finally:
            q.FTS_TAIL_LIMIT, q.FTS_CANDIDATE_LIMIT = saved


@settings(max_examples=400, deadline=None)
@given(lines, st.text(alphabet="abcdefrLOCK é0123456789:.-_ ", min_size=1, max_size=12), lines)
def test_fts_phrase_finds_every_line_that_contains_the_literal(before: str, literal: str, after: str) -> None:
    """The phrase a grep literal turns into never misses a line holding the literal."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)  # the real log_fts: same tokenizer
    text = before + literal + after
    conn.execute("INSERT INTO log_fts (rowid, line) VALUES (1, ?)", (text,))
    phrase = q.fts_phrase(literal)
    if phrase is not None:
        assert conn.execute("SELECT rowid FROM log_fts WHERE log_fts MATCH ?", (phrase,)).fetchall() == [(1,)], \
            (text, literal, phrase)


def test_fts_phrase_words() -> None:
    assert q.fts_phrase("connection refused") == '"refused" *'
    assert q.fts_phrase(" connection refused ") == '"connection refused"'
    assert q.fts_phrase("LOCK: Permission denied") == '"Permission denied" *'
    assert q.fts_phrase("refused") is None  # may sit inside a longer word: no word search finds it
    assert q.fts_phrase("to 127.0.0.1") is None  # digits are no words in the index
    assert q.fts_phrase("é refused") is None  # not ASCII: left to the scan
    assert q.fts_phrase(None) is None


# -- paging -------------------------------------------------------------------------------------


def tie_night() -> list:
    """1,000 log lines of two containers on two targets, 40 to a stamp, arriving out of order."""
    items = []
    for i in range(1000):
        stamp = BASE + (i // 40) * 7 % 101
        items.append(LogObs("node1" if i % 3 else "node2", "lnd" if i % 2 else "bitcoind", stamp,
                            f"line {i} {'connection refused' if i % 9 == 0 else 'ok'}", seq=i,
                            is_error=i % 9 == 0))
    return items


def test_pages_cross_equal_times_in_every_plan(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    run(write(db, tie_night(), index_chunks=100))  # a third indexed: candidates and a tail
    plans = [q.Filters(), q.Filters(container="lnd"), q.Filters(target="node2"),
             q.Filters(target="node1", container="bitcoind"), q.Filters(errors=True),
             q.Filters(run_id=1), q.Filters(grep="connection refused"), q.Filters(grep="line 1"),
             q.Filters(container=["lnd", "bitcoind"], since_ns=BASE + 10, until_ns=BASE + 90)]
    for page_size in (1, 7, 40, 41):
        with StoreReader(db, page_size=page_size) as reader:
            for filters in plans:
                for flip in (False, True):
                    for limit in (None, 1, 39, 40, 41, 333):
                        chosen = replace(filters, newest_first=flip, limit=limit)
                        got = list(reader.select_rows("logs", chosen)[1])
                        assert got == naive(db, "logs", chosen), (page_size, chosen)


def test_reader_rows_and_records_page_like_before(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    items = tie_night()
    ids = run(write(db, items))
    expected = sorted(zip(ids, items), key=lambda pair: (pair[1].at_ns, pair[0]))
    with StoreReader(db, page_size=13) as reader:
        assert [(r.id, r.obs) for r in reader.observation_records()] == expected
        assert [(r.id, r.obs) for r in reader.observation_records(container="lnd", since_ns=BASE + 20)] == [
            pair for pair in expected if pair[1].container == "lnd" and pair[1].at_ns >= BASE + 20]
        rows = list(reader.observation_rows(target="node2", limit=50))
        assert [row[0] for row in rows] == [i for i, obs in expected if obs.target == "node2"][:50]
        assert rows[0][1:6] == (1, "node2", rows[0][3], rows[0][4], "log")


def test_subject_columns_carry_the_observation(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    items = [LogObs("node1", "lnd", BASE, "boom: connection refused", "stderr", True, 12, resume=3),
             EventObs("node1", "lnd", BASE + 1, CID, "died", 137, None, "img", (("name", "lnd"),)),
             ProbeObs("node1", "lnd", BASE + 2, "rpc", "exec", False, 12.5, "ex", "dt"),
             ActionObs("node1", "lnd", BASE + 3, "stop", "exp 1", dry_run=True)]
    ids = run(write(db, items))
    with StoreReader(db) as reader:
        (log,) = reader.select("logs")
        assert log == {"id": ids[0], "run_id": 1, "target": "node1", "container": "lnd", "at_ns": BASE,
                       "stream": "stderr", "is_error": 1, "seq": 12, "line": "boom: connection refused"}
        (event,) = reader.select("events", status="died")
        assert (event["container_id"], event["exit_code"], event["attributes"]) == (CID, 137, {"name": "lnd"})
        (probe,) = reader.select("probes", status="fail")
        assert (probe["probe"], probe["latency_ms"], probe["excerpt"]) == ("rpc", 12.5, "ex")
        (action,) = reader.select("actions", kind="stop")
        assert (action["dry_run"], action["ok"]) == (1, 1)
        json.dumps(list(reader.select("runs")))  # JSON-ready, small tables' JSON parsed
        assert next(reader.select("runs"))["targets"] == ["node1", "node2"]
        with pytest.raises(QueryRejected, match="no target filter"):
            list(reader.select("experiments", target="node1"))
        with pytest.raises(QueryRejected, match="grep"):
            list(reader.select("events", grep="x"))
        with pytest.raises(QueryRejected, match="not a regular expression"):
            list(reader.select("logs", grep="(unclosed"))
        with pytest.raises(QueryRejected, match="no subject"):
            list(reader.select("nonsense"))


# -- user SQL ----------------------------------------------------------------------------------


def file_state(db: Path) -> str:
    digest = hashlib.sha256()
    for suffix in ("", "-wal"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_user_sql_only_reads(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    run(write(db, tie_night()[:50]))
    before = file_state(db)
    writes = ["DELETE FROM observations", "UPDATE observations SET target = 'x'",
              "INSERT INTO runs (command, started_ns) VALUES ('x', 1)",
              "REPLACE INTO store_state VALUES ('fts_indexed_upto', 0)",
              "WITH doomed AS (SELECT id FROM observations) DELETE FROM observations WHERE id IN doomed",
              "CREATE TABLE evil (x)", "CREATE TEMP TABLE scratch (x)", "CREATE INDEX i ON runs (pid)",
              "DROP TABLE observations", "ALTER TABLE runs ADD COLUMN x", "CREATE VIEW v AS SELECT 1",
              "UPDATE sqlite_master SET sql = 'x'", "DELETE FROM log_fts",
              "INSERT INTO log_fts (log_fts) VALUES ('optimize')", "VACUUM", "REINDEX", "ANALYZE",
              "BEGIN IMMEDIATE", "SAVEPOINT s"]
    with StoreReader(db) as reader:
        for sql in writes:
            with pytest.raises(QueryRejected) as info:
                reader.query(sql)
            message = str(info.value)
            assert str(db) in message and ("read-only" in message or "not allowed" in message), (sql, message)
        for sql in ["PRAGMA query_only = 0", "PRAGMA writable_schema = 1", "PRAGMA journal_mode = DELETE",
                    f"ATTACH DATABASE '{tmp_path / 'new.db'}' AS other"]:
            with pytest.raises(QueryRejected, match="not allowed"):
                reader.query(sql)
        # reads still work after refusals, REGEXP and FTS5 included, streamed or not
        columns, rows = reader.user_sql("SELECT id, json_extract(data, '$.line') AS line FROM observations "
                                          "WHERE json_extract(data, '$.line') REGEXP ? ORDER BY id", [r"line 1\d "])
        assert columns == ["id", "line"] and [line for _, line in rows] == [
            f"line {i} {'connection refused' if i % 9 == 0 else 'ok'}" for i in range(10, 20)]
        assert reader.query("SELECT count(*) FROM log_fts WHERE log_fts MATCH 'refused'")[1] == [(6,)]
        assert reader.query("PRAGMA table_info(runs)")[1]
        assert reader.query("SELECT id FROM observations ORDER BY id", limit=3)[1] == [(1,), (2,), (3,)]
    assert file_state(db) == before
    assert not (tmp_path / "new.db").exists()


# -- replay and report helpers ------------------------------------------------------------------


def test_arrival_records_are_in_id_order_with_filters(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    items = tie_night()
    items[5] = SnapshotObs("node1", "lnd", BASE + 3, True, CID, "running")
    ids = run(write(db, items, run_split=600))
    pairs = list(zip(ids, items))
    with StoreReader(db, page_size=17) as reader:
        assert [(r.id, r.obs) for r in reader.arrival_records()] == pairs
        assert [r.id for r in reader.arrival_records(run_id=2)] == ids[600:]
        window = [i for i, obs in pairs if BASE + 10 <= obs.at_ns < BASE + 50 and obs.target == "node1"]
        assert [r.id for r in reader.arrival_records(since_ns=BASE + 10, until_ns=BASE + 50,
                                                     target="node1")] == window
        assert [r.id for r in reader.arrival_records(run_id=1, since_ns=BASE + 50)] == [
            i for i, obs in pairs[:600] if obs.at_ns >= BASE + 50]
        assert list(reader.arrival_records(since_ns=BASE + 10**9)) == []
        lean = list(reader.arrival_records(lean_logs=True))
        for record, (_, obs) in zip(lean, pairs):
            if isinstance(obs, LogObs) and not obs.is_error:
                assert record.obs == replace(obs, line="", stream="")
            else:
                assert record.obs == obs


def test_last_snapshots_before_a_time(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    items = [SnapshotObs(t, c, BASE + at, True, CID, f"s{at}")
             for at in range(10) for t in ("node1", "node2") for c in ("a", "b") if (at + len(c + t)) % 3]
    items += [SnapshotObs("node1", "a", BASE + 4, True, CID, "tie")]  # same time, later id: newer
    items += [LogObs("node1", "a", BASE + 5, "between")]
    ids = run(write(db, items))
    for at in (BASE, BASE + 5, BASE + 10):
        newest: dict = {}
        for obs_id, obs in zip(ids, items):
            if isinstance(obs, SnapshotObs) and obs.at_ns < at:
                key = (obs.target, obs.container)
                if key not in newest or (obs.at_ns, obs_id) > (newest[key][1].at_ns, newest[key][0]):
                    newest[key] = (obs_id, obs)
        with StoreReader(db) as reader:
            got = reader.last_snapshots_before(at)
            assert [(r.id, r.obs) for r in got] == [newest[key] for key in sorted(newest)]
            assert [r.obs.target for r in reader.last_snapshots_before(at, target="node2")] == [
                key[0] for key in sorted(newest) if key[0] == "node2"]


def test_container_counts(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    items = tie_night()[:300]
    items += [EventObs("node1", "lnd", BASE + t, CID, "died", 1) for t in (1, 30, 60)]
    items += [EventObs("node2", "x", BASE + 2, CID, "died", 1), EventObs("node1", "lnd", BASE + 3, CID, "start")]

    async def write_with_changes() -> None:
        async with StoreWriter.open(db, []) as writer:
            for obs in items:
                writer.add(obs)
            for at in (5, 40):
                writer.add_change(type("C", (), dict(target="node1", container="lnd", at_ns=BASE + at,
                                                     from_state="running", to_state="exited", cause="x",
                                                     contradiction=False, obs_kind="event"))(), None)

    run(write_with_changes())

    def expected(since: int | None, until: int | None, target: str | None = None) -> dict:
        counts: dict = {}
        inside = lambda at: (since is None or at >= since) and (until is None or at < until)  # noqa: E731
        for obs in items:
            if not inside(obs.at_ns) or (target and obs.target != target):
                continue
            key = (obs.target, obs.container)
            if isinstance(obs, EventObs) and obs.status == "died":
                counts.setdefault(key, [0, 0, 0])[0] += 1
            if isinstance(obs, LogObs) and obs.is_error:
                counts.setdefault(key, [0, 0, 0])[2] += 1
        for at in (5, 40):
            if inside(BASE + at) and target in (None, "node1"):
                counts.setdefault(("node1", "lnd"), [0, 0, 0])[1] += 1
        return {key: tuple(value) for key, value in counts.items()}

    with StoreReader(db) as reader:
        for since, until, target in [(None, None, None), (BASE + 10, BASE + 50, None), (BASE + 2, None, "node1"),
                                     (None, BASE + 31, "node2")]:
            got = {(c.target, c.container): (c.deaths, c.changes, c.error_lines)
                   for c in reader.container_counts(since, until, target)}
            assert got == expected(since, until, target), (since, until, target)


# -- rows from before migration 3 ---------------------------------------------------------------


def test_rows_written_before_migration_3_read_back_and_are_found(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for version, script in enumerate(MIGRATIONS[:2], 1):
        for statement in split_statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'then')", (version,))
    old = [EventObs("node1", "lnd", BASE, CID, "died", 1, None, "img", (("name", "lnd"),)),
           LogObs("node1", "lnd", BASE + 1, "LOCK: Permission denied", "stderr", True, 5),
           LogObs("node1", "lnd", BASE + 2, "fine", "stdout", False, 6),
           SnapshotObs("node1", "lnd", BASE + 3, True, CID, "running")]
    for i, obs in enumerate(old, 1):  # as the writer stored them then: every field in data
        conn.execute("INSERT INTO observations (id, target, container, container_id, at_ns, kind, status, seq, data) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (i, obs.target, obs.container, getattr(obs, "container_id", None) or None, obs.at_ns,
                      str(obs.kind), getattr(obs, "status", None) if obs.kind == "event" else None,
                      getattr(obs, "seq", None), obs_to_json(obs)))
    conn.close()
    new = LogObs("node1", "lnd", BASE + 4, "LOCK: Permission denied again", "stderr", True, 7)
    run(write(db, [new]))  # migrates, then indexes everything
    with StoreReader(db) as reader:
        assert [r.obs for r in reader.observation_records()] == old + [new]
        assert reader.error_line_counts() == {("node1", "lnd"): 2}
        assert [row["line"] for row in reader.select("logs", grep="Permission denied")] == [
            "LOCK: Permission denied", "LOCK: Permission denied again"]
        assert [row["is_error"] for row in reader.select("logs")] == [1, 0, 1]
        assert [r.obs.status for r in reader.last_snapshots_before(BASE + 10)] == ["running"]


# -- the writer's idle time: text index and retention ------------------------------------------------


def test_text_index_covers_committed_ids_and_leaves_with_pruned_rows(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"

    async def scenario() -> None:
        async with StoreWriter.open(db, []) as writer:
            for i in range(300):
                writer.add(LogObs("node1", "lnd", BASE + i * 10, f"line {i} {'refused' if i % 3 else 'fine'}", seq=i))
            writer.add(EventObs("node1", "lnd", BASE, CID, "start"))
            assert await writer.index_logs(chunk=100) == 0  # nothing committed yet? flush first
            await writer.flush()
            assert await writer.index_logs(chunk=100) == 100
            assert await writer.index_logs() == 201
            assert await writer.index_logs() == 0
            assert await writer.prune(BASE + 1000, chunk=40) == 40
            while await writer.prune(BASE + 1000, chunk=40):
                pass

    run(scenario())
    with StoreReader(db) as reader:
        assert reader.query("SELECT value FROM store_state WHERE key = 'fts_indexed_upto'")[1] == [(301,)]
        # the index holds exactly the lines that are left: pruned rows left it too
        assert reader.query("SELECT count(*) FROM log_fts WHERE log_fts MATCH 'refused'")[1] == [
            (sum(1 for i in range(100, 300) if i % 3),)]
        assert [row["line"] for row in reader.select("logs", grep="refused")] == [
            f"line {i} refused" for i in range(100, 300) if i % 3]
        assert raw(db, "SELECT min(at_ns) FROM observations") == [(BASE + 1000,)]
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO log_fts (log_fts, rank) VALUES ('integrity-check', 0)")
    conn.close()


def test_index_logs_waits_for_the_writer_queue_commit(tmp_path: Path) -> None:
    """Ids the writer handed out but has not committed are not covered (they are in no row yet)."""
    db = tmp_path / "pw.db"

    async def scenario() -> tuple[int, int]:
        async with StoreWriter.open(db, [], flush_interval=60, batch_size=10**6) as writer:
            writer.add(LogObs("node1", "lnd", BASE, "first"))
            await writer.flush()
            writer.add(LogObs("node1", "lnd", BASE + 1, "queued"))
            covered = await writer.index_logs()
            await writer.flush()
            return covered, await writer.index_logs()

    assert run(scenario()) == (1, 1)
    with StoreReader(db) as reader:
        assert [row["line"] for row in reader.select("logs", grep="queued")] == ["queued"]


def old_and_new(keep_ns: int, now_ns: int) -> list:
    items = []
    for i in range(3000):
        at = now_ns - keep_ns - 10**9 * 3000 + i * 10**9 * 2  # half older than keep, half newer
        items.append(LogObs("node1", "lnd" if i % 2 else "electrs", at, f"line {i}", seq=i, is_error=i % 7 == 0))
        if i % 50 == 0:
            items.append(EventObs("node1", "lnd", at, CID, "died", 1))
    return items


def test_retention_prunes_only_what_is_older_than_keep_and_never_blocks_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    keep_ns = 3600 * 10**9
    now_ns = BASE + 10 * keep_ns
    items = old_and_new(keep_ns, now_ns)
    cutoff = now_ns - keep_ns
    flushes: list[float] = []
    seen: list[int] = []

    async def scenario() -> None:
        async with StoreWriter.open(db, [], batch_size=200) as writer:
            old_run = await writer.start_run("watch", ["node1"], {}, started_ns=cutoff - 2 * keep_ns)
            await writer.end_run(old_run, "pass", ended_ns=cutoff - keep_ns)
            live_run = await writer.start_run("watch", ["node1"], {}, started_ns=cutoff - 2 * keep_ns)
            for obs in items:
                writer.add(obs, live_run)
            writer.add_change(type("C", (), dict(target="node1", container="lnd", at_ns=cutoff - 1,
                                                 from_state="running", to_state="exited", cause="x",
                                                 contradiction=False, obs_kind="event"))(), None)
            writer.add_finding(old_run, target="node1", container="lnd", rule="r", severity="error",
                               message="m", at_ns=cutoff - 5)
            await writer.flush()
            maintenance = asyncio.create_task(writer.maintain(keep_ns, interval=0.05, step_seconds=0.005,
                                                              now_ns=lambda: now_ns))
            # writes and flushes while the pruning goes on: each flush must come back at once
            for i in range(40):
                writer.add(LogObs("node1", "live", now_ns + i, f"live {i}", seq=i))
                started = time.perf_counter()
                await writer.flush()
                flushes.append(time.perf_counter() - started)
                seen.append(raw(db, "SELECT count(*) FROM observations WHERE at_ns < ?", (cutoff,))[0][0])
                await asyncio.sleep(0.01)
            while raw(db, "SELECT (SELECT count(*) FROM observations WHERE at_ns < ?) + (SELECT max(id) "
                          "FROM observations) - (SELECT value FROM store_state)", (cutoff,))[0][0]:
                await asyncio.sleep(0.02)  # until the old rows are gone and the new ones indexed
            await writer.close()  # maintain returns once the writer closes
            await asyncio.wait_for(maintenance, 5)

    run(scenario())
    older = sum(1 for obs in items if obs.at_ns < cutoff)
    assert any(0 < n < older for n in seen), f"no flush ran while pruning: {seen}"
    assert max(flushes) < 0.5, flushes  # a flush waits for at most one short step
    kept = sorted((obs.at_ns, obs.kind) for obs in items if obs.at_ns >= cutoff)
    with StoreReader(db) as reader:
        assert sorted((r.obs.at_ns, r.obs.kind) for r in reader.observation_records()
                      if r.obs.container != "live") == kept
        assert len(list(reader.observations(container="live"))) == 40
        assert list(reader.changes()) == [] and reader.findings() == []
        assert [r.id for r in reader.runs()] == [2]  # the ended run went, the running one stays
        assert reader.error_line_counts() == {
            ("node1", c): sum(1 for o in items if isinstance(o, LogObs) and o.is_error and o.at_ns >= cutoff
                              and o.container == c) for c in ("electrs", "lnd")}
        # the text index was kept up: every line left is found through it
        ((upto,),) = reader.query("SELECT value FROM store_state WHERE key = 'fts_indexed_upto'")[1]
        assert upto == raw(db, "SELECT max(id) FROM observations")[0][0]
        assert len(list(reader.select("logs", grep=" live"))) == 0
        assert [row["line"] for row in reader.select("logs", grep="live ")] == [f"live {i}" for i in range(40)]


def test_maintenance_cancelled_mid_step_leaves_the_writer_working(tmp_path: Path) -> None:
    db = tmp_path / "pw.db"
    keep_ns = 10**9

    async def scenario() -> None:
        async with StoreWriter.open(db, []) as writer:
            for i in range(20_000):
                writer.add(LogObs("node1", "lnd", BASE + i, f"old line {i}", seq=i))
            await writer.flush()
            task = asyncio.create_task(writer.maintain(keep_ns, step_seconds=1, now_ns=lambda: BASE + 10**10))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            writer.add(LogObs("node1", "lnd", BASE + 10**10, "after", seq=1))
            await writer.flush()  # no transaction was left open on the writer's connection

    run(scenario())
    assert raw(db, "SELECT json_extract(data, '$.line') FROM observations WHERE at_ns >= ?",
               (BASE + 10**10,)) == [("after",)]
    assert raw(db, "PRAGMA integrity_check") == [("ok",)]


def test_maintain_refuses_a_keep_that_is_not_positive(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with StoreWriter.open(tmp_path / "pw.db", []) as writer:
            with pytest.raises(ValueError, match="keep_ns"):
                await writer.maintain(0)

    run(scenario())


def test_case_insensitive_search_finds_what_re_finds(tmp_path: Path) -> None:
    """IGNORECASE matches a few letters outside ASCII with ASCII ones; the text index folds
    all of them but the dotless i, so a search for a word with an i does not use it."""
    db = tmp_path / "pw.db"
    texts = ["user \u0131d 7 refused", "user ID 8 refused", "\u017fecret \u212aelvin here", "SECRET KELVIN",
             "Connection-REFUSED now", "nothing"]
    run(write(db, [LogObs("node1", "lnd", BASE + i, text, seq=i) for i, text in enumerate(texts)]))
    with StoreReader(db) as reader:
        for pattern in ["(?i) id ", "(?i)user id", "(?i)secret kelvin", "(?i)-refused ", "(?i)SECRET"]:
            got = [row["line"] for row in reader.select("logs", grep=pattern)]
            assert got == [text for text in texts if re.search(pattern, text)], pattern
