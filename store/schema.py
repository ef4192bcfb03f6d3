"""The store's schema as numbered migrations, recorded in `schema_migrations`.

Migration N is `MIGRATIONS[N - 1]`; each is applied in its own transaction together with
its row in `schema_migrations`, so a crash leaves the file at the previous version. Add a
migration to change the schema; never edit one that has shipped.

Tables and columns named in docs/architecture.md are a contract read by outside checks with plain
SQL: add columns and tables, never rename or drop. Times are integer nanoseconds since
the epoch (`*_ns`); JSON columns hold compact JSON text.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema.
    """
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        command     TEXT NOT NULL,
        targets     TEXT NOT NULL DEFAULT '[]',   -- JSON list of target names
        started_ns  INTEGER NOT NULL,
        ended_ns    INTEGER,
        verdict     TEXT,                         -- 'pass' / 'fail' / NULL while running
        config      TEXT NOT NULL DEFAULT '{}',   -- JSON snapshot of the config, redacted
        pid         INTEGER
    );

    CREATE TABLE observations (
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER REFERENCES runs (id),
        target        TEXT NOT NULL,
        container     TEXT NOT NULL DEFAULT '',   -- the container's name; '' for the target
        container_id  TEXT,                       -- events and snapshots
        at_ns         INTEGER NOT NULL,           -- podman's own timestamp where it has one
        kind          TEXT NOT NULL
                      CHECK (kind IN ('event', 'log', 'snapshot', 'probe', 'action', 'agent')),
        status        TEXT,                       -- event: podman's status; probe: ok/fail
        data          TEXT NOT NULL DEFAULT '{}'  -- JSON: the kind-specific fields, redacted
    );
    -- A backfill after a reconnect replays events already stored: this makes it a no-op.
    CREATE UNIQUE INDEX observations_event_key
        ON observations (target, container_id, status, at_ns) WHERE kind = 'event';
    CREATE INDEX observations_target_container_at ON observations (target, container, at_ns);
    CREATE INDEX observations_kind_at ON observations (kind, at_ns);
    CREATE INDEX observations_at ON observations (at_ns);

    CREATE TABLE changes (
        id              INTEGER PRIMARY KEY,
        observation_id  INTEGER REFERENCES observations (id),
        run_id          INTEGER REFERENCES runs (id),
        target          TEXT NOT NULL,
        container       TEXT NOT NULL,
        at_ns           INTEGER NOT NULL,
        from_state      TEXT NOT NULL,
        to_state        TEXT NOT NULL,
        cause           TEXT NOT NULL DEFAULT '',
        contradiction   INTEGER NOT NULL DEFAULT 0,  -- 1: a snapshot overruled the machine
        obs_kind        TEXT
    );
    CREATE INDEX changes_target_container_at ON changes (target, container, at_ns);
    CREATE INDEX changes_at ON changes (at_ns);
    CREATE INDEX changes_observation ON changes (observation_id);

    CREATE TABLE findings (
        id         INTEGER PRIMARY KEY,
        run_id     INTEGER REFERENCES runs (id),
        target     TEXT NOT NULL,
        container  TEXT NOT NULL DEFAULT '',
        rule       TEXT NOT NULL,
        severity   TEXT NOT NULL,
        message    TEXT NOT NULL,
        cause      TEXT NOT NULL DEFAULT '',
        fix        TEXT NOT NULL DEFAULT '',
        evidence   TEXT NOT NULL DEFAULT '[]',    -- JSON, redacted
        at_ns      INTEGER NOT NULL
    );
    CREATE INDEX findings_run ON findings (run_id);
    CREATE INDEX findings_at ON findings (at_ns);

    CREATE TABLE experiments (
        id          INTEGER PRIMARY KEY,
        run_id      INTEGER REFERENCES runs (id),
        kind        TEXT NOT NULL,                -- restart / cascade / service
        subject     TEXT NOT NULL,
        started_ns  INTEGER NOT NULL,
        ended_ns    INTEGER,
        verdict     TEXT,
        steps       TEXT NOT NULL DEFAULT '[]'    -- JSON list of step objects, redacted
    );
    CREATE INDEX experiments_run ON experiments (run_id);
    """,
    # 2: a log line's identity is its place in its source, not its (time, text): conmon
    # stamps every line of one read with one time, so identical lines share a stamp.
    # `seq` is the byte offset of the line's first record in conmon's log file (or its
    # index among the lines of its stamp when read through `podman logs`).
    """
    ALTER TABLE observations ADD COLUMN seq INTEGER;
    CREATE UNIQUE INDEX observations_log_key
        ON observations (target, container, at_ns, seq) WHERE kind = 'log';
    """,
    # 3: the morning after: what the reading side asks of the file (bench/bench_morning.py).
    # - A log line's error flag is a column (it was only inside `data`: counting error lines
    #   per container read every log row). From here on `data` no longer repeats what a column
    #   holds: an event's container_id and status, a snapshot's container_id, a log line's
    #   is_error (older rows keep theirs; readers take the column where it is set). Rows
    #   stored before this migration keep is_error NULL unless the line was an error.
    # - run_id gets an index (a run's first page read the whole table), snapshots a small
    #   partial one (the state before a window: the last snapshot of each container).
    # - Log text gets a contentless FTS5 index (words of letters; ~33 bytes per observation,
    #   +10%), filled in the writer's idle time (`StoreWriter.index_logs`, ~3 us a line), not
    #   by a trigger (in every commit of the writer it took raw inserts from ~100k to ~40k
    #   rows/s). `store_state.fts_indexed_upto` is the highest observation id it covers (every
    #   stored id at or below it is indexed: see migration 4); readers scan the ids above it. A
    #   deleted log row leaves the index through the trigger (contentless: the text must be
    #   given again).
    """
    ALTER TABLE observations ADD COLUMN is_error INTEGER;   -- log: 1 when the line is an error
    UPDATE observations SET is_error = 1
        WHERE kind = 'log' AND json_extract(data, '$.is_error') = 1;
    CREATE INDEX observations_log_errors
        ON observations (target, container, at_ns) WHERE kind = 'log' AND is_error = 1;
    CREATE INDEX observations_run_at ON observations (run_id, at_ns);
    CREATE INDEX observations_snapshots
        ON observations (target, container, at_ns) WHERE kind = 'snapshot';

    CREATE TABLE store_state (
        key    TEXT PRIMARY KEY,
        value  INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO store_state (key, value) VALUES ('fts_indexed_upto', 0);

    -- words are runs of letters: digits separate them (numbers and hex ids, most of the
    -- distinct tokens of a night, would double the index: 58 -> 33 bytes per observation)
    CREATE VIRTUAL TABLE log_fts USING fts5 (
        line, content = '', columnsize = 0,
        tokenize = "unicode61 separators '0123456789'"
    );
    CREATE TRIGGER observations_log_fts_delete AFTER DELETE ON observations
        WHEN old.kind = 'log'
             AND old.id <= (SELECT value FROM store_state WHERE key = 'fts_indexed_upto')
    BEGIN
        INSERT INTO log_fts (log_fts, rowid, line)
            VALUES ('delete', old.id, json_extract(old.data, '$.line'));
    END;
    """,
    # 4: several writers per file (docs/architecture.md, "Several writers, one file").
    # - `id_blocks`: the next free id of each table; a writer reserves a block of ids from it
    #   in a short BEGIN IMMEDIATE transaction (StoreWriter: 1,000,000 observation ids at a
    #   time), so two writers never give out the same id. Ids increase within one writer;
    #   across writers only at_ns orders rows.
    # - `writers`: each open writer's lowest observation id it may still commit
    #   (`frontier`, updated in every commit): the text indexer never passes the lowest
    #   frontier of a live writer, so `fts_indexed_upto` still means "every stored id at or
    #   below it is indexed".
    # - `run_observations`: an event or log line another run stored first, seen by this
    #   run too; `position` is the id this run's writer gave it, so the run's own rows and
    #   these merge into the order the run saw them (replay). A link is deleted with its
    #   run (retention: runs that ended) and with its observation (`observations_unlink`).
    """
    CREATE TABLE id_blocks (
        tbl      TEXT PRIMARY KEY,
        next_id  INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO id_blocks (tbl, next_id)
        SELECT 'runs', coalesce(max(id), 0) + 1 FROM runs
        UNION ALL SELECT 'observations', coalesce(max(id), 0) + 1 FROM observations
        UNION ALL SELECT 'changes', coalesce(max(id), 0) + 1 FROM changes
        UNION ALL SELECT 'findings', coalesce(max(id), 0) + 1 FROM findings
        UNION ALL SELECT 'experiments', coalesce(max(id), 0) + 1 FROM experiments;

    CREATE TABLE writers (
        token     INTEGER PRIMARY KEY,           -- random, one per open StoreWriter
        pid       INTEGER NOT NULL,              -- for people: liveness is the flock on
                                                 -- <db>-writer.<token>.lock (StoreWriter)
        frontier  INTEGER NOT NULL               -- lowest observation id it may still commit
    );

    CREATE TABLE run_observations (
        run_id          INTEGER NOT NULL REFERENCES runs (id),
        observation_id  INTEGER NOT NULL REFERENCES observations (id),
        position        INTEGER NOT NULL,        -- the id this run's writer gave it
        PRIMARY KEY (run_id, observation_id)
    ) WITHOUT ROWID;
    CREATE INDEX run_observations_position ON run_observations (run_id, position);
    -- a link goes with its observation (retention), not only with its run: one index seek
    -- per deleted event or log line, so a prune step stays bounded by its rows
    CREATE INDEX run_observations_observation ON run_observations (observation_id);
    CREATE TRIGGER observations_unlink AFTER DELETE ON observations
        WHEN old.kind IN ('event', 'log')
    BEGIN
        DELETE FROM run_observations WHERE observation_id = old.id;
    END;
    """,
)

LATEST_VERSION = len(MIGRATIONS)

_MIGRATIONS_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version     INTEGER PRIMARY KEY,
        applied_at  TEXT NOT NULL                 -- ISO 8601, UTC
    )
"""


def split_statements(script: str) -> list[str]:
    """The complete SQL statements of `script`, in order (a `;` inside a string or a
    trigger body does not split)."""
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if _strip_comments(current).strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if _strip_comments(current).strip(" \t\r\n;"):
        statements.append(current.rstrip(";").strip())
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration, 0 for a file without the migrations table."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if row is None:
        return 0
    (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(version)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the migrations `conn`'s file lacks, one transaction each; returns their numbers.

    `conn` must be in autocommit mode (isolation_level=None). Raises sqlite3.Error; a
    version newer than this code knows is left to the caller to refuse.
    """
    applied: list[int] = []
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_MIGRATIONS_TABLE)
            version = schema_version(conn)  # read inside the write lock
            if version >= LATEST_VERSION:
                conn.execute("COMMIT")
                return applied
            for statement in split_statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version + 1, datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version + 1)
