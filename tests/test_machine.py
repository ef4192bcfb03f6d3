"""The container state machine on the event sequences podman 4.3 was measured to emit."""

from __future__ import annotations

import pytest

from machines.container import ContainerMachine, Fleet, MachineSettings, StateChange, format_duration
from machines.observations import ActionObs, AgentObs, EventObs, LogObs, Observation, ProbeObs, SnapshotObs
from machines.states import State
from machines.table import INDEX, TRANSITIONS, TransitionsRouter, compile_table

T0 = 1_764_000_000_000_000_000
S = 1_000_000_000
TARGET, NAME = "node1", "lnd"

CREATED, RUNNING, STARTING = State.CREATED, State.RUNNING, State.STARTING
HEALTHY, UNHEALTHY, EXITED = State.HEALTHY, State.UNHEALTHY, State.EXITED
STOPPED, RESTARTING, CRASHLOOPING = State.STOPPED, State.RESTARTING, State.CRASHLOOPING


def at(seconds: float) -> int:
    return T0 + round(seconds * S)


def ev(status: str, seconds: float, **fields: object) -> EventObs:
    return EventObs(TARGET, NAME, at(seconds), "c0ffee", status, **fields)


def snap(seconds: float, status: str = "running", health: str | None = None, exists: bool = True,
         **fields: object) -> SnapshotObs:
    return SnapshotObs(TARGET, NAME, at(seconds), exists, "c0ffee", status, health, **fields)


def log(seconds: float, line: str, is_error: bool = False) -> LogObs:
    return LogObs(TARGET, NAME, at(seconds), line, is_error=is_error)


def crash(seconds: float, exit_code: int | None = 137) -> list[EventObs]:
    """What a host kill of the main process under restart policy `always` emits."""
    return [ev("died", seconds, exit_code=exit_code), ev("restart", seconds + 0.05),
            ev("init", seconds + 0.06), ev("start", seconds + 0.2)]


BOOT = [ev("create", 0), ev("init", 0.1), ev("start", 0.3), ev("mount", 0.3), ev("attach", 0.3)]


@pytest.fixture(params=["dict", "transitions"])
def fleet(request: pytest.FixtureRequest) -> Fleet:
    fleet = Fleet(engine=request.param)
    yield fleet
    fleet.close()


def feed(fleet: Fleet, observations: list[Observation]) -> list[StateChange]:
    return [change for obs in observations for change in fleet.feed(obs)]


def moves(changes: list[StateChange]) -> list[State]:
    """The states visited: the first change's origin, then every destination."""
    return [changes[0].from_state, *(c.to_state for c in changes)] if changes else []


def machine(fleet: Fleet) -> ContainerMachine:
    found = fleet.get(TARGET, NAME)
    assert found is not None
    return found


# ---------------------------------------------------------------- measured sequences

def test_boot_goes_created_then_running(fleet: Fleet) -> None:
    changes = feed(fleet, BOOT)
    assert moves(changes) == [State.UNKNOWN, CREATED, RUNNING]
    assert [c.cause for c in changes] == ["created", "started"]
    assert machine(fleet).since_ns == at(0.3)
    assert all(c.obs_kind == "event" and not c.contradiction for c in changes)


def test_crash_goes_exited_restarting_running(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [*crash(60), ev("cleanup", 60.1)])
    assert moves(changes) == [RUNNING, EXITED, RESTARTING, RUNNING]
    assert changes[0].cause == "died: killed by SIGKILL (exit 137): SIGKILL from outside the container"
    assert changes[0].at_ns == at(60)
    m = machine(fleet)
    assert m.restarts == 1
    assert list(m.deaths) == [at(60)]


def test_podman_stop_is_stopped_not_exited(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("stop", 60), ev("died", 60.4, exit_code=137), ev("cleanup", 60.5)])
    assert moves(changes) == [RUNNING, STOPPED]
    assert changes[0].cause == "died: stopped by a user (podman stop), exit 137"
    m = machine(fleet)
    assert not m.deaths and m.restarts == 0


def test_podman_kill_is_stopped(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("kill", 60), ev("died", 60.1, exit_code=137), ev("cleanup", 60.2)])
    assert moves(changes) == [RUNNING, STOPPED]
    assert changes[0].cause == "died: killed by a user (podman kill), exit 137"


def test_stop_waiting_out_its_timeout_is_still_a_user_stop(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("stop", 60), ev("died", 70, exit_code=137)])
    assert moves(changes) == [RUNNING, STOPPED]


def test_podman5_died_then_stop_becomes_stopped(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("died", 60, exit_code=137), ev("stop", 60.3), ev("cleanup", 60.4)])
    assert moves(changes) == [RUNNING, EXITED, STOPPED]
    assert changes[1].cause == "died: stopped by a user (podman stop), exit 137"
    m = machine(fleet)
    assert not m.deaths, "a user stop is no crash-loop death"


def test_stop_stamped_before_its_died_but_delivered_after(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("died", 60, exit_code=137), ev("stop", 59.9)])
    assert moves(changes) == [RUNNING, EXITED, STOPPED]


def test_stop_long_after_a_death_does_not_rewrite_it(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("died", 60, exit_code=1), ev("stop", 65)])
    assert moves(changes) == [RUNNING, EXITED]


def test_stop_mark_expires(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("stop", 60), ev("died", 95, exit_code=1)])
    assert moves(changes) == [RUNNING, EXITED]


def test_died_without_exit_code_is_exit_zero(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    assert feed(fleet, [ev("died", 60)])[0].cause == "died: exited with code 0 (the main process ended by itself)"


def test_manual_start_after_stop(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("stop", 60), ev("died", 60.1), ev("init", 90), ev("start", 90.2)])
    assert moves(changes) == [RUNNING, STOPPED, RUNNING]
    assert machine(fleet).restarts == 0


# ---------------------------------------------------------------- crash loop

def test_crashloop_entered_at_exactly_n_deaths(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    first_two = feed(fleet, [*crash(10, exit_code=1), *crash(40, exit_code=1)])
    assert CRASHLOOPING not in moves(first_two)
    third = feed(fleet, [ev("died", 70, exit_code=1)])
    assert moves(third) == [RUNNING, CRASHLOOPING]
    assert third[0].cause == "3 deaths within 5m0s; last: exited with code 1; it printed no error line before dying"
    assert machine(fleet).restarts == 2


def test_deaths_spread_beyond_the_window_are_no_crashloop(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [*crash(10), *crash(200), *crash(320)])
    assert CRASHLOOPING not in moves(changes)
    assert list(machine(fleet).deaths) == [at(200), at(320)]


def test_crashloop_holds_through_restarts_and_settles_after_stable_period(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, *crash(10), *crash(20), ev("died", 30, exit_code=1)])
    m = machine(fleet)
    assert m.state is CRASHLOOPING
    held = feed(fleet, [ev("restart", 30.05), ev("init", 30.1), ev("start", 30.2), *crash(40), *crash(50)])
    assert held == []
    assert m.state is CRASHLOOPING
    assert m.restarts == 5
    last_start = at(50.2)
    assert feed(fleet, [LogObs(TARGET, NAME, last_start + 600 * S - 1, "tick")]) == []
    settled = feed(fleet, [LogObs(TARGET, NAME, last_start + 600 * S, "tick")])
    assert moves(settled) == [CRASHLOOPING, RUNNING]
    assert settled[0].cause == "up 10m0s since last start"
    assert settled[0].obs_kind == "log"
    assert not m.deaths, "the stable period resets the death count"


def test_crashloop_settles_into_current_health(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, *crash(10), *crash(20), *crash(30)])
    assert machine(fleet).state is CRASHLOOPING
    assert feed(fleet, [ev("health_status", 60, health_status="healthy")]) == []
    settled = feed(fleet, [ev("health_status", 30.2 + 600, health_status="healthy")])
    assert moves(settled) == [CRASHLOOPING, HEALTHY]


def test_crashloop_does_not_settle_while_down(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, *crash(10), *crash(20), ev("died", 30, exit_code=1)])
    assert feed(fleet, [log(30 + 900, "still dead")]) == []
    assert machine(fleet).state is CRASHLOOPING


def test_user_stop_while_crashlooping(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, *crash(10), *crash(20), *crash(30)])
    changes = feed(fleet, [ev("stop", 35), ev("died", 35.1, exit_code=137)])
    assert moves(changes) == [CRASHLOOPING, STOPPED]


def test_podman5_stop_after_the_nth_death_is_no_crashloop(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, *crash(10), *crash(20)])
    changes = feed(fleet, [ev("died", 30, exit_code=137), ev("stop", 30.2)])
    assert moves(changes) == [RUNNING, CRASHLOOPING, STOPPED]
    assert len(machine(fleet).deaths) == 2


def test_crashloop_threshold_comes_from_settings() -> None:
    fleet = Fleet(MachineSettings(crashloop_deaths=2, crashloop_window_ns=60 * S, stable_period_ns=30 * S))
    changes = feed(fleet, [*BOOT, *crash(10), ev("died", 20, exit_code=2)])
    assert changes[-1].to_state is CRASHLOOPING
    assert changes[-1].cause == "2 deaths within 1m0s; last: exited with code 2; it printed no error line before dying"


# ---------------------------------------------------------------- health

def test_health_changes_only_on_change(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    checks = [ev("exec", 30 * i) for i in range(1, 4)] + [ev("exec_died", 30 * i + 0.1) for i in range(1, 4)]
    healthy = [ev("health_status", 30 * i + 0.2, health_status="healthy") for i in range(1, 6)]
    changes = feed(fleet, [ev("health_status", 10, health_status="starting"), *checks, *healthy])
    assert moves(changes) == [RUNNING, STARTING, HEALTHY]
    assert changes[1].cause == "health_status healthy"
    changes = feed(fleet, [ev("health_status", 200, health_status="unhealthy"),
                           ev("health_status", 230, health_status="unhealthy"),
                           ev("health_status", 260, health_status="healthy")])
    assert moves(changes) == [HEALTHY, UNHEALTHY, HEALTHY]


def test_health_after_death_does_not_revive(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, ev("died", 10, exit_code=1)])
    assert feed(fleet, [ev("health_status", 10.5, health_status="healthy")]) == []
    assert machine(fleet).state is EXITED


def test_odd_health_values_are_ignored(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    assert feed(fleet, [ev("health_status", 10, health_status=None),
                        ev("health_status", 11, health_status="weird")]) == []


# ---------------------------------------------------------------- other events

def test_pause_unpause_remove(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("pause", 10), ev("unpause", 20), ev("kill", 30), ev("died", 30.1),
                           ev("cleanup", 30.2), ev("remove", 31)])
    assert moves(changes) == [RUNNING, State.PAUSED, RUNNING, STOPPED, State.REMOVED]


def test_unknown_and_ignored_statuses_change_nothing(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    noise = ["init", "exec", "exec_died", "cleanup", "mount", "unmount", "attach", "checkpoint",
             "restore", "sync", "rename", "", "prune", "Died", "health_status"]
    assert feed(fleet, [ev(status, 10 + i) for i, status in enumerate(noise)]) == []
    assert machine(fleet).state is RUNNING


def test_name_reused_after_remove(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, *crash(10), *crash(20), ev("kill", 25), ev("died", 25.1), ev("remove", 26)])
    changes = feed(fleet, [ev("create", 40), ev("start", 40.2), ev("died", 50, exit_code=1)])
    assert moves(changes) == [State.REMOVED, CREATED, RUNNING, EXITED]
    assert list(machine(fleet).deaths) == [at(50)], "the old container's deaths are not the new one's"


def test_out_of_order_events_do_not_move_backwards(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("died", 20, exit_code=1), ev("start", 15),
                           ev("health_status", 18, health_status="healthy")])
    assert moves(changes) == [RUNNING, EXITED]


# ---------------------------------------------------------------- logs and other kinds

def test_logs_set_last_error_only(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    assert feed(fleet, [log(10, "hello"), log(11, "LOCK: Permission denied", is_error=True),
                        log(12, "retrying")]) == []
    assert machine(fleet).last_error == "LOCK: Permission denied"
    feed(fleet, [log(5, "an older error", is_error=True)])
    assert machine(fleet).last_error == "LOCK: Permission denied", "an older line is not the last error"


def test_probe_action_agent_change_nothing(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    others = [ProbeObs(TARGET, NAME, at(10), "rpc", "exec", False),
              ActionObs(TARGET, NAME, at(11), "restart", "experiment step"),
              AgentObs(TARGET, NAME, at(12), "lost"),
              AgentObs(TARGET, "", at(13), "connected")]
    assert feed(fleet, others) == []
    assert machine(fleet).state is RUNNING
    assert fleet.get(TARGET, "") is None


# ---------------------------------------------------------------- snapshots

def test_first_snapshot_sets_state_without_contradiction(fleet: Fleet) -> None:
    changes = feed(fleet, [snap(0, "running", "healthy")])
    assert moves(changes) == [State.UNKNOWN, HEALTHY]
    assert changes[0].obs_kind == "snapshot" and not changes[0].contradiction
    assert changes[0].cause == "inspect says running health=healthy"


def test_first_snapshot_of_absent_container_is_missing(fleet: Fleet) -> None:
    changes = feed(fleet, [snap(0, exists=False)])
    assert moves(changes) == [State.UNKNOWN, State.MISSING]
    assert not changes[0].contradiction


def test_snapshot_contradiction_is_flagged(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [snap(60, "exited", exit_code=1)])
    assert moves(changes) == [RUNNING, EXITED]
    assert changes[0].contradiction
    assert changes[0].cause == ("snapshot disagrees: machine said running, inspect says exited; "
                                "died: exited with code 1; it printed no error line before dying")
    assert list(machine(fleet).deaths) == [at(60)], "a missed death still counts toward a crash loop"


def test_snapshot_of_vanished_container_is_missing_contradiction(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [snap(60, exists=False)])
    assert moves(changes) == [RUNNING, State.MISSING]
    assert changes[0].contradiction


def test_snapshots_that_agree_change_nothing(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, ev("stop", 10), ev("died", 10.1)])
    assert feed(fleet, [snap(20, "exited")]) == []
    feed(fleet, [ev("remove", 30)])
    assert feed(fleet, [snap(40, exists=False)]) == []
    assert machine(fleet).state is State.REMOVED


def test_snapshot_running_is_compatible_with_crashloop(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, *crash(10), *crash(20), *crash(30)])
    assert feed(fleet, [snap(31, "running"), snap(32, "exited"), snap(33, "running")]) == []
    assert machine(fleet).state is CRASHLOOPING


def test_snapshot_completes_a_restart_without_contradiction(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, ev("died", 10, exit_code=1), ev("restart", 10.05)])
    changes = feed(fleet, [snap(10.5, "running", "starting", started_at_ns=at(10.3))])
    assert moves(changes) == [RESTARTING, STARTING]
    assert not changes[0].contradiction


def test_snapshot_health_refines_running(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [snap(10, "running", "starting")])
    assert moves(changes) == [RUNNING, STARTING]
    assert not changes[0].contradiction


def test_snapshot_running_after_exit_is_contradiction(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, ev("died", 10, exit_code=1)])
    changes = feed(fleet, [snap(20, "running")])
    assert moves(changes) == [EXITED, RUNNING]
    assert changes[0].contradiction
    assert machine(fleet).restarts == 1


def test_stale_snapshot_is_ignored(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, ev("died", 10, exit_code=1)])
    assert feed(fleet, [snap(9, "running")]) == []


def test_unclear_snapshot_status_is_ignored(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    assert feed(fleet, [snap(10, "stopping"), snap(11, ""), snap(12, "bogus")]) == []


def test_missed_deaths_seen_by_snapshots_make_a_crashloop(fleet: Fleet) -> None:
    # Events can be lost entirely (journald backend the user cannot read): snapshots still count.
    changes = feed(fleet, [snap(0, "running"), snap(30, "exited"), snap(60, "running"),
                           snap(90, "exited"), snap(120, "running"), snap(150, "exited", exit_code=1)])
    assert changes[-1].to_state is CRASHLOOPING
    assert changes[-1].contradiction
    assert changes[-1].cause.endswith("3 deaths within 5m0s; last: exited with code 1; "
                                      "it printed no error line before dying")


# ---------------------------------------------------------------- fleet and table

def test_fleet_routes_by_target_and_container() -> None:
    fleet = Fleet()
    fleet.expect("node2", "web")
    assert fleet.get("node2", "web").state is State.UNKNOWN  # type: ignore[union-attr]
    fleet.feed(EventObs("node1", "web", at(0), "a", "start"))
    fleet.feed(EventObs("node2", "web", at(0), "b", "create"))
    assert {(m.target, m.container, m.state) for m in fleet.machines()} == {
        ("node2", "web", CREATED), ("node1", "web", RUNNING)}
    assert fleet.get("node3", "web") is None
    assert fleet.feed(AgentObs("node1", "", at(1), "lost")) == []
    assert len(fleet) == 2


def test_machine_refuses_another_containers_observation() -> None:
    with pytest.raises(ValueError, match="node1/other"):
        ContainerMachine(TARGET, NAME).feed(EventObs(TARGET, "other", at(0), "x", "start"))


def test_forget_releases_the_model_from_the_shared_machine() -> None:
    fleet = Fleet(engine="transitions")
    feed(fleet, BOOT)
    fleet.expect(TARGET, "other")
    router = fleet._router
    assert isinstance(router, TransitionsRouter)
    assert len(router.machine.models) == 2
    fleet.forget(TARGET, NAME)
    assert len(router.machine.models) == 1 and fleet.get(TARGET, NAME) is None
    fleet.close()
    assert router.machine.models == []


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown machine engine"):
        Fleet(engine="graph")  # type: ignore[arg-type]


def test_table_rejects_a_pair_declared_twice() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        compile_table([*TRANSITIONS, {"trigger": "start", "source": State.EXITED, "dest": State.RUNNING}])


def test_table_never_leads_to_unknown() -> None:
    assert State.UNKNOWN not in INDEX.values()


@pytest.mark.parametrize(("ns", "text"), [(300 * S, "5m0s"), (600 * S, "10m0s"), (3600 * S, "1h0m0s"),
                                          (2_500_000_000, "2.5s"), (250_000_000, "250ms")])
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text


def test_a_death_delivered_twice_counts_once(fleet: Fleet) -> None:
    feed(fleet, [*BOOT, *crash(10)])
    changes = feed(fleet, [ev("died", 20, exit_code=1), ev("died", 20, exit_code=1)])
    assert moves(changes) == [RUNNING, EXITED]
    assert list(machine(fleet).deaths) == [at(10), at(20)]


def test_a_user_stop_delivered_twice_is_no_death(fleet: Fleet) -> None:
    feed(fleet, BOOT)
    changes = feed(fleet, [ev("stop", 60), ev("died", 60.1, exit_code=137), ev("died", 60.1, exit_code=137),
                           ev("start", 90)])
    assert moves(changes) == [RUNNING, STOPPED, RUNNING]
    assert not machine(fleet).deaths and machine(fleet).restarts == 0
