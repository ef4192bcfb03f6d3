"""Ids for several writers of one file: each writer reserves blocks of ids per table.

`id_blocks` (schema migration 4) holds each table's next free id. A writer reserves a
block with one UPDATE ... RETURNING inside a BEGIN IMMEDIATE transaction (SQLite lets one
writer at a time in, so two reservations never overlap), seeded from max(id) + 1 as well,
so rows written any other way are never overwritten. A writer opens with a block and a
spare, gives out the ids in order and, as soon as less than half a block is left, reserves
the next spare in a short transaction of its own on its own connection (taken between its
commits, never inside one), so `add()` never waits for the file. Blocks are large (ids are
int64): a writer's backpressure (`max_pending`) keeps far fewer rows queued between two
commits than half a block, so running out is not expected; should it happen, `add()`
raises StoreError at once rather than wait for the file on the event loop.

Ids therefore increase within one writer, and interleave between writers in blocks:
time order comes from `at_ns`, id order is only the arrival order of one writer's rows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Callable, Iterable

# Block sizes per table: half a block outlasts many commits (a writer's queue is bounded by
# its max_pending, 50,000 rows), so the spare is always reserved before it is needed.
# 1,000,000 observation ids last a full-speed writer ~10 s (bench_store: ~90k obs/s).
BLOCK_SIZES = {"observations": 1_000_000, "changes": 100_000, "findings": 10_000, "experiments": 1_000}
TABLES = ("runs", *BLOCK_SIZES)

# `?`: the block's size, then the table. Returns the end (exclusive) of the reserved block.
_RESERVE = ("UPDATE id_blocks SET next_id = max(next_id, (SELECT coalesce(max(id), 0) + 1 FROM {table})) + ? "
            "WHERE tbl = ? RETURNING next_id")


@dataclass(slots=True)
class IdBlock:
    """The ids one writer gives out for one table: [next, end), then `spare` (a reserved
    block above it)."""

    table: str
    size: int
    next: int = 0
    end: int = 0
    spare: tuple[int, int] | None = None

    def take(self) -> int | None:
        """The next id, None when the block and the spare are used up."""
        if self.next >= self.end:
            if self.spare is None:
                return None
            (self.next, self.end), self.spare = self.spare, None
        value = self.next
        self.next += 1
        return value

    def wants_spare(self) -> bool:
        return self.spare is None and self.end - self.next < self.size // 2

    def add_block(self, first: int, end: int) -> None:
        """Install a reserved block above the ones held: as the current one when that is used
        up, else as the spare. A block below them, or one too many, is dropped: ids only
        increase within one writer."""
        if first < (self.spare[1] if self.spare is not None else self.end):
            return
        if self.next >= self.end:
            if self.spare is not None:
                (self.next, self.end), self.spare = self.spare, (first, end)
            else:
                self.next, self.end = first, end
        elif self.spare is None:
            self.spare = (first, end)

    def lowest(self) -> int:
        """The lowest id this block may still give out."""
        return self.next if self.next < self.end or self.spare is None else self.spare[0]


def reserve_statement(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"no such table: {table}")
    return _RESERVE.format(table=table)


def reserve(conn: sqlite3.Connection, table: str, size: int) -> tuple[int, int]:
    """Reserve `size` ids of `table` in `conn`'s open transaction: (first, end exclusive)."""
    ((end,),) = conn.execute(reserve_statement(table), (size, table)).fetchall()
    return end - size, end


def lowest_live_frontier(rows: Iterable[tuple[int, int]], gone: Callable[[int], bool]
                         ) -> tuple[int | None, list[int]]:
    """From `writers` rows (token, frontier): the lowest frontier of a live writer (None
    without any) and the tokens of the writers that are gone (`gone(token)`: a writer that
    crashed; decided by a kernel lock each writer holds for its life, never by pid)."""
    lowest, dead = None, []
    for token, frontier in rows:
        if gone(token):
            dead.append(token)
        elif lowest is None or frontier < lowest:
            lowest = frontier
    return lowest, dead
