"""Several writers, one store file: real processes writing at the same time (schema migration 4).

Each writer reserves blocks of ids; an event or log line another run stored first is linked
to the run that saw it too, so every run's observation stream is whole and replays to its
stored changes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.replay import first_difference, replay_run
from agent.sink import Sink
from machines.container import Fleet, MachineSettings
from machines.observations import EventObs, LogObs, Observation
from store import StoreReader, StoreWriter
from store.ids import IdBlock

BASE = 1_714_564_800_000_000_000
CID = "b" * 64


def _event(i: int, status: str, container: str = "shared", target: str = "node1") -> EventObs:
    return EventObs(target, container, BASE + i * 1000, CID if container == "shared" else "c" * 64,
                    status, image="localhost/tb:latest", attributes=(("name", container),))


def _observations(name: str, count: int) -> list[Observation]:
    """A writer's stream: its own log lines, and every 50th a start/died of the container
    both writers watch (the same events, so the same unique keys)."""
    stream: list[Observation] = []
    for i in range(count):
        stream.append(LogObs("node1", name, BASE + i, f"{name} line {i}", seq=i))
        if i % 50 == 0:
            stream.append(_event(i, "start" if i % 100 == 0 else "died"))
    return stream


async def _write(db: str, name: str, count: int, batch_size: int) -> int:
    async with StoreWriter.open(db, [], batch_size=batch_size, flush_interval=0.005) as writer:
        run_id = await writer.start_run(name, ["node1"], {})
        for obs in _observations(name, count):
            await writer.add_wait(obs, run_id)
            if obs.kind == "log" and obs.seq % 97 == 0:
                await asyncio.sleep(0)  # let the other process interleave its commits
        await writer.end_run(run_id, "pass")
        return run_id


def _writer_process(db: str, name: str, count: int, batch_size: int, start, out) -> None:
    start.wait()
    out.put((name, asyncio.run(_write(db, name, count, batch_size))))


def _run_concurrently(db: Path, count: int, batch_size: int) -> dict[str, int]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer_process, args=(str(db), name, count, batch_size, start, out))
             for name in ("alpha", "beta")]
    for proc in procs:
        proc.start()
    start.set()
    runs = dict(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return runs


def test_two_processes_write_one_file_at_once(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    count = 30_000
    runs = _run_concurrently(db, count, batch_size=500)
    with StoreReader(db) as reader:
        ids = [row[0] for row in reader.query("SELECT id FROM observations")[1]]
        assert len(ids) == len(set(ids))
        events = reader.query("SELECT count(*), count(DISTINCT at_ns || status) FROM observations "
                              "WHERE kind = 'event'")[1][0]
        assert events == (count // 50, count // 50)  # every shared event stored once
        for name, run_id in runs.items():
            logs = reader.query("SELECT count(*) FROM observations WHERE run_id = ? AND kind = 'log'",
                                (run_id,))[1][0][0]
            assert logs == count
            stream = [record.obs for record in reader.arrival_records(run_id=run_id)]
            assert stream == _observations(name, count)  # whole, in the order it was seen
        run_ids = sorted(runs.values())
        links = reader.query("SELECT count(*) FROM run_observations")[1][0][0]
        assert links == count // 50  # each shared event linked to the run that came second
        assert [r.id for r in reader.runs()] == run_ids
        # the writers are gone: nothing holds back the text index
        assert reader.query("SELECT count(*) FROM writers")[1][0][0] == 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


async def _record(db: Path, name: str, stream: list[Observation]) -> int:
    async with StoreWriter.open(db, [], batch_size=7) as writer:
        run_id = await writer.start_run(name, ["node1"], {})
        fleet = Fleet(MachineSettings())
        sink = Sink(fleet, writer, run_id)
        for obs in stream:
            sink.put(obs)
        fleet.close()
        await writer.end_run(run_id, "pass")
        return run_id


def _deaths(first: int, count: int, container: str = "shared") -> list[Observation]:
    stream: list[Observation] = []
    for i in range(first, first + count):
        stream += [_event(4 * i, "start", container), _event(4 * i + 1, "died", container)]
    return stream


def test_a_run_whose_events_another_run_stored_first_replays_to_its_changes(tmp_path: Path) -> None:
    """The watch stores the container's deaths first; the check, while the watch's writer is
    still open, sees the same events among its own: its stream and its replay stay whole."""
    db = tmp_path / "replay.db"

    async def both() -> tuple[int, int]:
        async with StoreWriter.open(db, []) as watch:
            watch_run = await watch.start_run("watch", ["node1"], {})
            fleet = Fleet(MachineSettings())
            sink = Sink(fleet, watch, watch_run)
            for obs in _deaths(0, 6):
                sink.put(obs)
            await watch.flush()
            check_stream = _deaths(100, 2, "own") + _deaths(0, 6) + _deaths(102, 2, "own")
            check_run = await _record(db, "check", check_stream)
            for obs in _deaths(6, 2):
                sink.put(obs)
            fleet.close()
            await watch.end_run(watch_run, "pass")
            return watch_run, check_run

    watch_run, check_run = asyncio.run(both())
    with StoreReader(db) as reader:
        for run_id in (watch_run, check_run):
            replayed, stored = replay_run(reader, run_id)
            assert len(stored) > 4
            assert first_difference(replayed, stored) is None, run_id
        shared = reader.query("SELECT count(*) FROM run_observations WHERE run_id = ?", (check_run,))[1]
        assert shared == [(12,)]
        check_changes = list(reader.changes(run_id=check_run))
        watch_ids = {row[0] for row in reader.query(
            "SELECT id FROM observations WHERE run_id = ?", (watch_run,))[1]}
        assert any(change.observation_id in watch_ids for change in check_changes)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.just("take"), st.integers(1, 5)), max_size=60))
def test_an_id_block_only_increases(steps: list) -> None:
    """Blocks arrive in any order (a spare reserved in a commit, one reserved on the spot):
    the ids given out only increase and never repeat."""
    block = IdBlock("observations", 4)
    block.add_block(1, 5)
    given_out: list[int] = []
    top = 5
    for step in steps:
        if step == "take":
            value = block.take()
            if value is not None:
                given_out.append(value)
        else:
            first = top + step * 4
            block.add_block(first, first + 4)
            top = first + 4
            block.add_block(first - 3, first - 1)  # an older reservation arriving late: dropped
    assert given_out == sorted(set(given_out))


def test_the_text_index_never_passes_a_live_writers_frontier(tmp_path: Path) -> None:
    """`fts_indexed_upto` means every stored id at or below it is indexed: while a writer with
    a lower block may still commit, the indexer stops below it, and catches up once it is gone."""
    db = tmp_path / "fts.db"

    def upto() -> int:
        with StoreReader(db) as reader:
            return reader.query("SELECT value FROM store_state WHERE key = 'fts_indexed_upto'")[1][0][0]

    async def two() -> tuple[list[int], list[int]]:
        async with StoreWriter.open(db, []) as low:
            low_ids = [low.add(LogObs("node1", "low", BASE + i, f"low {i}", seq=i)) for i in range(5)]
            await low.flush()
            async with StoreWriter.open(db, []) as high:
                high_ids = [high.add(LogObs("node1", "high", BASE + i, f"high {i}", seq=i)) for i in range(5)]
                await high.flush()
                await high.index_logs()
                assert upto() == low_ids[-1]  # not past the low writer, which may still commit
                late = low.add(LogObs("node1", "low", BASE + 9, "low late", seq=9))
                await low.flush()
                await low.index_logs()
                assert upto() == late
            assert high_ids[0] > late
            return low_ids + [late], high_ids

    low_ids, high_ids = asyncio.run(two())
    with StoreReader(db) as reader:
        found = {row["id"] for row in reader.select("logs", grep="late")}
        assert found == {low_ids[-1]}


def test_a_commit_refused_past_the_busy_timeout_is_retried(tmp_path: Path) -> None:
    """Another connection holds the write lock longer than the writer's busy timeout: the
    commit is retried, not failed, and the rows land once."""
    db = tmp_path / "busy.db"

    async def held() -> list[int]:
        async with StoreWriter.open(db, []) as writer:
            await writer._conn.execute("PRAGMA busy_timeout = 100")  # fail fast, to see the retries
            holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN IMMEDIATE")
            added = [writer.add(LogObs("node1", "c", BASE + i, f"line {i}", seq=i)) for i in range(3)]
            release = asyncio.get_running_loop().call_later(0.6, holder.execute, "COMMIT")
            await writer.flush()
            release.cancel()
            holder.close()
            return added

    added = asyncio.run(held())
    with StoreReader(db) as reader:
        assert [row[0] for row in reader.query("SELECT id FROM observations ORDER BY id")[1]] == added


async def _spares_reserved(writer: StoreWriter) -> None:
    pending = [task for task in getattr(writer, "_reserving", {}).values() if not task.done()]
    if pending:
        await asyncio.wait(pending)


def test_small_blocks_run_out_and_ids_stay_unique(tmp_path: Path, monkeypatch) -> None:
    """Blocks of 3 ids: adds use up blocks, spares are reserved between commits as soon as
    they are wanted, and two writers' ids never meet and only increase per writer."""
    from store import ids

    monkeypatch.setitem(ids.BLOCK_SIZES, "observations", 3)
    db = tmp_path / "small.db"

    async def two() -> tuple[list[int], list[int]]:
        async with StoreWriter.open(db, [], batch_size=2) as a, StoreWriter.open(db, [], batch_size=2) as b:
            got_a, got_b = [], []
            for i in range(40):
                got_a.append(a.add(LogObs("node1", "a", BASE + i, "a", seq=i)))
                got_b.append(b.add(LogObs("node1", "b", BASE + i, "b", seq=i)))
                await _spares_reserved(a)
                await _spares_reserved(b)
                if i % 7 == 0:
                    await asyncio.sleep(0.01)
            return got_a, got_b

    got_a, got_b = asyncio.run(two())
    assert got_a == sorted(got_a) and got_b == sorted(got_b)
    assert len(set(got_a) | set(got_b)) == 80
    with StoreReader(db) as reader:
        stored = sorted(row[0] for row in reader.query("SELECT id FROM observations")[1])
    assert stored == sorted(got_a + got_b)


def test_a_change_in_a_batch_with_more_redirects_than_kept_points_at_a_stored_row(
        tmp_path: Path, monkeypatch) -> None:
    """More events another run stored first in one batch than the writer keeps redirects for:
    the batch's changes are remapped from all of the batch's redirects, not the trimmed ones."""
    from types import SimpleNamespace

    from store import writer as writer_module

    monkeypatch.setattr(writer_module, "_REDIRECT_SIZE", 5)
    db = tmp_path / "redirects.db"
    count = 20

    def event(i: int) -> EventObs:
        return EventObs("node1", "c", BASE + i, CID, "died", image="i", attributes=())

    async def both() -> None:
        async with StoreWriter.open(db, [], batch_size=10_000, flush_interval=60) as first:
            run = await first.start_run("watch", ["node1"], {})
            for i in range(count):
                first.add(event(i), run)
            await first.end_run(run, "pass")
        async with StoreWriter.open(db, [], batch_size=10_000, flush_interval=60) as second:
            run = await second.start_run("check", ["node1"], {})
            obs_id = second.add(event(0), run)
            change = SimpleNamespace(target="node1", container="c", at_ns=BASE, from_state="running",
                                     to_state="exited", cause="died", contradiction=False,
                                     obs_kind="event")
            second.add_change(change, obs_id, run)
            for i in range(1, count):
                second.add(event(i), run)
            await second.end_run(run, "pass")

    asyncio.run(both())
    with StoreReader(db) as reader:
        dangling = reader.query("SELECT c.id FROM changes c LEFT JOIN observations o "
                                "ON o.id = c.observation_id WHERE o.id IS NULL")[1]
        assert dangling == []
        assert reader.query("SELECT count(*) FROM changes")[1] == [(1,)]


def test_query_of_a_run_includes_the_observations_linked_to_it(tmp_path: Path) -> None:
    """`query ... --run ID`: a run's rows are its own and those another run stored first that
    it saw too (run_observations), in every plan (by run, by target and container, text search)."""
    db = tmp_path / "linked.db"

    async def both() -> tuple[int, int]:
        async with StoreWriter.open(db, []) as first:
            run_a = await first.start_run("watch", ["node1"], {})
            for i in range(4):
                first.add(_event(i, "died"), run_a)
                first.add(LogObs("node1", "shared", BASE + i, f"shared line {i}", seq=i), run_a)
            await first.end_run(run_a, "pass")
        async with StoreWriter.open(db, []) as second:
            run_b = await second.start_run("check", ["node1"], {})
            for i in range(2, 6):
                second.add(_event(i, "died"), run_b)
                second.add(LogObs("node1", "shared", BASE + i, f"shared line {i}", seq=i), run_b)
            await second.end_run(run_b, "pass")
            await second.index_logs()
        return run_a, run_b

    run_a, run_b = asyncio.run(both())
    with StoreReader(db) as reader:
        events = [row["at_ns"] for row in reader.select("events", run_id=run_b)]
        assert events == [BASE + i * 1000 for i in range(2, 6)]
        logs = [row["at_ns"] for row in reader.select("logs", run_id=run_b)]
        assert logs == [BASE + i for i in range(2, 6)]
        both_runs = [row["at_ns"] for row in reader.select("logs", run_id=(run_a, run_b))]
        assert both_runs == [BASE + i for i in range(6)]  # each row once
        by_pair = [row["at_ns"] for row in reader.select("logs", run_id=run_b, target="node1",
                                                         container="shared")]
        assert by_pair == logs
        grep = [row["at_ns"] for row in reader.select("logs", run_id=run_b, grep="shared line")]
        assert grep == logs
        assert [row["at_ns"] for row in reader.select("logs", run_id=run_a)] == [BASE + i for i in range(4)]


def test_start_run_refused_past_the_busy_timeout_is_retried(tmp_path: Path) -> None:
    """Another connection holds the write lock longer than the busy timeout while a run
    starts: its id reservation is retried like a commit, not failed."""
    db = tmp_path / "busy_run.db"

    async def held() -> int:
        async with StoreWriter.open(db, []) as writer:
            await writer._conn.execute("PRAGMA busy_timeout = 100")
            holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN IMMEDIATE")
            release = asyncio.get_running_loop().call_later(0.4, holder.execute, "COMMIT")
            run_id = await writer.start_run("check", ["node1"], {})
            release.cancel()
            holder.close()
            return run_id

    run_id = asyncio.run(held())
    with StoreReader(db) as reader:
        assert [run.id for run in reader.runs()] == [run_id]


def test_a_writer_alone_truncates_the_wal_and_with_others_checkpoints_passively(tmp_path: Path) -> None:
    """Alone in `writers`, a periodic checkpoint is TRUNCATE (the -wal file shrinks to 0);
    with another writer open, it is PASSIVE (the -wal file keeps its size)."""
    db = tmp_path / "wal.db"
    wal = Path(f"{db}-wal")

    async def write() -> tuple[int, int]:
        async with StoreWriter.open(db, [], checkpoint_every=1) as writer:
            for i in range(50):
                writer.add(LogObs("node1", "c", BASE + i, f"line {i}", seq=i))
            await writer.flush()
            await asyncio.sleep(0.2)  # the checkpoint follows the commit that released flush()
            alone = wal.stat().st_size
            async with StoreWriter.open(db, [], checkpoint_every=1) as other:
                for i in range(50, 100):
                    writer.add(LogObs("node1", "c", BASE + i, f"line {i}", seq=i))
                await writer.flush()
                await asyncio.sleep(0.2)
                shared = wal.stat().st_size
                await other.flush()
            return alone, shared

    alone, shared = asyncio.run(write())
    assert alone == 0
    assert shared > 0


def test_a_link_goes_with_its_pruned_observation(tmp_path: Path) -> None:
    """Retention deletes an observation another run linked while that run has not ended:
    its run_observations row goes with it (no link points at a row that is gone)."""
    db = tmp_path / "unlink.db"

    async def write() -> int:
        async with StoreWriter.open(db, []) as first:
            run_a = await first.start_run("watch", ["node1"], {})
            for i in range(5):
                first.add(_event(i, "died"), run_a)
            await first.flush()
            async with StoreWriter.open(db, []) as second:
                run_b = await second.start_run("check", ["node1"], {})
                for i in range(5):
                    second.add(_event(i, "died"), run_b)
                await second.flush()
                with StoreReader(db) as reader:
                    assert reader.query("SELECT count(*) FROM run_observations")[1] == [(5,)]
                while await second.prune(BASE + 3 * 1000, chunk=2):
                    pass
            return run_b

    asyncio.run(write())
    with StoreReader(db) as reader:
        assert reader.query("SELECT count(*) FROM observations")[1] == [(2,)]
        dangling = reader.query("SELECT count(*) FROM run_observations l LEFT JOIN observations o "
                                "ON o.id = l.observation_id WHERE o.id IS NULL")[1]
        assert dangling == [(0,)]
        assert reader.query("SELECT count(*) FROM run_observations")[1] == [(2,)]


def test_running_out_of_ids_with_the_own_transaction_open_never_stalls(tmp_path: Path, monkeypatch) -> None:
    """The spare is reserved as soon as it is wanted, between commits: adds during this
    writer's own open commit never wait for the file; a writer given more than its blocks
    before the spare could be reserved gets a clear StoreError at once, not a busy-timeout stall."""
    import time

    from store import StoreError, ids

    monkeypatch.setitem(ids.BLOCK_SIZES, "observations", 4)
    db = tmp_path / "spare.db"

    async def write() -> tuple[float, float, str]:
        async with StoreWriter.open(db, [], batch_size=10_000, flush_interval=60) as writer:
            seq = 0
            for _ in range(7):  # the first block, and most of the spare
                writer.add(LogObs("node1", "c", BASE + seq, "x", seq=seq))
                seq += 1
            await _spares_reserved(writer)
            flushing = asyncio.ensure_future(writer.flush())
            while not writer._conn_lock.locked():
                await asyncio.sleep(0)
            await asyncio.sleep(0)  # the commit's BEGIN IMMEDIATE is on its way
            started = time.monotonic()
            for _ in range(3):  # past the spare: a block reserved before the commit
                writer.add(LogObs("node1", "c", BASE + seq, "x", seq=seq))
                seq += 1
            during = time.monotonic() - started
            await flushing
            started = time.monotonic()
            message = ""
            try:
                for _ in range(20):  # more than a block and its spare, without a yield
                    writer.add(LogObs("node1", "c", BASE + seq, "x", seq=seq))
                    seq += 1
            except StoreError as exc:
                message = str(exc)
            burst = time.monotonic() - started
            await writer.flush()
            return during, burst, message

    during, burst, message = asyncio.run(write())
    assert during < 0.5
    assert burst < 0.5 and "ran out of observations ids" in message


def _schema_3_file(db: Path, monkeypatch) -> None:
    from store import schema

    with monkeypatch.context() as patch:
        patch.setattr(schema, "LATEST_VERSION", 3)
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        schema.migrate(conn)
        conn.close()


def _hold_writer_lock(db: Path) -> int:
    import fcntl
    import os

    fd = os.open(f"{db}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, b"4242", 0)
    return fd


def test_a_file_below_schema_4_held_by_an_older_writer_is_not_migrated(tmp_path: Path, monkeypatch) -> None:
    """An older podwarden (schema 3) holds `<db>-writer.lock` for its life and gives out ids
    from max(id) + 1: a newer writer neither migrates nor writes the file, it says why."""
    import os

    from store import StoreLocked, schema
    from store import writer as writer_module

    monkeypatch.setattr(writer_module, "_MIGRATION_WAIT", 0.2)
    db = tmp_path / "old.db"
    _schema_3_file(db, monkeypatch)
    fd = _hold_writer_lock(db)
    try:
        async def open_it() -> None:
            async with StoreWriter.open(db, []):
                pass

        try:
            asyncio.run(open_it())
        except StoreLocked as exc:
            assert "an older podwarden writes this file" in str(exc) and "4242" in str(exc)
        else:
            raise AssertionError("opened a file an older writer holds")
        conn = sqlite3.connect(db)
        assert schema.schema_version(conn) == 3
        conn.close()
    finally:
        os.close(fd)


def test_a_file_migrated_to_4_while_waiting_for_the_lock_opens(tmp_path: Path, monkeypatch) -> None:
    """A newer writer holds the lock while it migrates (and keeps it as the upkeep holder):
    after the brief wait the file reads schema 4, and the writer goes on sharing it."""
    import os
    import threading

    from store import schema
    from store import writer as writer_module

    monkeypatch.setattr(writer_module, "_MIGRATION_WAIT", 0.3)
    db = tmp_path / "migrating.db"
    _schema_3_file(db, monkeypatch)
    fd = _hold_writer_lock(db)

    def migrate() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        schema.migrate(conn)
        conn.close()

    try:
        timer = threading.Timer(0.1, migrate)
        timer.start()

        async def write() -> int:
            async with StoreWriter.open(db, []) as writer:
                obs_id = writer.add(LogObs("node1", "c", BASE, "line", seq=0))
                await writer.flush()
                return obs_id

        obs_id = asyncio.run(write())
        timer.join()
    finally:
        os.close(fd)
    with StoreReader(db) as reader:
        assert reader.query("SELECT id FROM observations")[1] == [(obs_id,)]


def test_writer_liveness_is_its_lock_not_its_pid(tmp_path: Path) -> None:
    """A live writer whose pid means nothing here (another pid namespace) keeps the text
    index below its frontier; a crashed writer whose pid now names a live process (pid 1 of
    a container, a reused pid) is dropped and the index goes past it."""
    import os

    from store import writer as writer_module

    db = tmp_path / "live.db"

    def upto() -> int:
        with StoreReader(db) as reader:
            return reader.query("SELECT value FROM store_state WHERE key = 'fts_indexed_upto'")[1][0][0]

    async def write() -> None:
        async with StoreWriter.open(db, []) as low:
            low.add(LogObs("node1", "low", BASE, "low 0", seq=0))
            await low.flush()
            await low._conn.execute("UPDATE writers SET pid = 2147483646 WHERE token = ?", (low._token,))
            async with StoreWriter.open(db, []) as high:
                high_id = high.add(LogObs("node1", "high", BASE, "high 0", seq=0))
                await high.flush()
                await high.index_logs()
                assert upto() < high_id  # the low writer is alive, whatever its pid
                with StoreReader(db) as reader:
                    assert reader.query("SELECT count(*) FROM writers")[1] == [(2,)]
                # a crashed writer: its row and its lock file stay, its flock is free, its pid lives
                crashed = 12345
                await high._conn.execute("INSERT INTO writers (token, pid, frontier) VALUES (?, ?, 1)",
                                         (crashed, os.getpid()))
                lock_path = writer_module._liveness_path(db, crashed)
                os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600))
            await low.index_logs()
            assert not lock_path.exists()
            with StoreReader(db) as reader:
                assert reader.query("SELECT count(*) FROM writers")[1] == [(1,)]  # the low one
        async with StoreWriter.open(db, []) as later:
            await later.index_logs()
            assert upto() == high_id  # nothing holds the index back any more

    asyncio.run(write())
    assert sorted(p.name for p in tmp_path.glob("live.db-writer.*.lock")) == []


def test_a_writer_whose_row_is_gone_fails_loudly(tmp_path: Path) -> None:
    """The frontier UPDATE of the writer's own row changing nothing (another process took it
    for ended) is an error, never ignored: the text index may have passed its frontier."""
    from store import StoreWriteFailed

    db = tmp_path / "gone.db"

    async def write() -> str:
        writer = await StoreWriter.open(db, [])
        try:
            await writer._conn.execute("DELETE FROM writers WHERE token = ?", (writer._token,))
            writer.add(LogObs("node1", "c", BASE, "line", seq=0))
            try:
                await writer.flush()
            except StoreWriteFailed as exc:
                return str(exc)
            return ""
        finally:
            try:
                await writer.close()
            except StoreWriteFailed:
                pass

    assert "row in `writers` is gone" in asyncio.run(write())


def test_two_writers_through_a_symlink_see_each_others_locks(tmp_path: Path) -> None:
    """SQLite follows a symlink to the real file; so do the lock files beside it: a writer
    through another name is alive to the indexer, and keeps its row."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "other").mkdir()
    db = real / "pw.db"
    alias = tmp_path / "other" / "pw.db"

    async def write() -> None:
        async with StoreWriter.open(db, []) as first:
            first.add(LogObs("node1", "a", BASE, "a 0", seq=0))
            await first.flush()
            alias.symlink_to(db)
            async with StoreWriter.open(alias, []) as second:
                second.add(LogObs("node1", "b", BASE, "b 0", seq=0))
                await second.flush()
                await first.index_logs()  # must not take the second for a dead writer
                second.add(LogObs("node1", "b", BASE + 1, "b 1", seq=1))
                await second.flush()  # its row is still there: the commit goes through
                with StoreReader(db) as reader:
                    assert reader.query("SELECT count(*) FROM writers")[1] == [(2,)]

    asyncio.run(write())
    assert not list((tmp_path / "other").glob("pw.db-writer*"))  # every lock beside the real file
