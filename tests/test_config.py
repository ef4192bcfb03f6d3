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


# ---------------------------------------------------------------- mistakes caught at load, not mid-check

@pytest.mark.parametrize("probe, key", [
    ({"type": "exec", "command": ["tb-cli"], "expect_regex": "("}, "containers.a.probes.0.expect_regex"),
    ({"type": "http", "url": "http://127.0.0.1:1/", "expect_regex": "[z-a]"}, "containers.a.probes.0.expect_regex"),
])
def test_a_bad_expect_regex_is_a_config_error_naming_the_key(probe, key):
    message = _error({"containers": {"a": {"probes": [probe]}}})
    assert message.startswith(f"node.toml: {key}: invalid regular expression")


@pytest.mark.parametrize("timeout", [0, "0s", "0ms"])
def test_a_zero_probe_timeout_is_refused(timeout):
    message = _error({"containers": {"a": {"probes": [{"type": "tcp", "port": 1, "timeout": timeout}]}}})
    assert "containers.a.probes.0.timeout" in message and "greater than 0" in message


def test_restart_policies_take_podmans_spellings():
    config = config_from_dict({"defaults": {"restart_policies": ["on-failure:5", "unless-stopped"]},
                               "containers": {"a": {"restart_policies": ["no", "always", "on-failure"]}}})
    assert config.restart_policies("a") == ["no", "always", "on-failure"]
    assert config.restart_policies("b") == ["on-failure:5", "unless-stopped"]
    for where in ({"containers": {"a": {"restart_policies": ["alwayz"]}}},
                  {"defaults": {"restart_policies": ["on-failure:x"]}}):
        message = _error(where)
        assert "unknown restart policy" in message and "on-failure:N" in message


def test_every_regex_in_config_is_compiled_at_load():
    bad = "("
    for data in ({"containers": {"a": {"log_errors": [bad]}}}, {"containers": {"a": {"log_ignore": [bad]}}},
                 {"defaults": {"log_errors": [bad]}}, {"redaction": {"patterns": [bad]}},
                 {"rules": [{"name": "r", "match": {"log": bad}, "cause": "c", "fix": "f"}]},
                 {"containers": {"a": {"probes": [{"type": "exec", "command": ["x"], "expect_regex": bad}]}}}):
        assert "invalid regular expression" in _error(data), data


# ---------------------------------------------------------------- the default error pattern

import re  # noqa: E402

from agent.config import DEFAULT_ERROR_PATTERNS, DEFAULT_ERROR_WORDS  # noqa: E402

DEFAULT = re.compile(DEFAULT_ERROR_PATTERNS[0])


@pytest.mark.parametrize("line", [
    "ERROR: disk full", "level=error msg=boom", 'error="disk full"', "connection refused", "FATAL: 1 worker died",
    "touch: /data/utxo/LOCK: Permission denied", "error=0 and then a real failure", "request timeout after 30s",
    "retry failed: okapi not reachable",
])
def test_default_pattern_finds_errors(line):
    assert DEFAULT.search(line)


@pytest.mark.parametrize("line", [
    "error=0", "stats: error=0 warnings=0", "config: timeout=30s retries=3", "failed=false", '{"error":null}',
    '{"errors":0,"error": 0}', "error=<nil>", "permission denied for anonymous, retrying as user: ok",
    "upload failed, retried: succeeded",
])
def test_default_pattern_skips_counters_settings_and_handled_errors(line):
    assert not DEFAULT.search(line)


@given(st.text(alphabet=st.sampled_from("errofailtmeuEROK=:0 \"ok,-x"), max_size=40))
def test_every_default_match_holds_a_prefilter_word(line):
    match = DEFAULT.search(line)
    if match is not None:
        assert any(word in match.group(0).lower() for word in DEFAULT_ERROR_WORDS)
