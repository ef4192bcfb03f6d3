"""Config loading: typed objects, durations, and one clear message per mistake."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from agent.config import (
    config_from_dict,
    format_duration,
    load_config,
    parse_duration,
    resolve_target,
)
from agent.errors import ConfigError, UsageError


@pytest.mark.parametrize("text,seconds", [
    ("30s", 30), ("5m", 300), ("8h", 28800), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800),
    (12, 12), ("12", 12), (0.5, 0.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-1", "", "m5", "1x", True, -3])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@given(st.integers(min_value=1, max_value=10**7))
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "node.toml")
    return str(info.value)


def test_typo_names_file_and_key():
    message = _error({"containers": {"lnd": {"rol": "lightning"}}})
    assert message.startswith("node.toml: containers.lnd.rol: unknown key")


def test_wrong_type_names_key_and_value():
    message = _error({"targets": {"n": {"host": "h", "port": "twenty-two"}}})
    assert "targets.n.port" in message and "'twenty-two'" in message


def test_missing_field():
    message = _error({"containers": {"lnd": {"probes": [{"type": "tcp"}]}}})
    assert "containers.lnd.probes.0.port: missing required field" in message


def test_invalid_duration_in_probe():
    message = _error({"containers": {"lnd": {"probes": [{"type": "podman-healthcheck", "timeout": "ten"}]}}})
    assert "containers.lnd.probes.0.timeout" in message and "30s, 5m, 8h" in message


def test_invalid_container_name():
    assert "invalid container name 'bad name'" in _error({"containers": {"bad name": {}}})
    assert "invalid container name '-x'" in _error({"containers": {"a": {"depends_on": ["-x"]}}})


def test_unknown_dependency():
    assert "depends_on names 'nope'" in _error({"containers": {"a": {"depends_on": ["nope"]}}})


def test_unknown_probe_type_and_policy():
    assert "unknown probe type 'curl'" in _error({"containers": {"a": {"probes": [{"type": "curl"}]}}})
    assert "unknown policy 'memory'" in _error({"containers": {"a": {"policies": {"memory": False}}}})


def test_ssh_target_needs_host():
    assert "an ssh target needs `host`" in _error({"targets": {"n": {"transport": "ssh"}}})


def test_bad_regex_is_reported():
    assert "invalid regular expression" in _error({"containers": {"a": {"log_errors": ["("]}}})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[targets\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_targets_resolve():
    config = config_from_dict({"targets": {"node1": {"host": "127.0.0.1", "user": "b"}}})
    assert resolve_target(config, "node1").host == "127.0.0.1"
    assert resolve_target(config, "local").transport == "local"
    url = resolve_target(config, "ssh://bitcoin@127.0.0.1:2222", identity="/k", known_hosts="/kh")
    assert (url.user, url.host, url.port, url.identity, url.known_hosts) == ("bitcoin", "127.0.0.1", 2222, "/k", "/kh")
    assert resolve_target(config, None).transport == "local"  # default_target
    with pytest.raises(UsageError, match="unknown target 'node2'"):
        resolve_target(config, "node2")
    with pytest.raises(UsageError, match="invalid --target"):
        resolve_target(config, "ssh://host:notaport")
