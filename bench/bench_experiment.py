"""`experiment restart --all --how crash`: its wall time against the containers' own recovery times.

Not a test. Needs local podman as root (rootless works too). Brings up the testbed with
prefix `tbb-` and port_base 29330 (`podwarden testbed up`, its config from
example_config(prefix="tbb-", port_base=29330)), then `--rounds` times runs the real
command as a user would, in a subprocess, each round into a fresh store:

    podwarden experiment restart --all --how crash --json --config CONFIG --db DB

and reads its JSON: each restart experiment's `back ...` step holds podman's own times
(`died`, `running`, `back` in the expected state, ns). Per round, in the same run:

  recovery      sum over the containers of died -> running (podman's died to its start:
                what the restart policy takes; the baseline) and of died -> back in the
                expected state (healthy needs a passing health check);
  wall          the whole command (process start to exit) and the experiment phase (the
                first experiment's start to the last one's end);
  ratios        wall / sum(died -> running), wall / sum(died -> expected);
  seed          what the seed's fixed 15 s waits would take for the same containers:
                one 15 s wait per container plus the same recovery (~N x 15 s).

and where the time goes per container: the error baseline read before the kill (podman
logs --tail 100), the crash step (a fresh inspect for the pid, then kill -9), death
detection (kill done -> the machine has the death), the crash step's start -> podman's died, recovery (died -> running -> expected), the back state
seen (podman's time -> the wait ends), probes, and the gap to the next experiment;
outside the experiments: start-up (process start -> the first experiment: interpreter,
imports, store, the watch connected and its first snapshot in) and shutdown.

The testbed is always torn down (`podwarden testbed down`) at the end; only `tbb-`
containers are touched.

    .venv/bin/python bench/bench_experiment.py             # 5 rounds
    .venv/bin/python bench/bench_experiment.py --quick     # 2 rounds
    .venv/bin/python bench/bench_experiment.py --rounds 3 --verbose

Ends with `experiment: wall_s=... ratio_vs_running=... ratio_vs_expected=... seed_ratio_vs_running=...` (medians).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import machine_line, median, summary

from agent import testbed  # noqa: E402

PREFIX = "tbb-"
PORT_BASE = 29330
PODWARDEN = str(Path(sys.executable).with_name("podwarden"))
SEED_WAIT_S = 15.0  # the seed's fixed wait after each restart
GOAL_RATIO = 1.2
S = 1e9


def podwarden(args: list[str], config: Path, timeout: float, *, db: Path | None = None) -> tuple[int, str, str, int, int]:
    """Run podwarden; (exit code, stdout, stderr, wall start ns, wall end ns)."""
    argv = [PODWARDEN, *args, "--config", str(config)] + (["--db", str(db)] if db else [])
    started = time.time_ns()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=common.ROOT)
    return done.returncode, done.stdout, done.stderr, started, time.time_ns()


def wall_of(args: list[str], config: Path) -> float:
    """Seconds a podwarden command takes, process start to exit."""
    _, _, _, started, ended = podwarden(args, config, 60)
    return (ended - started) / S


def step(experiment: dict, prefix: str) -> dict | None:
    return next((s for s in experiment["steps"] if s["name"].startswith(prefix)), None)


def analyse(document: dict, started_ns: int, ended_ns: int) -> dict:
    """Per container and in total, from one command's JSON (times in seconds)."""
    rows = []
    experiments = document["experiments"]
    for index, experiment in enumerate(experiments):
        steady, act, back, probes = (step(experiment, name) for name in ("steady state", "crash", "back ", "probes"))
        if not (steady and act and back and back.get("running")):
            rows.append({"container": experiment["subject"], "verdict": experiment["verdict"],
                         "summary": experiment["summary"]})
            continue
        died, running, seen_back = back["died"], back["running"], back["back"]
        following = experiments[index + 1]["started"] if index + 1 < len(experiments) else None
        rows.append({
            "container": experiment["subject"], "verdict": experiment["verdict"],
            "expected": back["name"].split(" ", 1)[1],
            "total": (experiment["ended"] - experiment["started"]) / S,
            "baseline": (act["started"] - steady["ended"]) / S,  # the error baseline read
            "kill": (act["ended"] - act["started"]) / S,  # a fresh inspect for the pid, then the kill
            "detect": (back["started"] - act["ended"]) / S,  # kill done -> the machine has the death
            "podman_died": (died - act["started"]) / S,  # the crash step's start -> podman's died
            "to_running": (running - died) / S,
            "to_expected": (seen_back - died) / S,
            "running_to_expected": (seen_back - running) / S,
            "back_seen": (back["ended"] - seen_back) / S,  # podman's time -> the wait ends
            "probes": (probes["ended"] - probes["started"]) / S if probes else 0.0,
            "gap": (following - experiment["ended"]) / S if following else 0.0,
        })
    done = [r for r in rows if "to_running" in r]
    first, last = experiments[0]["started"], experiments[-1]["ended"]
    sum_running = sum(r["to_running"] for r in done)
    sum_expected = sum(r["to_expected"] for r in done)
    wall = (ended_ns - started_ns) / S
    phase = (last - first) / S
    seed = SEED_WAIT_S * len(done) + sum_running
    return {
        "rows": rows, "verdict": document["verdict"], "containers": len(done),
        "wall": wall, "phase": phase, "startup": (first - started_ns) / S, "shutdown": (ended_ns - last) / S,
        "sum_running": sum_running, "sum_expected": sum_expected,
        "ratio_running": wall / sum_running, "ratio_expected": wall / sum_expected,
        "phase_ratio_running": phase / sum_running, "phase_ratio_expected": phase / sum_expected,
        "seed": seed, "seed_ratio_running": seed / sum_running, "seed_ratio_expected": (seed - sum_running
                                                                                        + sum_expected) / sum_expected,
    }


COLUMNS = (("baseline", "err-baseline"), ("kill", "inspect+kill"), ("detect", "detect"), ("podman_died", "(act>died)"),
           ("to_running", "died>running"), ("running_to_expected", "running>expected"), ("back_seen", "seen"),
           ("probes", "probes"), ("gap", "gap"), ("total", "total"))


def print_table(rounds: list[dict]) -> None:
    """Per container, medians over the rounds, in seconds."""
    names = [r["container"] for r in rounds[0]["rows"]]
    print("  per container, medians over the rounds (s): " + "  ".join(label for _, label in COLUMNS))
    for name in names:
        cells = []
        for key, label in COLUMNS:
            values = [r[key] for outcome in rounds for r in outcome["rows"] if r["container"] == name and key in r]
            cells.append(f"{median(values):>{len(label)}.3f}" if values else " " * (len(label) - 1) + "-")
        expected = next((r.get("expected", "?") for r in rounds[0]["rows"] if r["container"] == name), "?")
        print(f"    {name:<17} {expected:<8} " + "  ".join(cells))
    sums = []
    for key, label in COLUMNS:
        per_round = [sum(r[key] for r in outcome["rows"] if key in r) for outcome in rounds]
        sums.append(f"{median(per_round):>{len(label)}.3f}")
    print(f"    {'sum':<26} " + "  ".join(sums))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="how many times to run the command (default 5)")
    parser.add_argument("--verbose", action="store_true", help="print each round and the command's progress")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)

    outcomes: list[dict] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-experiment-") as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "config.toml"
        config.write_text(testbed.example_config(prefix=PREFIX, port_base=PORT_BASE))
        started = time.monotonic()
        code, out, err, _, _ = podwarden(["testbed", "up"], config, 300)
        up_s = time.monotonic() - started
        try:
            if code != 0:
                raise RuntimeError(f"testbed up failed (exit {code}): {(err or out).strip()[-800:]}")
            # the CLI's own start-up (interpreter, click, imports of the entry point)
            help_s = median([wall_of(["experiment", "restart", "--help"], config) for _ in range(3)])
            for n in range(rounds):
                db = tmp / f"round-{n}.db"
                code, out, err, t0, t1 = podwarden(["experiment", "restart", "--all", "--how", "crash", "--json"],
                                                   config, 600, db=db)
                if args.verbose:
                    print(err.rstrip(), flush=True)
                try:
                    document = json.loads(out)
                except json.JSONDecodeError:
                    failures.append(f"round {n + 1}: exit {code}, no JSON: {(err or out).strip()[-500:]}")
                    print("  FAILED: " + failures[-1], flush=True)
                    continue
                if not document.get("experiments"):
                    failures.append(f"round {n + 1}: exit {code}: {json.dumps(document)[:500]}")
                    print("  FAILED: " + failures[-1], flush=True)
                    continue
                outcome = analyse(document, t0, t1)
                outcomes.append(outcome)
                if outcome["verdict"] != "pass":
                    failed = [f"{r['container']}: {r.get('summary', r['verdict'])}" for r in outcome["rows"]
                              if r["verdict"] != "pass"]
                    failures.append(f"round {n + 1}: verdict {outcome['verdict']}: {'; '.join(failed)[:500]}")
                    print("  NOT PASSED: " + failures[-1], flush=True)
                if args.verbose:
                    print(f"  round {n + 1}: wall {outcome['wall']:.2f} s, phase {outcome['phase']:.2f} s, "
                          f"sum died->running {outcome['sum_running']:.2f} s, died->expected "
                          f"{outcome['sum_expected']:.2f} s", flush=True)
        finally:
            started = time.monotonic()
            code, out, err, _, _ = podwarden(["testbed", "down"], config, 300)
            down_s = time.monotonic() - started
            if code != 0:
                print(f"  testbed down failed (exit {code}): {(err or out).strip()[-500:]}", flush=True)

    if not outcomes:
        print(summary("experiment", rounds=0, failed=len(failures)))
        sys.exit(1)

    def med(key: str) -> float:
        return median([o[key] for o in outcomes])

    n = outcomes[0]["containers"]
    print(f"  {len(outcomes)} round(s) of `podwarden experiment restart --all --how crash --json` on {n} tbb- "
          f"containers (testbed up {up_s:.1f} s, down {down_s:.1f} s); {machine_line()}")
    print(f"  the containers' own recovery (podman's times), summed: died -> running {med('sum_running'):.2f} s, "
          f"died -> expected state {med('sum_expected'):.2f} s (runs: "
          + ", ".join(f"{o['sum_running']:.2f}/{o['sum_expected']:.2f}" for o in outcomes) + ")")
    walls = ", ".join(f"{o['wall']:.2f}" for o in outcomes)
    print(f"  whole command: {med('wall'):.2f} s (runs: {walls}) "
          f"= start-up {med('startup'):.2f} s (of which the CLI alone, `--help`: {help_s:.2f} s) + experiments "
          f"{med('phase'):.2f} s + shutdown {med('shutdown'):.2f} s")
    print(f"  ratio wall / sum(died -> running):  {med('ratio_running'):.2f} (experiment phase alone "
          f"{med('phase_ratio_running'):.2f}); goal <= {GOAL_RATIO}: "
          f"{'met' if med('ratio_running') <= GOAL_RATIO else 'MISSED'}")
    print(f"  ratio wall / sum(died -> expected): {med('ratio_expected'):.2f} (experiment phase alone "
          f"{med('phase_ratio_expected'):.2f})")
    print(f"  the seed's fixed waits for the same containers: {n} x {SEED_WAIT_S:.0f} s + the same recovery = "
          f"{med('seed'):.1f} s: ratio {med('seed_ratio_running'):.1f} vs died -> running, "
          f"{med('seed_ratio_expected'):.1f} vs died -> expected; this command is "
          f"{med('seed') / med('wall'):.1f}x faster")
    print_table(outcomes)
    print("    (err-baseline: the error lines already in the last 100 log lines, read before the kill; inspect+kill: "
          "the crash step, a fresh inspect for the pid then kill -9; detect: kill done -> the machine has the death; "
          "act>died: the crash step's start -> podman's died; seen: podman's time of the expected state -> the wait "
          "ends; gap: to the next experiment's start)")
    if failures:
        print(f"  {len(failures)} round(s) with problems: " + " | ".join(failures))
    print(summary("experiment", wall_s=med("wall"), ratio_vs_running=med("ratio_running"),
                  ratio_vs_expected=med("ratio_expected"), phase_s=med("phase"),
                  phase_ratio_vs_running=med("phase_ratio_running"), sum_running_s=med("sum_running"),
                  sum_expected_s=med("sum_expected"), seed_s=med("seed"),
                  seed_ratio_vs_running=med("seed_ratio_running"), rounds=len(outcomes), failed=len(failures)))


if __name__ == "__main__":
    main()
