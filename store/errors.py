"""Store errors: one small class per cause, each naming the file and what to do.

store/ knows nothing of the agent above it: these are plain exceptions with a `message`
and an `exit_code` (1), which the CLI edge turns into a message and an exit code like
podwarden's own errors (agent/errors.py). sqlite3's own exceptions never leave store/.
"""

from __future__ import annotations


class StoreError(Exception):
    """Something went wrong with the store file: names the file and the cause."""

    exit_code = 1

    def __init__(self, path: str, problem: str) -> None:
        self.message = f"store {path}: {problem}"
        super().__init__(self.message)
        self.path = str(path)
        self.problem = problem

    def __str__(self) -> str:
        return self.message


class NoStore(StoreError):
    """The store file does not exist (nothing has been recorded yet)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "no such file: nothing recorded yet; run `podwarden watch` first "
                               "(or pass --db with the right file)")


class NotAStore(StoreError):
    """The file exists but is not a podwarden store (not SQLite, or no schema)."""


class StoreVersionError(StoreError):
    """The schema version of the file is not the one this podwarden reads."""

    def __init__(self, path: str, found: int, expected: int) -> None:
        if found > expected:
            problem = (f"schema version {found} was written by a newer podwarden "
                       f"(this one knows up to {expected}): upgrade podwarden")
        else:
            problem = (f"schema version {found} is older than {expected}: run any recording "
                       "command (e.g. `podwarden watch --for 1s`) once to migrate it")
        super().__init__(path, problem)
        self.found = found
        self.expected = expected


class StoreLocked(StoreError):
    """Another process writes this store and it cannot be shared: since schema migration 4
    several writers share a file, but an older podwarden (schema below 4) writes alone, so a
    newer writer neither migrates nor writes the file while one holds it."""

    def __init__(self, path: str, holder: str, reason: str | None = None) -> None:
        who = f"process {holder}" if holder else "another process"
        super().__init__(path, reason or f"already being written by {who}; stop it or use another --db")
        self.holder = holder


class StoreClosed(StoreError):
    """The writer was used after `close()`: a bug in the caller."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "writer is closed")


class StoreWriteFailed(StoreError):
    """A batch could not be committed (disk full, I/O error); the writer stops."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(path, f"write failed: {type(cause).__name__}: {cause}")
        self.cause = cause


class QueryRejected(StoreError):
    """A user query was refused: it writes, holds several statements, or is invalid SQL."""


class NoRun(StoreError):
    """No run with that id in the store."""

    def __init__(self, path: str, run_id: int) -> None:
        super().__init__(path, f"no run {run_id}; `podwarden query runs` lists the recorded runs")
        self.run_id = run_id
