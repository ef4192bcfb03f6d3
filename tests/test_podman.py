"""agent.podman on real podman 4.3 output captured here, hand-written 5.x samples, and builders."""

from __future__ import annotations

import json
import time
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import podman as pm
from agent.container_logs import PodmanLogsParser
from agent.errors import InvalidContainerName
from machines.observations import EventObs, SnapshotObs

DATA = Path(__file__).parent / "data" / "podman"
PODMAN = ["podman"]
WEB_ID = "2381f8c0cce95e41f85cc853b2acbf7e3738b29e09cbda65456abf1f9849c465"


def read(name: str) -> str:
    return (DATA / name).read_text()


def events(name: str, target: str = "node1") -> list[EventObs]:
    parsed = [pm.parse_event(line, target) for line in read(name).splitlines()]
    assert not [p for p in parsed if isinstance(p, pm.ParseError)]
    return [p for p in parsed if p is not None]


# ---------------------------------------------------------------- time


@pytest.mark.parametrize("text, ns", [
    ("2026-11-27T10:06:27.3000477Z", 1795773987300047700),
    ("2026-11-27T11:06:27.3000477+01:00", 1795773987300047700),
    ("2026-11-27T05:36:27.3000477-04:30", 1795773987300047700),
    ("2026-11-27T10:06:27Z", 1795773987000000000),
    ("2026-11-27T10:06:27.300047700Z", 1795773987300047700),
    ("2026-11-27T10:06:27.3000477009999Z", 1795773987300047700),  # >9 digits truncated
    ("1970-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59.999999999Z", -1),
    ("0001-01-01T00:00:00Z", pm.MIN_TIME_NS),
])
def test_parse_time_ns_is_exact(text: str, ns: int) -> None:
    assert pm.parse_time_ns(text) == ns


@pytest.mark.parametrize("text", [
    "", "yesterday", "2026-11-27", "2026-11-27T10:06:27", "2026-02-30T10:06:27Z",
    "2026-11-27T24:00:00Z", "2026-11-27T10:06:27+25:00", "2026-11-27T10:06:27.Z",
    "1795773987", "2026-11-27T10:06:27Z trailing",
])
def test_parse_time_ns_refuses_what_is_not_rfc3339(text: str) -> None:
    with pytest.raises(ValueError):
        pm.parse_time_ns(text)


def test_format_time_ns_is_rfc3339nano_utc_with_nine_digits() -> None:
    assert pm.format_time_ns(1795773987300047700) == "2026-11-27T10:06:27.300047700Z"
    assert pm.format_time_ns(0) == "1970-01-01T00:00:00.000000000Z"
    assert pm.format_time_ns(-1) == "1969-12-31T23:59:59.999999999Z"
    with pytest.raises(ValueError):
        pm.format_time_ns(pm.MAX_TIME_NS + 1)


def test_since_round_trips_through_the_events_argv() -> None:
    at_ns = pm.parse_time_ns("2026-11-27T10:12:17.280588925Z")  # a real `died` event
    argv = pm.events_cmd(PODMAN, since_ns=at_ns - 1, follow=False)
    since = argv[argv.index("--since") + 1]
    assert since == "2026-11-27T10:12:17.280588924Z"
    assert pm.parse_time_ns(since) == at_ns - 1


# ---------------------------------------------------------------- events, 4.3 captured


def test_every_captured_43_line_parses_and_image_events_are_skipped() -> None:
    lines = read("events-4.3.jsonl").splitlines()
    parsed = [pm.parse_event(line, "node1") for line in lines]
    assert not [p for p in parsed if isinstance(p, pm.ParseError)]
    skipped = [line for line, p in zip(lines, parsed) if p is None]
    assert skipped and all('"Type":"image"' in line for line in skipped)


def test_43_event_fields_are_exact() -> None:
    assert events("events-4.3.jsonl")[0] == EventObs(
        target="node1", container="pwp-web", at_ns=1795774307745206662,  # ...:47.745206662Z
        container_id=WEB_ID, status="create", exit_code=None, health_status=None,
        image="localhost/pwp-busybox:1", attributes=(),
    )


def test_43_web_lifecycle_create_health_crash_restart_stop_kill_remove() -> None:
    web = [e for e in events("events-4.3.jsonl") if e.container == "pwp-web"]
    statuses = [e.status for e in web]
    assert statuses == [
        "create", "init", "start",
        "health_status", "exec_died", "health_status", "exec_died",
        "health_status", "exec_died", "health_status", "exec_died",
        "died", "restart", "init", "start",  # kill -9 of the main pid: policy restart
        "died", "cleanup", "cleanup",  # podman stop: 4.3 wrote no `stop` event
        "init", "start", "kill", "died", "cleanup", "remove",
    ]
    assert [e.exit_code for e in web if e.status == "died"] == [137, 137, 137]
    # checks ran with exit 0, 1, 1, 0 (--health-retries 2); inspect then said healthy.
    # 4.3 reports the status before each check (podman#19237): one behind.
    assert [e.health_status for e in web if e.status == "health_status"] == [
        "starting", "healthy", "healthy", "unhealthy"]
    assert [e.exit_code for e in web if e.status == "exec_died"] == [0, 1, 1, 0]
    assert all(e.health_status is None for e in web if e.status != "health_status")
    assert all(e.exit_code is None for e in web if e.status not in ("died", "exec_died"))


def test_43_omits_a_zero_exit_code_which_reads_as_zero() -> None:
    by_name = {e.container: e for e in events("events-4.3.jsonl") if e.status == "died"}
    assert '"ContainerExitCode"' not in [line for line in read("events-4.3.jsonl").splitlines()
                                         if '"pwp-exit0"' in line and '"died"' in line][0]
    assert by_name["pwp-exit0"].exit_code == 0
    assert by_name["pwp-exit3"].exit_code == 3


def test_43_labels_become_sorted_attributes() -> None:
    labelled = [e for e in events("events-4.3.jsonl") if e.container == "pwp-labels"]
    assert labelled and all(e.attributes == (("app", "demo"), ("tier", "db")) for e in labelled)
    # `podman restart` writes `restart` before the `died` it causes: order by at_ns
    statuses = [e.status for e in labelled]
    assert statuses.index("restart") < statuses.index("died")


def test_43_exec_died_is_written_twice_per_exec() -> None:
    exec_died = [e.exit_code for e in events("events-4.3.jsonl")
                 if e.container == "pwp-log4" and e.status == "exec_died"]
    assert exec_died == [0, 0, 7, 7]


def test_events_sort_by_podmans_timestamp() -> None:
    parsed = events("events-4.3.jsonl")
    assert [e.at_ns for e in sorted(parsed, key=lambda e: e.at_ns)] == sorted(e.at_ns for e in parsed)


# ---------------------------------------------------------------- events, 5.x hand-written


def test_5x_events_use_timenano_and_always_carry_the_exit_code() -> None:
    parsed = [pm.parse_event(line, "node5") for line in read("events-5.x-handwritten.jsonl").splitlines()]
    assert not [p for p in parsed if isinstance(p, pm.ParseError)]
    start, health, died0, died137, exec_died, died_null, remove, stop, pull = parsed
    assert pull is None
    assert start.status == "start" and start.exit_code is None
    assert start.at_ns == 1795774307818300865  # timeNano, not time * 1e9
    assert start.attributes == (("app", "demo"),)
    assert health.health_status == "healthy"
    assert died0.exit_code == 0  # present as 0 in 5.x
    assert died137.exit_code == 137
    assert exec_died.exit_code == 1
    assert died_null.exit_code is None  # null pointer: unknown, not 0
    assert remove.exit_code == 137
    assert stop.at_ns == 1795774318 * pm.NS_PER_S  # no timeNano: whole seconds


def test_event_shapes_that_are_not_events() -> None:
    assert pm.parse_event("", "n") is None
    assert pm.parse_event("   ", "n") is None
    bad = pm.parse_event('{"Type":"container","Status":"died"', "n")
    assert isinstance(bad, pm.ParseError) and bad.source == "event"
    assert bad.excerpt == '{"Type":"container","Status":"died"'
    for line in ('[1,2]', '{"Type":"container","Name":"a","Status":"start"}',
                 '{"Type":"container","Name":"a","Status":"start","Time":"noon"}',
                 '{"Type":"container","Name":"a","Status":"start","timeNano":"1"}',
                 '{"Type":"container","Name":"a","Status":"died","timeNano":1,"ContainerExitCode":"1"}',
                 '{"Type":"container","Name":"a","Status":"start","timeNano":1,"Attributes":{"k":1}}',
                 '{"Name":"a","Status":"start","timeNano":1}'):
        assert isinstance(pm.parse_event(line, "n"), pm.ParseError), line


def test_parse_events_reads_a_backfill_batch() -> None:
    batch = pm.parse_events(read("events-4.3.jsonl"), "node1")
    assert len(batch) == len(events("events-4.3.jsonl"))


# ---------------------------------------------------------------- ps


def test_ps_43_captured() -> None:
    entries = pm.parse_ps(read("ps-4.3.json"))
    assert not isinstance(entries, pm.ParseError)
    by_name = {e.name: e for e in entries}
    stop = by_name["pwp-stop"]
    assert (stop.state, stop.exit_code, stop.exited, stop.pid) == ("exited", 137, True, 0)
    assert stop.status.startswith("Exited (137)")
    assert stop.image == "localhost/pwp-busybox:1"
    assert by_name["pwp-exit0"].exit_code == 0
    assert by_name["pwp-log1"].state == "running" and by_name["pwp-log1"].pid > 0
    assert all(e.restarts is None for e in entries)  # 4.3 has no Restarts
    assert all(e.ports == () for e in entries)  # --network host: nothing published


def test_ps_5x_ports_and_restarts() -> None:
    # hand-written after podman 5 ps JSON (types.PortMapping keys); not captured here
    text = json.dumps([{
        "Id": "abc123", "Names": ["web"], "Image": "docker.io/library/nginx:latest",
        "State": "running", "Status": "Up 5 minutes", "ExitCode": 0, "Exited": False,
        "Pid": 4242, "Created": 1795774307, "StartedAt": 1795774308, "Restarts": 2,
        "Labels": {"app": "web"},
        "Ports": [{"host_ip": "127.0.0.1", "container_port": 80, "host_port": 8081, "range": 1, "protocol": "tcp"},
                  {"host_ip": "", "container_port": 53, "host_port": 5353, "range": 2, "protocol": "udp"}],
    }])
    (entry,) = pm.parse_ps(text)
    assert entry.ports == ("127.0.0.1:8081->80/tcp", "0.0.0.0:5353-5354->53-54/udp")
    assert entry.restarts == 2 and entry.labels == (("app", "web"),)


def test_ps_empty_and_broken() -> None:
    assert pm.parse_ps("[]\n") == []
    assert pm.parse_ps("null") == []
    assert isinstance(pm.parse_ps(""), pm.ParseError)
    assert isinstance(pm.parse_ps('{"Names": ["a"]}'), pm.ParseError)
    assert isinstance(pm.parse_ps('[{"Id": "x"}]'), pm.ParseError)  # no Names


# ---------------------------------------------------------------- inspect


def inspect(name: str, **kwargs: object) -> list[pm.InspectFacts]:
    facts = pm.parse_inspect(read(name), "node1", 1_000, **kwargs)  # type: ignore[arg-type]
    assert not isinstance(facts, pm.ParseError), facts
    return facts


def test_inspect_43_web_with_healthcheck_policy_memory_and_cap_drop_all() -> None:
    (web,) = inspect("inspect-4.3-web-healthy.json")
    assert (web.name, web.id, web.image) == ("pwp-web", WEB_ID, "localhost/pwp-busybox:1")
    assert (web.status, web.running, web.pid, web.exit_code) == ("running", True, 6103, 0)
    assert web.health == "healthy" and web.health_failing_streak == 0
    assert [entry.exit_code for entry in web.health_log] == [0, 1, 1, 0]
    assert web.health_log[1].output == "wget: server returned error: HTTP/1.1 404 Not Found"
    assert web.health_log[0].start_ns == pm.parse_time_ns("2026-11-27T10:11:48.861333695Z")
    assert web.healthcheck_test == ("CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:18081/data/ok || exit 1")
    assert (web.healthcheck_interval_ns, web.healthcheck_retries) == (30 * pm.NS_PER_S, 2)
    assert (web.restart_policy, web.restart_max_retries, web.restart_count) == ("on-failure", 3, 0)
    assert web.memory == 64 * 1024 * 1024
    # --cap-drop ALL --cap-add NET_BIND_SERVICE: 4.3 lists the dropped defaults, no "ALL"
    assert "ALL" not in web.cap_drop and "CAP_CHOWN" in web.cap_drop and "CAP_DAC_OVERRIDE" in web.cap_drop
    assert web.cap_add == ()  # NET_BIND_SERVICE is a default: not "added"
    assert web.effective_caps == ("CAP_NET_BIND_SERVICE",)
    assert web.read_only is True
    assert dict(web.tmpfs).keys() == {"/run", "/tmp", "/var/tmp"}  # --read-only adds /run, /var/tmp
    assert web.mounts == (pm.MountFacts("bind", "/tmp/pwp/vol", "/data", False),)
    assert (web.network_mode, web.ports, web.user) == ("host", (), "")
    assert web.stopped_by_user is None  # 4.3 does not say
    assert web.started_at_ns == pm.parse_time_ns("2026-11-27T10:11:47.816284271Z")
    assert web.finished_at_ns == 0  # Go zero time
    assert web.log_driver == "k8s-file"


def test_inspect_43_after_crash_restart_and_stop() -> None:
    (web,) = inspect("inspect-4.3-web-stopped.json")
    assert (web.status, web.exit_code, web.pid, web.restart_count) == ("exited", 137, 0, 1)
    assert web.health == "starting"  # reset by the policy restart
    assert web.finished_at_ns > web.started_at_ns > 0


def test_inspect_43_health_is_none_without_a_healthcheck() -> None:
    (log3,) = inspect("inspect-4.3-no-healthcheck.json")
    raw = json.loads(read("inspect-4.3-no-healthcheck.json"))[0]
    assert raw["State"]["Health"] == {"Status": "", "FailingStreak": 0, "Log": None}  # always there in 4.x
    assert log3.health is None and log3.healthcheck_test == () and log3.health_log == ()
    assert (log3.restart_policy, log3.restart_count) == ("always", 1)


def test_inspect_43_failing_and_timed_out_checks() -> None:
    slow, missing_bin = inspect("inspect-4.3-health-failing.json")
    assert slow.health == "starting" and slow.health_log[0].exit_code == -1  # ran past --health-timeout
    assert missing_bin.health_log[0].output == "/bin/sh: /nonexistent: not found"
    assert missing_bin.health_failing_streak == 1
    assert slow.restart_policy == ""


def test_inspect_of_several_names_with_one_missing() -> None:
    facts = inspect("inspect-4.3-multi-missing.json")
    assert [f.name for f in facts] == ["pwp-log1", "pwp-log2"]
    assert pm.missing_containers(["pwp-log1", "pwp-nosuch", "pwp-log2"], facts) == ["pwp-nosuch"]
    assert pm.missing_containers([facts[0].id[:12], "pwp-log2"], facts) == []
    assert "no such container pwp-nosuch" in read("inspect-4.3-multi-missing.stderr.txt")
    assert pm.parse_inspect("[]", "n", 0) == []


def test_inspect_5x_shape_without_health_and_with_stopped_by_user() -> None:
    # hand-written after libpod/define/container_inspect.go (5.x): Health and
    # StoppedByUser are omitempty; ports published on a bridge network
    entry = json.loads(read("inspect-4.3-no-healthcheck.json"))[0]
    del entry["State"]["Health"]
    entry["NetworkSettings"]["Ports"] = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}],
                                         "9000/tcp": None}
    entry["HostConfig"]["NetworkMode"] = "bridge"
    stopped = json.loads(json.dumps(entry))
    stopped["State"]["StoppedByUser"] = True
    (plain,) = pm.parse_inspect(json.dumps([entry]), "n", 0, podman_version="5.2.1")
    (by_user,) = pm.parse_inspect(json.dumps([stopped]), "n", 0, podman_version="5.2.1")
    (unknown,) = pm.parse_inspect(json.dumps([entry]), "n", 0)
    assert plain.health is None and plain.ports == ("127.0.0.1:8081->80/tcp",)
    assert (plain.stopped_by_user, by_user.stopped_by_user, unknown.stopped_by_user) == (False, True, None)


def test_inspect_snapshot_is_the_stored_observation() -> None:
    (web,) = inspect("inspect-4.3-web-stopped.json")
    assert web.snapshot() == SnapshotObs(
        target="node1", container="pwp-web", at_ns=1_000, exists=True, container_id=WEB_ID,
        status="exited", health="starting", exit_code=137, pid=0, restart_count=1,
        started_at_ns=web.started_at_ns, finished_at_ns=web.finished_at_ns,
        restart_policy="on-failure", memory=64 * 1024 * 1024, image="localhost/pwp-busybox:1",
        oom_killed=False, health_failing_streak=web.health_failing_streak,
        health_retries=web.healthcheck_retries, health_start_period_ns=web.healthcheck_start_period_ns,
        restart_max_retries=web.restart_max_retries,
    )
    assert web.healthcheck_retries == 2  # podman's own health bookkeeping reaches the machine
    assert pm.missing_snapshot("node1", "db", 5) == SnapshotObs(target="node1", container="db", at_ns=5, exists=False)


def test_inspect_broken() -> None:
    assert isinstance(pm.parse_inspect("Error: no such container", "n", 0), pm.ParseError)
    assert isinstance(pm.parse_inspect('[{"Name": "a"}]', "n", 0), pm.ParseError)  # no Id, State
    bad_type = json.loads(read("inspect-4.3-web-healthy.json"))
    bad_type[0]["HostConfig"]["Memory"] = "64m"
    result = pm.parse_inspect(json.dumps(bad_type), "n", 0)
    assert isinstance(result, pm.ParseError) and "Memory" in result.reason


# ---------------------------------------------------------------- logs


def test_logs_single_container_has_no_name_prefix() -> None:
    lines = read("logs-4.3-single.txt").splitlines()
    parsed = [pm.parse_log_line(line, container="pwp-log1") for line in lines]
    assert parsed[0] == pm.LogLine("pwp-log1", pm.parse_time_ns("2026-11-27T10:13:04.760357463Z"), "one line 0")
    assert [p.text for p in parsed] == ["one line 0", "one line 1", "one line 2", "one line 3", "no newline at end"]


def test_logs_multi_names_prefix_and_glued_partial_line() -> None:
    names = ["pwp-log1", "pwp-log2"]
    raw = read("logs-4.3-multi-names.txt").splitlines()
    # the newline-less last line of pwp-log1 is glued to pwp-log2's first record
    assert raw[4].startswith("pwp-log1 2026-11-27T10:13:05.969260880Z no newline at endpwp-log2 ")
    parser = PodmanLogsParser(names, time.time_ns)
    parsed = [line for raw_line in raw for line in parser.feed(raw_line)] + parser.flush()
    assert not [p for p in parsed if isinstance(p, pm.ParseError)]
    # a partial line is whole only when its container's next record comes, or at the end
    assert [(p.container, p.text) for p in parsed] == [
        ("pwp-log1", "one line 0"), ("pwp-log1", "one line 1"), ("pwp-log1", "one line 2"),
        ("pwp-log1", "one line 3"),
        ("pwp-log2", 'two: {"json": 0}  trailing  '), ("pwp-log2", 'two: {"json": 1}  trailing  '),
        ("pwp-log2", 'two: {"json": 2}  trailing  '), ("pwp-log2", ""), ("pwp-log2", "after empty"),
        ("pwp-log1", "no newline at end"),
    ]
    # history comes per container, not merged by time
    assert parsed[4].at_ns < parsed[-1].at_ns
    # container stderr went to podman's stderr, with the same prefix
    err = [pm.parse_log_line(line, names=names) for line in read("logs-4.3-multi-names.stderr.txt").splitlines()]
    assert [e.text for e in err if not isinstance(e, pm.ParseError)] == [f"err line {i}" for i in range(4)]


def test_logs_follow_loses_a_container_that_restarts() -> None:
    parsed = [pm.parse_log_line(line, names=["pwp-log3", "pwp-log4"])
              for line in read("logs-4.3-follow-restart.txt").splitlines()]
    log3 = [p.text for p in parsed if p.container == "pwp-log3"]
    # pwp-log3 was kill -9'd and restarted by its policy; its first line after the restart
    # slipped in, then `logs -f` followed only pwp-log4 for the remaining 3 s
    assert log3[-1] == "l3 0"
    assert [p.container for p in parsed][-6:] == ["pwp-log4"] * 6


def test_log_line_shapes() -> None:
    assert pm.parse_log_line("2026-11-27T10:13:04.760357463+01:00 x", container="a").at_ns == \
        pm.parse_time_ns("2026-11-27T09:13:04.760357463Z")
    assert pm.parse_log_line("2026-11-27T10:13:04.760357463Z", container="a").text == ""
    assert isinstance(pm.parse_log_line("hello", container="a"), pm.ParseError)
    assert isinstance(pm.parse_log_line("a 2026-11-27T10:13:04Z x", names=["b"]), pm.ParseError)
    assert isinstance(pm.parse_log_line("2026-11-27T10:13:04Z x"), pm.ParseError)  # multi needs a name
    parser = PodmanLogsParser(["a", "b"], time.time_ns)
    # a name in the text without a timestamp after it is not a record start
    assert [line.text for line in parser.feed("a 2026-11-27T10:13:04.000000000Z see a b")] == ["see a b"]


# ---------------------------------------------------------------- version / info / health


def test_version_and_info_43() -> None:
    version = pm.parse_version(read("version-4.3.json"))
    assert version == pm.NodeInfo(version="4.3.1", api_version="4.3.1", os="linux", arch="amd64")
    info = pm.parse_info(read("info-4.3.json"))
    assert not isinstance(info, pm.ParseError)
    assert (info.version, info.rootless, info.cgroup_manager, info.events_logger, info.runtime) == \
        ("4.3.1", False, "cgroupfs", "file", "runc")
    assert (info.os, info.arch, info.log_driver, info.has_systemd, info.major) == ("linux", "amd64", "k8s-file", False, 4)


def test_version_prefers_the_server_of_a_remote_client() -> None:
    text = json.dumps({"Client": {"Version": "5.0.0", "OsArch": "darwin/arm64"},
                       "Server": {"Version": "4.9.3", "APIVersion": "4.9.3", "OsArch": "linux/amd64"}})
    assert pm.parse_version(text) == pm.NodeInfo(version="4.9.3", api_version="4.9.3", os="linux", arch="amd64")
    assert isinstance(pm.parse_version('{"Client": {}}'), pm.ParseError)
    assert isinstance(pm.parse_info('{"host": {}}'), pm.ParseError)


@pytest.mark.parametrize("status, outcome", [(0, "healthy"), (1, "unhealthy"), (125, "error"), (2, "error"), (-1, "error")])
def test_healthcheck_outcome(status: int, outcome: str) -> None:
    assert pm.healthcheck_outcome(status) == outcome


# ---------------------------------------------------------------- builders


def test_builders_argv() -> None:
    assert pm.ps_cmd(PODMAN) == ["podman", "ps", "-a", "--format", "json"]
    assert pm.inspect_cmd(PODMAN, ["a", "b"]) == ["podman", "container", "inspect", "a", "b"]
    assert pm.inspect_cmd(["/usr/bin/podman", "--log-level", "error"], "a") == ["/usr/bin/podman", "--log-level", "error", "container", "inspect", "a"]
    assert pm.events_cmd(PODMAN) == ["podman", "events", "--format", "json", "--filter", "type=container"]
    assert pm.events_cmd(PODMAN, since_ns=0, until_ns=pm.NS_PER_S, containers=["web", "db"], follow=False) == [
        "podman", "events", "--format", "json", "--filter", "type=container",
        "--filter", "container=web", "--filter", "container=db",
        "--since", "1970-01-01T00:00:00.000000000Z", "--until", "1970-01-01T00:00:01.000000000Z",
        "--stream=false"]
    assert pm.logs_cmd(PODMAN, ["web"]) == ["podman", "logs", "--timestamps", "web"]
    assert pm.logs_cmd(PODMAN, ["web", "db"], since_ns=0, tail=10, follow=True) == [
        "podman", "logs", "--timestamps", "--names", "--since", "1970-01-01T00:00:00.000000000Z",
        "--tail", "10", "--follow", "web", "db"]
    assert pm.logs_cmd(PODMAN, "web", timestamps=False) == ["podman", "logs", "web"]
    assert pm.healthcheck_cmd(PODMAN, "web") == ["podman", "healthcheck", "run", "web"]
    assert pm.version_cmd(PODMAN) == ["podman", "version", "--format", "json"]
    assert pm.info_cmd(PODMAN) == ["podman", "info", "--format", "json"]
    assert pm.kill_main_process_cmd(PODMAN, 4242, rootless=True) == ["podman", "unshare", "kill", "-9", "4242"]
    assert pm.kill_main_process_cmd(PODMAN, 4242, rootless=False) == ["kill", "-9", "4242"]
    assert pm.stop_cmd(PODMAN, "web") == ["podman", "stop", "web"]
    assert pm.stop_cmd(PODMAN, "web", timeout_s=3) == ["podman", "stop", "--time", "3", "web"]
    assert pm.start_cmd(PODMAN, "web") == ["podman", "start", "web"]
    assert pm.kill_cmd(PODMAN, "web") == ["podman", "kill", "--signal", "KILL", "web"]
    assert pm.kill_cmd(PODMAN, "web", "TERM") == ["podman", "kill", "--signal", "TERM", "web"]


def test_builders_quote_nothing_themselves() -> None:
    # the transport quotes; argv elements go through verbatim
    argv = pm.exec_cmd(PODMAN, "web", ["sh", "-c", "echo $HOME; cat '/etc/x' | wc -l"])
    assert argv == ["podman", "exec", "web", "sh", "-c", "echo $HOME; cat '/etc/x' | wc -l"]


BAD_NAMES = ["", "-rm", "--all", "a b", "a;rm -rf /", "$(id)", "a/b", "web\n", "_x", ".x", "é", "a'b"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_builders_reject_bad_names(bad: str) -> None:
    for build in (
        lambda: pm.inspect_cmd(PODMAN, ["ok", bad]),
        lambda: pm.events_cmd(PODMAN, containers=[bad]),
        lambda: pm.logs_cmd(PODMAN, [bad]),
        lambda: pm.logs_cmd(PODMAN, ["ok", bad]),
        lambda: pm.healthcheck_cmd(PODMAN, bad),
        lambda: pm.stop_cmd(PODMAN, bad),
        lambda: pm.start_cmd(PODMAN, bad),
        lambda: pm.kill_cmd(PODMAN, bad),
        lambda: pm.exec_cmd(PODMAN, bad, ["true"]),
    ):
        with pytest.raises(InvalidContainerName) as caught:
            build()
        assert caught.value.name == bad


def test_builders_refuse_other_bugs() -> None:
    with pytest.raises(ValueError):
        pm.inspect_cmd(PODMAN, [])
    with pytest.raises(ValueError):
        pm.exec_cmd(PODMAN, "web", [])
    with pytest.raises(ValueError):
        pm.exec_cmd(PODMAN, "web", "ls -l")  # a string, not an argv
    with pytest.raises(ValueError):
        pm.kill_cmd(PODMAN, "web", "-9; reboot")
    with pytest.raises(ValueError):
        pm.logs_cmd(PODMAN, ["web"], tail=-1)
    for pid in (0, 1, -5, True, "123"):
        with pytest.raises(ValueError):
            pm.kill_main_process_cmd(PODMAN, pid, rootless=True)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the real podman here


def _podman_works() -> bool:
    if shutil.which("podman") is None:
        return False
    return subprocess.run(["podman", "version"], capture_output=True, timeout=60).returncode == 0


real_podman = pytest.mark.skipif(not _podman_works(), reason="podman is not usable here")


@real_podman
def test_real_version_and_info_parse() -> None:
    version = subprocess.run(pm.version_cmd(PODMAN), capture_output=True, text=True, timeout=60)
    info = subprocess.run(pm.info_cmd(PODMAN), capture_output=True, text=True, timeout=60)
    parsed_version, parsed_info = pm.parse_version(version.stdout), pm.parse_info(info.stdout)
    assert isinstance(parsed_version, pm.NodeInfo) and isinstance(parsed_info, pm.NodeInfo)
    assert parsed_info.version == parsed_version.version


@real_podman
def test_real_inspect_of_a_missing_name_exits_125_with_an_empty_array() -> None:
    result = subprocess.run(pm.inspect_cmd(PODMAN, ["pwp-never-created-xyz"]), capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert pm.parse_inspect(result.stdout, "local", 0) == []
    assert "no such container pwp-never-created-xyz" in result.stderr


@real_podman
def test_real_events_backfill_with_since_ends_by_itself() -> None:
    argv = pm.events_cmd(PODMAN, since_ns=pm.parse_time_ns("2026-01-01T00:00:00Z"), follow=False)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert not [p for p in pm.parse_events(result.stdout, "local") if isinstance(p, pm.ParseError)]
