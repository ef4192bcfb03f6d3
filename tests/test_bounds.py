"""Every in-memory cache a night of watching feeds is bounded (bench/bench_memory.py shows the RSS
stays flat); and the reconcile asks the node no more than it must (bench/bench_node.py).

One test per bound, each against the named constant, made small where the real one would take
long to reach. The node is a fake (named FakeTransport): it answers the commands the watcher
sends with what podman 4.3 prints; the end-to-end tests run the same code against real podman.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

import agent.log_follow as log_follow
import agent.sink as sink_module
import agent.watcher as watcher_module
import machines.container as container_module
import store.writer as writer_module
from agent import podman
from agent.config import config_from_dict
from agent.log_follow import LogFollow, RecentKeys
from agent.recording import machine_settings
from agent.sink import ChangeLog, Sink
from agent.transport import RunResult
from agent.watcher import TargetWatcher
from machines.container import ContainerMachine, Fleet, MachineSettings, StateChange
from machines.observations import EventObs
from machines.states import State
from store import StoreWriter

T0 = 1_796_000_000_000_000_000
S = 1_000_000_000
MS = 1_000_000


def event_line(name: str, cid: str, status: str, at_ns: int, exit_code: int | None = None) -> str:
    item = {"ID": cid, "Image": "img", "Name": name, "Status": status, "Time": podman.format_time_ns(at_ns),
            "Type": "container", "Attributes": {}}
    if exit_code:
        item["ContainerExitCode"] = exit_code
    return json.dumps(item)


@dataclass
class FakeTransport:
    """A fake node: answers `podman container inspect` from `containers` as podman 4.3 does
    (the found ones on stdout, `no such container` on stderr and exit 125 for the others)."""

    containers: dict[str, dict] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)
    broken: str | None = None  # podman fails with this on stderr
    warning: str = ""  # podman prints this on stderr too (and, for "more than one result", fails)
    connected: bool = True
    name: str = "node1"

    async def run(self, argv, timeout: float = 60.0, input: bytes | None = None, check: bool = False) -> RunResult:
        argv = list(argv)
        self.commands.append(argv)
        if argv[1:3] == ["container", "inspect"]:
            if self.broken:
                return RunResult(tuple(argv), 125, "", self.broken, 0.01)
            names = argv[3:]
            if "more than one result" in self.warning and len(names) > 1:
                return RunResult(tuple(argv), 125, "", self.warning, 0.01)  # podman 4.3 prints nothing then
            found = [c for n in names for c in self.containers.values() if n in (c["Name"], c["Id"])]
            missing = [n for n in names if not any(n in (c["Name"], c["Id"]) for c in self.containers.values())]
            err = self.warning + "".join(f"Error: inspecting object: no such container {n}\n" for n in missing)
            return RunResult(tuple(argv), 125 if missing else 0, json.dumps(found, indent=4), err, 0.01)
        if argv[1:3] == ["ps", "-a"]:
            return RunResult(tuple(argv), 0, json.dumps([{"Names": [n], "Id": c["Id"]}
                                                         for n, c in self.containers.items()]), "", 0.01)
        return RunResult(tuple(argv), 0, "", "", 0.001)


def inspect_item(name: str, cid: str, health: bool = False) -> dict:
    item = {"Name": name, "Id": cid, "Created": "2026-11-30T10:00:00Z",
            "State": {"Status": "running", "Running": True, "Pid": 42, "StartedAt": "2026-11-30T10:00:01Z",
                      "Health": {"Status": "healthy" if health else "", "FailingStreak": 0}},
            "Config": {"Image": "img"}, "HostConfig": {"RestartPolicy": {"Name": "always"}}}
    if health:
        item["Config"]["Healthcheck"] = {"Test": ["CMD-SHELL", "true"], "Interval": 30 * S}
    return item


def watcher(containers: dict | None = None, **kwargs) -> TargetWatcher:
    config = config_from_dict({"targets": {"node1": {"transport": "local"}},
                               "containers": containers if containers is not None else {"web": {}, "db": {}}})
    sink = Sink(Fleet(machine_settings(config)))
    return TargetWatcher(config.targets["node1"], config, sink, **kwargs)


# ---------------------------------------------------------------- RecentKeys


def test_recent_keys_hold_at_most_their_limit_oldest_out_first():
    keys = RecentKeys(3)
    for key in range(10):
        assert keys.add(key)
    assert len(keys) == 3 and 9 in keys and 6 not in keys
    assert not keys.add(9)


def test_seeded_keys_all_stay_then_the_set_shrinks_back_to_its_limit():
    keys = RecentKeys(4)
    keys.seed({(5, 1), (1, 1), (3, 1), (2, 1), (4, 1), (6, 1)}, order=lambda k: k)
    assert len(keys) == 6 and keys.limit == 6  # every seeded key stays until used
    keys.add((7, 1))  # each new key puts out one, the oldest
    assert len(keys) == 6 and (1, 1) not in keys and (2, 1) in keys and (7, 1) in keys
    for n in range(8, 12):
        keys.add((n, 1))
    assert len(keys) == 6 and (6, 1) in keys  # the newest seeded key stays while the surplus lasts
    keys.add((12, 1))  # as many new keys as were seeded: back to the limit
    assert keys.limit == 4 and len(keys) == 4 and (12, 1) in keys and (8, 1) not in keys


def test_drop_while_forgets_the_oldest_in_time():
    keys = RecentKeys(100)
    for at in (1, 2, 3, 10, 11):
        keys.add(("c", "start", at))
    keys.drop_while(lambda key: key[2] < 5)
    assert len(keys) == 2 and ("c", "start", 3) not in keys


# ---------------------------------------------------------------- the watcher's event keys


def test_event_keys_older_than_the_span_are_dropped_and_repeats_inside_it_still_are():
    w = watcher()
    cid = "a" * 64
    for n in range(200):
        asyncio.run(w._on_event_line(event_line("web", cid, "exec_died", T0 + n * S)))
    span_s = watcher_module.EVENT_KEYS_SPAN_NS // S
    assert len(w._seen_events) <= span_s + 1  # one event a second: the span's worth, not 200
    assert not asyncio.run(w._on_event_line(event_line("web", cid, "exec_died", T0 + 199 * S)))  # a repeat
    assert w.view.events == 200


def test_event_keys_are_capped_in_count(monkeypatch):
    monkeypatch.setattr(watcher_module, "EVENT_KEYS_KEPT", 50)
    w = watcher()
    for n in range(300):  # all inside one span: only the count holds them
        asyncio.run(w._on_event_line(event_line("web", "b" * 64, "exec_died", T0 + n * MS)))
    assert len(w._seen_events) == 50


def test_event_keys_seeded_from_the_store_outlive_the_count_until_the_span_passes(monkeypatch):
    monkeypatch.setattr(watcher_module, "EVENT_KEYS_KEPT", 10)
    seen = {("c" * 64, "exec_died", T0 + n * MS) for n in range(40)}
    w = watcher(last_event_ns=T0 + 39 * MS, seen_events=seen)
    w._seed_store_events()  # once the node's clock is known
    assert len(w._seen_events) == 40
    assert not asyncio.run(w._on_event_line(event_line("web", "c" * 64, "exec_died", T0)))  # still known


def test_store_events_from_after_the_runs_start_are_this_runs_to_see():
    """Another run recording the same target at the same time stored them: this run's
    machines must still see them (a death in a soak beside a watch was lost)."""
    seen = {("c" * 64, "exec_died", T0 + n * MS) for n in range(40)}
    w = watcher(last_event_ns=T0 + 39 * MS, seen_events=seen, start_ns=T0 + 20 * MS)
    w._kernel_log = False
    w._seed_store_events()
    assert len(w._seen_events) == 20
    assert not asyncio.run(w._on_event_line(event_line("web", "c" * 64, "exec_died", T0 + 5 * MS)))
    assert asyncio.run(w._on_event_line(event_line("web", "c" * 64, "exec_died", T0 + 30 * MS)))


# ---------------------------------------------------------------- the log follow


def follow() -> tuple[LogFollow, Sink]:
    config = config_from_dict({"containers": {"web": {}}})
    sink = Sink(Fleet(machine_settings(config)))
    view = type("View", (), {"logs": 0, "errors": 0, "parse_errors": 0})()
    return LogFollow("node1", config, sink, podman_cmd=["podman"], now_ns=lambda: T0 + 3600 * S,
                     agent=lambda *_: None, view=view, wanted=lambda name: True), sink


def test_log_identities_per_container_are_capped():
    f, sink = follow()
    from agent.container_logs import Line
    for n in range(log_follow.LOG_KEYS_KEPT * 3):
        f._emit(Line("web", T0 + n, n * 100, "stdout", f"line {n}"))
    assert len(f._sources["web"].keys) == log_follow.LOG_KEYS_KEPT
    assert f._view.logs == log_follow.LOG_KEYS_KEPT * 3
    f._emit(Line("web", T0 + 10, 1000, "stdout", "line 10"))  # long gone from memory: the store drops it
    last = log_follow.LOG_KEYS_KEPT * 3 - 1
    f._emit(Line("web", T0 + last, last * 100, "stdout", f"line {last}"))  # a recent repeat: dropped here
    assert f._view.logs == log_follow.LOG_KEYS_KEPT * 3 + 1


def test_run_boundaries_are_kept_for_a_bounded_number_of_containers(monkeypatch):
    monkeypatch.setattr(log_follow, "BOUNDARY_CONTAINERS", 5)
    f, _ = follow()
    for n in range(20):  # one-off jobs: a new name each
        f.note_event(EventObs("node1", f"job-{n}", T0 + n * S, f"{n:064x}", "died"))
    assert len(f._boundaries) == 5 and "job-19" in f._boundaries and "job-0" not in f._boundaries
    f.note_event(EventObs("node1", "job-15", T0 + 30 * S, f"{15:064x}", "init"))  # touched: newest again
    f.note_event(EventObs("node1", "job-20", T0 + 31 * S, f"{20:064x}", "died"))
    assert "job-15" in f._boundaries and "job-16" not in f._boundaries
    assert len(f._boundaries["job-15"]) == 2
    for n in range(100):
        f.note_event(EventObs("node1", "job-15", T0 + (40 + n) * S, f"{15:064x}", "died"))
    assert len(f._boundaries["job-15"]) == log_follow.BOUNDARY_TIMES


# ---------------------------------------------------------------- the sink


def change(n: int) -> StateChange:
    return StateChange("node1", "web", T0 + n, State.RUNNING, State.EXITED, "died", "event")


def test_the_sink_keeps_the_newest_changes_and_counts_them_all(monkeypatch):
    monkeypatch.setattr(sink_module, "CHANGES_KEPT", 100)
    log = ChangeLog()
    for n in range(250):
        log.append(change(n))
    assert len(log) == 250 and log.count == 250 and log.kept == 100 and log.dropped == 150
    assert [c.at_ns - T0 for c in log] == list(range(150, 250))  # the newest, oldest first
    assert [c for c in log if c.at_ns >= T0 + 240] == [change(n) for n in range(240, 250)]


def test_a_flood_waits_for_the_store_past_the_backpressure_rows():
    class FakeStore:
        """A fake store (no file): counts its flushes."""

        redactor = None

        def __init__(self) -> None:
            self.pending, self.flushes = 0, 0

        async def flush(self) -> None:
            self.flushes += 1
            self.pending = 0

    store = FakeStore()
    sink = Sink(Fleet(), store)  # type: ignore[arg-type]
    store.pending = sink_module.BACKPRESSURE_ROWS
    asyncio.run(sink.backpressure())
    assert store.flushes == 0
    store.pending = sink_module.BACKPRESSURE_ROWS + 1
    asyncio.run(sink.backpressure())
    assert store.flushes == 1


# ---------------------------------------------------------------- the machine


def test_a_machine_keeps_a_bounded_death_history_and_still_sees_the_loop(monkeypatch):
    monkeypatch.setattr(container_module, "_KEEP_DEATHS", 16)
    machine = ContainerMachine("node1", "web", MachineSettings())
    cid = "d" * 64
    at = T0
    for _ in range(200):  # dies at once on every start: 10 a second
        machine.feed(EventObs("node1", "web", at, cid, "died", exit_code=1))
        machine.feed(EventObs("node1", "web", at + 2 * MS, cid, "restart"))
        machine.feed(EventObs("node1", "web", at + 80 * MS, cid, "start"))
        at += 100 * MS
    assert len(machine._history) <= 16 and len(machine.deaths) <= 16
    assert machine.state is State.CRASHLOOPING
    assert machine.crashes == 200


# ---------------------------------------------------------------- the store writer


def test_the_writers_event_index_is_capped_and_a_repeat_past_it_is_still_stored_once(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "_EVENT_INDEX_SIZE", 8)

    async def go() -> None:
        store = await StoreWriter.open(tmp_path / "s.db", ())
        try:
            first = [store.add(EventObs("node1", "web", T0 + n, "e" * 64, "exec_died")) for n in range(30)]
            assert len(store._event_ids) == 8
            assert store.add(EventObs("node1", "web", T0 + 29, "e" * 64, "exec_died")) == first[29]  # indexed
            store.add(EventObs("node1", "web", T0, "e" * 64, "exec_died"))  # fell out: the unique key drops it
            await store.flush()
        finally:
            await store.close()

    asyncio.run(go())
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        assert conn.execute("SELECT count(*) FROM observations WHERE kind = 'event'").fetchone()[0] == 30


# ---------------------------------------------------------------- what the reconcile asks of the node


def test_the_reconcile_inspects_the_configured_names_only_in_one_podman_process():
    w = watcher()
    node = FakeTransport({"web": inspect_item("web", "1" * 64), "other": inspect_item("other", "2" * 64)})
    asyncio.run(w._reconcile(node))  # type: ignore[arg-type]
    assert node.commands == [["podman", "container", "inspect", "db", "web"]]
    assert set(w.facts) == {"web"}
    assert w.sink.fleet.get("node1", "db").state is State.MISSING  # "no such container": absent
    assert w.sink.fleet.get("node1", "web").state is State.RUNNING
    assert w.ready.is_set()


def test_a_failing_podman_is_a_problem_not_absence():
    w = watcher()
    agents: list = []
    w.sink.on_observation.append(agents.append)
    node = FakeTransport({"web": inspect_item("web", "1" * 64)},
                         broken="Error: database is locked\n")
    asyncio.run(w._reconcile(node))  # type: ignore[arg-type]
    assert w.sink.fleet.get("node1", "db").state is State.UNKNOWN
    assert [o.what for o in agents] == ["reconcile-problem"]
    assert not w.ready.is_set()


def test_with_no_containers_configured_every_container_is_inspected():
    w = watcher(containers={})
    node = FakeTransport({"web": inspect_item("web", "1" * 64), "other": inspect_item("other", "2" * 64)})
    asyncio.run(w._reconcile(node))  # type: ignore[arg-type]
    assert [c[:3] for c in node.commands] == [["podman", "ps", "-a"], ["podman", "container", "inspect"]]
    assert set(w.facts) == {"web", "other"}


def test_a_death_followed_by_its_start_needs_no_reconcile():
    w = watcher()
    w._kernel_log = False  # no kernel-log read for the died 137
    w._kernel_log_retry_at = float("inf")
    cid = "3" * 64
    asyncio.run(w._on_event_line(event_line("web", cid, "died", T0, exit_code=137)))
    assert w._recheck == {"web": T0} and w._recheck_wake.is_set()
    asyncio.run(w._on_event_line(event_line("web", cid, "start", T0 + 80 * MS)))
    assert w._recheck == {}  # the restart policy restarted it: no stop to tell from a crash
    asyncio.run(w._on_event_line(event_line("db", "4" * 64, "died", T0 + S)))
    asyncio.run(w._on_event_line(event_line("db", "4" * 64, "start", T0 + S - MS)))  # an older start
    assert w._recheck == {"db": T0 + S}


def test_podmans_warnings_are_no_failure_and_anything_else_asks_ps_then_inspect():
    w = watcher()
    node = FakeTransport({"web": inspect_item("web", "1" * 64)},
                         warning='time="2026-11-30T10:00:00Z" level=warning msg="The cgroupv2 manager is set to '
                                 'systemd but there is no systemd user session available"\n')
    asyncio.run(w._reconcile(node))  # type: ignore[arg-type]
    assert len(node.commands) == 1  # db absent, web present: one podman process, the warning ignored
    assert w.sink.fleet.get("node1", "db").state is State.MISSING
    assert w.sink.fleet.get("node1", "web").state is State.RUNNING
    # a hex name podman takes for an ambiguous id prefix fails the whole inspect: ps + inspect
    node = FakeTransport({"web": inspect_item("web", "1" * 64)},
                         warning="Error: more than one result for container ID db\n")
    w = watcher()
    asyncio.run(w._reconcile(node))  # type: ignore[arg-type]
    assert [c[:3] for c in node.commands][1:] == [["podman", "ps", "-a"], ["podman", "container", "inspect"]]
    assert w.sink.fleet.get("node1", "db").state is State.MISSING


def test_deaths_more_often_than_the_interval_do_not_put_the_reconcile_off(monkeypatch):
    monkeypatch.setattr(watcher_module, "RECHECK_DELAY_S", 0.01)
    w = watcher()
    w._watch = w._watch.model_copy(update={"reconcile_interval": 0.3})
    node = FakeTransport({"web": inspect_item("web", "1" * 64), "db": inspect_item("db", "2" * 64)})

    async def night() -> int:
        loop = asyncio.create_task(w._reconcile_loop(node))  # type: ignore[arg-type]
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while len(node.commands) < 3 and asyncio.get_running_loop().time() < deadline:
                w._recheck_wake.set()  # a death, its start already seen (nothing in _recheck)
                await asyncio.sleep(0.02)
            return len(node.commands)
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)

    assert asyncio.run(night()) >= 3  # the regular reconcile kept its time


def test_a_restarted_podman_logs_drops_its_reread_of_a_flooded_stamp():
    from agent.container_logs import Line
    f, _ = follow()
    stamp = T0 + 5 * S
    many = log_follow.LOG_KEYS_KEPT * 4  # one 8 KiB read of short lines: more than the keys kept
    for n in range(many):
        f._emit_fallback(Line("web", stamp, n, "merged", "x"))
    for n in range(many):  # `podman logs -f` restarted: the last stamp again, whole
        f._emit_fallback(Line("web", stamp, n, "merged", "x"))
    f._emit_fallback(Line("web", stamp, many, "merged", "x"))  # then the stamp's next line
    f._emit_fallback(Line("db", stamp, 0, "merged", "x"))  # another container's own place
    assert f._view.logs == many + 2


def test_podman_4_3_inspect_stderr_is_recognised():
    assert watcher_module._NO_SUCH_CONTAINER.search("Error: inspecting object: no such container web")
    assert watcher_module._NO_SUCH_CONTAINER.search("error inspecting object: no such container db")
    assert not watcher_module._NO_SUCH_CONTAINER.search("Error: database is locked")



def test_a_first_run_reads_events_from_as_early_as_the_clocks_error_allows():
    """The offset to the node's clock is measured by one `date` round trip: the stream of a run
    the store knows nothing before starts that round trip early, so a death just after the
    start is read (measured: an offset 228 ms late left a kill 241 ms after the start out)."""
    w = watcher(start_ns=T0)
    w._clock_offset_ns, w._clock_error_ns = 3 * S, 300 * MS
    assert w._events_since() == T0 + 3 * S - 300 * MS
