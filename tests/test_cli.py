"""The command line: help on every command, exit codes for bad config and unreachable targets."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from agent.cli import cli, main
from tests.sshd import free_port, make_sshd


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


def test_every_command_has_help_and_an_example(capsys):
    for path, command in _commands(cli):
        assert command.help, f"{' '.join(path)} has no help"
        assert main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        assert "Usage:" in text
        if not isinstance(command, click.Group):
            assert "Example" in text or path == ("testbed", "faults") or "podwarden" in text, path


def test_config_typo_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "c.toml"
    bad.write_text('[containers.lnd]\nrole = "lightning"\ndepnds_on = []\n')
    assert main(["status", "--config", str(bad)]) == 2
    message = capsys.readouterr().err
    assert "containers.lnd.depnds_on" in message and "unknown key" in message and "Traceback" not in message


def test_bad_duration_and_unknown_target_exit_2(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[soak]\nduration = \"forever\"\n")
    assert main(["status", "--config", str(config)]) == 2
    assert "soak.duration" in capsys.readouterr().err
    config.write_text("")
    assert main(["status", "--config", str(config), "--target", "nowhere"]) == 2
    assert "unknown target 'nowhere'" in capsys.readouterr().err


def _status_exit(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", "/dev/null", *args],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr


@pytest.mark.e2e
def test_unreachable_targets_exit_3_with_one_line(sshd, tmp_path):
    target = f"ssh://root@127.0.0.1:{sshd.port}"
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    changed = tmp_path / "known_hosts"
    other = make_sshd(["root"])
    changed.write_text(f"[127.0.0.1]:{sshd.port} " + other.known_hosts.read_text().split(" ", 1)[1])
    cases = {
        "nothing listening": [f"ssh://root@127.0.0.1:{free_port()}", "--identity", str(sshd.identity),
                              "--known-hosts", str(sshd.known_hosts)],
        "wrong key": [target, "--identity", str(other_key), "--known-hosts", str(sshd.known_hosts)],
        "changed host key": [target, "--identity", str(sshd.identity), "--known-hosts", str(changed)],
    }
    reasons = {"nothing listening": "connection refused", "wrong key": "authentication failed",
               "changed host key": "host key"}
    for case, args in cases.items():
        code, stderr = _status_exit(["--target", *args])
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 3, (case, stderr)
        assert len(lines) == 1 and reasons[case] in lines[0], (case, stderr)
        assert "Traceback" not in stderr


def test_typed_defaults_and_positive_durations_exit_2(tmp_path, capsys):
    config = tmp_path / "c.toml"
    for text, key in (('[defaults]\nlog_errors = "error"\n', "defaults.log_errors"),
                      ('[defaults]\nlog_errors = ["(bad"]\n', "defaults.log_errors"),
                      ('[defaults]\nrestart_policy = ["always"]\n', "defaults.restart_policy"),
                      ('[targets.n]\nhost = "127.0.0.1"\nkeepalive_interval = "0s"\n', "targets.n.keepalive_interval"),
                      ('[watch]\nbackoff_initial = 0\n', "watch.backoff_initial")):
        config.write_text(text)
        assert main(["status", "--config", str(config)]) == 2, text
        assert key in capsys.readouterr().err, text


def _unanswering_podman(tmp_path) -> str:
    """A real config whose podman command is `false`: podman 'fails' on every call."""
    config = tmp_path / "broken-podman.toml"
    config.write_text('[targets.local]\ntransport = "local"\npodman = ["false"]\n'
                      '[containers.lnd]\nrole = "lightning"\n[watch]\nreconcile_interval = "1s"\n')
    return str(config)


def test_status_when_podman_does_not_answer_is_not_missing(tmp_path, capsys):
    assert main(["status", "--json", "--config", _unanswering_podman(tmp_path)]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert [c["state"] for c in document["containers"]] == ["unknown"]
    assert document["problems"]


def test_watch_records_no_false_missing_when_podman_fails(tmp_path):
    db = tmp_path / "w.db"
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "watch", "--for", "4s", "--json",
                           "--config", _unanswering_podman(tmp_path), "--db", str(db)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert not [l for l in lines if l["type"] == "change" and l["to"] == "missing"]
    assert any(l["type"] == "agent" and l["what"] == "reconcile-problem" for l in lines)


@pytest.mark.e2e
def test_malformed_known_hosts_exits_3(sshd, tmp_path):
    bad = tmp_path / "known_hosts"
    bad.write_text("garbage\n")
    code, stderr = _status_exit(["--target", f"ssh://root@127.0.0.1:{sshd.port}", "--identity",
                                 str(sshd.identity), "--known-hosts", str(bad)])
    assert code == 3 and "cannot read known_hosts" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("verb", [["status"], ["check"], ["testbed", "status"], ["demo"]])
def test_verbs_that_never_act_refuse_dry_run(verb, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("")
    assert main([*verb, "--dry-run", "--config", str(config), "--db", str(tmp_path / "pw.db")]) == 2
    message = capsys.readouterr().err
    assert "--dry-run" in message and "Traceback" not in message
    assert not (tmp_path / "pw.db").exists(), "a refused verb must not even open the store"


@pytest.mark.e2e
def test_testbed_dry_run_prints_the_steps_and_changes_nothing(tmp_path):
    from tests.conftest import require_e2e

    require_e2e()
    config = tmp_path / "c.toml"
    config.write_text('[testbed]\nprefix = "tbq-"\nport_base = 25330\nhome = "%s"\n' % (tmp_path / "home"))
    before = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "testbed", "up", "--dry-run", "--json",
                           "--fault", "restart-no", "--config", str(config), "--target", "local"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    steps = document["steps"]
    assert document["dry_run"] is True
    runs = [step for step in steps if " run -d --name tbq-" in step]
    assert len(runs) == 6 and any("--restart no" in step for step in runs), steps
    after = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    assert not [n for n in after.stdout.split() if n.startswith("tbq-")]
    assert before.stdout == after.stdout
    assert not (tmp_path / "home").exists(), "the dry run wrote testbed files"
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "testbed", "down", "--dry-run", "--config", str(config),
                           "--target", "local"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "rm --force" in proc.stdout, proc.stdout + proc.stderr
