"""A store writer: one task owns the write connection and commits in batches.

Callers queue rows without blocking (`add`, `add_change`, ...) and get the row's id at
once: the writer gives out ids from blocks it reserves in the file (store/ids.py), so
several writers (processes, e.g. `check` while `watch` records) share one file. SQLite
lets one transaction at a time write (BEGIN IMMEDIATE waits up to the busy timeout,
then the commit is retried a few times before the writer fails). One writer at a time
does the upkeep (`maintain`, periodic checkpoints): the one holding the non-blocking
flock on `<db>-writer.lock`.
The writer task commits what is queued when `batch_size` rows are waiting, every
`flush_interval` seconds, on `flush()` and on `close()`, with one `executemany` per
table in one transaction.

Shared observations: an event or log line another run stored first (its unique key
refuses this run's row) is linked to this run in `run_observations` in the same
transaction, at the position this run's id for it held, so the run's observation stream
(`StoreReader.arrival_records(run_id=...)`, replay) still holds everything it saw.

Cancellation: each transaction runs in its own task that the writer only awaits through
`asyncio.shield`, because a cancelled aiosqlite `executemany` still inserts its rows into
the open transaction (docs/library-facts.md, SQLite); should that task itself be cancelled (event loop
shutdown), it rolls back and puts its rows back in the queue for `close()`. `close()`
finishes even when the caller is cancelled: an unclosed aiosqlite connection hangs
interpreter exit.

Backpressure: `add()` never blocks and never drops, so it is for producers whose output
is bounded (snapshots, probes, changes, agent records). A producer that can outrun the
disk (an event or log stream) uses `await add_wait(...)`, which waits for a commit
whenever `max_pending` rows are queued: memory stays bounded by about twice that.

Idle time: `maintain` (run beside the writer, in the same task group) indexes committed log
lines for text search (`log_fts`, schema migration 3) and, given a retention, deletes what
is older; each step is one short transaction on this connection between two commits
(`index_logs`, `prune`). Deleted pages are reused by later inserts: the file stops growing
at about `keep`'s worth of observations (no VACUUM: it would hold the write lock for minutes).
Of several writers of one file, only the holder of the upkeep lock does this; the text
index stops below the lowest id a live writer may still commit (`writers.frontier`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import json
import math
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _quote  # C; what json.dumps uses for ensure_ascii=False
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import aiosqlite
import anyio

from machines.observations import COLUMN_FIELDS, OMITTED_WHEN_NONE, Observation
from store import ids, schema
from store.errors import (
    NotAStore,
    StoreClosed,
    StoreError,
    StoreLocked,
    StoreVersionError,
    StoreWriteFailed,
)
from store.redact import IDENTIFIER_FIELDS, Redactor

_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",  # WAL + NORMAL: a power cut loses the last commits, never the file
    "PRAGMA journal_size_limit = 67108864",  # truncate the WAL back to 64 MiB after a reset
    "PRAGMA temp_store = MEMORY",
    "PRAGMA busy_timeout = 5000",
)
_BUSY_TIMEOUT_MS = 5000
_CHECKPOINT_BUSY_MS = 100  # a TRUNCATE checkpoint gives up quickly rather than stall writes
_SHARED_VERSION = 4  # schema migration 4: several writers may share the file
_MIGRATION_WAIT = 2.0  # seconds a writer waits for the flock to migrate a file below schema 4
_BUSY_RETRIES = 5  # a commit still refused after the busy timeout is retried this often

_INSERT_RUN = ("INSERT INTO runs (id, command, targets, started_ns, ended_ns, verdict, config, pid) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
# Only an event's or a log line's identity may conflict quietly (a backfill or a resumed
# follow re-reading what is stored); an id clash still raises.
_INSERT_OBS = ("INSERT INTO observations "
               "(id, run_id, target, container, container_id, at_ns, kind, status, seq, is_error, data) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (target, container_id, status, at_ns) WHERE kind = 'event' DO NOTHING "
               "ON CONFLICT (target, container, at_ns, seq) WHERE kind = 'log' DO NOTHING")
_INSERT_CHANGE = ("INSERT INTO changes (id, observation_id, run_id, target, container, at_ns, "
                  "from_state, to_state, cause, contradiction, obs_kind) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_FINDING = ("INSERT INTO findings (id, run_id, target, container, rule, severity, message, "
                   "cause, fix, evidence, at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_EXPERIMENT = ("INSERT INTO experiments (id, run_id, kind, subject, started_ns, ended_ns, "
                      "verdict, steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
# Row positions in an observation row (see observation_row).
_ID, _RUN_ID, _TARGET, _CONTAINER, _CONTAINER_ID, _AT_NS, _KIND, _STATUS, _SEQ = 0, 1, 2, 3, 4, 5, 6, 7, 8
# The row a refused event or log line met: (id, run_id), by its unique key.
_STORED_EVENT = ("SELECT id, run_id FROM observations WHERE kind = 'event' AND target = ? "
                 "AND container_id = ? AND status = ? AND at_ns = ?")
_STORED_LOG = ("SELECT id, run_id FROM observations WHERE kind = 'log' AND target = ? "
               "AND container = ? AND at_ns = ? AND seq = ?")
_INSERT_LINK = ("INSERT INTO run_observations (run_id, observation_id, position) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING")

# Idle-time maintenance (see `maintain`): rows per step, adapted to the step's time.
_INDEX_CHUNK = 20_000  # observation ids per text-index step (5M: ~370k ids/s in maintain's steps)
_PRUNE_CHUNK = 2000
_MIN_CHUNK, _MAX_CHUNK = 100, 10_000  # maintain's steps: 10,000 ids take FTS5 ~25-120 ms
# Oldest first through the time indexes; `?` bounds: the cut-off, then rows left in the step.
_PRUNE_STATEMENTS = (
    "DELETE FROM observations WHERE id IN (SELECT id FROM observations INDEXED BY observations_at "
    "WHERE at_ns < ? ORDER BY at_ns LIMIT ?)",
    "DELETE FROM changes WHERE id IN (SELECT id FROM changes INDEXED BY changes_at "
    "WHERE at_ns < ? ORDER BY at_ns LIMIT ?)",
    "DELETE FROM findings WHERE id IN (SELECT id FROM findings INDEXED BY findings_at "
    "WHERE at_ns < ? ORDER BY at_ns LIMIT ?)",
    # a run or experiment that has not ended (still going, or cut short) is kept
    "DELETE FROM run_observations WHERE run_id IN (SELECT id FROM runs WHERE ended_ns < ? LIMIT ?)",
    "DELETE FROM experiments WHERE id IN (SELECT id FROM experiments WHERE ended_ns < ? LIMIT ?)",
    "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE ended_ns < ? LIMIT ?)",
)

_NO_REDACTION = Redactor(())
# Recent event keys (~200 bytes each, their strings interned: ~0.8 MB): a repeat gets the
# stored id at once. Repeats come from a backfill or a restarted stream re-reading the last
# few seconds (the watcher drops most of them first); one that is no longer indexed is still
# caught by the unique key at commit (and its changes redirected).
_EVENT_INDEX_SIZE = 4096
_REDIRECT_SIZE = 10_000  # ids redirected at commit, kept for the changes that point at them


def _intern(text: Any) -> Any:
    """One shared copy of a str that many keys repeat (a container id, a status)."""
    return sys.intern(text) if type(text) is str else text


_I64 = 2**63

_encode_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), sort_keys=True,
                                 allow_nan=False, default=str).encode
_encode_free = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                                allow_nan=False, default=str).encode


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None (they are not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _utf8_safe(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def to_json(value: Any) -> str:
    """Compact JSON text that SQLite's json functions accept and UTF-8 can encode:
    NaN and infinities become null, lone surrogates are escaped, other objects str()."""
    try:
        text = _encode_free(value)
    except ValueError:
        text = _encode_free(_finite(value))
    if not _utf8_safe(text):
        text = _encode_ascii(_finite(value))
    return text


@dataclass(frozen=True, slots=True)
class _Shape:
    """How one observation class is stored: its kind and its kind-specific fields, in
    sorted name order (as `obs_to_json` writes them), with their `"name":` prefixes."""

    kind: str
    names: tuple[str, ...]
    prefixes: tuple[str, ...]
    redacted: tuple[bool, ...]
    omissible: tuple[bool, ...]  # left out when None (OMITTED_WHEN_NONE)
    values: Callable[[Any], tuple]


_SHAPES: dict[type, _Shape] = {}
# What a column holds is not repeated in `data` (schema migration 3), by kind; the reader
# puts these fields back from the columns.
COLUMN_FIELDS_BY_KIND: dict[str, tuple[str, ...]] = {
    "event": ("container_id", "status"),
    "snapshot": ("container_id",),
    "log": ("is_error",),
}


def _shape(cls: type) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        in_columns = ("target", "container", "at_ns", *COLUMN_FIELDS,
                      *COLUMN_FIELDS_BY_KIND.get(str(cls.kind), ()))
        names = tuple(sorted(f.name for f in dataclasses.fields(cls) if f.name not in in_columns))
        getter = attrgetter(*names)
        values = getter if len(names) > 1 else (lambda obs, g=getter: (g(obs),))
        prefixes = tuple(_quote(name) + ":" for name in names)
        # identifiers (ids, states, stream names) are podman's vocabulary, never free text:
        # not redacted, so that e.g. a bare 64-hex pattern cannot erase container ids
        redacted = tuple(name not in IDENTIFIER_FIELDS for name in names)
        omissible = tuple(name in OMITTED_WHEN_NONE for name in names)
        shape = _SHAPES[cls] = _Shape(str(cls.kind), names, prefixes, redacted, omissible, values)
    return shape


def _fast_data_json(shape: _Shape, obs: Any, redact: Callable[[str], str] | None) -> str | None:
    """The data JSON, byte for byte what `obs_to_json` writes for the same (redacted)
    values, built by hand: json.dumps costs ~4 us per call here and this ~1 us. None
    for a value it does not handle (the caller falls back to json)."""
    parts = []
    for prefix, redacted, omissible, value in zip(shape.prefixes, shape.redacted, shape.omissible,
                                                  shape.values(obs)):
        kind = type(value)
        if omissible and value is None:
            continue
        if kind is str:
            parts.append(prefix + _quote(redact(value) if redact is not None and redacted else value))
        elif kind is bool:
            parts.append(prefix + ("true" if value else "false"))
        elif kind is int:
            parts.append(prefix + int.__repr__(value))
        elif value is None:
            parts.append(prefix + "null")
        elif kind is float and math.isfinite(value):
            parts.append(prefix + float.__repr__(value))
        elif kind is tuple:  # EventObs.attributes: pairs, stored as an object
            pairs: dict[str, str] = {}
            for key, item in dict(value).items():
                if type(key) is not str or type(item) is not str:
                    return None
                if redact is not None:
                    key, item = redact(key), redact(item)
                    if key in pairs:
                        return None  # redaction made two keys equal: let json decide
                pairs[key] = item
            parts.append(prefix + "{" + ",".join(
                _quote(key) + ":" + _quote(pairs[key]) for key in sorted(pairs)) + "}")
        else:
            return None
    return "{" + ",".join(parts) + "}"


def observation_row(obs: Observation, obs_id: int, run_id: int | None,
                    redactor: Redactor | None) -> tuple:
    """The `observations` row for `obs` (`_INSERT_OBS`'s order): its kind-specific fields
    that have no column of their own as JSON, redacted by `redactor` (None: the caller
    redacted the observation already, see `Sink`)."""
    shape = _shape(type(obs))
    if redactor is None:
        redactor = _NO_REDACTION
    redact = redactor.text if redactor.patterns else None
    text = _fast_data_json(shape, obs, redact)
    if text is None or not _utf8_safe(text):
        data = {name: dict(value) if name == "attributes" else value
                for name, value in zip(shape.names, shape.values(obs))
                if not (value is None and name in OMITTED_WHEN_NONE)}
        text = to_json({name: redactor.value(value) if name not in IDENTIFIER_FIELDS else value
                        for name, value in data.items()})
    kind = shape.kind
    container_id = status = seq = is_error = None
    if kind == "event":
        container_id, status = obs.container_id, obs.status
    elif kind == "log":
        seq = obs.seq
        is_error = 1 if obs.is_error else 0
    elif kind == "probe":
        status = "ok" if obs.ok else "fail"
    elif kind == "snapshot":
        container_id = obs.container_id or None
    return (obs_id, run_id, obs.target, obs.container, container_id, obs.at_ns, kind, status, seq,
            is_error, text)


@dataclass(slots=True)
class _Batch:
    """Rows taken from the queue for one transaction; `seq` is the last queued row in it."""

    runs: list[tuple] = field(default_factory=list)
    observations: list[tuple] = field(default_factory=list)
    changes: list[tuple] = field(default_factory=list)
    findings: list[tuple] = field(default_factory=list)
    experiments: list[tuple] = field(default_factory=list)
    updates: list[tuple[str, tuple]] = field(default_factory=list)
    seq: int = 0

    def __len__(self) -> int:
        return (len(self.runs) + len(self.observations) + len(self.changes) + len(self.findings)
                + len(self.experiments) + len(self.updates))


def _create_private(path: Path) -> None:
    """Create `path` with mode 0600 before SQLite opens it (SQLite would use 0644)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)


def _connect_sync(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise NotAStore(str(path), f"cannot open: {exc}") from None
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


def _prepare(path: Path, token: int, lock_fd: int) -> dict[str, list[tuple[int, int]]]:
    """Create and migrate the file, register writer `token` and reserve its first block of
    ids per table and its spare: {table: [(first, end), (first, end)]}. Runs in a thread.

    Below schema 4 the file may be written by an older podwarden, which gives out ids from
    max(id) + 1 in memory and holds the flock on `<db>-writer.lock` (`lock_fd`) for its
    life: the migration runs only while holding that flock. Should it stay taken for
    `_MIGRATION_WAIT` seconds, the version is read again: 4 (a newer writer held it while
    migrating, or as the upkeep holder) goes on; below 4 raises StoreLocked."""
    conn = _connect_sync(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        version = schema.schema_version(conn)
        if version > schema.LATEST_VERSION:
            raise StoreVersionError(str(path), version, schema.LATEST_VERSION)
        if version < _SHARED_VERSION:
            deadline = time.monotonic() + _MIGRATION_WAIT
            while not _try_flock(lock_fd):
                if time.monotonic() >= deadline:
                    if schema.schema_version(conn) >= _SHARED_VERSION:
                        break
                    holder = _lock_holder(lock_fd)
                    raise StoreLocked(str(path), holder, (
                        f"an older podwarden writes this file (process {holder or 'unknown'}, "
                        f"schema {version}): stop it, or use another --db, before this version writes it"))
                time.sleep(0.05)
        schema.migrate(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            blocks = {table: [ids.reserve(conn, table, size), ids.reserve(conn, table, size)]
                      for table, size in ids.BLOCK_SIZES.items()}
            conn.execute("INSERT INTO writers (token, pid, frontier) VALUES (?, ?, ?)",
                         (token, os.getpid(), blocks["observations"][0][0]))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return blocks
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise NotAStore(str(path), "not an SQLite file: check --db") from None
        raise StoreError(str(path), f"cannot prepare: {exc}") from None
    finally:
        conn.close()


def _liveness_path(path: Path, token: int) -> Path:
    return Path(f"{path}-writer.{token:016x}.lock")


def _hold_liveness(path: Path, token: int) -> int:
    """Create `<db>-writer.<token>.lock` (0600) and take its flock for this writer's life:
    the indexer decides a writer is gone by taking it (store/ids.py, lowest_live_frontier).
    A kernel lock, not a pid: it holds across pid namespaces and never outlives its holder."""
    fd = os.open(_liveness_path(path, token), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release_liveness(path: Path, token: int, fd: int) -> None:
    """Drop this writer's liveness lock file (its writers row is gone first)."""
    try:
        os.unlink(_liveness_path(path, token))
    except OSError:
        pass
    os.close(fd)


def _writer_gone(path: Path, token: int) -> bool:
    """Whether writer `token` has ended: its liveness lock file is missing, or its flock can
    be taken (then the file is removed; the caller deletes the writers row)."""
    lock_path = _liveness_path(path, token)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # unreadable here: never take a live writer for a dead one
    try:
        if not _flock_now(fd):
            return False
        try:
            os.unlink(lock_path)
        except FileNotFoundError:
            pass
        return True
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """The pid the flock's holder wrote into the lock file ('' when unreadable)."""
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _unregister(path: Path, token: int) -> None:
    """Drop writer `token`'s row (a writer whose open failed half way); best effort."""
    try:
        conn = _connect_sync(path)
        try:
            conn.execute("DELETE FROM writers WHERE token = ?", (token,))
        finally:
            conn.close()
    except (sqlite3.Error, StoreError):
        pass


def _upkeep_lock(path: Path) -> int:
    """Open `<db>-writer.lock` (0600): whoever holds its flock does the store's upkeep."""
    return os.open(Path(f"{path}-writer.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _flock_now(fd: int) -> bool:
    """Take the exclusive flock on `fd` without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _try_flock(fd: int) -> bool:
    """Take the upkeep flock on `fd` without waiting (and write our pid into the file);
    False when another writer holds it."""
    if not _flock_now(fd):
        return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return True


class _Busy(StoreError):
    """Another writer held the file past the busy timeout (maintenance skips its step)."""


def _busy(exc: BaseException) -> bool:
    """An SQLITE_BUSY (or LOCKED) error: another connection held the file past the timeout."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class StoreWriter:
    """A writer of a store file (others may write it at the same time). Open with
    `await StoreWriter.open(path, patterns)` (or `async with StoreWriter.open(...) as
    writer`) and always close it."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, lock_fd: int, redactor: Redactor,
                 token: int, blocks: Mapping[str, list[tuple[int, int]]], *, live_fd: int, batch_size: int,
                 flush_interval: float, max_pending: int, checkpoint_every: int) -> None:
        """Use `StoreWriter.open`."""
        self.path = path
        self.redactor = redactor
        self._conn = conn
        self._lock_fd = lock_fd
        self._live_fd = live_fd  # the flock on `<db>-writer.<token>.lock`, held for life
        self._upkeep = _try_flock(lock_fd)
        self._token = token
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._checkpoint_every = checkpoint_every
        self._ids = {table: ids.IdBlock(table, size) for table, size in ids.BLOCK_SIZES.items()}
        for table, reserved in blocks.items():
            for first, end in reserved:
                self._ids[table].add_block(first, end)
        self._queue = _Batch()
        self._pending = 0
        self._queued_seq = 0
        self._committed_seq = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._conn_lock = asyncio.Lock()
        self._event_ids: dict[tuple, int] = {}
        self._redirects: dict[int, int] = {}
        self._reserving: dict[str, asyncio.Future[None]] = {}
        self._spare_error: BaseException | None = None  # why the last spare reservation failed
        self._failure: BaseException | None = None
        self._stopping = False
        self._commits = 0
        self._inflight: asyncio.Future[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None
        self._task = asyncio.create_task(self._run(), name=f"store-writer {path}")

    # -- opening and closing ----------------------------------------------------------

    @staticmethod
    def open(path: str | os.PathLike[str], redact_patterns: Iterable[str] = (), *,
             batch_size: int = 1000, flush_interval: float = 0.2, max_pending: int = 50_000,
             checkpoint_every: int = 500) -> "_Opening":
        """Open (creating 0600 and migrating) the store at `path` for writing.

        Await it, or use it as `async with`. Other writers may have the file open: they
        share it. Raises StoreVersionError for a newer schema, StoreLocked when an older
        podwarden (schema below 4) writes the file, NotAStore, StoreError.
        """
        return _Opening(Path(path), tuple(redact_patterns), dict(
            batch_size=batch_size, flush_interval=flush_interval, max_pending=max_pending,
            checkpoint_every=checkpoint_every))

    @classmethod
    async def _open(cls, path: Path, patterns: tuple[str, ...], options: dict[str, Any]) -> StoreWriter:
        redactor = Redactor(patterns)
        # SQLite follows a symlink to the file (its -wal and -shm are the real file's): the lock
        # files beside it must be the real file's too, or two writers through two names would
        # not see each other's locks
        path = Path(os.path.realpath(path))
        if not path.parent.is_dir():
            raise StoreError(str(path), f"directory {path.parent} does not exist")
        lock_fd = _upkeep_lock(path)
        token = int.from_bytes(os.urandom(8), "big") >> 1
        conn: aiosqlite.Connection | None = None
        blocks = None
        live_fd: int | None = None
        try:
            live_fd = _hold_liveness(path, token)  # before its writers row exists
            _create_private(path)
            preparing = asyncio.ensure_future(asyncio.to_thread(_prepare, path, token, lock_fd))
            try:
                blocks = await asyncio.shield(preparing)
            except asyncio.CancelledError:
                await asyncio.wait([preparing])  # keep the lock until the migration is done
                if not preparing.cancelled() and preparing.exception() is None:
                    blocks = preparing.result()  # registered: unregister below
                raise
            conn = await aiosqlite.connect(path, isolation_level=None)
            for pragma in _PRAGMAS:
                await conn.execute(pragma)
            _match_mode(path)
            return cls(path, conn, lock_fd, redactor, token, blocks, live_fd=live_fd, **options)
        except BaseException:
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await conn.close()
            if blocks is not None:
                _unregister(path, token)  # else its frontier holds the text index back
            if live_fd is not None:
                _release_liveness(path, token, live_fd)
            os.close(lock_fd)
            raise

    async def __aenter__(self) -> StoreWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit everything queued, checkpoint the WAL and close the connection.

        Completes even if the caller is cancelled (then re-raises the cancellation).
        Raises StoreWriteFailed if a batch could not be committed.
        """
        if self._shutdown is None:
            self._stopping = True
            self._wake.set()
            self._shutdown = asyncio.ensure_future(self._close())
        cancelled = False
        with anyio.CancelScope(shield=True):
            while not self._shutdown.done():
                try:
                    await asyncio.shield(self._shutdown)
                except asyncio.CancelledError:
                    cancelled = True  # keep waiting: the connection must be closed
        if cancelled:
            raise asyncio.CancelledError
        self._shutdown.result()

    async def _close(self) -> None:
        try:
            await asyncio.wait([self._task])
            if self._inflight is not None and not self._inflight.done():
                await asyncio.wait([self._inflight])
            reserving = [task for task in self._reserving.values() if not task.done()]
            if reserving:
                await asyncio.wait(reserving)
            if self._failure is None and self._pending:
                # The writer task was cancelled from outside; commit what it left.
                try:
                    await self._commit()
                except Exception as exc:
                    self._fail(exc)
            try:
                await self._conn.execute("DELETE FROM writers WHERE token = ?", (self._token,))
                await self._checkpoint()
            except sqlite3.Error:
                pass  # not fatal: a dead writer's row is ignored; SQLite checkpoints on the last close
        finally:
            try:
                await self._conn.close()
            finally:
                os.close(self._lock_fd)
                _release_liveness(self.path, self._token, self._live_fd)
                self._fail(self._failure or StoreClosed(str(self.path)))
        if self._failure is not None:
            raise StoreWriteFailed(str(self.path), self._failure)

    # -- queueing -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows queued and not yet taken by a transaction."""
        return self._pending

    def _check_open(self) -> None:
        if self._failure is not None:
            raise StoreWriteFailed(str(self.path), self._failure)
        if self._stopping:
            raise StoreClosed(str(self.path))

    def _queued(self, rows: int = 1) -> None:
        self._pending += rows
        self._queued_seq += rows
        if self._pending >= self._batch_size:
            self._wake.set()

    def add(self, obs: Observation, run_id: int | None = None, *, redacted: bool = False) -> int:
        """Queue an observation; return the id it is stored under.

        An event already stored (same target, container id, status and at_ns) is not
        stored again: its existing id is returned when this writer knows it for this run,
        and otherwise (an event from an earlier session, or another writer's) references to
        the new id are redirected to the stored row at commit. A log line already stored
        (same target, container, at_ns and seq) is dropped at commit. Either, when another
        run stored it, is linked to `run_id` (`run_observations`) in the same commit. `redacted`: the caller redacted `obs` with this
        writer's redactor already (text is redacted exactly once: a pattern that is not
        idempotent would otherwise make the stored text differ from what the machines saw).
        Never blocks; raises StoreClosed / StoreWriteFailed.
        """
        self._check_open()
        if not -_I64 <= obs.at_ns < _I64:
            raise ValueError(f"at_ns out of range: {obs.at_ns}")
        key = None
        if obs.kind == "event":
            key = (run_id, _intern(obs.target), _intern(obs.container_id), _intern(obs.status), obs.at_ns)
            known = self._event_ids.get(key)
            if known is not None:
                return known
        obs_id = self._take_id("observations")
        self._queue.observations.append(observation_row(obs, obs_id, run_id,
                                                         None if redacted else self.redactor))
        if key is not None:
            self._remember_event(key, obs_id)
        self._queued()
        return obs_id

    async def add_wait(self, obs: Observation, run_id: int | None = None, *, redacted: bool = False) -> int:
        """`add`, first waiting for a commit while `max_pending` rows are queued."""
        if self._pending >= self._max_pending:
            await self.flush()
        return self.add(obs, run_id, redacted=redacted)

    def add_change(self, change: Any, observation_id: int | None, run_id: int | None = None) -> int:
        """Queue a state change (anything with StateChange's attributes); return its id."""
        self._check_open()
        change_id = self._take_id("changes")
        self._queue.changes.append((
            change_id, observation_id, run_id, change.target, change.container, change.at_ns,
            str(change.from_state), str(change.to_state), self.redactor.text(str(change.cause or "")),
            1 if change.contradiction else 0, _text_or_none(getattr(change, "obs_kind", None)),
        ))
        self._queued()
        return change_id

    def add_finding(self, run_id: int | None, *, target: str, container: str, rule: str,
                    severity: str, message: str, cause: str = "", fix: str = "",
                    evidence: Any = (), at_ns: int) -> int:
        """Queue a finding (message, cause, fix and evidence redacted); return its id."""
        self._check_open()
        finding_id = self._take_id("findings")
        redact = self.redactor.text
        self._queue.findings.append((
            finding_id, run_id, target, container, str(rule), str(severity), redact(message),
            redact(cause or ""), redact(fix or ""), to_json(self.redactor.value(evidence)), at_ns,
        ))
        self._queued()
        return finding_id

    def add_experiment(self, run_id: int | None, *, kind: str, subject: str, started_ns: int,
                       steps: Any = (), verdict: str | None = None,
                       ended_ns: int | None = None) -> int:
        """Queue an experiment (steps redacted); return its id for `update_experiment`."""
        self._check_open()
        experiment_id = self._take_id("experiments")
        self._queue.experiments.append((
            experiment_id, run_id, kind, subject, started_ns, ended_ns, verdict,
            to_json(self.redactor.value(steps)),
        ))
        self._queued()
        return experiment_id

    def update_experiment(self, experiment_id: int, *, steps: Any = None, verdict: str | None = None,
                          ended_ns: int | None = None) -> None:
        """Queue new values for an experiment's steps, verdict and end (None: unchanged)."""
        self._check_open()
        sets: dict[str, Any] = {}
        if steps is not None:
            sets["steps"] = to_json(self.redactor.value(steps))
        if verdict is not None:
            sets["verdict"] = verdict
        if ended_ns is not None:
            sets["ended_ns"] = ended_ns
        if not sets:
            return
        assignments = ", ".join(f"{column} = ?" for column in sets)
        self._queue.updates.append((f"UPDATE experiments SET {assignments} WHERE id = ?",
                                    (*sets.values(), experiment_id)))
        self._queued()

    async def start_run(self, command: str, targets: Iterable[str], config: Mapping[str, Any],
                        *, started_ns: int | None = None) -> int:
        """Record the start of a run (with its config as given) and return its id, committed."""
        self._check_open()
        run_id = await self._reserve_run_id()
        self._queue.runs.append((
            run_id, command, to_json(list(targets)),
            time.time_ns() if started_ns is None else started_ns, None, None,
            # as given: redaction is for observed text, not for the user's own settings
            to_json(dict(config)), os.getpid(),
        ))
        self._queued()
        await self.flush()
        return run_id

    async def end_run(self, run_id: int, verdict: str | None, *, ended_ns: int | None = None) -> None:
        """Record the end and verdict of a run, committed."""
        self._check_open()
        self._queue.updates.append(("UPDATE runs SET ended_ns = ?, verdict = ? WHERE id = ?", (
            time.time_ns() if ended_ns is None else ended_ns, verdict, run_id)))
        self._queued()
        await self.flush()

    def _take_id(self, table: str) -> int:
        block = self._ids[table]
        value = block.take()
        if value is None:
            # Half a block given out before its spare could be reserved: a writer given far
            # more rows than its backpressure allows between two commits, or a file held by
            # other writers past every retry. Never reserve here, on the event loop: this
            # writer's own transaction may be open.
            failed = self._spare_error
            self._want_spare(table)
            raise StoreError(str(self.path), f"ran out of {table} ids: {block.size:,} given out "
                                             "before the next block could be reserved"
                                             + (f" ({failed})" if failed is not None else "")) from failed
        if block.wants_spare():
            self._want_spare(table)
        return value

    async def _reserve_run_id(self) -> int:
        """One run id, reserved in a transaction of its own (run ids follow start order);
        refused for SQLITE_BUSY past the busy timeout, it is retried like a commit."""
        async def statements(conn: aiosqlite.Connection) -> int:
            ((end,),) = await conn.execute_fetchall(ids.reserve_statement("runs"), (1, "runs"))
            return end - 1

        for attempt in range(_BUSY_RETRIES + 1):
            try:
                return await self._transaction(statements, "cannot start a run")
            except _Busy:
                if attempt == _BUSY_RETRIES:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def flush(self) -> None:
        """Wait until everything queued so far is committed. Raises StoreWriteFailed."""
        if self._failure is not None:
            raise StoreWriteFailed(str(self.path), self._failure)
        target = self._queued_seq
        if self._committed_seq >= target:
            return
        if self._task.done() and self._shutdown is None:
            raise StoreError(str(self.path), "the writer task is not running (it was cancelled)")
        if self._shutdown is not None and self._shutdown.done():
            raise StoreClosed(str(self.path))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._wake.set()
        await waiter

    # -- backfill helpers ------------------------------------------------------------------

    async def last_event_ns(self, target: str) -> int | None:
        """The newest stored event time of `target` (queued ones included), None without any."""
        return await self._last_ns(target, "event")

    async def last_log_ns(self, target: str) -> int | None:
        """The newest stored log line time of `target` (queued ones included), None without any."""
        return await self._last_ns(target, "log")

    async def _last_ns(self, target: str, kind: str) -> int | None:
        await self.flush()
        async with self._conn_lock:
            rows = await self._conn.execute_fetchall(
                "SELECT at_ns FROM observations INDEXED BY observations_kind_at "
                "WHERE kind = ? AND target = ? ORDER BY at_ns DESC LIMIT 1", (kind, target))
        return rows[0][0] if rows else None

    async def log_resume(self, target: str, container: str, recent: int = 50) -> tuple[int, int] | None:
        """Where a resumed follow of a container's log may start: (offset, newest at_ns).

        Each stored line names a safe place to start (its `resume`, else its `seq`: an
        offset at which no line was open, so every line begun before it was finished and
        stored before the lines after it); the newest of these among the `recent` newest
        stored lines is taken. None when nothing of the container is stored.
        """
        await self.flush()
        async with self._conn_lock:
            rows = await self._conn.execute_fetchall(
                "SELECT at_ns, seq, json_extract(data, '$.resume') FROM observations "
                "INDEXED BY observations_target_container_at "
                "WHERE target = ? AND container = ? AND kind = 'log' AND seq IS NOT NULL "
                "ORDER BY at_ns DESC, id DESC LIMIT ?", (target, container, recent))
        if not rows:
            return None
        offset = max(seq if resume is None else int(resume) for _, seq, resume in rows)
        return offset, rows[0][0]

    async def log_keys(self, target: str, container: str, since_ns: int,
                       limit: int = 100_000) -> set[tuple[int, int]]:
        """The (at_ns, seq) of a container's stored log lines at or after `since_ns` (at most `limit`, newest)."""
        await self.flush()
        async with self._conn_lock:
            rows = await self._conn.execute_fetchall(
                "SELECT at_ns, seq FROM observations INDEXED BY observations_target_container_at "
                "WHERE target = ? AND container = ? AND at_ns >= ? AND kind = 'log' AND seq IS NOT NULL "
                "ORDER BY at_ns DESC LIMIT ?", (target, container, since_ns, limit))
        return {(at_ns, seq) for at_ns, seq in rows}

    async def last_run_end_ns(self, target: str, commands: Iterable[str]) -> int | None:
        """When the newest finished run of one of `commands` that covered `target` ended."""
        await self.flush()
        commands = list(commands)
        async with self._conn_lock:
            rows = await self._conn.execute_fetchall(
                f"SELECT ended_ns, targets FROM runs WHERE ended_ns IS NOT NULL "
                f"AND command IN ({', '.join('?' * len(commands))}) ORDER BY ended_ns DESC LIMIT 200", commands)
        for ended_ns, targets in rows:
            try:
                if target in json.loads(targets):
                    return ended_ns
            except ValueError:
                continue
        return None

    async def actions_since(self, target: str, since_ns: int, limit: int = 1000
                            ) -> list[tuple[str, int, str, bool]]:
        """podwarden's own recorded actions on `target` since `since_ns` (any run), oldest first,
        at most `limit` (the newest): (container, at_ns, action, dry_run)."""
        await self.flush()
        async with self._conn_lock:
            rows = await self._conn.execute_fetchall(
                "SELECT container, at_ns, json_extract(data, '$.action'), json_extract(data, '$.dry_run') "
                "FROM observations INDEXED BY observations_kind_at WHERE kind = 'action' AND at_ns >= ? "
                "AND target = ? ORDER BY at_ns DESC, id DESC LIMIT ?", (since_ns, target, limit))
        return [(container, at_ns, action or "", bool(dry_run)) for container, at_ns, action, dry_run in reversed(rows)]

    async def event_keys_since(self, target: str, since_ns: int) -> set[tuple[str, str, int]]:
        """The (container_id, status, at_ns) of `target`'s events at or after `since_ns`."""
        await self.flush()
        async with self._conn_lock:
            rows = await self._conn.execute_fetchall(
                "SELECT container_id, status, at_ns FROM observations INDEXED BY observations_kind_at "
                "WHERE kind = 'event' AND at_ns >= ? AND target = ?", (since_ns, target))
        return {(cid, status, at_ns) for cid, status, at_ns in rows}

    # -- the writer's idle time: the log text index and retention -----------------------------
    #
    # Both run on the writer's own connection, one short transaction per step, taken between
    # the writer's commits (`_conn_lock` is first come, first served): a commit that arrives
    # during a step waits for that one step, never for a whole pass. A step runs as a task
    # awaited through `asyncio.shield`, so a cancelled caller never leaves a transaction open
    # on the connection the writer commits on.

    async def index_logs(self, *, chunk: int = _INDEX_CHUNK) -> int:
        """Add the log lines of the next `chunk` committed observation ids to the text index
        (`log_fts`) in one transaction; return how many ids it covered (0: up to date).

        Raises StoreClosed / StoreWriteFailed, StoreError when the statement fails.
        """
        return await self._step(self._index_logs, chunk)

    async def prune(self, before_ns: int, *, chunk: int = _PRUNE_CHUNK) -> int:
        """Delete up to `chunk` rows older than `before_ns` in one transaction and return how
        many went (0: nothing older is left).

        Observations (with their `run_observations` links, by trigger) and changes go by
        `at_ns`, then findings by `at_ns`, experiments and
        runs that ended before `before_ns` (a run or experiment still going is kept).
        Raises StoreClosed / StoreWriteFailed, StoreError when the statement fails.
        """
        return await self._step(self._prune, before_ns, chunk)

    async def maintain(self, keep_ns: int | None = None, *, interval: float = 5.0,
                       step_seconds: float = 0.02, now_ns: Callable[[], int] = time.time_ns) -> None:
        """Tidy the store in the writer's idle time until the writer closes: index new log
        lines for text search and, with `keep_ns`, delete what is older than `keep_ns`
        before `now_ns()` (retention: `keep = "30d"`).

        Meant to run in the task group that owns the writer; returns once the writer is
        closing. A step runs only while the writer is not committing and has less than a
        batch queued, and aims at `step_seconds` (its chunk grows and shrinks to fit); after
        a pass with nothing left to do it sleeps `interval` seconds. Only the writer that
        holds the upkeep lock (`<db>-writer.lock`) tidies; another tries to take it every
        `interval` seconds. A step refused for SQLITE_BUSY is skipped until the next pass.
        Raises StoreWriteFailed or StoreError when a step fails (the writer itself keeps going).
        """
        if keep_ns is not None and keep_ns <= 0:
            raise ValueError(f"keep_ns must be positive, not {keep_ns}")
        chunks = {"prune": _PRUNE_CHUNK // 4, "index": _INDEX_CHUNK // 4}
        try:
            while not self._stopping:
                if not self._upkeep and not _try_flock(self._lock_fd):
                    await self._idle_sleep(interval)  # another writer does the upkeep
                    continue
                self._upkeep = True
                did = 0
                if keep_ns is not None:
                    did += await self._tuned_step(
                        chunks, "prune", lambda n: self.prune(now_ns() - keep_ns, chunk=n), step_seconds)
                # FTS5 pays per transaction: its steps may take longer
                did += await self._tuned_step(
                    chunks, "index", lambda n: self.index_logs(chunk=n), step_seconds * 2.5)
                if not did:
                    await self._idle_sleep(interval)
        except StoreClosed:
            return  # closed between the check and the step

    async def _tuned_step(self, chunks: dict[str, int], name: str,
                          step: Callable[[int], Any], seconds: float) -> int:
        await self._wait_idle()
        if self._stopping:
            return 0
        started = time.perf_counter()
        try:
            done = await step(chunks[name])
        except _Busy:
            return 0  # other writers kept the file busy: the next pass tries again
        took = time.perf_counter() - started
        if done and took > seconds:
            chunks[name] = max(_MIN_CHUNK, chunks[name] // 2)
        elif done and took < seconds / 2:
            chunks[name] = min(_MAX_CHUNK, chunks[name] * 2)
        return done

    async def _wait_idle(self) -> None:
        """Until the writer is between commits with less than a batch queued (or closing)."""
        while not self._stopping and (
                self._pending >= self._batch_size
                or (self._inflight is not None and not self._inflight.done())):
            await asyncio.sleep(self._flush_interval / 4)

    async def _idle_sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, seconds))

    async def _step(self, body: Callable[..., Any], *args: Any) -> int:
        self._check_open()
        task = asyncio.ensure_future(body(*args))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])  # the transaction ends (commit or rollback) first
            raise

    async def _transaction(self, statements: Callable[[aiosqlite.Connection], Any],
                           failed: str = "maintenance failed") -> Any:
        async with self._conn_lock:
            if self._stopping:  # the connection closes behind the final commit
                raise StoreClosed(str(self.path))
            conn = self._conn
            try:
                await conn.execute("BEGIN IMMEDIATE")
                result = await statements(conn)
                await conn.execute("COMMIT")
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    try:
                        await conn.rollback()
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error):
                    kind = _Busy if _busy(exc) else StoreError
                    raise kind(str(self.path), f"{failed}: {exc}") from None
                raise
            return result

    async def _index_logs(self, chunk: int) -> int:
        async def statements(conn: aiosqlite.Connection) -> int:
            ((upto,),) = await conn.execute_fetchall(
                "SELECT value FROM store_state WHERE key = 'fts_indexed_upto'")
            ((first,),) = await conn.execute_fetchall("SELECT min(id) FROM observations WHERE id > ?", (upto,))
            if first is None:
                return 0
            ((last,),) = await conn.execute_fetchall("SELECT max(id) FROM observations")
            end = min(last, first - 1 + chunk)  # from the next stored id: gaps cost nothing
            frontier = await self._lowest_frontier(conn)
            if frontier is not None:
                end = min(end, frontier - 1)  # a live writer may still commit ids above it
            if end < first:
                return 0
            await conn.execute(
                "INSERT INTO log_fts (rowid, line) SELECT id, json_extract(data, '$.line') "
                # NOT INDEXED: by id range; SQLite would walk every log line of kind_at
                "FROM observations NOT INDEXED WHERE id > ? AND id <= ? AND kind = 'log'", (upto, end))
            await conn.execute("UPDATE store_state SET value = ? WHERE key = 'fts_indexed_upto'", (end,))
            return end - upto

        return await self._transaction(statements)

    async def _lowest_frontier(self, conn: aiosqlite.Connection) -> int | None:
        """The lowest observation id a live writer may still commit (dead writers' rows go:
        a writer is gone when its liveness flock can be taken, see `_writer_gone`)."""
        rows = await conn.execute_fetchall("SELECT token, frontier FROM writers")
        lowest, dead = ids.lowest_live_frontier(
            rows, lambda token: token != self._token and _writer_gone(self.path, token))
        if dead:
            await conn.executemany("DELETE FROM writers WHERE token = ?", [(token,) for token in dead])
        return lowest

    async def _prune(self, before_ns: int, chunk: int) -> int:
        async def statements(conn: aiosqlite.Connection) -> int:
            deleted = 0
            for sql in _PRUNE_STATEMENTS:
                cursor = await conn.execute(sql, (before_ns, chunk - deleted))
                deleted += max(cursor.rowcount, 0)
                if deleted >= chunk:
                    break
            return deleted

        return await self._transaction(statements)

    # -- the writer task -----------------------------------------------------------------

    async def _run(self) -> None:
        """Commit the queue in batches until closed; a failed commit stops the writer."""
        try:
            while True:
                if not (self._pending >= self._batch_size or self._waiters or self._stopping):
                    try:
                        async with asyncio.timeout(self._flush_interval):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                self._wake.clear()
                if self._pending:
                    await self._commit()
                elif self._stopping:
                    return
                else:
                    self._release_waiters()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    async def _commit(self) -> None:
        """Commit the queue; a commit refused for SQLITE_BUSY past the busy timeout (other
        writers held the file) is retried `_BUSY_RETRIES` times before the writer fails."""
        for attempt in range(_BUSY_RETRIES + 1):
            batch = self._take()  # a failed batch was put back in front of the queue
            self._inflight = asyncio.ensure_future(self._write(batch))
            try:
                await asyncio.shield(self._inflight)
                break
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or attempt == _BUSY_RETRIES:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        self._commits += 1
        if self._checkpoint_every and self._commits % self._checkpoint_every == 0:
            await self._checkpoint()

    async def _write(self, batch: _Batch) -> None:
        """Commit one batch in one transaction; on any failure roll back and requeue it."""
        async with self._conn_lock:
            conn = self._conn
            redirects: dict[int, int] = {}  # this batch's, whatever the trim of self._redirects
            try:
                await conn.execute("BEGIN IMMEDIATE")
                if batch.runs:
                    await conn.executemany(_INSERT_RUN, batch.runs)
                if batch.observations:
                    before = conn.total_changes
                    await conn.executemany(_INSERT_OBS, batch.observations)
                    if conn.total_changes - before < len(batch.observations):
                        redirects = await self._redirect_duplicates(batch.observations)
                    cursor = await conn.execute("UPDATE writers SET frontier = ? WHERE token = ?",
                                                (self._frontier(), self._token))
                    if cursor.rowcount != 1:
                        # another process took this writer for gone: the text index may have
                        # passed its frontier, so its rows would stay unindexed. Fail loudly.
                        raise StoreError(str(self.path), "this writer's row in `writers` is gone "
                                         "(another process took it for ended): not committing")
                if batch.changes:
                    changes = batch.changes
                    if self._redirects or redirects:
                        changes = [self._redirected(row, redirects) for row in changes]
                    await conn.executemany(_INSERT_CHANGE, changes)
                if batch.findings:
                    await conn.executemany(_INSERT_FINDING, batch.findings)
                if batch.experiments:
                    await conn.executemany(_INSERT_EXPERIMENT, batch.experiments)
                for sql, params in batch.updates:
                    await conn.execute(sql, params)
                await conn.execute("COMMIT")
                if redirects:
                    self._keep_redirects(redirects)
            except BaseException:
                # After a cancelled executemany its rows are in the transaction anyway:
                # the rollback (queued behind it on the connection's thread) drops them.
                self._requeue(batch)
                with anyio.CancelScope(shield=True):
                    try:
                        await conn.rollback()
                    except sqlite3.Error:
                        pass
                raise
        # Here, not in _commit: this task completes even when the writer task is cancelled.
        self._committed_seq = max(self._committed_seq, batch.seq)
        self._release_waiters()

    def _frontier(self) -> int:
        """The lowest observation id this writer may still commit (see schema migration 4)."""
        queued = self._queue.observations
        return queued[0][_ID] if queued else self._ids["observations"].lowest()

    def _want_spare(self, table: str) -> None:
        """Reserve `table`'s next block in a short transaction of its own on this writer's
        connection (under its lock: between two commits, never inside one), in a task."""
        task = self._reserving.get(table)
        if task is not None and not task.done():
            return
        self._reserving[table] = asyncio.ensure_future(self._reserve_spare(table))

    async def _reserve_spare(self, table: str) -> None:
        block = self._ids[table]

        async def statements(conn: aiosqlite.Connection) -> tuple[int, int]:
            ((end,),) = await conn.execute_fetchall(ids.reserve_statement(table), (block.size, table))
            return end - block.size, end

        for attempt in range(_BUSY_RETRIES + 1):
            if not block.wants_spare() or self._stopping or self._failure is not None:
                return
            try:
                reserved = await self._transaction(statements, f"cannot reserve {table} ids")
            except _Busy:
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            except Exception as exc:  # closed, failing, or a broken file: said when ids run out
                self._spare_error = exc
                return
            self._spare_error = None
            block.add_block(*reserved)
            return

    async def _redirect_duplicates(self, rows: list[tuple]) -> dict[int, int]:
        """For each event or log line the unique key refused: map an event's id to the row
        already stored, and link that row to this run when another run stored it. Returns
        this batch's redirects (whole: the batch's changes are remapped from them, while
        `self._redirects`, for later batches, keeps only the newest `_REDIRECT_SIZE`)."""
        redirects: dict[int, int] = {}
        stored = {r[0] for r in await self._conn.execute_fetchall(
            "SELECT id FROM observations WHERE id BETWEEN ? AND ?", (rows[0][_ID], rows[-1][_ID]))}
        links = []
        for row in rows:
            if row[_ID] in stored:
                continue
            if row[_KIND] == "event":
                found = await self._conn.execute_fetchall(_STORED_EVENT, (
                    row[_TARGET], row[_CONTAINER_ID], row[_STATUS], row[_AT_NS]))
            else:
                found = await self._conn.execute_fetchall(_STORED_LOG, (
                    row[_TARGET], row[_CONTAINER], row[_AT_NS], row[_SEQ]))
            if not found:
                continue
            found_id, found_run = found[0]
            if row[_RUN_ID] is not None and found_run != row[_RUN_ID]:
                links.append((row[_RUN_ID], found_id, row[_ID]))
            if row[_KIND] == "event":
                redirects[row[_ID]] = found_id
                self._remember_event((row[_RUN_ID], row[_TARGET], row[_CONTAINER_ID], row[_STATUS],
                                      row[_AT_NS]), found_id)
        if links:
            await self._conn.executemany(_INSERT_LINK, links)
        return redirects

    def _keep_redirects(self, redirects: dict[int, int]) -> None:
        """After a commit: keep the newest `_REDIRECT_SIZE` redirects for later batches."""
        self._redirects.update(redirects)
        while len(self._redirects) > _REDIRECT_SIZE:
            del self._redirects[next(iter(self._redirects))]

    def _redirected(self, change_row: tuple, redirects: dict[int, int]) -> tuple:
        target_id = redirects.get(change_row[1])
        if target_id is None:
            target_id = self._redirects.get(change_row[1])
        if target_id is None:
            return change_row
        return (change_row[0], target_id, *change_row[2:])

    async def _checkpoint(self) -> None:
        """Checkpoint the WAL. A writer alone in `writers` runs a TRUNCATE checkpoint with a
        short busy timeout (as a single writer always did: the WAL file shrinks back);
        with other writers, the upkeep holder runs a PASSIVE one: it copies what no reader
        still needs and never takes the write lock, so other writers never wait for it."""
        async with self._conn_lock:
            ((others,),) = await self._conn.execute_fetchall(
                "SELECT count(*) FROM writers WHERE token != ?", (self._token,))
            if not others:
                await self._conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_BUSY_MS}")
                try:
                    await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    await self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            elif self._upkeep:
                await self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- bookkeeping -----------------------------------------------------------------------

    def _remember_event(self, key: tuple, obs_id: int) -> None:
        self._event_ids[key] = obs_id
        if len(self._event_ids) > _EVENT_INDEX_SIZE:
            del self._event_ids[next(iter(self._event_ids))]

    def _take(self) -> _Batch:
        batch, self._queue = self._queue, _Batch()
        batch.seq = self._queued_seq
        self._pending = 0
        return batch

    def _requeue(self, batch: _Batch) -> None:
        queue = self._queue
        self._queue = _Batch(batch.runs + queue.runs, batch.observations + queue.observations,
                             batch.changes + queue.changes, batch.findings + queue.findings,
                             batch.experiments + queue.experiments, batch.updates + queue.updates)
        self._pending += len(batch)

    def _release_waiters(self) -> None:
        done = self._committed_seq
        keep = []
        for target, waiter in self._waiters:
            if target <= done:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append((target, waiter))
        self._waiters = keep

    def _fail(self, exc: BaseException) -> None:
        """Record a failure (the first one wins) and fail every waiting flush with it."""
        if self._failure is None and not isinstance(exc, StoreClosed):
            self._failure = exc
        error: BaseException = (StoreWriteFailed(str(self.path), self._failure)
                                if self._failure is not None else exc)
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters = []


class _Opening:
    """What `StoreWriter.open` returns: await it, or use it as an async context manager."""

    def __init__(self, path: Path, patterns: tuple[str, ...], options: dict[str, Any]) -> None:
        self._args = (path, patterns, options)
        self._writer: StoreWriter | None = None

    def __await__(self):
        return StoreWriter._open(*self._args).__await__()

    async def __aenter__(self) -> StoreWriter:
        self._writer = await StoreWriter._open(*self._args)
        return self._writer

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._writer is not None
        await self._writer.close()


def _match_mode(path: Path) -> None:
    """Give -wal and -shm the database file's mode (0600 when we created it)."""
    mode = path.stat().st_mode & 0o777
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        try:
            if side.stat().st_mode & 0o777 != mode:
                side.chmod(mode)
        except FileNotFoundError:
            pass


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
