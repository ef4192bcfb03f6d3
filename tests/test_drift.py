"""Drift in a soak window: every kind from a podman 4.3-like sequence, the bounds, and properties
(determinism, no drift from no-op observations, equality with a plain reference implementation)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machines.container import Fleet, MachineSettings
from machines.drift import (
    DEATH_STATES, Drift, DriftDetector, DriftKind, DriftSettings, change_kind, error_key, is_drift, meets,
    normal_policy, run_window, summarize, verdict,
)
from machines.observations import ActionObs, AgentObs, EventObs, LogObs, Observation, ProbeObs, SnapshotObs
from machines.states import State
from tests.test_machine_props import events, snapshots

T0 = 1_764_000_000_000_000_000
S = 1_000_000_000
MIB16 = 16 * 1024 * 1024
IMAGE = "localhost/tb-lightning:0.1"


def at(dt: float) -> int:
    return T0 + round(dt * S)


def ev(status: str, dt: float, name: str = "lnd", **kw) -> EventObs:
    return EventObs("node", name, at(dt), f"id-{name}", status, **kw)


def inspect(dt: float, status: str = "running", name: str = "lnd", **fields) -> SnapshotObs:
    """What podman inspect showed at dt (policy always, the testbed's image, unless said)."""
    fields.setdefault("restart_policy", "always")
    fields.setdefault("image", IMAGE)
    return SnapshotObs("node", name, at(dt), True, f"id-{name}", status, **fields)


def hc(dt: float, passed: bool, name: str = "lnd") -> ProbeObs:
    """One `podman healthcheck run` of ours."""
    return ProbeObs("node", name, at(dt), "healthcheck", "podman-healthcheck", passed, 30.0,
                    "" if passed else "expected 1 macaroon, got 0", "healthy" if passed else "unhealthy")


def probe(dt: float, ok: bool, name: str = "lnd", probe_name: str = "getinfo") -> ProbeObs:
    return ProbeObs("node", name, at(dt), probe_name, "exec", ok, 120.0,
                    "" if ok else "[lncli] unable to connect", "" if ok else "exit status 1")


def log(dt: float, line: str, error: bool = True, name: str = "lnd", seq: int = 0) -> LogObs:
    return LogObs("node", name, at(dt), line, "stderr", error, seq)


def agent(dt: float, what: str, detail: str = "") -> AgentObs:
    return AgentObs("node", "", at(dt), what, detail)


def policy_crash(dt: float, exit_code: int = 137) -> list[EventObs]:
    """A host kill of the main process under restart policy always, as podman 4.3 logged it."""
    return [ev("died", dt, exit_code=exit_code), ev("restart", dt + 0.0015), ev("init", dt + 0.06),
            ev("start", dt + 0.07)]


def healthy_lnd(memory: int = 0) -> list[Observation]:
    """lnd created, started, its health check passed: the state before the window."""
    return [ev("create", 0), ev("init", 0.1), ev("start", 0.2),
            inspect(1, health="starting", started_at_ns=at(0.2), health_retries=3, memory=memory), hc(5, True)]


class Soak:
    """A fleet and a detector fed as the soak feeds them (the fleet first, then the detector)."""

    def __init__(self, expected: Mapping[tuple[str, str], str] | None = None, before: Iterable[Observation] = (),
                 start: float = 10, drift_settings: DriftSettings = DriftSettings(), others: str | None = None):
        self.fleet = Fleet()
        self.detector = DriftDetector({("node", "lnd"): "healthy"} if expected is None else expected,
                                      drift_settings, others=others)
        self.feed(*before)
        self.detector.start(self.fleet, at(start))

    def feed(self, *observations: Observation) -> list[Drift]:
        found = []
        for obs in observations:
            found += self.detector.feed(obs, self.fleet.feed(obs))
        return found

    def finish(self, dt: float) -> list[Drift]:
        return self.detector.finish(at(dt))

    @property
    def drifts(self) -> tuple[Drift, ...]:
        return self.detector.drifts


def kinds(drifts: Iterable[Drift]) -> list[str]:
    return [str(d.kind) for d in drifts]


# ---------------------------------------------------------------- the rule, as a table

@pytest.mark.parametrize("expected, from_state, to_state, drift", [
    ("healthy", State.HEALTHY, State.EXITED, True),  # a death
    ("healthy", State.EXITED, State.RESTARTING, False),  # its recovery
    ("healthy", State.RESTARTING, State.STARTING, False),
    ("healthy", State.STARTING, State.HEALTHY, False),  # a start period ending
    ("healthy", State.STARTING, State.UNHEALTHY, True),  # the start period failed
    ("healthy", State.EXITED, State.CRASHLOOPING, True),  # worse
    ("healthy", State.RESTARTING, State.EXITED, True),  # died again
    ("healthy", State.UNKNOWN, State.STARTING, False),  # first sight, on its way
    ("healthy", State.UNKNOWN, State.EXITED, True),  # first sight, down
    ("running", State.RUNNING, State.HEALTHY, False),
    ("running", State.HEALTHY, State.UNHEALTHY, True),
    ("running", State.HEALTHY, State.PAUSED, True),
    ("stopped", State.STOPPED, State.RUNNING, True),  # started when it should not run
    ("stopped", State.RUNNING, State.HEALTHY, False),  # the same excursion
    ("stopped", State.RUNNING, State.EXITED, False),  # back where it should be
    ("absent", State.MISSING, State.CREATED, True),
    ("absent", State.CREATED, State.REMOVED, False),
])
def test_the_state_rule(expected: str, from_state: State, to_state: State, drift: bool) -> None:
    assert is_drift(expected, from_state, to_state) is drift


def test_expectations_and_kinds() -> None:
    assert meets("running", State.STARTING) and not meets("healthy", State.STARTING)
    assert meets("stopped", State.EXITED) and not meets("stopped", State.MISSING)
    assert not any(meets(e, State.UNKNOWN) for e in ("running", "healthy", "stopped", "absent"))
    with pytest.raises(ValueError, match="unknown expected state 'up'"):
        meets("up", State.RUNNING)
    with pytest.raises(ValueError):
        DriftDetector({("node", "lnd"): "up"})
    assert change_kind(State.HEALTHY, State.UNHEALTHY) is DriftKind.HEALTH
    assert change_kind(State.UNKNOWN, State.UNHEALTHY) is DriftKind.HEALTH
    assert change_kind(State.HEALTHY, State.EXITED) is DriftKind.STATE
    assert error_key("block 942975 failed after 12ms") == error_key("block 942976 failed after 7ms")
    assert error_key("a1") != error_key("b1")
    assert normal_policy("") == "no"


# ---------------------------------------------------------------- no drift

def test_a_quiet_window_has_no_drift_and_passes() -> None:
    soak = Soak(before=healthy_lnd())
    quiet = [
        ev("health_status", 30, health_status="healthy"), ev("exec", 30.01), ev("exec_died", 30.2),
        hc(35, True), probe(36, True), log(37, "[INF] CHDB: Synced to block 942975", error=False),
        inspect(40, health="healthy", started_at_ns=at(0.2), health_retries=3),
        agent(41, "backfilled", "0 events"), ActionObs("node", "lnd", at(42), "check", "probes"),
        ev("health_status", 60, health_status="healthy"), hc(65, True), probe(66, True),
        inspect(70, health="healthy", started_at_ns=at(0.2), health_retries=3, restart_policy="always"),
    ]
    assert soak.feed(*quiet) == []
    assert soak.finish(310) == []
    assert soak.detector.verdict() == "pass" and summarize(soak.drifts) == []
    (baseline,) = soak.detector.baselines
    assert baseline.state is State.HEALTHY and baseline.met and baseline.restart_policy == "always"
    assert baseline.image == IMAGE and baseline.restarts == 0


def test_a_start_period_ending_in_the_window_is_no_drift() -> None:
    before = [ev("create", 0), ev("start", 0.2), inspect(1, health="starting", started_at_ns=at(0.2), health_retries=3)]
    soak = Soak(before=before, start=2)
    assert soak.detector.baselines[0].state is State.STARTING and not soak.detector.baselines[0].met
    assert soak.feed(hc(20, True)) == []
    assert soak.finish(300) == []


def test_first_sight_inside_the_window() -> None:
    soak = Soak(expected={("node", "lnd"): "running", ("node", "electrumx"): "running"})
    assert soak.feed(inspect(11, started_at_ns=at(-100))) == []  # seen running: where it should be
    (down,) = soak.feed(inspect(12, "exited", name="electrumx", exit_code=1, finished_at_ns=at(-50),
                                started_at_ns=at(-60)))
    # down under a restarting policy and not restarted: podman restarts every death but a user's stop
    assert down.kind is DriftKind.STATE and down.reason.startswith("unknown -> stopped (expected running)")
    assert down.death is not None and down.death.kind == "user-stop", "first sight of a death still says why"


# ---------------------------------------------------------------- state, restart and the death behind them

def test_a_crash_restarted_by_its_policy_is_a_death_and_a_restart() -> None:
    soak = Soak(before=healthy_lnd())
    found = soak.feed(*policy_crash(40), hc(45, True))
    assert kinds(found) == ["state", "restart"]
    death, restart = found
    assert (death.from_state, death.to_state, death.at_ns) == (State.HEALTHY, State.EXITED, at(40))
    assert death.death is not None and death.death.kind == "signal" and "SIGKILL" in death.reason
    assert restart.at_ns == at(40.07) and restart.death == death.death and restart.count == 1
    assert soak.finish(300) == [], "it came back healthy: nothing unmet"
    assert soak.detector.verdict() == "fail"


def test_a_crash_with_a_memory_limit_is_a_likely_oom_kill_and_the_kernels_line_makes_it_sure() -> None:
    soak = Soak(before=healthy_lnd(memory=MIB16))
    (death, _restart) = soak.feed(*policy_crash(40))
    assert death.death.kind == "oom-likely"
    kernel = ProbeObs("node", "lnd", at(39.99), "oom-kill", "kernel-log", False, 0.0,
                      "oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/libpod-id-lnd,task=tb-lightning")
    # the kernel's line arrived after the died: no drift of its own, it amends the death's drifts
    assert soak.feed(kernel) == []
    assert [d.death.kind for d in soak.drifts] == ["oom-kill", "oom-kill"]
    assert "OOM killer" in soak.drifts[0].reason and "OOM killer" in soak.drifts[1].reason


def test_the_kernels_oom_line_before_the_died_is_in_the_first_reason() -> None:
    soak = Soak(before=healthy_lnd(memory=MIB16))
    kernel = ProbeObs("node", "lnd", at(39.99), "oom-kill", "kernel-log", False, 0.0, "oom-kill:task=tb-lightning")
    found = soak.feed(kernel, *policy_crash(40))
    assert kinds(found) == ["state", "restart"] and found[0].death.kind == "oom-kill"


def test_a_user_stop_with_its_stop_event() -> None:
    soak = Soak(before=healthy_lnd())
    (stop,) = soak.feed(ev("kill", 40), ev("stop", 40.005), ev("died", 40.04, exit_code=143))
    assert stop.to_state is State.STOPPED and stop.death.kind in ("user-stop", "user-kill")
    (unmet,) = soak.finish(300)
    assert unmet.kind is DriftKind.UNMET and unmet.to_state is State.STOPPED
    assert unmet.reason.startswith("stopped since") and "expected healthy" in unmet.reason


def test_a_user_stop_podman_43_wrote_no_stop_event_for_is_one_drift_with_the_better_reason() -> None:
    soak = Soak(before=healthy_lnd())
    (first,) = soak.feed(ev("died", 40, exit_code=137))
    assert first.to_state is State.EXITED and first.death.kind == "signal"
    # the watcher's recheck 2 s later: not restarted under always, so a user stopped it
    assert soak.feed(inspect(42, "exited", exit_code=137, started_at_ns=at(0.2), finished_at_ns=at(40),
                             health="unhealthy", health_retries=3)) == []
    (drift,) = soak.drifts
    assert drift.to_state is State.STOPPED and drift.death.kind == "user-stop"
    assert drift.reason == "healthy -> stopped (expected healthy): stopped by a user (podman stop), exit 137"
    assert any("not restarted under restart policy always" in e for e in drift.evidence)


def test_a_users_podman_restart_is_one_drift_and_no_restart() -> None:
    soak = Soak(before=healthy_lnd())
    found = soak.feed(ev("restart", 40), ev("died", 40.03, exit_code=137), ev("init", 40.23), ev("start", 40.25),
                      hc(45, True))
    assert kinds(found) == ["state"] and found[0].to_state is State.RESTARTING
    assert found[0].death.kind == "user-restart"
    assert soak.finish(300) == []


def test_a_crash_loop_is_bounded() -> None:
    soak = Soak(before=healthy_lnd(), drift_settings=DriftSettings(max_per_kind=4))
    for i in range(30):
        soak.feed(*policy_crash(20 + 10 * i, exit_code=1))
    listed = soak.drifts
    assert kinds(listed).count("restart") == 4
    assert any(d.to_state is State.CRASHLOOPING for d in listed)
    closing = soak.finish(400)
    assert [d.kind for d in closing] == [DriftKind.UNMET, DriftKind.RESTART]
    aggregate = closing[1]
    assert aggregate.count == 26 and "26 more past the limit of 4" in aggregate.reason
    (summary,) = summarize(soak.drifts)
    assert dict(summary.kinds)["restart"] == 30
    assert summary.last_death is not None and summary.last_death.kind == "exit"


def test_an_expected_stopped_container_stays_quiet_and_is_drift_when_started() -> None:
    before = [ev("create", 0, "old-ui"), ev("start", 0.1, "old-ui"), ev("stop", 1, "old-ui"),
              ev("died", 1.02, "old-ui", exit_code=0)]
    soak = Soak(expected={("node", "old-ui"): "stopped"}, before=before)
    assert soak.feed(inspect(30, "exited", "old-ui", exit_code=0, finished_at_ns=at(1.02))) == []
    (started,) = soak.feed(ev("start", 40, "old-ui"))
    assert started.from_state is State.STOPPED and started.to_state is State.RUNNING
    assert started.death is None, "the old stop is not behind a start"
    assert kinds(soak.finish(300)) == ["unmet"]


def test_a_container_down_before_the_window_is_only_unmet_when_it_closes() -> None:
    soak = Soak(expected={("node", "lnd"): "running"}, before=[ev("start", 0), ev("died", 5, exit_code=1)])
    assert soak.feed(ev("health_status", 20, health_status="unhealthy")) == []
    (unmet,) = soak.finish(300)
    assert unmet.to_state is State.EXITED and unmet.death.kind == "exit"


def test_a_container_never_observed_is_unmet() -> None:
    soak = Soak(expected={("node", "lnd"): "running"})
    (unmet,) = soak.finish(300)
    assert unmet.reason == "never observed when the window closed, expected running"


def test_containers_without_an_expectation_do_not_drift_unless_others_is_given() -> None:
    crash = [ev("start", 11, "grafana"), ev("died", 20, "grafana", exit_code=1)]
    assert Soak(expected={}).feed(*crash) == []
    (drift,) = Soak(expected={}, others="running").feed(*crash)
    assert drift.container == "grafana" and drift.expected == "running"


# ---------------------------------------------------------------- health

def test_a_health_flap_is_one_health_drift() -> None:
    soak = Soak(before=healthy_lnd())
    # failures below the retries: podman still says healthy, so no drift
    assert soak.feed(hc(20, False), hc(30, False), hc(40, True)) == []
    (flap,) = soak.feed(hc(50, False), hc(60, False), hc(70, False), hc(80, True))
    assert flap.kind is DriftKind.HEALTH and flap.to_state is State.UNHEALTHY and flap.at_ns == at(70)
    assert "3 times in a row (retries 3)" in flap.reason and "macaroon" in flap.reason and flap.death is None
    assert soak.finish(300) == []


def test_a_health_flap_seen_through_health_status_events() -> None:
    soak = Soak(expected={("node", "lnd"): "healthy"},
                before=[ev("start", 0), ev("health_status", 5, health_status="healthy")])
    found = soak.feed(*(ev("health_status", t, health_status="healthy") for t in (20, 30)),
                      ev("health_status", 40, health_status="unhealthy"),
                      ev("health_status", 50, health_status="unhealthy"),
                      ev("health_status", 60, health_status="healthy"))
    assert kinds(found) == ["health"] and found[0].reason.startswith("healthy -> unhealthy (expected healthy)")


# ---------------------------------------------------------------- error lines

def test_an_error_line_is_drift_and_a_flood_of_it_is_one_drift_and_a_count() -> None:
    soak = Soak(before=healthy_lnd())
    assert soak.feed(log(5, "[ERR] before the window")) == []  # fed late, printed before the window
    assert soak.feed(log(11, "[INF] all fine", error=False)) == []
    (first,) = soak.feed(log(12, "[ERR] unable to connect to 10.0.0.2:8332", seq=0))
    assert first.kind is DriftKind.ERROR and first.reason == "new error line: [ERR] unable to connect to 10.0.0.2:8332"
    flood = [log(12 + i / 1000, f"[ERR] unable to connect to 10.0.0.{i % 7}:8332", seq=i) for i in range(1, 1000)]
    assert soak.feed(*flood) == []
    (aggregate,) = soak.finish(300)
    assert aggregate.kind is DriftKind.ERROR and aggregate.count == 999
    assert aggregate.reason == "error drift not listed one by one: 999 repeats of error lines listed"
    (summary,) = summarize(soak.drifts)
    assert summary.drifts == 2 and summary.occurrences == 1000


def test_distinct_error_lines_past_the_limit_are_counted() -> None:
    soak = Soak(before=healthy_lnd(), drift_settings=DriftSettings(max_per_kind=3))
    found = soak.feed(*(log(20 + i, f"[ERR] failure {chr(97 + i)}") for i in range(10)))
    assert kinds(found) == ["error"] * 3
    (aggregate,) = soak.finish(300)
    assert aggregate.count == 7 and "7 more past the limit of 3" in aggregate.reason
    assert aggregate.at_ns == at(23) and len([e for e in aggregate.evidence if e.startswith("e.g.")]) == 3


# ---------------------------------------------------------------- probes

def test_a_failed_probe_is_one_drift_per_outage() -> None:
    soak = Soak(before=healthy_lnd())
    found = soak.feed(probe(20, False), probe(30, False), probe(40, True), probe(50, False),
                      probe(51, False, probe_name="rpc"))
    assert kinds(found) == ["probe"] * 3
    assert found[0].reason == "probe getinfo (exec) failed: exit status 1"
    assert "[lncli] unable to connect" in found[0].evidence
    assert [d.at_ns for d in found] == [at(20), at(50), at(51)]


def test_a_service_probe_drifts_too_and_health_check_runs_are_not_probes() -> None:
    soak = Soak(before=healthy_lnd())
    backend = ProbeObs("node", "backend", at(20), "health", "http", False, 5.0, "", "connection refused")
    (drift,) = soak.feed(backend)
    assert drift.container == "backend" and drift.expected == ""
    assert soak.feed(hc(30, False)) == [], "one failed run within the retries: podman says healthy"


# ---------------------------------------------------------------- policy and image

def test_a_changed_policy_or_image_is_drift_once() -> None:
    soak = Soak(before=healthy_lnd())
    running = {"health": "healthy", "started_at_ns": at(0.2), "health_retries": 3}
    (policy,) = soak.feed(inspect(40, restart_policy="no", **running))
    assert policy.kind is DriftKind.POLICY and policy.reason == "restart policy changed: always -> no"
    assert soak.feed(inspect(70, restart_policy="", **running)) == [], '"" and "no" are the same policy'
    (image,) = soak.feed(inspect(100, restart_policy="no", image="localhost/tb-lightning:0.2", **running))
    assert image.reason == f"image changed: {IMAGE} -> localhost/tb-lightning:0.2"
    stale = inspect(90, restart_policy="always", **running)  # stamped before the last one: old news
    assert soak.feed(stale) == []


def test_the_first_snapshot_inside_the_window_is_the_baseline() -> None:
    soak = Soak(expected={("node", "lnd"): "running"})
    assert soak.detector.baselines[0].restart_policy is None
    assert soak.feed(inspect(11, started_at_ns=at(0), restart_policy="unless-stopped")) == []
    assert kinds(soak.feed(inspect(41, started_at_ns=at(0), restart_policy="always"))) == ["policy"]


# ---------------------------------------------------------------- link

def test_a_link_lost_longer_than_the_limit() -> None:
    soak = Soak(before=healthy_lnd())
    assert soak.feed(agent(20, "lost", "connection closed"), agent(21, "unreachable", "refused"),
                     agent(29, "connected", "ssh://node")) == []
    (drift,) = soak.feed(agent(40, "lost", "connection closed"), agent(100, "connected", "ssh://node"))
    assert drift.kind is DriftKind.LINK and drift.container == "" and drift.at_ns == at(40)
    assert drift.reason == "link lost for 1m0s (limit 30s)"


def test_a_link_lost_before_the_window_counts_from_its_start_and_one_still_lost_at_the_end() -> None:
    soak = Soak(before=[*healthy_lnd(), agent(8, "lost")], start=10)
    assert soak.feed(agent(35, "connected")) == []  # 25 s of it inside the window
    soak.feed(agent(200, "lost", "keepalive timeout"))
    (still,) = [d for d in soak.finish(300) if d.kind is DriftKind.LINK]
    assert still.reason == "link lost for 1m40s (limit 30s)" and "still lost when the window closed" in still.evidence


# ---------------------------------------------------------------- values, verdict, lifecycle

def test_drift_json_is_stable() -> None:
    soak = Soak(before=healthy_lnd())
    death, _ = soak.feed(*policy_crash(40))
    data = death.to_json()
    assert list(data) == ["target", "container", "kind", "at_ns", "at", "reason", "evidence", "death", "death_ns",
                          "expected", "from_state", "to_state", "count", "obs_id"]
    assert data["at"] == "2025-11-24T16:00:40.000Z" and data["kind"] == "state"
    assert data["death"]["kind"] == "signal" and data["to_state"] == "exited"
    assert json.loads(json.dumps(data)) == data
    assert soak.detector.baselines[0].to_json()["met"] is True
    assert summarize(soak.drifts)[0].to_json()["kinds"] == {"state": 1, "restart": 1}


def test_observation_ids_are_carried() -> None:
    fleet = Fleet()
    detector = DriftDetector({("node", "lnd"): "running"})
    detector.start(fleet, at(0))
    obs = ev("died", 5, exit_code=1)
    fleet.feed(ev("start", 1))
    (drift,) = detector.feed(obs, fleet.feed(obs), obs_id=4242)
    assert drift.obs_id == 4242


def test_verdict_and_lifecycle() -> None:
    assert verdict([]) == "pass"
    detector = DriftDetector({})
    with pytest.raises(RuntimeError):
        detector.finish(at(1))
    detector.start(Fleet(), at(0))
    with pytest.raises(RuntimeError):
        detector.start(Fleet(), at(0))
    assert detector.finish(at(1)) == []
    with pytest.raises(RuntimeError):
        detector.feed(agent(2, "lost"))


def test_replay_of_the_stored_sequence_finds_what_live_found() -> None:
    before = healthy_lnd(memory=MIB16)
    window = [*policy_crash(40), hc(45, True), log(50, "[ERR] x"), probe(60, False), agent(70, "lost"),
              agent(120, "connected"), ev("died", 200, exit_code=137),
              inspect(202, "exited", exit_code=137, finished_at_ns=at(200), health="unhealthy", health_retries=3)]
    soak = Soak(before=before)
    soak.feed(*window)
    soak.finish(300)
    replayed = run_window(before, window, {("node", "lnd"): "healthy"}, at(10), at(300))
    assert replayed.drifts == soak.drifts and replayed.verdict == "fail"
    assert replayed.baselines == soak.detector.baselines


# ---------------------------------------------------------------- properties

EXPECTATIONS = st.sampled_from(["running", "healthy", "stopped", "absent"])
LINES = st.sampled_from(["[ERR] unable to connect to 10.0.0.1", "[ERR] unable to connect to 10.0.0.2",
                         "panic: runtime error", "[INF] synced block 942975", "fatal: LOCK: Permission denied"])
KEYS = st.sampled_from([("node1", "lnd")] * 4 + [("node1", "electrs"), ("node2", "lnd"), ("node1", "")])


@st.composite
def extras(draw: st.DrawFn, at_ns: int) -> Observation:
    """What the machine tests draw rarely: error lines, probes, link records, policy and image changes."""
    target, container = draw(KEYS)
    kind = draw(st.sampled_from(["log", "log", "probe", "probe", "healthcheck", "oom", "agent", "agent", "snapshot"]))
    if kind == "log":
        return LogObs(target, container, at_ns, draw(LINES), is_error=draw(st.booleans()), seq=draw(st.integers(0, 3)))
    if kind == "probe":
        return ProbeObs(target, container, at_ns, draw(st.sampled_from(["rpc", "http"])), "exec", draw(st.booleans()),
                        detail="exit status 1")
    if kind == "healthcheck":
        passed = draw(st.booleans())
        return ProbeObs(target, container, at_ns, "healthcheck", "podman-healthcheck", passed, 30.0,
                        detail="healthy" if passed else "unhealthy")
    if kind == "oom":
        return ProbeObs(target, container, at_ns, "oom-kill", "kernel-log", False, excerpt="oom-kill:task=x")
    if kind == "agent":
        return AgentObs(target, "", at_ns, draw(st.sampled_from(["lost", "connected", "unreachable", "backfilled"])))
    return SnapshotObs(target, container or "lnd", at_ns, True, f"id-{container or 'lnd'}",
                       draw(st.sampled_from(["running", "exited"])),
                       restart_policy=draw(st.sampled_from(["", "no", "always"])),
                       image=draw(st.sampled_from(["", "img:1", "img:2"])), started_at_ns=at_ns - S)


@st.composite
def windows(draw: st.DrawFn) -> tuple[list[Observation], list[Observation], dict, int, int, str | None]:
    observations: list[Observation] = []
    at_ns = T0
    for _ in range(draw(st.integers(0, 50))):
        at_ns += draw(st.sampled_from([0, 1, 50_000_000, S, 20 * S, 100 * S]) | st.integers(0, 120 * S))
        stamp = at_ns - draw(st.sampled_from([0] * 9 + [5 * S]))
        make = draw(st.sampled_from([events, events, snapshots, extras, extras]))
        observations.append(draw(make(stamp)))
    split = draw(st.integers(0, len(observations)))
    start_ns = observations[split].at_ns if split < len(observations) else at_ns
    expected = {key: draw(EXPECTATIONS) for key in [("node1", "lnd"), ("node1", "electrs")] if draw(st.booleans())}
    others = draw(st.sampled_from([None, None, "running"]))
    return observations[:split], observations[split:], expected, start_ns, at_ns + 60 * S, others


drift_settings = st.builds(DriftSettings, link_lost_max_ns=st.sampled_from([S, 30 * S, 300 * S]),
                           max_per_kind=st.integers(1, 5))


def _jsons(drifts: Iterable[Drift]) -> list[str]:
    return [json.dumps(d.to_json(), sort_keys=True) for d in drifts]


@settings(max_examples=150, deadline=None)
@given(windows(), drift_settings)
def test_same_sequence_same_drifts(window, config: DriftSettings) -> None:
    before, inside, expected, start_ns, end_ns, others = window
    first = run_window(before, inside, expected, start_ns, end_ns, settings=config, others=others)
    second = run_window(before, inside, expected, start_ns, end_ns, settings=config, others=others)
    assert _jsons(first.drifts) == _jsons(second.drifts) and first.changes == second.changes


@st.composite
def no_ops(draw: st.DrawFn, at_ns: int) -> Observation:
    """An observation of the healthy lnd that changes nothing: what a quiet soak is made of."""
    kind = draw(st.sampled_from(["health", "check", "probe", "snapshot", "log", "exec", "agent", "short-loss"]))
    if kind == "health":
        return EventObs("node", "lnd", at_ns, "id-lnd", "health_status", health_status="healthy")
    if kind == "check":
        return ProbeObs("node", "lnd", at_ns, "healthcheck", "podman-healthcheck", True, 30.0, "", "healthy")
    if kind == "probe":
        return ProbeObs("node", draw(st.sampled_from(["lnd", "backend"])), at_ns, "rpc", "exec", True)
    if kind == "snapshot":
        return SnapshotObs("node", "lnd", at_ns, True, "id-lnd", "running", "healthy", restart_policy="always",
                           image=IMAGE, started_at_ns=at(0.2), health_retries=3, memory=MIB16)
    if kind == "log":
        return LogObs("node", "lnd", at_ns, draw(LINES), is_error=False)
    if kind == "exec":
        return EventObs("node", "lnd", at_ns, "id-lnd", draw(st.sampled_from(["exec", "exec_died", "attach"])))
    return AgentObs("node", "", at_ns, draw(st.sampled_from(["backfilled", "connected", "events-restarted"])))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30 * S), st.data()), max_size=40))
def test_no_op_observations_make_no_drift(steps) -> None:
    before = [ev("create", 0), ev("start", 0.2),
              inspect(1, health="starting", started_at_ns=at(0.2), health_retries=3, memory=MIB16), hc(5, True)]
    window: list[Observation] = []
    at_ns = at(10)
    for step, data in steps:
        at_ns += step
        obs = data.draw(no_ops(at_ns))
        if isinstance(obs, AgentObs) and obs.what == "connected":
            window.append(AgentObs("node", "", at_ns, "lost", "blip"))  # a blip shorter than the limit
            at_ns += S
            obs = AgentObs("node", "", at_ns, "connected")
        window.append(obs)
    result = run_window(before, window, {("node", "lnd"): "healthy"}, at(10), at_ns + S)
    assert result.drifts == () and result.verdict == "pass" and result.changes == ()


# -------------------------------------------- the reference: the rules restated plainly, over the whole trace

REFERENCE_RECOVERING = {State.RESTARTING, State.STARTING, State.RUNNING, State.HEALTHY}


def reference(before: list[Observation], window: list[Observation], expected: dict, start_ns: int, end_ns: int,
              config: DriftSettings, others: str | None) -> list[Drift]:
    """The drifts of a window: candidates found kind by kind over a recorded trace, then listed in
    observation order with the limits, the deaths carried and their amendments applied."""
    def expect(target: str, container: str) -> str | None:
        return expected.get((target, container), others) if container else None

    fleet = Fleet(MachineSettings())
    last_snapshot: dict[tuple[str, str], tuple[int, str, str | None]] = {}  # at, policy, image
    link: dict[str, int] = {}

    def take(snapshot: SnapshotObs) -> tuple[int, str, str | None] | None:
        """The snapshot's (at, policy, image) for its container; the previous one, None if it is stale."""
        key = (snapshot.target, snapshot.container)
        previous = last_snapshot.get(key)
        if previous is not None and snapshot.at_ns < previous[0]:
            return None
        last_snapshot[key] = (snapshot.at_ns, normal_policy(snapshot.restart_policy),
                              snapshot.image or (previous[2] if previous else None))
        return previous or (-1, None, None)

    def on_link(obs: AgentObs) -> int | None:
        """The stamp the link was lost at, when this record brings it back."""
        if obs.what in ("lost", "unreachable"):
            link.setdefault(obs.target, obs.at_ns)
        elif obs.what == "connected":
            return link.pop(obs.target, None)
        return None

    observed = set(expected)
    for obs in before:
        fleet.feed(obs)
        if expect(obs.target, obs.container):
            observed.add((obs.target, obs.container))
        if isinstance(obs, SnapshotObs) and obs.exists and expect(obs.target, obs.container):
            take(obs)
        if isinstance(obs, AgentObs):
            on_link(obs)
    at_start = set(expected) | ({(m.target, m.container) for m in fleet.machines()} if others else set())
    restarts = {k: fleet.get(*k).restarts for k in at_start if fleet.get(*k)}
    known_death = {k: fleet.get(*k).last_death_ns for k in at_start if fleet.get(*k)}
    trace = []
    for obs in window:
        changes = fleet.feed(obs)
        machine = fleet.get(obs.target, obs.container) if obs.container else None
        trace.append((obs, changes, None if machine is None else
                      (machine.restarts, machine.last_death_ns, machine.last_death)))
        if expect(obs.target, obs.container):
            observed.add((obs.target, obs.container))
    candidates: list[list[tuple]] = [[] for _ in range(len(trace) + 1)]  # (order, item) per observation

    # probes: the first failure of each streak
    failing: set = set()
    for i, (obs, _, _) in enumerate(trace):
        if isinstance(obs, ProbeObs) and obs.probe_type not in ("kernel-log", "podman-healthcheck"):
            key = (obs.target, obs.container, obs.probe)
            if obs.ok:
                failing.discard(key)
            elif key not in failing:
                failing.add(key)
                candidates[i].append((0, Drift(obs.target, obs.container, DriftKind.PROBE, obs.at_ns, "")))
    # link: gaps longer than the limit, counted from the window's start
    def gap(target: str, lost: int, back: int, i: int) -> None:
        if back - max(lost, start_ns) > config.link_lost_max_ns:
            candidates[i].append((0, Drift(target, "", DriftKind.LINK, max(lost, start_ns), "")))
    for i, (obs, _, _) in enumerate(trace):
        if isinstance(obs, AgentObs) and (lost := on_link(obs)) is not None:
            gap(obs.target, lost, obs.at_ns, i)
    for target, lost in sorted(link.items()):
        gap(target, lost, end_ns, len(trace))
    # state, health, restarts
    for i, (obs, changes, after) in enumerate(trace):
        want = expect(obs.target, obs.container)
        if want is None or after is None:
            continue
        key = (obs.target, obs.container)
        count, death_ns, death = after
        new_death = death_ns is not None and death_ns != known_death.get(key)
        for change in changes:
            a, b = change.from_state, change.to_state
            if meets(want, b) or (not meets(want, a) and b in REFERENCE_RECOVERING):
                continue  # arrived, or on its way back
            if a in (State.EXITED, State.STOPPED, State.CRASHLOOPING) and b in (State.EXITED, State.STOPPED) \
                    and not new_death:
                candidates[i].append((1, ("relabel", key, b, death_ns)))
                continue
            with_death = b in DEATH_STATES and death is not None and (new_death or death_ns >= start_ns)
            candidates[i].append((1, Drift(key[0], key[1], change_kind(a, b), change.at_ns, "",
                                           death=death if with_death else None,
                                           death_ns=death_ns if with_death else None, from_state=a, to_state=b)))
        if count > restarts.get(key, 0):
            candidates[i].append((2, Drift(key[0], key[1], DriftKind.RESTART, obs.at_ns, "", death=death,
                                           death_ns=death_ns if death else None,
                                           count=count - restarts.get(key, 0))))
        restarts[key], known_death[key] = count, death_ns
    # policy and image: a change from the last snapshot known
    for i, (obs, _, _) in enumerate(trace):
        if isinstance(obs, SnapshotObs) and obs.exists and expect(obs.target, obs.container):
            previous = take(obs)
            if previous is None:
                continue
            _, policy, image = last_snapshot[(obs.target, obs.container)]
            if previous[1] is not None and previous[1] != policy:
                candidates[i].append((3, Drift(obs.target, obs.container, DriftKind.POLICY, obs.at_ns, "")))
            if previous[2] is not None and previous[2] != image:
                candidates[i].append((4, Drift(obs.target, obs.container, DriftKind.IMAGE, obs.at_ns, "")))
    # error lines stamped inside the window (the key stands in the reason)
    for i, (obs, _, _) in enumerate(trace):
        if isinstance(obs, LogObs) and obs.is_error and obs.at_ns >= start_ns and expect(obs.target, obs.container):
            candidates[i].append((5, Drift(obs.target, obs.container, DriftKind.ERROR, obs.at_ns,
                                           error_key(obs.line))))

    # list them in observation order: limits, error repeats, deaths carried, relabels, amendments
    out: list[Drift] = []
    listed: dict[tuple, int] = {}
    lines: dict[tuple, set] = {}
    extra: dict[tuple, list[int]] = {}  # (count, first stamp)
    runs: dict[tuple[str, str], list] = {}  # key -> [death_ns, death, [places in out]]
    for i, items in enumerate(candidates):
        for _, item in sorted(items, key=lambda x: x[0]):
            if isinstance(item, tuple):
                _, key, b, death_ns = item
                run = runs.get(key)
                if run is not None and death_ns is not None and run[0] == death_ns:
                    for place in run[2]:
                        d = out[place]
                        if d.kind is DriftKind.STATE and d.to_state in (State.EXITED, State.STOPPED):
                            out[place] = _with(d, to_state=b)
                continue
            kind_key = (item.target, item.container, item.kind)
            if item.kind is DriftKind.ERROR and item.reason in lines.get(kind_key, set()):
                more = extra.setdefault(kind_key, [0, item.at_ns])
                more[0], more[1] = more[0] + 1, min(more[1], item.at_ns)
                continue
            if listed.get(kind_key, 0) >= config.max_per_kind:
                more = extra.setdefault(kind_key, [0, item.at_ns])
                more[0], more[1] = more[0] + item.count, min(more[1], item.at_ns)
                continue
            listed[kind_key] = listed.get(kind_key, 0) + 1
            if item.kind is DriftKind.ERROR:
                lines.setdefault(kind_key, set()).add(item.reason)
            if item.death_ns is not None:
                run = runs.get((item.target, item.container))
                if run is None or run[0] != item.death_ns:
                    run = runs[(item.target, item.container)] = [item.death_ns, item.death, []]
                run[1] = item.death
                run[2].append(len(out))
            out.append(item)
        if i < len(trace):
            obs, _, after = trace[i]
            run = runs.get((obs.target, obs.container))
            if expect(obs.target, obs.container) and after is not None and run is not None \
                    and after[2] is not None and after[1] == run[0] and after[2] != run[1]:
                run[1] = after[2]
                for place in run[2]:
                    out[place] = _with(out[place], death=after[2])
    # the close: containers not where expected, then the counts of what was not listed
    for key in observed:
        machine = fleet.get(*key)
        state = machine.state if machine else State.UNKNOWN
        if not meets(expect(*key), state):
            death = machine.last_death if machine and state in DEATH_STATES else None
            out.append(Drift(key[0], key[1], DriftKind.UNMET, end_ns, "", death=death,
                             death_ns=machine.last_death_ns if death else None, to_state=state))
    out += [Drift(k[0], k[1], k[2], first, "", count=n) for k, (n, first) in extra.items()]
    fleet.close()
    return out


def _with(drift: Drift, **changes) -> Drift:
    fields = {name: getattr(drift, name) for name in Drift.__dataclass_fields__}
    fields.update(changes)
    return Drift(**fields)


def _essence(drift: Drift) -> tuple:
    """What the reference decides: who, what, when, the death behind it, the state and the count (not wording)."""
    return (drift.target, drift.container, str(drift.kind), drift.at_ns,
            None if drift.death is None else (drift.death.kind, drift.death.text), drift.death_ns,
            drift.to_state, drift.count)


@settings(max_examples=300, deadline=None)
@given(windows(), drift_settings)
def test_drifts_equal_the_reference(window, config: DriftSettings) -> None:
    before, inside, expected, start_ns, end_ns, others = window
    result = run_window(before, inside, expected, start_ns, end_ns, settings=config, others=others)
    ours = sorted(map(_essence, result.drifts), key=repr)
    theirs = sorted(map(_essence, reference(before, inside, expected, start_ns, end_ns, config, others)), key=repr)
    assert ours == theirs
