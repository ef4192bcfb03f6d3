"""Filters turned into read-only SQL, rows streamed as tuples or JSON-ready dicts: the store
side of `podwarden query`, and the paging engine under `StoreReader`.

A subject (`events`, `logs`, `changes`, ...) names a table, the observation kind its rows
have and the columns it shows, each an SQL expression (`json_extract` for fields inside
`data`), so rows come out of SQLite ready to print: no observation is rebuilt. `select`
plans a query on the indexes made for it (schema migrations 1-3) and reads it in keyset
pages, each starting after the last row's (time, id): a page costs what it returns, never
a rescan from the start of the window (docs/library-facts.md, SQLite: no cursor stays open
between pages). The plans, by the filters given:

- a container (with or without a target): one branch per (target, container), each in
  time order on `observations_target_container_at`, merged in Python; the targets come
  from the index itself (a skip scan: one seek per target);
- error log lines: the same per pair, on the partial index `observations_log_errors`;
- a run: `observations_run_at`; a target alone: per container for logs, otherwise the
  kind's time index; nothing: the kind's time index (`observations_kind_at`) or the time
  index;
- `grep`: a regular expression searched in the log line (`re.search`), always checked by a
  REGEXP function on the read connection. When every match must contain a literal whose
  words the FTS5 index can find exactly (a word with a separator before it, or a word
  prefix at the end: `connection refused` -> `"refused" *`), the candidates come from
  `log_fts` for the ids it covers and from a scan of the few ids it does not cover yet;
  otherwise the rows are scanned, a literal the pattern needs first looked for in C (LIKE
  over `data`, then `instr` in the line).

The order is (time, id) ascending, or descending with `newest_first`; `limit` caps the
rows. Raises QueryRejected for a filter a subject does not have or a bad regex, StoreError
when SQLite fails.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import re
import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from machines.observations import Kind
from store.errors import QueryRejected, StoreError
from store.redact import _required_literal

PAGE_SIZE = 5000
_FIRST_PAGE = 256  # index pages grow from this (see _Branch): a short answer costs a short read
# A text search takes its candidates from the FTS5 index only while the ids the index does
# not cover yet (scanned) are at most this many, and the index finds at most this many.
FTS_TAIL_LIMIT = 100_000
FTS_CANDIDATE_LIMIT = 200_000
_LINE = "json_extract(data, '$.line')"
_KINDS = frozenset(str(kind) for kind in Kind)


# -- filters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """What to select. Text filters take one value or several (any of them matches);
    `since_ns` is inclusive and `until_ns` exclusive; None means no filter. What `kind` and
    `status` compare depends on the subject (`SUBJECTS[name].filters`)."""

    target: str | Sequence[str] | None = None
    container: str | Sequence[str] | None = None
    kind: str | Sequence[str] | None = None
    status: str | Sequence[str] | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    run_id: int | Sequence[int] | None = None
    grep: str | None = None  # logs: a regular expression searched in the line
    errors: bool | None = None  # logs: only error lines (True) or only the others (False)
    limit: int | None = None
    newest_first: bool = False


def _values(value: Any) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        return (value,)
    values = tuple(value)
    return values or None


def _condition(expr: str, values: tuple) -> tuple[str, list[Any]]:
    if len(values) == 1:
        return f"{expr} = ?", [values[0]]
    return f"{expr} IN ({', '.join('?' * len(values))})", list(values)


# -- subjects -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    """What one `podwarden query` subcommand reads: a table (and observation kind), its
    ordering time column, the columns it shows (name, SQL expression) and its filters
    (filter name, SQL expression compared). `decoders` parse JSON columns of small tables."""

    name: str
    table: str
    kind: str | None
    time: str
    columns: tuple[tuple[str, str], ...]
    filters: Mapping[str, str]
    decoders: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    help: str = ""

    @property
    def names(self) -> list[str]:
        """The column names, in row order (`id` first)."""
        return [name for name, _ in self.columns]


def _json_value(text: Any) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _data(name: str) -> str:
    return f"json_extract(data, '$.{name}')"


_OBS_HEAD = (("id", "id"), ("run_id", "run_id"), ("target", "target"), ("container", "container"),
             ("at_ns", "at_ns"))
_OBS_FILTERS = {"target": "target", "container": "container", "run_id": "run_id"}
# The raw row every observation reader starts from: columns, then `data` as stored.
OBSERVATION_COLUMNS = ("id", "run_id", "target", "container", "at_ns", "kind", "status",
                       "container_id", "seq", "is_error", "data")

SUBJECTS: dict[str, Subject] = {s.name: s for s in (
    Subject("events", "observations", "event", "at_ns", _OBS_HEAD + (
        ("status", "status"), ("container_id", "container_id"), ("exit_code", _data("exit_code")),
        ("health_status", _data("health_status")), ("image", _data("image")),
        ("attributes", _data("attributes"))),
        {**_OBS_FILTERS, "status": "status"}, {"attributes": _json_value},
        "podman events (status: podman's event status)"),
    Subject("logs", "observations", "log", "at_ns", _OBS_HEAD + (
        ("stream", _data("stream")), ("is_error", "coalesce(is_error, 0)"), ("seq", "seq"),
        ("line", _LINE)),
        {**_OBS_FILTERS, "kind": _data("stream")}, {},
        "container log lines (kind: stream; errors; grep REGEX)"),
    Subject("snapshots", "observations", "snapshot", "at_ns", _OBS_HEAD + (
        ("container_id", "container_id"), ("exists", _data("exists")), ("status", _data("status")),
        ("health", _data("health")), ("exit_code", _data("exit_code")), ("pid", _data("pid")),
        ("restart_count", _data("restart_count")), ("started_at_ns", _data("started_at_ns")),
        ("finished_at_ns", _data("finished_at_ns")), ("oom_killed", _data("oom_killed")),
        ("restart_policy", _data("restart_policy")), ("image", _data("image"))),
        {**_OBS_FILTERS, "status": _data("status")}, {},
        "podman inspect states (status: podman's State.Status)"),
    Subject("probes", "observations", "probe", "at_ns", _OBS_HEAD + (
        ("probe", _data("probe")), ("probe_type", _data("probe_type")), ("status", "status"),
        ("latency_ms", _data("latency_ms")), ("excerpt", _data("excerpt")), ("detail", _data("detail"))),
        {**_OBS_FILTERS, "kind": _data("probe_type"), "status": "status"}, {},
        "check results (kind: probe type; status: ok/fail)"),
    Subject("actions", "observations", "action", "at_ns", _OBS_HEAD + (
        ("action", _data("action")), ("detail", _data("detail")), ("dry_run", _data("dry_run")),
        ("ok", _data("ok"))),
        {**_OBS_FILTERS, "kind": _data("action")}, {},
        "what podwarden did (kind: the action)"),
    Subject("agent", "observations", "agent", "at_ns", _OBS_HEAD + (
        ("what", _data("what")), ("detail", _data("detail"))),
        {**_OBS_FILTERS, "kind": _data("what")}, {},
        "podwarden's own records: connected, lost, backfilled (kind: what)"),
    Subject("observations", "observations", None, "at_ns",
            tuple((name, name) for name in OBSERVATION_COLUMNS),
            {**_OBS_FILTERS, "kind": "kind", "status": "status"}, {},
            "every stored observation, data as stored (kind: event, log, ...)"),
    Subject("changes", "changes", None, "at_ns", tuple((n, n) for n in (
        "id", "observation_id", "run_id", "target", "container", "at_ns", "from_state", "to_state",
        "cause", "contradiction", "obs_kind")),
        {"target": "target", "container": "container", "run_id": "run_id", "kind": "obs_kind",
         "status": "to_state"}, {},
        "state changes (status: the new state; kind: the observation kind that caused it)"),
    Subject("findings", "findings", None, "at_ns", tuple((n, n) for n in (
        "id", "run_id", "target", "container", "at_ns", "rule", "severity", "message", "cause",
        "fix", "evidence")),
        {"target": "target", "container": "container", "run_id": "run_id", "kind": "rule",
         "status": "severity"}, {"evidence": _json_value},
        "findings (kind: rule; status: severity)"),
    Subject("runs", "runs", None, "started_ns", tuple((n, n) for n in (
        "id", "command", "targets", "started_ns", "ended_ns", "verdict", "pid", "config")),
        {"target": "EXISTS (SELECT 1 FROM json_each(runs.targets) WHERE json_each.value = ?)",
         "run_id": "id", "kind": "command", "status": "verdict"},
        {"targets": _json_value, "config": _json_value},
        "recorded runs (kind: command; status: verdict)"),
    Subject("experiments", "experiments", None, "started_ns", tuple((n, n) for n in (
        "id", "run_id", "kind", "subject", "started_ns", "ended_ns", "verdict", "steps")),
        {"container": "subject", "run_id": "run_id", "kind": "kind", "status": "verdict"},
        {"steps": _json_value},
        "experiments (container: subject; kind: restart/cascade/service; status: verdict)"),
)}


# -- REGEXP on the read connection ------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def regexp(pattern: str | None, text: str | None) -> int | None:
    """SQLite's `text REGEXP pattern`: 1 when `re.search` finds the pattern in the text."""
    if pattern is None or text is None:
        return None
    return 1 if _compiled(pattern).search(text) else 0


def register_functions(conn: sqlite3.Connection) -> None:
    """Give a connection the REGEXP operator (and `regexp(pattern, text)`)."""
    conn.create_function("regexp", 2, regexp, deterministic=True)


# -- the text index ---------------------------------------------------------------------------


def fts_phrase(literal: str | None) -> str | None:
    """An FTS5 query every line containing `literal` matches, or None when there is none.

    The index (`log_fts`: unicode61, digits as separators) splits text into runs of
    letters and folds case. A word of `literal` with a non-letter on both sides is a whole
    word of the line too; the last one, when nothing follows it in `literal`, may go on in
    the line (a prefix); the first one, when nothing precedes it, may be the end of a longer
    word and is left out. Only ASCII literals are used: their separators are the index's
    without doubt.
    """
    if not literal or not literal.isascii():
        return None
    words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"[A-Za-z]+", literal)]
    if words and words[0][0] == 0:
        words = words[1:]  # may be the tail of a longer word
    if not words:
        return None
    prefix = words[-1][1] == len(literal)
    return '"' + " ".join(word for _, _, word in words) + '"' + (" *" if prefix else "")


def _fts_state(conn: sqlite3.Connection) -> tuple[int, int]:
    """(highest observation id the text index covers, how many stored ids are above it, counted
    up to FTS_TAIL_LIMIT + 1). Counted, not max(id) - upto: several writers' id blocks
    leave gaps (store/ids.py)."""
    ((upto,),) = conn.execute("SELECT value FROM store_state WHERE key = 'fts_indexed_upto'").fetchall()
    ((tail,),) = conn.execute("SELECT count(*) FROM (SELECT 1 FROM observations WHERE id > ? LIMIT ?)",
                              (upto, FTS_TAIL_LIMIT + 1)).fetchall()
    return upto, tail


# -- plans ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Branch:
    """One keyset-paged SELECT of a plan: FROM clause, conditions and their parameters.

    `pages`: "index" pages grow from a small first one to 4 times the page size (a short
    answer costs a short read, a long one few statements); every page of a "scan" rereads
    what it filters, so its pages start at the page size and grow to 20 times it;
    "candidates" (the text index's, `n` of them, sorted for every page) come in one page of
    up to 40 times the page size.
    """

    source: str
    conditions: tuple[str, ...]
    params: tuple[Any, ...]
    pages: str = "index"
    n: int = 0


def _skip_scan(conn: sqlite3.Connection, index: str, where: str, params: Sequence[Any],
               columns: Sequence[str]) -> list[tuple]:
    """The distinct values of an index's leading `columns` (under `where`), one seek each."""
    found: list[tuple] = []
    key = ", ".join(columns)
    while True:
        conditions = [where] if where else []
        args = list(params)
        if found:
            conditions.append(f"({key}) > ({', '.join('?' * len(columns))})" if len(columns) > 1
                              else f"{key} > ?")
            args.extend(found[-1])
        row = conn.execute(f"SELECT {key} FROM observations INDEXED BY {index} "
                           f"WHERE {' AND '.join(conditions) or '1'} ORDER BY {key} LIMIT 1",
                           args).fetchone()
        if row is None:
            return found
        found.append(tuple(row))


def containers_of(conn: sqlite3.Connection, index: str = "observations_target_container_at",
                  where: str = "", targets: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """The (target, container) pairs an observation index holds (of `targets` if given)."""
    if targets is None:
        return [tuple(pair) for pair in _skip_scan(conn, index, where, (), ("target", "container"))]
    pairs: list[tuple[str, str]] = []
    for target in targets:
        scope = " AND ".join(filter(None, [where, "target = ?"]))
        pairs.extend((target, container) for (container,) in
                     _skip_scan(conn, index, scope, (target,), ("container",)))
    return pairs


def targets_of(conn: sqlite3.Connection) -> list[str]:
    """Every target with stored observations (one index seek each)."""
    return [target for (target,) in _skip_scan(conn, "observations_target_container_at", "", (),
                                               ("target",))]


def plan(conn: sqlite3.Connection, subject: Subject, filters: Filters) -> list[_Branch]:
    """The branches whose merged rows are the answer (each read in time order).

    Raises QueryRejected for a filter the subject does not have or a bad regex.
    """
    for name in ("target", "container", "kind", "status", "run_id"):
        if getattr(filters, name) is not None and name not in subject.filters:
            raise QueryRejected("", f"`{subject.name}` has no {name} filter "
                                    f"(it has: {', '.join(sorted(subject.filters)) or 'none'})")
    if (filters.grep is not None or filters.errors is not None) and subject.name not in ("logs",):
        raise QueryRejected("", f"grep and errors filter log lines: use `logs`, not `{subject.name}`")
    if subject.table != "observations":
        conditions, params = _filter_conditions(subject, filters, skip=())
        driving = _table_index(subject, filters)
        return [_Branch(f"{subject.table}{driving}", tuple(conditions), tuple(params))]
    return _observation_plan(conn, subject, filters)


def _table_index(subject: Subject, filters: Filters) -> str:
    if subject.table == "changes":
        if filters.target is not None and filters.container is not None:
            return " INDEXED BY changes_target_container_at"
        return " INDEXED BY changes_at"
    if subject.table == "findings":
        return " INDEXED BY findings_at"
    return ""


def _filter_conditions(subject: Subject, filters: Filters,
                       skip: Iterable[str]) -> tuple[list[str], list[Any]]:
    conditions: list[str] = []
    params: list[Any] = []
    for name, expr in subject.filters.items():
        values = _values(getattr(filters, name))
        if values is None or name in skip:
            continue
        if name == "target" and subject.table == "runs":
            conditions.append("(" + " OR ".join([expr] * len(values)) + ")")
            params.extend(values)
            continue
        if name == "kind" and expr == "kind" and all(v in _KINDS for v in values):
            # a literal, so that the partial indexes (WHERE kind = 'log' ...) apply
            conditions.append(f"kind IN ({', '.join(repr(str(v)) for v in values)})")
            continue
        condition, args = _condition(expr, values)
        if name == "run_id" and subject.table == "observations":
            # a run's observations include those another run stored first (run_observations)
            linked, _ = _condition("run_id", values)
            condition = (f"({condition} OR id IN "
                         f"(SELECT observation_id FROM run_observations WHERE {linked}))")
            args = [*args, *args]
        conditions.append(condition)
        params.extend(args)
    return conditions, params


def _observation_plan(conn: sqlite3.Connection, subject: Subject, filters: Filters) -> list[_Branch]:
    kind = subject.kind
    if kind is None:
        kinds = _values(filters.kind)
        if kinds is not None and len(kinds) == 1 and kinds[0] in _KINDS:
            kind = str(kinds[0])
    targets, containers = _values(filters.target), _values(filters.container)
    base: list[str] = [f"kind = '{kind}'"] if kind else []
    if filters.errors is True:
        base.append("is_error = 1")
    elif filters.errors is False:
        base.append("coalesce(is_error, 0) = 0")

    grep: tuple[list[str], list[Any], str | None] | None = None
    if filters.grep is not None:
        grep = _grep_conditions(filters.grep)

    def branches(extra: Sequence[str] = (), extra_params: Sequence[Any] = (),
                 pages: str = "index") -> list[_Branch]:
        """The index-driven plan, with `extra` conditions on every branch."""
        if filters.errors is True and kind == "log":
            index, where = "observations_log_errors", "kind = 'log' AND is_error = 1"
        elif kind == "snapshot":
            index, where = "observations_snapshots", "kind = 'snapshot'"
        else:
            index, where = "observations_target_container_at", ""
        by_pair = (containers is not None or filters.errors is True
                   or (targets is not None and kind in (None, "log") and filters.run_id is None))
        if by_pair:
            if containers is not None:
                pairs = [(t, c) for t in (targets or tuple(targets_of(conn))) for c in containers]
            else:
                pairs = containers_of(conn, index, where, targets)
            conditions, params = _filter_conditions(subject, filters, skip=("target", "container"))
            return [_Branch(f"observations INDEXED BY {index}",
                            (*base, "target = ?", "container = ?", *conditions, *extra),
                            (target, container, *params, *extra_params), pages)
                    for target, container in pairs]
        run_ids = _values(filters.run_id)
        if run_ids is not None:
            conditions, params = _filter_conditions(subject, filters, skip=("run_id",))
            own = [_Branch("observations INDEXED BY observations_run_at",
                           (*base, "run_id = ?", *conditions, *extra), (run_id, *params, *extra_params),
                           pages)
                   for run_id in run_ids]
            # and those another run stored first, linked to one of them (once: none that
            # one of them stored itself)
            among, _ = _condition("run_id", run_ids)
            # NOT INDEXED: by rowid from the links (a kind's index would be walked whole,
            # testing every row against the list: ~0.5 s at 5M rows for a run with no links)
            linked = _Branch("observations NOT INDEXED",
                             (f"id IN (SELECT observation_id FROM run_observations WHERE {among})",
                              f"(run_id IS NULL OR NOT {among})", *base, *conditions, *extra),
                             (*run_ids, *run_ids, *params, *extra_params), pages)
            return [*own, linked]
        conditions, params = _filter_conditions(subject, filters, skip=())
        index = "observations_kind_at" if kind else "observations_at"
        return [_Branch(f"observations INDEXED BY {index}", (*base, *conditions, *extra),
                        (*params, *extra_params), pages)]

    if grep is None:
        return branches()
    grep_conditions, grep_params, phrase = grep
    if phrase is not None:
        upto, tail = _fts_state(conn)
        if tail <= FTS_TAIL_LIMIT:
            ((found,),) = conn.execute(
                "SELECT count(*) FROM log_fts WHERE log_fts MATCH ? AND rowid <= ?", (phrase, upto)).fetchall()
            if found <= FTS_CANDIDATE_LIMIT:
                conditions, params = _filter_conditions(subject, filters, skip=())
                fts = _Branch("observations NOT INDEXED",  # by rowid, from the index's candidates
                              ("id IN (SELECT rowid FROM log_fts WHERE log_fts MATCH ? AND rowid <= ?)",
                               *base, *conditions, *grep_conditions),
                              (phrase, upto, *params, *grep_params), "candidates", found)
                tail = _Branch("observations NOT INDEXED",  # the ids not indexed yet, by rowid
                               ("id > ?", *base, *conditions, *grep_conditions),
                               (upto, *params, *grep_params), "scan")
                return [fts, tail]
    return branches(grep_conditions, grep_params, "scan")


def _grep_conditions(pattern: str) -> tuple[list[str], list[Any], str | None]:
    """Conditions that keep exactly the lines `re.search(pattern)` matches, cheapest first,
    and the FTS5 phrase that finds a superset of them (None: none does)."""
    try:
        compiled = _compiled(pattern)
    except re.error as exc:
        raise QueryRejected("", f"grep: not a regular expression: {pattern!r}: {exc}") from None
    literal, folded = _required_literal(compiled)
    conditions: list[str] = []
    params: list[Any] = []
    if literal and not folded:
        if literal.isascii() and literal.isprintable() and '"' not in literal and "\\" not in literal:
            # as it is in the JSON text: rules the row out before the JSON is parsed (LIKE,
            # ignoring ASCII case, is a superset, and faster here than instr: 0.8 s vs 1.0 s on 5M)
            conditions.append("data LIKE ? ESCAPE '\\'")
            params.append("%" + re.sub(r"([\\%_])", r"\\\1", literal) + "%")
        conditions.append(f"instr({_LINE}, ?) > 0")
        params.append(literal)
    conditions.append(f"regexp(?, {_LINE})")
    params.append(pattern)
    if folded and "I" in (literal or ""):
        return conditions, params, None  # IGNORECASE matches "ı" (dotless) with "i"; the index does not
    return conditions, params, fts_phrase(literal)


# -- paging ---------------------------------------------------------------------------------------


def _branch_rows(conn: sqlite3.Connection, path: str, subject: Subject, branch: _Branch,
                 since_ns: int | None, until_ns: int | None, limit: int | None,
                 newest_first: bool, page_size: int) -> Iterator[tuple]:
    """One branch's rows in (time, id) order, a keyset page at a time."""
    time_col = subject.time
    time_index = subject.names.index(time_col)
    columns = ", ".join(expr if expr == name else f'{expr} AS "{name}"' for name, expr in subject.columns)
    order = f"{time_col} DESC, id DESC" if newest_first else f"{time_col}, id"
    if branch.pages == "scan":
        size, biggest = page_size, page_size * 20
    elif branch.pages == "candidates":
        biggest = page_size * 40
        size = min(branch.n + 1, biggest)
    else:
        size, biggest = min(_FIRST_PAGE, page_size), page_size * 4
    last: tuple[int, int] | None = None
    remaining = limit
    while remaining is None or remaining > 0:
        conditions = list(branch.conditions)
        params = list(branch.params)
        # One bound per side on the time column (two would leave SQLite to pick one, and
        # it may pick the window's start: every page a rescan), then the ties at that time.
        if not newest_first:
            low = since_ns if last is None else last[0] if since_ns is None else max(since_ns, last[0])
            if low is not None:
                conditions.append(f"{time_col} >= ?")
                params.append(low)
            if until_ns is not None:
                conditions.append(f"{time_col} < ?")
                params.append(until_ns)
            if last is not None:
                conditions.append(f"({time_col} > ? OR id > ?)")
                params.extend(last)
        else:
            if last is not None:
                conditions.append(f"{time_col} <= ?")
                params.append(last[0])
                conditions.append(f"({time_col} < ? OR id < ?)")
                params.extend(last)
            elif until_ns is not None:
                conditions.append(f"{time_col} < ?")
                params.append(until_ns)
            if since_ns is not None:
                conditions.append(f"{time_col} >= ?")
                params.append(since_ns)
        want = size if remaining is None else min(size, remaining)
        sql = (f"SELECT {columns} FROM {branch.source} WHERE {' AND '.join(conditions) or '1'} "
               f"ORDER BY {order} LIMIT ?")
        try:
            rows = conn.execute(sql, [*params, want]).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(path, f"read failed: {exc}") from None
        yield from rows
        if len(rows) < want:
            return
        if remaining is not None:
            remaining -= len(rows)
        last = (rows[-1][time_index], rows[-1][0])
        size = min(size * 4, biggest)


def select(conn: sqlite3.Connection, path: str, subject: str | Subject, filters: Filters = Filters(),
           *, page_size: int = PAGE_SIZE) -> Iterator[tuple]:
    """Rows of `subject` matching `filters`, as tuples in `Subject.names` order (JSON
    columns of small tables parsed), in (time, id) order (newest first if asked).

    Raises QueryRejected (unknown subject, filter, bad regex), StoreError.
    """
    spec = _subject(path, subject)
    if filters.limit is not None and filters.limit <= 0:
        return iter(())
    try:
        branches = plan(conn, spec, filters)
    except QueryRejected as exc:
        raise QueryRejected(path, exc.problem) from None
    except sqlite3.Error as exc:
        raise StoreError(path, f"read failed: {exc}") from None
    streams = [_branch_rows(conn, path, spec, branch, filters.since_ns, filters.until_ns, filters.limit,
                            filters.newest_first, page_size) for branch in branches]
    if not streams:
        rows: Iterator[tuple] = iter(())
    elif len(streams) == 1:
        rows = streams[0]
    else:
        time_index = spec.names.index(spec.time)
        rows = heapq.merge(*streams, key=lambda row: (row[time_index], row[0]), reverse=filters.newest_first)
        if filters.limit is not None:
            rows = itertools.islice(rows, filters.limit)
    if spec.decoders:
        rows = _decoded(spec, rows)
    return rows


def _decoded(spec: Subject, rows: Iterator[tuple]) -> Iterator[tuple]:
    positions = [(spec.names.index(name), decode) for name, decode in spec.decoders.items()]
    for row in rows:
        values = list(row)
        for index, decode in positions:
            values[index] = decode(values[index])
        yield tuple(values)


def dicts(conn: sqlite3.Connection, path: str, subject: str | Subject, filters: Filters = Filters(),
          *, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
    """`select`'s rows as dicts of column name to value (JSON-ready: str, int, float, None,
    and parsed JSON for the small tables' JSON columns; booleans inside `data` come as 0/1)."""
    spec = _subject(path, subject)
    rows = select(conn, path, spec, filters, page_size=page_size)
    return map(dict, map(zip, itertools.repeat(spec.names), rows))  # no Python frame per row


def json_lines(conn: sqlite3.Connection, path: str, subject: str | Subject, filters: Filters = Filters(),
               *, page_size: int = PAGE_SIZE) -> Iterator[str]:
    """`select`'s rows as compact JSON objects, one text per row, built by SQLite
    (`json_object`): for `--json` output, no dict and no json.dumps per row. JSON columns
    are embedded as JSON; booleans inside `data` come as 0/1."""
    spec = _subject(path, subject)
    pairs = ", ".join(f"'{name}', {f'json({expr})' if name in spec.decoders else expr}"
                      for name, expr in spec.columns)
    as_json = replace(spec, columns=(("id", "id"), (spec.time, spec.time), ("json", f"json_object({pairs})")),
                      decoders={})
    return (row[2] for row in select(conn, path, as_json, filters, page_size=page_size))


def _subject(path: str, subject: str | Subject) -> Subject:
    if isinstance(subject, Subject):
        return subject
    try:
        return SUBJECTS[subject]
    except KeyError:
        raise QueryRejected(path, f"no subject {subject!r}: one of {', '.join(SUBJECTS)}") from None


# -- user SQL ---------------------------------------------------------------------------------------

# Pragmas a user query may not run (they change the connection or would write the file).
_DENIED_PRAGMAS = frozenset({"query_only", "writable_schema", "journal_mode", "wal_checkpoint",
                             "locking_mode", "trusted_schema", "optimize", "incremental_vacuum",
                             "user_version", "application_id", "schema_version", "foreign_keys",
                             "recursive_triggers", "secure_delete", "auto_vacuum", "page_size"})
_WRITES = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_").replace("_", " ")
    for name in ("SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE", "SQLITE_CREATE_INDEX",
                 "SQLITE_CREATE_TABLE", "SQLITE_CREATE_TEMP_INDEX", "SQLITE_CREATE_TEMP_TABLE",
                 "SQLITE_CREATE_TEMP_TRIGGER", "SQLITE_CREATE_TEMP_VIEW", "SQLITE_CREATE_TRIGGER",
                 "SQLITE_CREATE_VIEW", "SQLITE_CREATE_VTABLE", "SQLITE_DROP_INDEX", "SQLITE_DROP_TABLE",
                 "SQLITE_DROP_TEMP_INDEX", "SQLITE_DROP_TEMP_TABLE", "SQLITE_DROP_TEMP_TRIGGER",
                 "SQLITE_DROP_TEMP_VIEW", "SQLITE_DROP_TRIGGER", "SQLITE_DROP_VIEW",
                 "SQLITE_DROP_VTABLE", "SQLITE_ALTER_TABLE", "SQLITE_REINDEX", "SQLITE_ANALYZE")
    if hasattr(sqlite3, name)
}
# A transaction left open would pin the reader's snapshot (and the WAL) until it closes.
_TRANSACTIONS = frozenset({sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT})


class _Guard:
    """The authorizer for user SQL: reads only. Remembers what it refused, for the message."""

    def __init__(self) -> None:
        self.refused: str | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                 trigger: str | None) -> int:
        if trigger is not None:
            return sqlite3.SQLITE_OK  # a trigger's own statements (never run by a read)
        what = None
        if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
            return sqlite3.SQLITE_OK  # a virtual table (log_fts) connecting; SQLite refuses real ones
        if action in _WRITES:
            what = f"{_WRITES[action]} {arg1 or ''}".strip()
        elif action in _TRANSACTIONS:
            what = "BEGIN, COMMIT and SAVEPOINT"
        elif action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            what = "ATTACH" if action == sqlite3.SQLITE_ATTACH else "DETACH"
        elif action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _DENIED_PRAGMAS:
            what = f"PRAGMA {arg1}"
        if what is None:
            return sqlite3.SQLITE_OK
        self.refused = self.refused or what
        return sqlite3.SQLITE_DENY

    def message(self, error: str) -> str:
        refused = self.refused or ""
        if refused.startswith(("ATTACH", "DETACH", "PRAGMA", "BEGIN")):
            return (f"ATTACH, DETACH, transactions and settings pragmas are not allowed in "
                    f"queries ({refused} refused)")
        return f"the store is read-only here: queries can only read ({refused} refused: {error})"


def user_sql(conn: sqlite3.Connection, path: str, sql: str,
             params: Sequence[Any] | Mapping[str, Any] = ()) -> tuple[list[str], sqlite3.Cursor]:
    """Prepare one read-only SQL statement of the user's; return (column names, the open
    cursor, its first row not yet fetched). Nothing it can say writes: the connection is
    read-only (`mode=ro`, `query_only`) and an authorizer refuses writes, ATTACH/DETACH and
    settings pragmas before they run.

    Raises QueryRejected for a write, several statements, ATTACH, or invalid SQL.
    """
    if not sql.strip():
        raise QueryRejected(path, "empty query")
    guard = _Guard()
    conn.set_authorizer(guard)
    try:
        cursor = conn.execute(sql, params)
        columns = [d[0] for d in cursor.description or ()]
    except sqlite3.ProgrammingError as exc:
        if "one statement" in str(exc):
            raise QueryRejected(path, "one statement at a time, please "
                                      "(remove the extra `;` statements)") from None
        raise QueryRejected(path, f"invalid query: {exc}") from None
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not authorized" in text or guard.refused:
            raise QueryRejected(path, guard.message(text)) from None
        if "readonly" in text or "read-only" in text or "may not be modified" in text:
            raise QueryRejected(path, "the store is read-only here: queries can "
                                      f"only read ({text})") from None
        raise QueryRejected(path, f"invalid query: {text}") from None
    finally:
        conn.set_authorizer(None)
    return columns, cursor


def user_rows(cursor: sqlite3.Cursor, path: str, batch: int = 1000) -> Iterator[tuple]:
    """The rows of a `user_sql` cursor, fetched `batch` at a time; closes it at the end."""
    try:
        while True:
            try:
                rows = cursor.fetchmany(batch)
            except sqlite3.Error as exc:
                raise QueryRejected(path, f"query failed: {exc}") from None
            if not rows:
                return
            yield from rows
    finally:
        cursor.close()
