"""Properties of agent.podman's parsers: total on any input, exact on time."""

from __future__ import annotations

import json
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import podman as pm
from agent.container_logs import FollowerLine, K8sRecord, PodmanLogsParser, parse_follower_line, parse_k8s_record
from machines.observations import EventObs

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every text parser, with what it may return. None of them may raise.
PARSERS: dict[str, tuple[Callable[[str], Any], tuple[type, ...]]] = {
    "event": (lambda text: pm.parse_event(text, "t"), (EventObs, pm.ParseError, type(None))),
    "events": (lambda text: pm.parse_events(text, "t"), (list,)),
    "ps": (pm.parse_ps, (list, pm.ParseError)),
    "inspect": (lambda text: pm.parse_inspect(text, "t", 0), (list, pm.ParseError)),
    "inspect5": (lambda text: pm.parse_inspect(text, "t", 0, podman_version="5.1.0"), (list, pm.ParseError)),
    "log-single": (lambda text: pm.parse_log_line(text, container="c"), (pm.LogLine, pm.ParseError)),
    "log-multi": (lambda text: pm.parse_log_line(text), (pm.LogLine, pm.ParseError)),
    "log-names": (lambda text: pm.parse_log_line(text, names=["a", "b"]), (pm.LogLine, pm.ParseError)),
    "k8s-record": (parse_k8s_record, (K8sRecord, pm.ParseError)),
    "follower": (parse_follower_line, (FollowerLine, pm.ParseError)),
    "podman-logs": (lambda text: PodmanLogsParser(["a", "b", "ab"], lambda: 2**62).feed(text), (list,)),
    "version": (pm.parse_version, (pm.NodeInfo, pm.ParseError)),
    "info": (pm.parse_info, (pm.NodeInfo, pm.ParseError)),
}


def check_all(text: str) -> None:
    for name, (parse, kinds) in PARSERS.items():
        result = parse(text)
        assert isinstance(result, kinds), (name, result)
        if isinstance(result, pm.ParseError):
            assert len(result.excerpt) <= pm.EXCERPT_CHARS
        if isinstance(result, (EventObs, pm.LogLine)):
            assert pm.INT64_MIN <= result.at_ns <= pm.INT64_MAX  # what the store can hold
        if isinstance(result, EventObs) and result.exit_code is not None:
            assert pm.INT64_MIN <= result.exit_code <= pm.INT64_MAX
    try:
        pm.parse_time_ns(text)
    except ValueError:
        pass  # the one documented failure of the time parser


@SETTINGS
@given(st.binary(max_size=2000))
def test_parsers_never_raise_on_bytes(raw: bytes) -> None:
    check_all(raw.decode("utf-8", errors="replace"))


@SETTINGS
@given(st.text(max_size=2000))
def test_parsers_never_raise_on_text(text: str) -> None:
    check_all(text)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=40),
    st.sampled_from(["", "container", "image", "died", "health_status", "healthy",
                     "2026-11-27T10:06:27.3000477Z", "0001-01-01T00:00:00Z", "5.2.0", "CMD-SHELL"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=30,
)


@SETTINGS
@given(json_values)
def test_parsers_never_raise_on_arbitrary_json(value: Any) -> None:
    text = json.dumps(value)
    check_all(text)
    check_all(json.dumps([value]))


def test_parsers_never_raise_on_deep_nesting_or_huge_numbers() -> None:
    check_all("[" * 100_000 + "]" * 100_000)
    check_all('{"a":' * 50_000 + "1" + "}" * 50_000)
    check_all('{"Type":"container","Name":"a","Status":"died","timeNano":' + "9" * 5000 + "}")
    check_all('{"Type":"container","Name":"a","Status":"died","timeNano":' + str(2**63) + "}")
    check_all('{"Type":"container","Name":"a","Status":"died","Time":"0001-01-01T00:00:00Z"}')


def shaped(keys: list[str], nested: dict[str, st.SearchStrategy[Any]] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the real keys (some dropped) and values of any type."""
    nested = nested or {}
    fields = {key: nested.get(key, json_values) for key in keys}
    return st.fixed_dictionaries({}, optional=fields)


EVENT_KEYS = ["ID", "Image", "Name", "Status", "Time", "time", "timeNano", "Type",
              "ContainerExitCode", "health_status", "Attributes", "PodID", "Error"]
event_dicts = shaped(EVENT_KEYS, {
    "Type": st.one_of(st.just("container"), json_values),
    "Status": st.one_of(st.sampled_from(["died", "exec_died", "health_status", "start"]), json_values),
    "Time": st.one_of(st.just("2026-11-27T10:06:27.3000477Z"), json_values),
    "Name": st.one_of(st.just("web"), json_values),
})

PS_KEYS = ["Id", "Names", "Image", "State", "Status", "ExitCode", "Exited", "Pid", "Created",
           "StartedAt", "Ports", "Labels", "Restarts"]
port_dicts = shaped(["host_ip", "container_port", "host_port", "range", "protocol"])
ps_dicts = shaped(PS_KEYS, {"Names": st.one_of(st.just(["web"]), json_values),
                            "Id": st.one_of(st.just("abc"), json_values),
                            "Ports": st.one_of(st.lists(port_dicts, max_size=3), json_values)})

health_dicts = shaped(["Status", "FailingStreak", "Log"], {
    "Log": st.one_of(st.lists(shaped(["Start", "End", "ExitCode", "Output"]), max_size=3), json_values)})
state_dicts = shaped(["Status", "Running", "Pid", "ExitCode", "OOMKilled", "StartedAt", "FinishedAt",
                      "Health", "Healthcheck", "StoppedByUser"],
                     {"Health": st.one_of(health_dicts, json_values)})
config_dicts = shaped(["Image", "User", "Labels", "Healthcheck"], {
    "Healthcheck": st.one_of(shaped(["Test", "Interval", "Timeout", "Retries"],
                                    {"Test": st.one_of(st.just(["CMD-SHELL", "true"]), json_values)}),
                             json_values)})
host_dicts = shaped(["RestartPolicy", "Memory", "CapAdd", "CapDrop", "ReadonlyRootfs", "Tmpfs",
                     "NetworkMode", "PortBindings", "LogConfig"], {
    "RestartPolicy": st.one_of(shaped(["Name", "MaximumRetryCount"]), json_values),
    "PortBindings": st.one_of(st.dictionaries(st.sampled_from(["80/tcp", "53/udp", "x"]),
                                              st.one_of(st.lists(shaped(["HostIp", "HostPort"]), max_size=2),
                                                        json_values), max_size=2), json_values)})
inspect_dicts = shaped(["Id", "Name", "Created", "Image", "ImageName", "RestartCount", "EffectiveCaps",
                        "State", "Config", "HostConfig", "NetworkSettings", "Mounts"], {
    "Id": st.one_of(st.just("abc"), json_values),
    "Name": st.one_of(st.just("web"), json_values),
    "State": st.one_of(state_dicts, json_values),
    "Config": st.one_of(config_dicts, json_values),
    "HostConfig": st.one_of(host_dicts, json_values),
    "NetworkSettings": st.one_of(shaped(["Ports"]), json_values),
    "Mounts": st.one_of(st.lists(shaped(["Type", "Source", "Destination", "RW"]), max_size=2), json_values),
})
version_dicts = shaped(["Client", "Server"], {
    "Client": st.one_of(shaped(["Version", "APIVersion", "OsArch", "Os"]), json_values),
    "Server": st.one_of(shaped(["Version", "APIVersion", "OsArch", "Os"]), json_values)})
info_dicts = shaped(["host", "version"], {
    "host": st.one_of(shaped(["security", "ociRuntime", "cgroupManager", "eventLogger", "os", "arch",
                              "cgroupVersion", "logDriver", "kernel", "hostname"],
                             {"security": st.one_of(shaped(["rootless"]), json_values),
                              "ociRuntime": st.one_of(shaped(["name"]), json_values)}), json_values),
    "version": st.one_of(shaped(["Version", "APIVersion"]), json_values)})


@SETTINGS
@given(st.one_of(event_dicts, ps_dicts, inspect_dicts, version_dicts, info_dicts))
def test_parsers_never_raise_on_real_keys_with_random_values(value: dict[str, Any]) -> None:
    check_all(json.dumps(value))
    check_all(json.dumps([value]))


@SETTINGS
@given(event_dicts)
def test_a_parsed_event_keeps_what_it_was_given(value: dict[str, Any]) -> None:
    result = pm.parse_event(json.dumps(value), "t")
    if isinstance(result, EventObs):
        assert result.container == value["Name"] and result.status == value["Status"]
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.attributes)
        assert list(result.attributes) == sorted(result.attributes)


# ---------------------------------------------------------------- time

time_ns = st.integers(min_value=pm.MIN_TIME_NS, max_value=pm.MAX_TIME_NS)
# what parsers hand on: podman's times are Go int64 ns (years 1678..2262)
stored_ns = st.integers(min_value=max(pm.MIN_TIME_NS, pm.INT64_MIN), max_value=min(pm.MAX_TIME_NS, pm.INT64_MAX))


@SETTINGS
@given(time_ns)
def test_format_then_parse_is_the_identity(ns: int) -> None:
    assert pm.parse_time_ns(pm.format_time_ns(ns)) == ns


@SETTINGS
@given(time_ns.filter(lambda ns: pm.MIN_TIME_NS + 86400 * pm.NS_PER_S < ns < pm.MAX_TIME_NS - 86400 * pm.NS_PER_S),
       st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59), st.integers(min_value=0, max_value=9))
def test_any_offset_and_precision_reads_the_same_instant(ns: int, offset_min: int, digits: int) -> None:
    # how Go prints a time in another zone, with `digits` fraction digits (truncated)
    local = pm.format_time_ns(ns + offset_min * 60 * pm.NS_PER_S)[:-1]  # drop the Z
    head, fraction = local.split(".")
    sign = "+" if offset_min >= 0 else "-"
    zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    text = f"{head}.{fraction[:digits]}{zone}" if digits else f"{head}{zone}"
    kept = int(fraction[:digits].ljust(9, "0")) if digits else 0
    assert pm.parse_time_ns(text) == ns - int(fraction) + kept


@SETTINGS
@given(stored_ns, st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"), max_size=80),
       st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}", fullmatch=True))
def test_log_lines_round_trip(ns: int, text: str, name: str) -> None:
    stamp = pm.format_time_ns(ns)
    assert pm.parse_log_line(f"{stamp} {text}", container=name) == pm.LogLine(name, ns, text)
    assert pm.parse_log_line(f"{name} {stamp} {text}") == pm.LogLine(name, ns, text)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["web", "db", "web.1", "b"]), st.integers(0, 10**12),
                          st.text(alphabet="abc xyz:.", max_size=20)), min_size=1, max_size=5))
def test_glued_podman_logs_records_split_back(records: list[tuple[str, int, str]]) -> None:
    # every record but the last printed as podman prints a partial one: no newline
    base = 1_790_000_000 * 10**9
    times = sorted(base + ns for _, ns, _ in records)
    records = [(name, at, text) for (name, _, text), at in zip(records, times)]
    rendered = "".join(f"{name} {pm.format_time_ns(at)} {text}" for name, at, text in records)
    parser = PodmanLogsParser(["web", "db", "web.1", "b"], lambda: base + 10**13)
    lines = parser.feed(rendered) + parser.flush()
    # every record but the last is partial: each container's records make one line
    joined: dict[str, tuple[str, int, str]] = {}
    for name, at, text in records:
        first = joined.get(name)
        joined[name] = (name, at, text) if first is None else (name, first[1], first[2] + text)
    expected = list(joined.values())
    got = [(line.container, line.at_ns, line.text) for line in lines]
    assert sorted(got) == sorted(expected)


@SETTINGS
@given(stored_ns, st.integers(min_value=0, max_value=255), st.sampled_from(["died", "exec_died", "start"]),
       st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3), st.booleans())
def test_43_and_5x_events_read_the_same(ns: int, code: int, status: str, labels: dict[str, str], omit_zero: bool) -> None:
    base = {"ID": "abc", "Image": "img", "Name": "web", "Status": status, "Type": "container", "Attributes": labels}
    v4 = dict(base, Time=pm.format_time_ns(ns))
    v5 = dict(base, time=ns // pm.NS_PER_S, timeNano=ns)
    if status != "start":
        v5["ContainerExitCode"] = code
        if code or not omit_zero:
            v4["ContainerExitCode"] = code
    e4, e5 = pm.parse_event(json.dumps(v4), "t"), pm.parse_event(json.dumps(v5), "t")
    assert e4 == e5
    assert isinstance(e4, EventObs) and e4.at_ns == ns
    assert e4.exit_code == (None if status == "start" else code)
    assert e4.attributes == tuple(sorted(labels.items()))
