"""`podwarden query`: the store, read-only, by subject and filters, or with your own SQL.

Subjects are the store's (store/query.py `SUBJECTS`): events, logs, snapshots, probes,
actions, agent, changes, findings, runs, experiments, observations. Filters are the same
for all (a subject refuses one it does not have); times are given as RFC 3339
(`2026-11-30T02:00:00Z`, a date and time without a zone is UTC) or as a duration before
now (`2h`: the last two hours). Rows stream in time order; nothing is loaded whole, so a
query over a night of logs starts printing at once.

`query sql` runs one statement on a read-only connection (SQLite's `mode=ro`,
`query_only`, and an authorizer that refuses writes, ATTACH and settings pragmas): the
store cannot be changed from here.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from agent.config import parse_duration
from agent.errors import UsageError
from agent.podman import format_time_ns, parse_time_ns
from store import StoreReader
from store.query import SUBJECTS, Filters

_S = 1_000_000_000
_DATE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?))?")
TIME_COLUMNS = frozenset({"at_ns", "started_ns", "ended_ns", "started_at_ns", "finished_at_ns"})


def parse_when(option: str, text: str | None, now_ns: int | None = None) -> int | None:
    """A time option in ns since the epoch: RFC 3339, a UTC date[ time], or a duration ago.

    Raises UsageError naming the option.
    """
    if text is None:
        return None
    value = text.strip()
    try:
        return parse_time_ns(value)
    except ValueError:
        pass
    match = _DATE_TIME.fullmatch(value)
    if match:
        clock = match.group(2) or "00:00:00"
        if clock.count(":") == 1:
            clock += ":00"
        try:
            return parse_time_ns(f"{match.group(1)}T{clock}Z")
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None
    try:
        ago = parse_duration(value)
    except ValueError:
        raise UsageError(f"{option}: {text!r} is neither a time (2026-11-30T02:00:00Z, 2026-11-30 02:00) "
                         "nor a duration before now (2h, 30m)") from None
    return (now_ns if now_ns is not None else time.time_ns()) - int(ago * _S)


def subject_help() -> str:
    """One line per subject, for --help."""
    return "\n".join(f"  {name:<12} {spec.help}" for name, spec in SUBJECTS.items())


@dataclass
class Answer:
    """Column names and a stream of rows (tuples), still to be read; `json_columns` hold JSON
    text the store wrote (a subject's config, steps, evidence...), decoded in JSON output."""

    columns: list[str]
    rows: Iterator[tuple]
    json_columns: frozenset[str] = frozenset()


def select(reader: StoreReader, subject: str, filters: Filters) -> Answer:
    """Rows of a subject. Raises UsageError for an unknown subject, QueryRejected for a bad filter."""
    if subject not in SUBJECTS:
        raise UsageError(f"query: no subject {subject!r}; the subjects are {', '.join(SUBJECTS)} "
                         "(or `query sql \"SELECT ...\"`)")
    columns, rows = reader.select_rows(subject, filters)
    json_columns = frozenset(SUBJECTS[subject].decoders) | ({"data"} if subject == "observations" else set())
    return Answer(list(columns), rows, json_columns)


def user_sql(reader: StoreReader, sql: str, limit: int | None = None) -> Answer:
    """One read-only SQL statement's rows (at most `limit`). Raises QueryRejected."""
    columns, rows = reader.user_sql(sql)
    if limit:
        rows = (row for _, row in zip(range(limit), rows))
    return Answer(list(columns), rows)


# ---------------------------------------------------------------- output


def cell(column: str, value: Any) -> str:
    """A value as a table cell: times readable (UTC), JSON compact, None as '-'."""
    if value is None:
        return "-"
    if column in TIME_COLUMNS and isinstance(value, int) and value > 0:
        try:
            text = format_time_ns(value)
            return f"{text[:10]} {text[11:23]}"
        except ValueError:
            return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _decoded(value: Any) -> Any:
    """A JSON column's text as its value (a log line that looks like JSON is not one of these)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def write_json(answer: Answer, out: io.TextIOBase | Any) -> int:
    """One JSON document (an array of objects), streamed row by row. Returns the row count.

    When reading fails half-way, the array is closed before the error goes on (stdout stays
    one valid document; the error is said on stderr and in the exit code).
    """
    count = 0
    out.write("[")
    try:
        for row in answer.rows:
            item = {c: (_decoded(v) if c in answer.json_columns else v) for c, v in zip(answer.columns, row)}
            out.write(("," if count else "") + "\n  " + json.dumps(item, default=str, ensure_ascii=False))
            count += 1
    finally:
        out.write("\n]\n" if count else "]\n")
        out.flush()
    return count


def write_csv(answer: Answer, out: io.TextIOBase | Any) -> int:
    """RFC 4180 CSV with a header row; JSON columns as their text. Returns the row count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(answer.columns)
    count = 0
    for row in answer.rows:
        writer.writerow(["" if v is None else (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
                         for v in row])
        count += 1
    return count


def table_rows(answer: Answer, limit: int) -> tuple[list[list[str]], bool]:
    """At most `limit` rows as cells, and whether more were there."""
    shown: list[list[str]] = []
    for row in answer.rows:
        if len(shown) == limit:
            return shown, True
        shown.append([cell(c, v) for c, v in zip(answer.columns, row)])
    return shown, False


def page(subject: str, answer: Answer, limit: int) -> tuple[list[str], list[list[str]], bool]:
    """What a terminal table shows: its columns, at most `limit` rows as cells, and whether
    more were there."""
    rows, more = table_rows(answer, limit)
    hidden = hidden_columns(None if subject == "sql" else subject, answer.columns)
    keep = [i for i, c in enumerate(answer.columns) if c not in hidden]
    return [answer.columns[i] for i in keep], [[row[i] for i in keep] for row in rows], more


def hidden_columns(subject: str | None, columns: Sequence[str]) -> set[str]:
    """Columns a terminal table leaves out (JSON and CSV keep everything)."""
    if subject in ("runs",):
        return {"config", "pid"}
    if subject == "findings":
        return {"evidence"}
    if subject == "experiments":
        return {"steps"}
    return {"run_id", "container_id"} & set(columns) if subject not in (None, "observations") else set()
