"""Throughput of the container machines: observations per second for 10 and 1000 containers.

Usage: .venv/bin/python bench/bench_machine.py [--quick]

Ends with `machine: obs_per_s_10=N obs_per_s_1000=N ratio_1000_vs_10=R ratio_vs_transitions=R`
(the baseline: the same table through one shared transitions.Machine, in the same run).

The per-observation cost must not grow with the number of containers; machine
creation is timed separately (it is paid once per container).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machines.container import Fleet  # noqa: E402
from machines.observations import EventObs, LogObs, Observation, SnapshotObs  # noqa: E402

T0 = 1_764_000_000_000_000_000
S = 1_000_000_000


def cycle(target: str, name: str, at_ns: int, step: int) -> list[Observation]:
    """One round of what a watched container produces: checks, logs, a snapshot, now and then a crash."""
    out: list[Observation] = [
        EventObs(target, name, at_ns, "id", "exec"),
        EventObs(target, name, at_ns + 1_000, "id", "exec_died"),
        EventObs(target, name, at_ns + 2_000, "id", "health_status", health_status="healthy"),
        LogObs(target, name, at_ns + 3_000, "block 812345 processed"),
        LogObs(target, name, at_ns + 4_000, "peer disconnected", is_error=step % 7 == 0),
    ]
    if step % 5 == 0:
        out.append(SnapshotObs(target, name, at_ns + 5_000, True, "id", "running", "healthy"))
    if step % 20 == 10:
        out += [EventObs(target, name, at_ns + 6_000, "id", "died", exit_code=137),
                EventObs(target, name, at_ns + 7_000, "id", "restart"),
                EventObs(target, name, at_ns + 8_000, "id", "init"),
                EventObs(target, name, at_ns + 9_000, "id", "start")]
    return out


def workload(containers: int, total: int) -> list[Observation]:
    """About `total` observations, round-robin over `containers` containers, in time order."""
    names = [f"c{i:04d}" for i in range(containers)]
    observations: list[Observation] = []
    for name in names:
        observations += [EventObs("node1", name, T0, "id", "create"), EventObs("node1", name, T0 + 1, "id", "start")]
    step = 0
    while len(observations) < total:
        at_ns = T0 + (step + 1) * 30 * S
        for name in names:
            observations += cycle("node1", name, at_ns, step)
        step += 1
    return observations


def measure(engine: str, containers: int, total: int, repeats: int) -> tuple[float, float, int]:
    """Best observations/s over `repeats` runs, machine creation µs each, and the changes emitted."""
    observations = workload(containers, total)
    best_rate, best_create, changes = 0.0, float("inf"), 0
    for _ in range(repeats):
        fleet = Fleet(engine=engine)  # type: ignore[arg-type]
        started = time.perf_counter()
        for i in range(containers):
            fleet.expect("node1", f"c{i:04d}")
        created = time.perf_counter()
        changes = sum(len(fleet.feed(obs)) for obs in observations)
        done = time.perf_counter()
        fleet.close()
        best_rate = max(best_rate, len(observations) / (done - created))
        best_create = min(best_create, (created - started) / containers * 1e6)
    return best_rate, best_create, changes


def main() -> None:
    """Run the benchmark and print one line per (engine, containers)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer observations and repeats")
    args = parser.parse_args()
    total, repeats = (20_000, 2) if args.quick else (200_000, 3)
    rates: dict[tuple[str, int], float] = {}
    for engine in ("dict", "transitions"):
        for containers in (10, 1000):
            rate, create_us, changes = measure(engine, containers, total, repeats)
            rates[engine, containers] = rate
            print(f"  engine={engine} containers={containers}: {rate:.0f} obs/s, machine creation "
                  f"{create_us:.0f} us, {changes} changes")
    # the baseline: the same transition table through one shared transitions.Machine
    print(f"machine: obs_per_s_10={rates['dict', 10]:.0f} obs_per_s_1000={rates['dict', 1000]:.0f} "
          f"ratio_1000_vs_10={rates['dict', 1000] / rates['dict', 10]:.2f} "
          f"ratio_vs_transitions={rates['dict', 1000] / rates['transitions', 1000]:.2f}")


if __name__ == "__main__":
    main()
