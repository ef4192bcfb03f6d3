"""Read-only access to a store: runs, observations, changes, findings, experiments, SQL.

A reader opens its own connection (`file:...?mode=ro`, `query_only=1`), so it never
slows the writer and can never change the file. Long listings are read in pages with
keyset queries (`(at_ns, id) > last`), never through one open cursor: an open read
transaction keeps the writer from recycling the WAL (LIBRARIES.md). The connection is
plain sqlite3: CLI readers call it directly, the asyncio watcher through
`asyncio.to_thread` (one call at a time per reader).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote

from machines.observations import Observation, obs_from_record
from store import schema
from store.errors import NoRun, NoStore, NotAStore, QueryRejected, StoreError, StoreVersionError
from store.records import ChangeRecord, ExperimentRecord, FindingRecord, ObservationRecord, RunRecord

PAGE_SIZE = 5000

_OBS_COLUMNS = "id, run_id, target, container, at_ns, kind, data"
_CHANGE_COLUMNS = ("id, observation_id, run_id, target, container, at_ns, from_state, to_state, "
                   "cause, contradiction, obs_kind")
_FINDING_COLUMNS = "id, run_id, target, container, rule, severity, message, cause, fix, evidence, at_ns"
_EXPERIMENT_COLUMNS = "id, run_id, kind, subject, started_ns, ended_ns, verdict, steps"
_RUN_COLUMNS = "id, command, targets, started_ns, ended_ns, verdict, config, pid"

# Pragmas a user query may not run (mode=ro already makes every write fail).
_DENIED_PRAGMAS = frozenset({"query_only", "writable_schema", "journal_mode", "wal_checkpoint",
                             "locking_mode", "trusted_schema"})


def _where(**filters: Any) -> tuple[list[str], list[Any]]:
    """SQL conditions for the filters that are not None (`since_ns` inclusive, `until_ns` not)."""
    clauses: list[str] = []
    params: list[Any] = []
    for name, value in filters.items():
        if value is None:
            continue
        if name == "since_ns":
            clauses.append("at_ns >= ?")
        elif name == "until_ns":
            clauses.append("at_ns < ?")
        elif name == "target" and filters.get("container") is None:
            # Unary + keeps SQLite off the (target, container, at_ns) index, which cannot
            # give at_ns order without container and would sort every match per page.
            clauses.append("+target = ?")
        else:
            clauses.append(f"{name} = ?")
        params.append(str(value) if name == "kind" else value)
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

    def _pages(self, table: str, columns: str, clauses: list[str], params: list[Any],
               limit: int | None) -> Iterator[tuple]:
        """Rows of `table` in (at_ns, id) order, one keyset page at a time (`columns`
        starts with id and includes at_ns)."""
        names = [c.strip() for c in columns.split(",")]
        at_index = names.index("at_ns")
        after: tuple[int, int] | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            where = list(clauses)
            args = list(params)
            if after is not None:
                where.append("(at_ns, id) > (?, ?)")
                args.extend(after)
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._fetch(
                f"SELECT {columns} FROM {table} WHERE {' AND '.join(where) or '1'} "
                f"ORDER BY at_ns, id LIMIT ?", [*args, size])
            yield from rows
            if len(rows) < size:
                return
            if remaining is not None:
                remaining -= len(rows)
            after = (rows[-1][at_index], rows[-1][0])

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

    def observation_records(self, target: str | None = None, container: str | None = None,
                            kind: str | None = None, since_ns: int | None = None,
                            until_ns: int | None = None, run_id: int | None = None,
                            status: str | None = None,
                            limit: int | None = None) -> Iterator[ObservationRecord]:
        """Stored observations with their ids, in (at_ns, id) order; `until_ns` is exclusive."""
        clauses, params = _where(target=target, container=container, kind=kind, status=status,
                                 run_id=run_id, since_ns=since_ns, until_ns=until_ns)
        for oid, rid, tgt, ctr, at_ns, knd, data in self._pages(
                "observations", _OBS_COLUMNS, clauses, params, limit):
            try:
                obs = obs_from_record(knd, tgt, ctr, at_ns, data)
            except (ValueError, TypeError) as exc:
                raise StoreError(str(self.path), f"observation {oid} cannot be read back: {exc}") from None
            yield ObservationRecord(oid, rid, obs)

    def observations(self, target: str | None = None, container: str | None = None,
                     kind: str | None = None, since_ns: int | None = None,
                     until_ns: int | None = None, run_id: int | None = None,
                     status: str | None = None, limit: int | None = None) -> Iterator[Observation]:
        """Stored observations rebuilt as values, in (at_ns, id) order (what replay feeds)."""
        for record in self.observation_records(target, container, kind, since_ns, until_ns,
                                               run_id, status, limit):
            yield record.obs

    def event_count(self, target: str | None = None, container: str | None = None,
                    status: str | None = None, since_ns: int | None = None,
                    until_ns: int | None = None, run_id: int | None = None) -> int:
        """How many podman events match."""
        clauses, params = _where(kind="event", target=target, container=container, status=status,
                                 run_id=run_id, since_ns=since_ns, until_ns=until_ns)
        return self._fetch(f"SELECT count(*) FROM observations WHERE {' AND '.join(clauses)}",
                           params)[0][0]

    # -- changes, findings, experiments ------------------------------------------------------

    def changes(self, target: str | None = None, container: str | None = None,
                since_ns: int | None = None, until_ns: int | None = None,
                run_id: int | None = None, limit: int | None = None) -> Iterator[ChangeRecord]:
        """Stored state changes in (at_ns, id) order."""
        clauses, params = _where(target=target, container=container, run_id=run_id,
                                 since_ns=since_ns, until_ns=until_ns)
        for row in self._pages("changes", _CHANGE_COLUMNS, clauses, params, limit):
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

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = (),
              limit: int | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only SQL statement; return (column names, rows).

        Raises QueryRejected for a write, several statements, ATTACH, or invalid SQL.
        """
        if not sql.strip():
            raise QueryRejected(str(self.path), "empty query")
        self._conn.set_authorizer(_deny_escape)
        try:
            cursor = self._conn.execute(sql, params)
            rows = cursor.fetchall() if limit is None else cursor.fetchmany(limit)
            columns = [d[0] for d in cursor.description or ()]
            cursor.close()
        except sqlite3.ProgrammingError as exc:
            if "one statement" in str(exc):
                raise QueryRejected(str(self.path), "one statement at a time, please "
                                                    "(remove the extra `;` statements)") from None
            raise QueryRejected(str(self.path), f"invalid query: {exc}") from None
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "readonly" in text or "read-only" in text:
                raise QueryRejected(str(self.path), "the store is read-only here: queries can "
                                                    f"only read ({text})") from None
            if "not authorized" in text:
                raise QueryRejected(str(self.path), "ATTACH, DETACH and settings pragmas are "
                                                    "not allowed in queries") from None
            raise QueryRejected(str(self.path), f"invalid query: {text}") from None
        finally:
            self._conn.set_authorizer(None)
        return columns, rows


def _deny_escape(action: int, arg1: str | None, arg2: str | None, db: str | None,
                 trigger: str | None) -> int:
    """Authorizer for user SQL: no ATTACH/DETACH (they could create files), no mode pragmas."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _DENIED_PRAGMAS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK
