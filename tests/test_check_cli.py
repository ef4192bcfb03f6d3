"""`podwarden check` at the command line: config mistakes exit 2, a silent node exits 3, and
with --json each prints one JSON document with the error; every stored run gets an end."""

from __future__ import annotations

import json
import sqlite3

from agent.cli import main
from tests.sshd import free_port


def _run(capsys, *args: str) -> tuple[int, dict, str]:
    code = main(["check", "--json", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def _runs(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT command, ended_ns IS NOT NULL, verdict FROM runs").fetchall()


def test_a_bad_expect_regex_exits_2_naming_the_key(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[containers.lnd]\n[[containers.lnd.probes]]\ntype = "exec"\ncommand = ["lncli", "getinfo"]\n'
                      'expect_regex = "synced_to_chain\\": (true"\n')
    code, document, err = _run(capsys, "--config", str(config), "--db", str(tmp_path / "c.db"))
    assert code == 2
    assert document["verdict"] == "fail"
    assert document["error"]["kind"] == "config" and document["error"]["exit_code"] == 2
    assert document["error"]["key"] == "containers.lnd.probes.0.expect_regex"
    assert "invalid regular expression" in document["error"]["problem"]
    assert "containers.lnd.probes.0.expect_regex" in err and "Traceback" not in err
    assert not (tmp_path / "c.db").exists()  # nothing started, so no run is left without an end


def test_an_unknown_restart_policy_exits_2(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[defaults]\nrestart_policies = ["alwayz"]\n')
    code, document, _ = _run(capsys, "--config", str(config))
    assert code == 2 and document["error"]["key"] == "defaults.restart_policies"


def test_podman_that_does_not_answer_lists_unknown_and_exits_3(tmp_path, capsys):
    config = tmp_path / "c.toml"
    db = tmp_path / "c.db"
    config.write_text('[targets.silent]\ntransport = "local"\npodman = ["false"]\n'
                      '[containers.lnd]\nexpected_state = "running"\n')
    code, document, err = _run(capsys, "--config", str(config), "--db", str(db), "--target", "silent")
    assert code == 3
    assert [(c["name"], c["state"]) for c in document["containers"]] == [("lnd", "unknown")]
    assert "missing" not in {f["rule"] for f in document["findings"]}
    assert document["verdict"] == "fail" and document["error"]["kind"] == "unreachable"
    assert "podman did not answer" in document["error"]["message"] and "podman did not answer" in err
    assert [p["detail"] for p in document["probes"]] == []
    assert _runs(db) == [("check", 1, "unreachable")]


def test_an_unreachable_target_exits_3_with_a_json_error_and_an_ended_run(tmp_path, capsys):
    db = tmp_path / "c.db"
    code, document, err = _run(capsys, "--config", "/dev/null", "--db", str(db),
                               "--target", f"ssh://root@127.0.0.1:{free_port()}")
    assert code == 3
    assert document["error"]["kind"] == "unreachable" and document["error"]["exit_code"] == 3
    assert document["findings"] == [] and document["run_id"] == 1
    assert "unreachable" in err
    assert _runs(db) == [("check", 1, "unreachable")]
