"""Rules for podman 4.3's gaps: lost stop events, lagging health events (podman#19237)."""

from __future__ import annotations

from machines.container import Fleet
from machines.observations import ActionObs, EventObs, ProbeObs, SnapshotObs
from machines.states import State

T0 = 1_764_000_000_000_000_000
S = 1_000_000_000


def ev(status: str, dt: float, **kw) -> EventObs:
    return EventObs("node", "lnd", T0 + int(dt * S), "c1", status, **kw)


def snap(dt: float, status: str, policy: str = "always", health=None) -> SnapshotObs:
    return SnapshotObs("node", "lnd", T0 + int(dt * S), True, "c1", status, health, 137, restart_policy=policy)


def feed(fleet: Fleet, *observations) -> list:
    changes = []
    for obs in observations:
        changes.extend(fleet.feed(obs))
    return changes


def test_lost_stop_event_is_inferred_from_the_restart_policy():
    fleet = Fleet()
    changes = feed(fleet, ev("start", 0), ev("died", 5, exit_code=137), snap(7, "exited", "unless-stopped"))
    assert [c.to_state for c in changes] == [State.RUNNING, State.EXITED, State.STOPPED]
    assert changes[-1].contradiction and "restart policy unless-stopped" in changes[-1].cause
    assert fleet.get("node", "lnd").deaths == type(fleet.get("node", "lnd").deaths)()


def test_no_inference_without_a_restarting_policy_or_too_early():
    fleet = Fleet()
    changes = feed(fleet, ev("start", 0), ev("died", 5, exit_code=0), snap(7, "exited", "on-failure"))
    assert changes[-1].to_state is State.EXITED
    fleet = Fleet()
    changes = feed(fleet, ev("start", 0), ev("died", 5, exit_code=137), snap(5.2, "exited", "always"))
    assert changes[-1].to_state is State.EXITED


def test_crash_with_restart_is_not_a_stop():
    fleet = Fleet()
    changes = feed(fleet, ev("start", 0), ev("died", 5, exit_code=137), ev("restart", 5.01), ev("start", 5.02),
                   snap(7, "running", "always"))
    assert [c.to_state for c in changes] == [State.RUNNING, State.EXITED, State.RESTARTING, State.RUNNING]
    assert fleet.get("node", "lnd").restarts == 1


def test_our_own_stop_action_marks_the_death_as_a_user_stop():
    fleet = Fleet()
    changes = feed(fleet, ev("start", 0), ActionObs("node", "lnd", T0 + 4 * S, "podman stop"),
                   ev("died", 5, exit_code=137))
    assert changes[-1].to_state is State.STOPPED and "podman stop" in changes[-1].cause
    dry = Fleet()
    changes = feed(dry, ev("start", 0), ActionObs("node", "lnd", T0 + 4 * S, "podman stop", dry_run=True),
                   ev("died", 5, exit_code=137))
    assert changes[-1].to_state is State.EXITED


def _check(dt: float, ok: bool) -> ProbeObs:
    return ProbeObs("node", "lnd", T0 + int(dt * S), "healthcheck", "podman-healthcheck", ok,
                    detail="healthy" if ok else "unhealthy", excerpt="" if ok else "expected 1 macaroon, got 0")


def test_health_follows_our_check_runs_not_the_lagging_events():
    fleet = Fleet()
    changes = feed(
        fleet, ev("start", 0),
        ev("health_status", 1, health_status="starting"), _check(1.01, True),
        ev("health_status", 2, health_status="healthy"), _check(2.01, False),
        # 4.3 reports the previous status here: it must not flip the state back
        ev("health_status", 3, health_status="healthy"), _check(3.01, False),
    )
    # events decide until the first check result arrives, then only results do
    assert [c.to_state for c in changes] == [State.RUNNING, State.STARTING, State.HEALTHY, State.UNHEALTHY]
    assert "macaroon" in changes[-1].cause


def test_health_check_error_and_dead_container_change_nothing():
    fleet = Fleet()
    feed(fleet, ev("start", 0), ev("died", 1, exit_code=1))
    error = ProbeObs("node", "lnd", T0 + 2 * S, "healthcheck", "podman-healthcheck", False, detail="error")
    assert feed(fleet, error, _check(2.5, True)) == []
    assert fleet.get("node", "lnd").state is State.EXITED
