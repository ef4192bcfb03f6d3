"""Raw ingest speed of the store: StoreWriter vs plain sqlite3 executemany of the same rows.

Not a test. Both paths write the same schema and indexes with the same pragmas to a
fresh file in the same run; the writer path includes everything a watcher pays per
observation (JSON encoding, redaction with the default config patterns, id assignment,
the event index, the hop to aiosqlite's thread), the raw path gets the finished rows.

    .venv/bin/python bench/bench_store.py            # 100k observations, 5 rounds
    .venv/bin/python bench/bench_store.py --quick    # 20k, 3 rounds
    .venv/bin/python bench/bench_store.py --shared   # + the writer while a check writes

Prints the details, then ends with `store: obs_per_s=N ratio_vs_executemany=R ...` (medians).
`--shared` also runs, in the same rounds, the writer while a second process writes
check-sized batches into the same file (50 observations, flushed, every 50 ms): it prints
the ingest ratio against the writer alone and the check's flush times.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machines.observations import EventObs, LogObs, ProbeObs, SnapshotObs  # noqa: E402
from store import StoreWriter  # noqa: E402
from store.redact import DEFAULT_PATTERNS, Redactor  # noqa: E402
from store.schema import migrate  # noqa: E402
from store.writer import _INSERT_OBS, _PRAGMAS, observation_row  # noqa: E402

# the default redaction patterns (what agent.config.RedactionConfig uses)
PATTERNS = list(DEFAULT_PATTERNS)
BATCH = 1000


def synthetic(count: int) -> list:
    """A night's mix: mostly log lines, some health events, snapshots and probes."""
    base = 1_714_564_800_000_000_000
    out = []
    for i in range(count):
        at = base + i * 1_000_000
        name = ("bitcoind", "lnd", "electrs", "mempool")[i % 4]
        r = i % 20
        if r < 14:
            out.append(LogObs("node1", name, at, f"2024-05-01T12:00:{i % 60:02d}Z UpdateTip: new "
                              f"best=0000000000000000000{i:05x} height={800000 + i} "
                              f"version=0x20000000 log2_work=94.8 tx={i * 7}"))
        elif r < 17:
            out.append(EventObs("node1", name, at, f"{i % 4:064x}", "health_status",
                                health_status="healthy", image="localhost/tb:latest",
                                attributes=(("image", "localhost/tb:latest"), ("name", name))))
        elif r < 19:
            out.append(ProbeObs("node1", name, at, f"{name}-rpc", "exec", True, 12.5,
                                excerpt='{"blocks": 840000, "headers": 840000}'))
        else:
            out.append(SnapshotObs("node1", name, at, True, f"{i % 4:064x}", "running", "healthy",
                                   pid=1000 + i % 4, restart_policy="always"))
    return out


async def writer_path(path: Path, observations: list, patterns: list[str]) -> float:
    """Seconds to add every observation through StoreWriter and have it committed."""
    writer = await StoreWriter.open(path, patterns)
    try:
        start = time.perf_counter()
        for obs in observations:
            await writer.add_wait(obs)
        await writer.flush()
        elapsed = time.perf_counter() - start
    finally:
        await writer.close()
    return elapsed


def raw_path(path: Path, rows: list[tuple]) -> float:
    """Seconds for plain sqlite3 executemany of the finished rows, 1000 per transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn)
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        start = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT_OBS, rows[i:i + BATCH])
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


CHECK_BATCH, CHECK_PAUSE = 50, 0.05


async def _check_like(path: Path, ready, stop) -> list[float]:
    """A check's writes: CHECK_BATCH observations of another target, flushed, every CHECK_PAUSE s;
    returns each flush's seconds."""
    batch = synthetic(CHECK_BATCH)
    flushes: list[float] = []
    async with StoreWriter.open(path, PATTERNS, flush_interval=CHECK_PAUSE) as writer:
        run_id = await writer.start_run("check", ["node2"], {})
        step = 0
        while not stop.is_set():
            step += 1
            for obs in batch:
                writer.add(replace(obs, target="node2", at_ns=obs.at_ns + step * 10**12), run_id)
            started = time.perf_counter()
            await writer.flush()
            flushes.append(time.perf_counter() - started)
            ready.set()
            await asyncio.sleep(CHECK_PAUSE)
    return flushes


def _check_process(path: str, ready, stop, out) -> None:
    out.put(asyncio.run(_check_like(Path(path), ready, stop)))


def shared_path(path: Path, observations: list) -> tuple[float, list[float]]:
    """`writer_path` while another process writes check-like batches into the same file:
    (the writer's seconds, the check's flush seconds)."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    check = ctx.Process(target=_check_process, args=(str(path), ready, stop, out))
    check.start()
    try:
        ready.wait(60)
        seconds = asyncio.run(writer_path(path, observations, PATTERNS))
    finally:
        stop.set()
    flushes = out.get(timeout=60)
    check.join(60)
    return seconds, flushes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k observations, 3 rounds")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--dir", default=None, help="where to put the files (e.g. /dev/shm)")
    parser.add_argument("--shared", action="store_true", help="also the writer while a check writes")
    args = parser.parse_args()
    count = args.count or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 5)
    observations = synthetic(count)
    redactor = Redactor(PATTERNS)
    rows = [observation_row(obs, i + 1, None, redactor) for i, obs in enumerate(observations)]

    results: dict[str, list[float]] = {"raw": [], "writer": [], "writer_noredact": []}
    if args.shared:
        results["shared"] = []
    flushes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.dir) as tmp:
        for n in range(rounds):
            for name in results:  # interleaved, so machine noise hits all paths alike
                path = Path(tmp, f"{name}-{n}.db")
                if name == "raw":
                    seconds = raw_path(path, rows)
                elif name == "shared":
                    seconds, taken = shared_path(path, observations)
                    flushes += taken
                else:
                    patterns = PATTERNS if name == "writer" else []
                    seconds = asyncio.run(writer_path(path, observations, patterns))
                results[name].append(count / seconds)
                for suffix in ("", "-wal", "-shm", "-writer.lock"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)

    raw = statistics.median(results["raw"])
    writer = statistics.median(results["writer"])
    plain = statistics.median(results["writer_noredact"])
    print(f"  count={count} rounds={rounds} cpus={os.cpu_count()} sqlite={sqlite3.sqlite_version} "
          f"dir={args.dir or tempfile.gettempdir()} load={os.getloadavg()[0]:.2f}")
    print(f"  raw executemany x{BATCH}: {raw:.0f} rows/s "
          f"(runs: {', '.join(f'{v:.0f}' for v in results['raw'])})")
    print(f"  StoreWriter, {len(PATTERNS)} redaction patterns: {writer:.0f} obs/s "
          f"(runs: {', '.join(f'{v:.0f}' for v in results['writer'])})")
    print(f"  StoreWriter, no redaction: {plain:.0f} obs/s ratio={plain / raw:.2f}")
    if args.shared:
        shared = statistics.median(results["shared"])
        ordered = sorted(flushes)
        print(f"  StoreWriter while a check writes the same file: {shared:.0f} obs/s "
              f"ratio_vs_alone={shared / writer:.3f} (runs: {', '.join(f'{v:.0f}' for v in results['shared'])})")
        print(f"  the check's flushes meanwhile: n={len(ordered)} median={statistics.median(ordered) * 1e3:.1f} ms "
              f"p95={ordered[int(len(ordered) * 0.95)] * 1e3:.1f} ms max={ordered[-1] * 1e3:.1f} ms")
        print(f"shared: obs_per_s={shared:.0f} ratio_vs_alone={shared / writer:.3f} "
              f"check_flush_median_ms={statistics.median(ordered) * 1e3:.1f}")
    print(f"store: obs_per_s={writer:.0f} ratio_vs_executemany={writer / raw:.2f} "
          f"executemany_rows_per_s={raw:.0f} noredact_ratio={plain / raw:.2f}")


if __name__ == "__main__":
    main()
