"""Helpers shared by the benches: statistics, summary lines, store files, profiles.

Not a test, and no project code depends on it. Importing it puts the project root on
sys.path, so a bench runs as `.venv/bin/python bench/NAME.py` from anywhere.
"""

from __future__ import annotations

import cProfile
import io
import math
import os
import pstats
import sqlite3
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear between the closest ranks; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def runs_text(values: Iterable[float], fmt: str = "{:.0f}") -> str:
    return ", ".join(fmt.format(v) for v in values)


def summary(name: str, **fields: Any) -> str:
    """The one `NAME: key=value ...` line a bench ends with (floats to 2 decimals or ints)."""
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"
        parts.append(f"{key}={value}")
    return f"{name}: " + " ".join(parts)


def machine_line() -> str:
    return (f"cpus={os.cpu_count()} python={sys.version.split()[0]} sqlite={sqlite3.sqlite_version} "
            f"load={os.getloadavg()[0]:.2f}")


def remove_db(path: Path) -> None:
    """A store file and its companions (-wal, -shm, the writer lock)."""
    for suffix in ("", "-wal", "-shm", "-writer.lock", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def print_profile(profile: cProfile.Profile, top: int = 20, sort: str = "tottime") -> None:
    """The `top` most expensive functions, project paths shortened."""
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats(sort).print_stats(top)
    root = str(ROOT) + os.sep
    for line in out.getvalue().splitlines():
        if line.strip():
            print("   ", line.replace(root, ""))
