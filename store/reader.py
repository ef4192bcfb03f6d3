"""Read-only access to a store: runs, observations, changes, findings, experiments, SQL.

A reader opens its own connection (`file:...?mode=ro`, `query_only=1`, a REGEXP function),
so it never slows the writer and can never change the file. Long listings are read in
keyset pages (after the last row's (at_ns, id), see `store.query`), never through one open
cursor: an open read transaction keeps the writer from recycling the WAL
(docs/library-facts.md, SQLite). The connection is plain sqlite3: CLI readers call it
directly, the asyncio watcher through `asyncio.to_thread` (one call at a time per reader).

Three ways to read observations, cheapest first: `select` (a query subject's columns, as
dicts; nothing rebuilt), `observation_rows` (the raw rows), `observation_records` /
`observations` / `arrival_records` (observation values, rebuilt from the row: ~4 us a row,
most of it the JSON; replay can leave out the text of log lines that are no errors).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import quote

from machines.observations import (
    ActionObs,
    AgentObs,
    EventObs,
    LogObs,
    Observation,
    ProbeObs,
    SnapshotObs,
)
from store import query as q
from store import schema
from store.errors import NoRun, NoStore, NotAStore, StoreError, StoreVersionError
from store.records import (
    ChangeRecord,
    ContainerCounts,
    ExperimentRecord,
    FindingRecord,
    ObservationRecord,
    RunRecord,
)

PAGE_SIZE = q.PAGE_SIZE

_FINDING_COLUMNS = "id, run_id, target, container, rule, severity, message, cause, fix, evidence, at_ns"
_EXPERIMENT_COLUMNS = "id, run_id, kind, subject, started_ns, ended_ns, verdict, steps"
_RUN_COLUMNS = "id, command, targets, started_ns, ended_ns, verdict, config, pid"
_OBS_COLUMNS = ", ".join(q.OBSERVATION_COLUMNS)
# replay's lean rows: a log line that is no error comes without its text (data NULL)
_LEAN_COLUMNS = _OBS_COLUMNS.replace(
    ", data", ", CASE WHEN kind = 'log' AND coalesce(is_error, 0) = 0 THEN NULL ELSE data END")

# a row that is not a log line without an error (the columns are the observation's)
_NOT_QUIET_LOG = "(kind <> 'log' OR coalesce(is_error, 0) <> 0)"

_CLASSES: dict[str, type] = {str(cls.kind): cls for cls in
                             (EventObs, LogObs, SnapshotObs, ProbeObs, ActionObs, AgentObs)}
# The fields `data` may hold, per class (what obs_from_record accepts from it).
_DATA_FIELDS: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in dataclasses.fields(cls)) - {"target", "container", "at_ns", "seq"}
    for cls in _CLASSES.values()}
_loads = json.loads


def decode_observation(kind: str, target: str, container: str, at_ns: int, status: str | None,
                       container_id: str | None, seq: int | None, is_error: int | None,
                       data: str | None) -> Observation:
    """The observation a stored row holds: `data` plus the fields kept in columns (a column
    that is set wins; rows from before schema migration 3 still carry them in `data`).

    `data` None stands for a lean log line (no text). Raises ValueError for an unknown
    kind or bad JSON, TypeError / KeyError for fields that do not fit.
    """
    if kind == "log":
        if data is None:
            return LogObs(target, container, int(at_ns), "", "", bool(is_error), 0 if seq is None else int(seq))
        fields = _loads(data)
        if type(fields) is dict and fields.keys() <= _DATA_FIELDS[LogObs]:
            return LogObs(target, container, int(at_ns), fields["line"], fields.get("stream", "stdout"),
                          bool(is_error) if is_error is not None else fields.get("is_error", False),
                          0 if seq is None else int(seq), fields.get("resume"))
    else:
        fields = _loads(data)
    try:
        cls = _CLASSES[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}") from None
    if not isinstance(fields, dict):
        raise TypeError(f"data is not a JSON object: {data[:80]!r}")
    known = _DATA_FIELDS[cls]
    kwargs = {key: value for key, value in fields.items() if key in known}
    if kind == "event":
        if container_id is not None:
            kwargs["container_id"] = container_id
        if status is not None:
            kwargs["status"] = status
        if "attributes" in kwargs:
            kwargs["attributes"] = tuple(sorted((str(k), str(v)) for k, v in dict(kwargs["attributes"]).items()))
    elif kind == "snapshot" and container_id is not None:
        kwargs["container_id"] = container_id
    elif kind == "log":
        if is_error is not None:
            kwargs["is_error"] = bool(is_error)
        if seq is not None:
            kwargs["seq"] = int(seq)
    return cls(target=target, container=container, at_ns=int(at_ns), **kwargs)


def _where(**filters: Any) -> tuple[list[str], list[Any]]:
    """SQL conditions for the filters that are not None (for the small tables)."""
    clauses: list[str] = []
    params: list[Any] = []
    for name, value in filters.items():
        if value is None:
            continue
        clauses.append(f"{name} = ?")
        params.append(value)
    return clauses, params


def _json(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


class StoreReader:
    """A read-only view of one store file. Use as a context manager or call `close()`."""

    def __init__(self, path: str | Path, *, page_size: int = PAGE_SIZE) -> None:
        """Open `path` read-only. Raises NoStore, NotAStore, StoreVersionError, StoreError."""
        self.path = Path(path)
        self.page_size = page_size
        if not self.path.is_file():
            raise NoStore(str(self.path))
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"cannot open read-only: {exc}") from None
        try:
            self._conn.execute("PRAGMA query_only = 1")
            self._conn.execute("PRAGMA busy_timeout = 5000")
            q.register_functions(self._conn)
            version = schema.schema_version(self._conn)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if "not a database" in str(exc):
                raise NotAStore(str(self.path), "not an SQLite file: check --db") from None
            raise StoreError(str(self.path), f"cannot read: {exc}") from None
        if version != schema.LATEST_VERSION:
            self._conn.close()
            if version == 0:
                raise NotAStore(str(self.path), "no podwarden schema in it: check --db, or run "
                                                "`podwarden watch` first")
            raise StoreVersionError(str(self.path), version, schema.LATEST_VERSION)
        self.schema_version = version

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"read failed: {exc}") from None

    def _decoded(self, rows: Iterator[tuple]) -> Iterator[ObservationRecord]:
        for oid, rid, target, container, at_ns, kind, status, container_id, seq, is_error, data in rows:
            try:
                obs = decode_observation(kind, target, container, at_ns, status, container_id, seq,
                                         is_error, data)
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreError(str(self.path), f"observation {oid} cannot be read back: "
                                                 f"{type(exc).__name__}: {exc}") from None
            yield ObservationRecord(oid, rid, obs)

    # -- query subjects (podwarden query) ------------------------------------------------

    def select(self, subject: str, filters: q.Filters | None = None,
               **filter_values: Any) -> Iterator[dict[str, Any]]:
        """Rows of a query subject (`store.query.SUBJECTS`: events, logs, changes, findings,
        runs, experiments, actions, ...) as JSON-ready dicts, in time order; filters as a
        `Filters` or as its keywords. Raises QueryRejected, StoreError."""
        filters = dataclasses.replace(filters or q.Filters(), **filter_values)
        return q.dicts(self._conn, str(self.path), subject, filters, page_size=self.page_size)

    def select_rows(self, subject: str, filters: q.Filters | None = None,
                    **filter_values: Any) -> tuple[list[str], Iterator[tuple]]:
        """`select` as (column names, tuples): the cheapest way to stream a subject."""
        filters = dataclasses.replace(filters or q.Filters(), **filter_values)
        spec = q.SUBJECTS.get(subject)
        rows = q.select(self._conn, str(self.path), subject, filters, page_size=self.page_size)
        return (spec.names if spec else []), rows

    # -- runs --------------------------------------------------------------------------

    @staticmethod
    def _run(row: tuple) -> RunRecord:
        rid, command, targets, started, ended, verdict, config, pid = row
        return RunRecord(rid, command, tuple(_json(targets, [])), started, ended, verdict,
                         _json(config, {}), pid)

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        return [self._run(r) for r in self._fetch(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY id")]

    def run(self, run_id: int) -> RunRecord:
        """One run; raises NoRun."""
        rows = self._fetch(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise NoRun(str(self.path), run_id)
        return self._run(rows[0])

    def last_run(self, command: str | None = None) -> RunRecord | None:
        """The newest run (of `command` if given), None if there is none."""
        clauses, params = _where(command=command)
        rows = self._fetch(f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(clauses) or '1'} "
                           "ORDER BY id DESC LIMIT 1", params)
        return self._run(rows[0]) if rows else None

    # -- observations --------------------------------------------------------------------

    def observation_rows(self, target: str | None = None, container: str | None = None,
                         kind: str | None = None, since_ns: int | None = None,
                         until_ns: int | None = None, run_id: int | None = None,
                         status: str | None = None, limit: int | None = None) -> Iterator[tuple]:
        """Stored observation rows as tuples (`store.query.OBSERVATION_COLUMNS`: id, run_id,
        target, container, at_ns, kind, status, container_id, seq, is_error, data), in
        (at_ns, id) order; `until_ns` is exclusive. Raises StoreError."""
        return q.select(self._conn, str(self.path), "observations", q.Filters(
            target=target, container=container, kind=kind, status=status, since_ns=since_ns,
            until_ns=until_ns, run_id=run_id, limit=limit), page_size=self.page_size)

    def observation_records(self, target: str | None = None, container: str | None = None,
                            kind: str | None = None, since_ns: int | None = None,
                            until_ns: int | None = None, run_id: int | None = None,
                            status: str | None = None,
                            limit: int | None = None) -> Iterator[ObservationRecord]:
        """Stored observations with their ids, in (at_ns, id) order; `until_ns` is exclusive."""
        return self._decoded(self.observation_rows(target, container, kind, since_ns, until_ns,
                                                   run_id, status, limit))

    def observations(self, target: str | None = None, container: str | None = None,
                     kind: str | None = None, since_ns: int | None = None,
                     until_ns: int | None = None, run_id: int | None = None,
                     status: str | None = None, limit: int | None = None) -> Iterator[Observation]:
        """Stored observations rebuilt as values, in (at_ns, id) order."""
        for record in self.observation_records(target, container, kind, since_ns, until_ns,
                                               run_id, status, limit):
            yield record.obs

    def arrival_records(self, run_id: int | None = None, since_ns: int | None = None,
                        until_ns: int | None = None, target: str | None = None, *,
                        lean_logs: bool = False, quiet_logs: bool = True) -> Iterator[ObservationRecord]:
        """Stored observations in id order, the order they arrived in (what live fed the
        machines), keyset-paged by id; `until_ns` is exclusive.

        With `run_id`, the run's shared observations (events and log lines another run
        stored first, `run_observations`) come in at the place the run saw them. Ids
        follow arrival within one writer only: without `run_id`, the rows of writers that
        wrote the window at the same time come block by block.

        `lean_logs`: a log line that is no error comes without its text (`line` and
        `stream` ""): the machines only read the text of error lines, and the JSON is most
        of a row's cost. `quiet_logs=False`: no log line that is no error at all (it changes
        no machine's state: a pass that needs the machines' states and not which containers
        logged reads a tenth of a night's rows). Rows stored after the first page is read are
        not included. Raises StoreError.
        """
        columns = _LEAN_COLUMNS if lean_logs else _OBS_COLUMNS
        extra = [] if quiet_logs else [_NOT_QUIET_LOG]
        own = self._own_arrivals(columns, run_id, since_ns, until_ns, target, extra)
        if run_id is None:
            yield from self._decoded(own)
            return
        linked = self._linked_arrivals(columns, run_id, since_ns, until_ns, target, extra)
        merged = heapq.merge(((row[0], row) for row in own), linked, key=lambda pair: pair[0])
        yield from self._decoded(row for _, row in merged)

    def _linked_arrivals(self, columns: str, run_id: int, since_ns: int | None, until_ns: int | None,
                         target: str | None, extra: list[str]) -> Iterator[tuple[int, tuple]]:
        """(position, row) of a run's shared observations, by position, keyset-paged."""
        clauses, params = self._window(since_ns, until_ns, target=target)
        clauses += extra
        # the window's columns (at_ns, target) are the observation's: run_observations has none
        sql = (f"SELECT position, {columns} FROM (SELECT l.position AS position, o.* "
               "FROM run_observations l JOIN observations o ON o.id = l.observation_id "
               f"WHERE {' AND '.join(['l.run_id = ?', 'l.position > ?', *clauses])}) "
               "ORDER BY position LIMIT ?")
        after = -1 << 63
        while True:
            rows = self._fetch(sql, (run_id, after, *params, self.page_size))
            for position, *row in rows:
                yield position, tuple(row)
            if len(rows) < self.page_size:
                return
            after = rows[-1][0]

    def _own_arrivals(self, columns: str, run_id: int | None, since_ns: int | None,
                      until_ns: int | None, target: str | None, extra: list[str]) -> Iterator[tuple]:
        clauses, params = self._window(since_ns, until_ns, run_id=run_id, target=target)
        clauses += extra
        low, high = self._id_bounds(run_id, since_ns, until_ns)
        if low is None:
            return
        # NOT INDEXED: walk the id range (ids follow time closely); another index plus a
        # sort would read the whole range for every page
        sql = (f"SELECT {columns} FROM observations NOT INDEXED WHERE id >= ? AND id <= ? "
               f"{''.join(' AND ' + c for c in clauses)} ORDER BY id LIMIT ?")
        while True:
            rows = self._fetch(sql, (low, high, *params, self.page_size))
            yield from rows
            if len(rows) < self.page_size:
                return
            low = rows[-1][0] + 1

    def _id_bounds(self, run_id: int | None, since_ns: int | None,
                   until_ns: int | None) -> tuple[int | None, int | None]:
        """The lowest and highest id of the rows a run and a window hold (one index scan)."""
        window, params = self._window(since_ns, until_ns)
        if run_id is not None:
            index, where = "observations_run_at", ["run_id = ?", *window]
            params.insert(0, run_id)
        elif window:
            index, where = "observations_at", window
        else:
            return tuple(self._fetch("SELECT (SELECT min(id) FROM observations), "
                                     "(SELECT max(id) FROM observations)")[0])
        return tuple(self._fetch(f"SELECT min(id), max(id) FROM observations INDEXED BY {index} "
                                 f"WHERE {' AND '.join(where)}", params)[0])

    def time_bounds(self, run_id: int) -> tuple[int | None, int | None]:
        """The first and last at_ns of a run's own observations (two seeks in its index)."""
        return tuple(self._fetch("SELECT min(at_ns), max(at_ns) FROM observations INDEXED BY observations_run_at "
                                 "WHERE run_id = ?", (run_id,))[0])

    def last_snapshots_before(self, at_ns: int, target: str | None = None) -> list[ObservationRecord]:
        """The newest snapshot of each (target, container) stored before `at_ns` (the state a
        replay from `at_ns` starts from), ordered by target and container. Raises StoreError."""
        try:
            pairs = q.containers_of(self._conn, "observations_snapshots", "kind = 'snapshot'",
                                    None if target is None else (target,))
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"read failed: {exc}") from None
        rows = []
        for pair_target, container in pairs:
            rows.extend(self._fetch(
                f"SELECT {_OBS_COLUMNS} FROM observations INDEXED BY observations_snapshots "
                "WHERE kind = 'snapshot' AND target = ? AND container = ? AND at_ns < ? "
                "ORDER BY at_ns DESC, id DESC LIMIT 1", (pair_target, container, at_ns)))
        return list(self._decoded(iter(rows)))

    def event_count(self, target: str | None = None, container: str | None = None,
                    status: str | None = None, since_ns: int | None = None,
                    until_ns: int | None = None, run_id: int | None = None) -> int:
        """How many podman events match."""
        clauses, params = self._window(since_ns, until_ns, kind="event", target=target,
                                       container=container, status=status, run_id=run_id)
        return self._fetch(f"SELECT count(*) FROM observations WHERE {' AND '.join(clauses)}",
                           params)[0][0]

    def container_counts(self, since_ns: int | None = None, until_ns: int | None = None,
                         target: str | None = None, run_id: int | None = None) -> list[ContainerCounts]:
        """Deaths, state changes and error log lines of every container that had any in
        the window (`until_ns` exclusive), ordered by target and container. Raises StoreError."""
        parts = (self.death_counts(since_ns, until_ns, target, run_id),
                 self.change_counts(since_ns, until_ns, target, run_id),
                 self.error_line_counts(since_ns, until_ns, target, run_id))
        keys = sorted(set().union(*parts))
        return [ContainerCounts(*key, *(part.get(key, 0) for part in parts)) for key in keys]

    def death_counts(self, since_ns: int | None = None, until_ns: int | None = None,
                     target: str | None = None, run_id: int | None = None) -> dict[tuple[str, str], int]:
        """podman `died` events per (target, container) in the window. Raises StoreError."""
        clauses, params = self._window(since_ns, until_ns, target=target, run_id=run_id)
        where = " AND ".join(["kind = 'event'", "status = 'died'", *clauses])
        rows = self._fetch("SELECT target, container, count(*) FROM observations INDEXED BY observations_kind_at "
                           f"WHERE {where} GROUP BY target, container", params)
        return {(t, c): n for t, c, n in rows}

    def change_counts(self, since_ns: int | None = None, until_ns: int | None = None,
                      target: str | None = None, run_id: int | None = None) -> dict[tuple[str, str], int]:
        """State changes per (target, container) in the window. Raises StoreError."""
        clauses, params = self._window(since_ns, until_ns, target=target, run_id=run_id)
        rows = self._fetch(f"SELECT target, container, count(*) FROM changes WHERE {' AND '.join(clauses) or '1'} "
                           "GROUP BY target, container", params)
        return {(t, c): n for t, c, n in rows}

    def error_line_counts(self, since_ns: int | None = None, until_ns: int | None = None,
                          target: str | None = None, run_id: int | None = None) -> dict[tuple[str, str], int]:
        """Error log lines per (target, container) in the window, on the partial index
        `observations_log_errors`: one pass over it without a window, one range count per
        container with one. Raises StoreError."""
        clauses, params = self._window(since_ns, until_ns, run_id=run_id)
        if since_ns is None and until_ns is None:
            scope, scope_params = _where(target=target)
            where = " AND ".join(["kind = 'log'", "is_error = 1", *scope, *clauses])
            rows = self._fetch("SELECT target, container, count(*) FROM observations "
                               f"INDEXED BY observations_log_errors WHERE {where} "
                               "GROUP BY target, container", [*scope_params, *params])
            return {(t, c): n for t, c, n in rows}
        try:
            pairs = q.containers_of(self._conn, "observations_log_errors", "kind = 'log' AND is_error = 1",
                                    None if target is None else (target,))
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"read failed: {exc}") from None
        where = " AND ".join(["kind = 'log'", "is_error = 1", "target = ?", "container = ?", *clauses])
        counts = {}
        for pair in pairs:
            ((count,),) = self._fetch("SELECT count(*) FROM observations INDEXED BY observations_log_errors "
                                      f"WHERE {where}", [*pair, *params])
            if count:
                counts[pair] = count
        return counts

    @staticmethod
    def _window(since_ns: int | None, until_ns: int | None, **filters: Any) -> tuple[list[str], list[Any]]:
        clauses, params = _where(**filters)
        if since_ns is not None:
            clauses.append("at_ns >= ?")
            params.append(since_ns)
        if until_ns is not None:
            clauses.append("at_ns < ?")
            params.append(until_ns)
        return clauses, params

    # -- changes, findings, experiments ------------------------------------------------------

    def changes(self, target: str | None = None, container: str | None = None,
                since_ns: int | None = None, until_ns: int | None = None,
                run_id: int | None = None, limit: int | None = None) -> Iterator[ChangeRecord]:
        """Stored state changes in (at_ns, id) order."""
        rows = q.select(self._conn, str(self.path), "changes", q.Filters(
            target=target, container=container, run_id=run_id, since_ns=since_ns, until_ns=until_ns,
            limit=limit), page_size=self.page_size)
        for row in rows:
            *head, contradiction, obs_kind = row
            yield ChangeRecord(*head, bool(contradiction), obs_kind)

    def findings(self, run_id: int | None = None, target: str | None = None,
                 container: str | None = None, rule: str | None = None,
                 severity: str | None = None) -> list[FindingRecord]:
        """Stored findings in (at_ns, id) order."""
        clauses, params = _where(run_id=run_id, target=target, container=container, rule=rule,
                                 severity=severity)
        rows = self._fetch(f"SELECT {_FINDING_COLUMNS} FROM findings "
                           f"WHERE {' AND '.join(clauses) or '1'} ORDER BY at_ns, id", params)
        return [FindingRecord(*r[:9], _json(r[9], []), r[10]) for r in rows]

    def experiments(self, run_id: int | None = None, kind: str | None = None,
                    subject: str | None = None) -> list[ExperimentRecord]:
        """Stored experiments, oldest first."""
        clauses, params = _where(run_id=run_id, kind=kind, subject=subject)
        rows = self._fetch(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments "
                           f"WHERE {' AND '.join(clauses) or '1'} ORDER BY started_ns, id", params)
        return [ExperimentRecord(*r[:7], _json(r[7], [])) for r in rows]

    # -- user SQL ----------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (),
              limit: int | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only SQL statement; return (column names, rows).

        Raises QueryRejected for a write, several statements, ATTACH, or invalid SQL.
        """
        columns, rows = self.user_sql(sql, params)
        if limit is None:
            return columns, list(rows)
        taken = []
        for row in rows:
            if len(taken) >= limit:
                break
            taken.append(row)
        rows.close()
        return columns, taken

    def user_sql(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
                 ) -> tuple[list[str], Iterator[tuple]]:
        """`query`, streamed: (column names, an iterator of rows; close it to stop early).

        Raises QueryRejected for a write, several statements, ATTACH, or invalid SQL.
        """
        columns, cursor = q.user_sql(self._conn, str(self.path), sql, params)
        return columns, q.user_rows(cursor, str(self.path))
