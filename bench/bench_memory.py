"""Memory over a night: millions of observations through the watcher's live path, RSS sampled as it goes.

Not a test. A synthetic night of 2 targets x 20 containers (podman 4.3 shapes, as
bench_ingest.py makes them) goes through what a watcher does with it, without a node:

  events:     `await TargetWatcher._on_event_line(line)` (parse, the replay dedupe and its
              keys, the log follow's run boundaries, the kernel-log read before a died 137
              through a fake node transport that answers dmesg with nothing);
  logs:       the perl follower's output lines -> `LogFollow._on_follower_line` (parse, the
              LogJoiner, the per-container identity dedupe, the error patterns);
  snapshots:  every 30 s per target, inspect JSON -> `LogFollow.note_facts` + each fact's
              snapshot, as `_reconcile` does; health checks: our `podman healthcheck run`
              probe and podman's events for it, every 30 s per health-checked container;

all into `Sink.put` of a `recording(...)` on a temp file (redaction, StoreWriter, Fleet,
the changes, then the drift window and the hooks in dry run, as `podwarden watch` feeds
them), with `Sink.backpressure()` as the watcher awaits it. The mix: log reads of 1-6 lines
sharing a stamp, 4% floods of 10-70 identical lines, 3% errors, partial records; health
checks with an unhealthy flap now and then; a crash loop (one container dying every 20 s
for a fifth of the night); other crashes (137, 139, 1); a one-off job container with a
new name every minute on each target (not watched: only its events pass by).

RSS (/proc/self/statm) is sampled every `--every` observations. The baseline in the same
run: the RSS once everything is imported and the store is open (the floor). Goals: flat
after warm-up (the first 20%; `growth_mb` = the last sample less the warm one) and under
80 MB. At the end the size of every bounded cache is printed.

    .venv/bin/python bench/bench_memory.py                 # 10M observations (~8 min)
    .venv/bin/python bench/bench_memory.py --quick         # 400k (~20 s)
    .venv/bin/python bench/bench_memory.py --unbounded     # the bounds set out of reach, for contrast
    .venv/bin/python bench/bench_memory.py --obs 300000 --trace   # + tracemalloc: what grew after warm-up

Ends with `memory: obs=... rss_floor_mb=... rss_warm_mb=... rss_end_mb=... rss_max_mb=... growth_mb=...
obs_per_s=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
from common import machine_line, remove_db, summary

from bench_ingest import (BURST_TEMPLATES, CONMON_BUFFER, CONTAINERS, ERROR_TEMPLATES, HEALTH_CHECKED, IMAGE,  # noqa: E402
                          LOG_TEMPLATES, conmon_time, event_line, go_rfc3339nano)

import agent.log_follow as log_follow_module  # noqa: E402
import agent.sink as sink_module  # noqa: E402
import agent.watcher as watcher_module  # noqa: E402
import machines.container as container_module  # noqa: E402
import store.writer as store_writer_module  # noqa: E402
from agent import podman  # noqa: E402
from agent.config import config_from_dict  # noqa: E402
from agent.container_logs import parse_follower_line  # noqa: E402
from agent.recording import recording  # noqa: E402
from agent.transport import RunResult  # noqa: E402
from agent.watch import Window  # noqa: E402
from agent.watcher import TargetWatcher  # noqa: E402
from machines.observations import ProbeObs  # noqa: E402

TARGETS = ("node1", "node2")
S = 1_000_000_000
MS = 1_000_000
PAGE = os.sysconf("SC_PAGE_SIZE")
RECONCILE_S = 30
HEALTH_S = 30
LOOPER = "electrs"  # crash-loops on node2 for a fifth of the night
GOAL_MB = 80
WARMUP = 0.2


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def bench_config():
    return config_from_dict({
        "podwarden": {"default_target": TARGETS[0]},
        "targets": {t: {"transport": "local"} for t in TARGETS},
        "containers": {name: {"role": name.split("-")[0]} for name in CONTAINERS},
        "watch": {"run_healthchecks": "never"},
    })


class FakeNode:
    """A fake node transport (named as such) for the kernel-log read before a died 137: dmesg
    answers, with no OOM kill in it."""

    connected = True
    name = "fake-node"

    async def run(self, argv, *, timeout: float = 60.0, input: bytes | None = None, check: bool = False):
        return RunResult(tuple(argv), 0, "", "", 0.001)


class Container:
    """One synthetic container: its id, log file position, runs and crashes."""

    def __init__(self, target: str, name: str, index: int, rng: random.Random, t0: int) -> None:
        self.target, self.name, self.index = target, name, index
        self.id = f"{rng.getrandbits(256):064x}"
        self.role = name.split("-")[0]
        self.checked = index < HEALTH_CHECKED
        self.offset = 0
        self.started_ns = t0 - 3600 * S
        self.finished_ns = 0
        self.restarts = 0
        self.health = "healthy"
        self.streak = 0

    def inspect(self, log_dir: str) -> dict:
        state = {"Status": "running", "Running": True, "Pid": 1000 + self.index, "ExitCode": 0,
                 "StartedAt": go_rfc3339nano(self.started_ns),
                 "FinishedAt": go_rfc3339nano(self.finished_ns) if self.finished_ns else "0001-01-01T00:00:00Z"}
        config = {"Image": IMAGE, "Labels": {"podwarden.role": self.role}}
        if self.checked:
            state["Health"] = {"Status": self.health, "FailingStreak": self.streak, "Log": None}
            config["Healthcheck"] = {"Test": ["CMD-SHELL", "true"], "Interval": 30 * S, "Timeout": 10 * S,
                                     "Retries": 3}
        return {"Name": self.name, "Id": self.id, "Created": go_rfc3339nano(self.started_ns - 60 * S),
                "State": state, "RestartCount": self.restarts, "Config": config,
                "HostConfig": {"LogConfig": {"Type": "k8s-file", "Path": f"{log_dir}/{self.name}.log"},
                               "RestartPolicy": {"Name": "always"}, "Memory": 268435456}}


class Night:
    """The synthetic night, one second at a time per target: event lines, follower lines, probes, snapshots."""

    def __init__(self, seed: int, t0: int, seconds_hint: int) -> None:
        self.rng = random.Random(seed)
        self.t0 = t0
        self.loop_from, self.loop_to = int(seconds_hint * 0.4), int(seconds_hint * 0.6)
        self.containers = {t: [Container(t, name, i, self.rng, t0) for i, name in enumerate(CONTAINERS)]
                           for t in TARGETS}
        self.jobs = 0
        self.height = 840_000
        self.counts = dict(log_lines=0, floods=0, crashes=0, loop_deaths=0, jobs=0, flaps=0)

    def second(self, target: str, sec: int) -> tuple[list[str], list[tuple[int, str]], list[ProbeObs], bool]:
        """(event lines, (source index, follower line)s, our health-check probes, reconcile due)."""
        rng = self.rng
        base = self.t0 + sec * S
        if sec % 10 == 0:
            self.height += 1
        events: list[tuple[int, str]] = []
        follower: list[tuple[int, str]] = []
        probes: list[ProbeObs] = []
        for c in self.containers[target]:
            at = base + c.index * 37 * MS + rng.randrange(MS)
            self._read(c, at, follower)
            if c.checked and (sec + c.index) % HEALTH_S == 0:
                self._health(c, at + 5 * MS, events, probes)
            looping = target == TARGETS[1] and c.name == LOOPER and self.loop_from <= sec < self.loop_to
            if (looping and sec % 20 == 0) or (sec * 20 + c.index) % 4871 == 17:
                self._crash(c, at + 120 * MS, 1 if looping else rng.choice((137, 139, 1)), events)
                self.counts["loop_deaths" if looping else "crashes"] += 1
        if sec % 60 == 7:  # a one-off job under a new name: only its events pass by
            self.jobs += 1
            self.counts["jobs"] += 1
            name, cid = f"job-{self.jobs}", f"{rng.getrandbits(256):064x}"
            for k, status in enumerate(("create", "init", "start", "died", "cleanup", "remove")):
                at = base + 500 * MS + k * 30 * MS
                events.append((at, event_line(name, cid, "job", status, at)))
        events.sort(key=lambda pair: pair[0])
        return [line for _, line in events], follower, probes, sec % RECONCILE_S == 0

    def _read(self, c: Container, at: int, out: list[tuple[int, str]]) -> None:
        """One read of the container's pipe: every record shares conmon's stamp."""
        rng = self.rng
        stamp = conmon_time(at)
        date = go_rfc3339nano(at)[:19] + "Z"

        def text(template: str) -> str:
            return template.format(date=date, hash=f"{rng.getrandbits(64):016x}" * 4, height=self.height,
                                   tx=rng.randrange(1, 99_999), peer=rng.randrange(2, 250))

        lines: list[tuple[str, str]] = []
        if rng.random() < 0.04:
            line = text(BURST_TEMPLATES[rng.randrange(len(BURST_TEMPLATES))])
            burst = rng.randint(10, 70)
            lines += [("stderr" if "ERROR" in line else "stdout", line)] * burst
            self.counts["floods"] += 1
        for k in range(rng.randint(1, 6)):
            if rng.random() < 0.03:
                lines.append(("stderr", text(ERROR_TEMPLATES[rng.randrange(len(ERROR_TEMPLATES))])))
            else:
                lines.append(("stdout", text(LOG_TEMPLATES[(c.index + k) % len(LOG_TEMPLATES)])))
        for stream, line in lines:
            roll = rng.random()
            if roll < 0.002:  # longer than conmon's buffer: P records, then F
                line += " " + json.dumps({"mempool": [f"{rng.getrandbits(128):032x}" for _ in range(300)]})
                pieces = [line[j:j + CONMON_BUFFER] for j in range(0, len(line), CONMON_BUFFER)]
                records = [f"{stamp} {stream} P {p}" for p in pieces[:-1]] + [f"{stamp} {stream} F {pieces[-1]}"]
            elif roll < 0.005:  # written without its newline first, finished 30 ms later
                cut = len(line) // 2
                records = [f"{stamp} {stream} P {line[:cut]}",
                           f"{conmon_time(at + 30 * MS)} {stream} F {line[cut:]}"]
            else:
                records = [f"{stamp} {stream} F {line}"]
            for record in records:
                size = len(record.encode()) + 1
                out.append((c.index, f"R {c.index} {c.offset} {size} {record}"))
                c.offset += size
            self.counts["log_lines"] += 1

    def _health(self, c: Container, at: int, events: list[tuple[int, str]], probes: list[ProbeObs]) -> None:
        """Our `podman healthcheck run` and the events podman writes for it (4.3 writes exec_died twice)."""
        ok = self.rng.random() >= 0.01
        if not ok:
            self.counts["flaps"] += 1
        c.streak = 0 if ok else c.streak + 1
        c.health = "healthy" if ok or c.streak < 3 else "unhealthy"
        probes.append(ProbeObs(c.target, c.name, at + 40 * MS, "healthcheck", "podman-healthcheck", ok, 40.0,
                               "" if ok else "check failed", "healthy" if ok else "unhealthy"))
        events.append((at, event_line(c.name, c.id, c.role, "exec", at)))
        events.append((at + 30 * MS, event_line(c.name, c.id, c.role, "health_status", at + 30 * MS,
                                                health=c.health)))
        events.append((at + 35 * MS, event_line(c.name, c.id, c.role, "exec_died", at + 35 * MS)))
        events.append((at + 38 * MS, event_line(c.name, c.id, c.role, "exec_died", at + 38 * MS)))

    def _crash(self, c: Container, died: int, code: int, events: list[tuple[int, str]]) -> None:
        """died, the policy's restart, init, start (+ health starting)."""
        c.finished_ns = died
        c.started_ns = died + 110 * MS
        c.restarts += 1
        events.append((died, event_line(c.name, c.id, c.role, "died", died, exit_code=code)))
        events.append((died + 3 * MS, event_line(c.name, c.id, c.role, "restart", died + 3 * MS)))
        events.append((died + 95 * MS, event_line(c.name, c.id, c.role, "init", died + 95 * MS)))
        events.append((died + 110 * MS, event_line(c.name, c.id, c.role, "start", died + 110 * MS)))
        if c.checked:
            events.append((died + 130 * MS, event_line(c.name, c.id, c.role, "health_status", died + 130 * MS,
                                                       health="starting")))


def unbound() -> None:
    """Set every bound added for the night out of reach (the contrast run)."""
    log_follow_module.LOG_KEYS_KEPT = 20_000
    log_follow_module.BOUNDARY_CONTAINERS = 10**9
    watcher_module.EVENT_KEYS_KEPT = 200_000
    watcher_module.EVENT_KEYS_SPAN_NS = 10**30
    sink_module.CHANGES_KEPT = 10**9
    sink_module.BACKPRESSURE_ROWS = 20_000
    store_writer_module._EVENT_INDEX_SIZE = 20_000
    container_module._KEEP_DEATHS = 10**9


def cache_sizes(rec, watchers: list[TargetWatcher], window: Window) -> dict[str, int]:
    """What each bounded cache holds now."""
    follows = [w.logs for w in watchers]
    machines = rec.fleet.machines()
    detector = window.detector
    return {
        "event_keys": sum(len(w._seen_events) for w in watchers),
        "log_keys": sum(len(s.keys) for f in follows for s in f._sources.values()),
        "boundary_containers": sum(len(f._boundaries) for f in follows),
        "held_records": sum(len(s.joiner._held) for f in follows for s in f._sources.values()),
        "changes_kept": rec.sink.changes.kept if hasattr(rec.sink.changes, "kept") else len(rec.sink.changes),
        "changes_made": len(rec.sink.changes),
        "machines": len(machines),
        "death_history": sum(len(m._history) + len(m.deaths) for m in machines),
        "machine_errors": sum(len(m._errors) for m in machines),
        "drifts": len(detector.drifts),
        "drift_error_keys": sum(len(t.error_keys) for t in detector._tracks.values()),
        "writer_event_ids": len(rec.store._event_ids),
        "writer_redirects": len(rec.store._redirects),
        "sink_actions": len(rec.sink.actions),
    }


async def night(config, path: Path, total: int, every: int, progress, trace: bool) -> dict:
    t_span_guess = total // 210 + 600  # ~210 observations a synthetic second
    t0 = time.time_ns() - (t_span_guess + 3600) * S  # the whole night in the past: no line waits for events
    synthetic = Night(11, t0, t_span_guess)
    samples: list[tuple[int, float, float]] = []
    snapshot_warm = None
    async with recording(config, "bench-memory", list(TARGETS), str(path)) as rec:
        watchers = [TargetWatcher(config.targets[t], config, rec.sink, start_ns=t0) for t in TARGETS]
        window = Window(rec, watchers, dry_run=True)
        for watcher in watchers:
            watcher.ready.set()
            watcher._transport_now = FakeNode()
        # the drift window opens at the night's start (the synthetic clock), as once the watchers are ready
        window.started_ns = t0
        window.detector.start(rec.fleet, t0)
        window.opened.set()
        sources = {}
        log_dir = "/bench-memory"
        for watcher in watchers:
            watcher.logs.mode = "conmon"
            facts = podman.parse_inspect(json.dumps([c.inspect(f"{log_dir}/{watcher.name}")
                                                     for c in synthetic.containers[watcher.name]]),
                                         watcher.name, t0)
            watcher.logs.note_facts(facts)
            sources[watcher.name] = await watcher.logs._sources_for(facts)
        gc.collect()
        floor = rss_mb()
        samples.append((0, floor, 0.0))
        snapshot_floor = tracemalloc.take_snapshot() if trace else None
        started = time.perf_counter()
        next_sample = every
        sec = 0
        stored = 0
        while stored < total:
            for watcher in watchers:
                follow = watcher.logs
                lines, follower, probes, reconcile = synthetic.second(watcher.name, sec)
                for line in lines:
                    await watcher._on_event_line(line)
                for probe in probes:
                    rec.sink.put(probe)
                for index, raw in follower:
                    follow._on_follower_line(sources[watcher.name][index], parse_follower_line(raw))
                for source in sources[watcher.name]:
                    if source.joiner.holding:
                        for line in source.joiner.release():
                            follow._emit(line)
                if reconcile:
                    at_ns = t0 + sec * S + 900 * MS
                    facts = podman.parse_inspect(json.dumps([c.inspect(f"{log_dir}/{watcher.name}")
                                                             for c in synthetic.containers[watcher.name]]),
                                                 watcher.name, at_ns)
                    watcher.logs.note_facts(facts)
                    for fact in facts:
                        rec.sink.put(fact.snapshot())
                    watcher.facts = {f.name: f for f in facts}
                await rec.sink.backpressure()
            await asyncio.sleep(0)  # the writer and the upkeep get their turn, as a pipe read yields
            sec += 1
            stored = rec.store._next_obs_id - 1
            if stored >= next_sample:
                samples.append((stored, rss_mb(), time.perf_counter() - started))
                progress(f"  {stored:>10} obs  rss {samples[-1][1]:6.1f} MB  {samples[-1][2]:6.1f} s")
                next_sample += every
                if trace and snapshot_warm is None and stored >= total * WARMUP:
                    gc.collect()
                    snapshot_warm = tracemalloc.take_snapshot()
        await rec.store.flush()
        elapsed = time.perf_counter() - started
        samples.append((rec.store._next_obs_id - 1, rss_mb(), elapsed))
        sizes = cache_sizes(rec, watchers, window)
        top = []
        if trace and snapshot_warm is not None and snapshot_floor is not None:
            gc.collect()
            end = tracemalloc.take_snapshot()
            top = ["traced Python allocations, floor -> warm-up:"]
            top += [str(stat) for stat in snapshot_warm.compare_to(snapshot_floor, "lineno")[:12]]
            top += ["warm-up -> end:"]
            top += [str(stat) for stat in end.compare_to(snapshot_warm, "lineno")[:12]]
        window.close()
        rec.verdict = "recorded"
    return {"samples": samples, "sizes": sizes, "elapsed": elapsed, "seconds": sec, "counts": synthetic.counts,
            "floor": floor, "top": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400k observations")
    parser.add_argument("--obs", type=int, default=None, help="observations (default 10M)")
    parser.add_argument("--every", type=int, default=None, help="sample RSS every N observations")
    parser.add_argument("--unbounded", action="store_true", help="set the bounds out of reach (contrast)")
    parser.add_argument("--trace", action="store_true", help="tracemalloc: the top growth after warm-up")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--dir", default=None, help="where the store goes (default: the temp dir)")
    args = parser.parse_args()
    total = args.obs or (400_000 if args.quick else 10_000_000)
    every = args.every or max(total // 50, 1000)

    from loguru import logger
    logger.remove()

    def progress(text: str) -> None:
        if args.verbose:
            print(text, flush=True)

    if args.unbounded:
        unbound()
    if args.trace:
        tracemalloc.start(1)
    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir=args.dir) as tmp:
        path = Path(tmp, "night.db")
        out = asyncio.run(night(bench_config(), path, total, every, progress, args.trace))
        size = path.stat().st_size
        remove_db(path)
    samples = out["samples"]
    obs = samples[-1][0]
    warm_at = next(i for i, s in enumerate(samples) if s[0] >= obs * WARMUP)
    warm = samples[warm_at][1]
    after = [s[1] for s in samples[warm_at:]]
    end, peak = samples[-1][1], max(s[1] for s in samples)
    counts = out["counts"]
    print(f"  {obs} observations, {out['seconds']} s of a night ({out['seconds'] / 3600:.1f} h) on {len(TARGETS)} "
          f"targets x {len(CONTAINERS)} containers: {counts['log_lines']} log lines ({counts['floods']} floods), "
          f"{counts['crashes']} crashes, {counts['loop_deaths']} crash-loop deaths, {counts['flaps']} failed "
          f"health checks, {counts['jobs']} one-off jobs; store {size / 2**20:.0f} MiB; "
          f"{'UNBOUNDED (contrast); ' if args.unbounded else ''}{machine_line()}")
    print(f"  {obs / out['elapsed']:.0f} obs/s; RSS: floor (imports, store open) {out['floor']:.1f} MB, "
          f"at warm-up ({samples[warm_at][0]} obs) {warm:.1f} MB, end {end:.1f} MB, max {peak:.1f} MB; "
          f"after warm-up min {min(after):.1f} max {max(after):.1f}")
    step = max(1, len(samples) // 12)
    print("  RSS over the night (obs: MB): " + ", ".join(f"{s[0] // 1000}k: {s[1]:.1f}" for s in samples[::step]
                                                          + ([samples[-1]] if (len(samples) - 1) % step else [])))
    print("  caches at the end: " + " ".join(f"{k}={v}" for k, v in out["sizes"].items()))
    growth = end - warm
    print(f"  goal flat after warm-up: {'met' if growth <= 2.0 else 'MISSED'} ({growth:+.1f} MB); under {GOAL_MB} MB: "
          f"{'met' if peak < GOAL_MB else 'MISSED'} (max {peak:.1f} MB)")
    for line in out["top"]:
        print("    " + line)
    print(summary("memory", obs=obs, rss_floor_mb=out["floor"], rss_warm_mb=warm, rss_end_mb=end, rss_max_mb=peak,
                  growth_mb=growth, obs_per_s=obs / out["elapsed"], unbounded=int(args.unbounded)))


if __name__ == "__main__":
    main()
