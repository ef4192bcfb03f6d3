"""The command line: thin verbs over the rooms. Errors become messages and exit codes only here."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.config import Config, TargetConfig, config_from_dict, load_config, resolve_target
from agent.errors import (
    ConfigError,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    PodwardenError,
    TargetUnreachable,
    TransportError,
    UsageError,
)
from agent.log import setup_logging
from agent.transport import Transport, make_transport

DEFAULT_CONFIG = "config.toml"

# piped output is read by scripts and people alike: don't squeeze tables to 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)


@dataclass
class Options:
    """The options every verb shares."""

    config: str | None
    db: str | None
    target: str | None
    identity: str | None
    known_hosts: str | None
    json: bool
    dry_run: bool
    verbose: int

    def load_config(self) -> Config:
        """The config named by --config, else ./config.toml, else built-in defaults."""
        if self.config is None and not Path(DEFAULT_CONFIG).exists():
            return config_from_dict({}, "<defaults>")
        return load_config(self.config or DEFAULT_CONFIG)

    def target_for(self, config: Config) -> TargetConfig:
        return resolve_target(config, self.target, self.identity, self.known_hosts)

    def db_path(self, config: Config) -> str:
        return self.db or config.podwarden.db


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Declare the shared options once and hand them to the verb as `opts`."""

    @click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                  help="Config file (default ./config.toml).")
    @click.option("--db", type=click.Path(dir_okay=False), default=None,
                  help="SQLite store file (default from config: podwarden.db).")
    @click.option("--target", default=None, metavar="NAME|local|ssh://user@host:port",
                  help="Which node to talk to (default: the config's default_target).")
    @click.option("--identity", type=click.Path(dir_okay=False), default=None,
                  help="SSH private key file for the target.")
    @click.option("--known-hosts", "known_hosts", type=click.Path(dir_okay=False), default=None,
                  help="known_hosts file to verify the target's host key (default ~/.ssh/known_hosts).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
    @click.option("--dry-run", is_flag=True, help="Hooks and experiments print what they would do.")
    @click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, db: str | None, target: str | None,
                identity: str | None, known_hosts: str | None, as_json: bool, dry_run: bool,
                verbose: int, **kwargs: Any) -> Any:
        setup_logging(verbose)
        opts = Options(config, db, target, identity, known_hosts, as_json, dry_run, verbose)
        return func(*args, opts=opts, **kwargs)

    return wrapper


def run_async(coro: Awaitable[int]) -> int:
    """Run a verb's coroutine; Ctrl-C cancels it cleanly."""
    return asyncio.run(coro)  # type: ignore[arg-type]


def progress(message: str) -> None:
    """Progress of long work, on stderr so --json output stays clean (never read as markup)."""
    err.print(Text.assemble(("… ", "dim"), message))


def print_json(document: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="podwarden")
def cli() -> None:
    """podwarden watches a Podman node overnight, proves its resilience and reports in the morning.

    \b
    Start with:
      podwarden testbed up        # a miniature stack on local podman
      podwarden status            # every expected and present container
      podwarden demo              # testbed up, then the whole plan against it
    """


# ---------------------------------------------------------------- status

def _memory(value: int) -> str:
    if not value:
        return "none"
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return str(value)


@cli.command()
@common_options
def status(opts: Options) -> int:
    """One table of every expected and present container, and the host services.

    \b
    Example:
      podwarden status
      podwarden status --target ssh://bitcoin@127.0.0.1:2222 --identity ~/.ssh/id_ed25519 --json
    Exit 0, or 3 when the target is unreachable.
    """
    from agent.status import gather_status

    config = opts.load_config()
    target = opts.target_for(config)

    async def go() -> int:
        async with make_transport(target) as transport:
            try:
                node = await gather_status(transport, config, target.podman)
            except TransportError as exc:
                lost = "link lost" if not transport.connected else "podman did not answer"
                raise TargetUnreachable(target.name, f"{lost}: {exc.reason}") from None
        if opts.json:
            print_json(node.to_json())
            return EXIT_OK
        table = Table(title=f"{node.target}  podman {node.podman_version or '?'}"
                            f"{'  rootless' if node.rootless else ''}")
        for column in ("container", "role", "state", "health", "restarts", "policy", "memory", "image", "ports"):
            table.add_column(column)
        for c in node.containers:
            style = "red" if c.state in ("missing", "exited") or c.health == "unhealthy" else ""
            table.add_row(Text.assemble(c.name, (" (unexpected)" if not c.expected else "", "dim")), Text(c.role),
                          c.state, c.health or "-", str(c.restarts), c.restart_policy or "-",
                          _memory(c.memory), Text(c.image or "-"), Text(", ".join(c.ports) or "-"), style=style)
        out.print(table)
        if node.services:
            services = Table(title="host services")
            for column in ("service", "active", "health", "detail"):
                services.add_column(column)
            for s in node.services:
                active = "-" if s.active is None else ("yes" if s.active else "no")
                services.add_row(s.name, active, Text(s.health), Text(s.detail),
                                 style="" if s.active is not False and s.health in ("ok", "n/a") else "red")
            out.print(services)
        for problem in node.problems:
            err.print(Text.assemble(("warning: ", "yellow"), problem))
        return EXIT_OK

    return run_async(go())


# ---------------------------------------------------------------- watch

def _targets(opts: Options, config: Config, all_targets: bool) -> list[TargetConfig]:
    if all_targets:
        if not config.targets:
            raise UsageError("--all-targets: the config has no [targets]")
        return list(config.targets.values())
    return [opts.target_for(config)]


@cli.command()
@click.option("--for", "duration", default=None, metavar="DURATION",
              help="Stop after this long (30s, 5m, 8h). Default: until Ctrl-C or SIGTERM.")
@click.option("--all-targets", is_flag=True, help="Watch every target in the config at once.")
@click.option("--no-dashboard", is_flag=True, help="No live table (for logs and CI); progress on stderr.")
@common_options
def watch(opts: Options, duration: str | None, all_targets: bool, no_dashboard: bool) -> int:
    """Record everything the node says until stopped: events, logs, snapshots, state changes.

    Every observation goes to the SQLite store; a dropped link is reconnected and
    backfilled with `podman events --since`, so nothing is lost and nothing is doubled.

    \b
    Example:
      podwarden watch --for 8h
      podwarden watch --target ssh://bitcoin@127.0.0.1:2222 --json | jq .
    """
    from agent.config import parse_duration
    from agent.session import install_stop_signals, open_session, record

    config = opts.load_config()
    seconds = None
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
    targets = _targets(opts, config, all_targets)
    db = opts.db_path(config)

    async def go() -> int:
        stop = asyncio.Event()
        undo = install_stop_signals(stop)
        try:
            async with open_session(config, targets, db, "watch") as session:
                if not opts.json:
                    err.print(f"recording run {session.run_id} into {db}", markup=False)
                await record(session, stop, seconds, dashboard=not (opts.json or no_dashboard),
                             json_lines=opts.json, console=out)
                count = len(session.changes)
        finally:
            undo()
        if not opts.json:
            err.print(f"stopped: {count} state changes stored in {db}", markup=False)
        return EXIT_OK

    return run_async(go())


# ---------------------------------------------------------------- check

def error_json(exc: PodwardenError) -> dict[str, Any]:
    """An error as the `error` object of a --json document: kind, exit code, message and its facts."""
    kinds = ((ConfigError, "config"), (UsageError, "usage"), (TargetUnreachable, "unreachable"))
    document: dict[str, Any] = {
        "kind": next((kind for cls, kind in kinds if isinstance(exc, cls)), type(exc).__name__),
        "exit_code": exc.exit_code, "message": exc.message,
    }
    if isinstance(exc, ConfigError):
        document.update(file=exc.path, key=exc.key, problem=exc.problem)
    if isinstance(exc, TargetUnreachable):
        document.update(target=exc.target, reason=exc.reason)
    return document


@cli.command()
@click.option("--all-targets", is_flag=True, help="Check every target in the config.")
@click.option("--no-store", is_flag=True, help="Don't record the probes and findings in the store.")
@common_options
def check(opts: Options, all_targets: bool, no_store: bool) -> int:
    """Baseline of a node: inventory, every probe, every policy, recent log errors, diagnosis.

    Findings name the container, the rule, the cause and the fix. Probes and findings
    are stored with the run unless --no-store; every stored run ends with a verdict
    (pass, fail, unreachable, error or interrupted).

    \b
    Example:
      podwarden check
      podwarden check --json | jq '.findings[] | {container, rule, cause}'
    Exit 0 when everything passes, 1 when anything fails, 2 for a bad config, 3 when the
    target (or podman on it) does not answer; with --json, one JSON document in every case.
    """
    from agent.check import CheckReport, render_table, run_check

    try:
        config = opts.load_config()
        targets = _targets(opts, config, all_targets)
    except PodwardenError as exc:
        if opts.json:
            print_json({"verdict": "fail", "error": error_json(exc)})
        raise
    db = opts.db_path(config)

    async def check_one(target: TargetConfig, store: Any, run_id: int | None
                        ) -> tuple[CheckReport | None, TargetUnreachable | None]:
        try:
            async with make_transport(target) as transport:
                report = await run_check(transport, config, target, store=store, run_id=run_id, progress=progress)
        except TargetUnreachable as exc:
            return None, exc
        except TransportError as exc:
            return None, TargetUnreachable(target.name, f"link lost during the check: {exc.reason}")
        if report.unanswered:
            return report, TargetUnreachable(target.name, f"podman did not answer: {report.unanswered}")
        return report, None

    def document(target: TargetConfig, report: CheckReport | None, failure: TargetUnreachable | None) -> dict:
        if report is not None:
            out = report.to_json()
        else:
            out = {"target": target.name, "verdict": "fail", "findings": [], "probes": [], "containers": []}
        if failure is not None:
            out["error"] = error_json(failure)
        return out

    async def go() -> int:
        nonlocal printed
        outcomes: list[tuple[TargetConfig, CheckReport | None, TargetUnreachable | None]] = []
        store = None
        run_id = None
        stored = "error"  # what the run ends with if something escapes below
        if not no_store:
            from store import StoreWriter

            store = await StoreWriter.open(db, config.redaction.patterns)
        try:
            if store is not None:
                run_id = await store.start_run("check", [t.name for t in targets],
                                               json.loads(config.model_dump_json(exclude={"path"})))
            for target in targets:
                outcomes.append((target, *await check_one(target, store, run_id)))
            failures = [failure for _, _, failure in outcomes if failure is not None]
            passed = not failures and all(report is not None and report.passed for _, report, _ in outcomes)
            verdict = "pass" if passed else "fail"
            stored = "unreachable" if failures else verdict
        except (KeyboardInterrupt, asyncio.CancelledError):
            stored = "interrupted"
            raise
        finally:
            if store is not None:
                try:
                    if run_id is not None:
                        await asyncio.shield(store.end_run(run_id, stored))
                finally:
                    await asyncio.shield(store.close())
        if opts.json:
            if len(outcomes) == 1:
                print_json({**document(*outcomes[0]), "run_id": run_id})
            else:
                print_json({"verdict": verdict, "run_id": run_id,
                            "targets": [document(*outcome) for outcome in outcomes],
                            **({"error": error_json(failures[0])} if failures else {})})
        else:
            for _, report, _ in outcomes:
                if report is not None:
                    out.print(render_table(report))
            if len(outcomes) > 1:
                out.print(f"verdict: [bold {'green' if verdict == 'pass' else 'red'}]{verdict}[/]")
            if run_id is not None:
                err.print(f"stored as run {run_id} in {db}", markup=False)
        printed = True
        if failures:
            raise failures[0]
        return EXIT_OK if verdict == "pass" else EXIT_FAIL

    printed = False  # the JSON document is out: an error after it needs no second one
    try:
        return run_async(go())
    except PodwardenError as exc:
        if opts.json and not printed:
            print_json({"verdict": "fail", "error": error_json(exc)})
        raise


# ---------------------------------------------------------------- testbed

@cli.group()
def testbed() -> None:
    """The miniature seed stack (node, lightning, indexer, three UIs, a host backend) on podman."""


def _testbed_call(opts: Options, action: Callable[[Transport, Config], Awaitable[int]]) -> int:
    config = opts.load_config()
    target = opts.target_for(config)

    async def go() -> int:
        async with make_transport(target) as transport:
            return await action(transport, config)

    return run_async(go())


def _print_testbed(state: Any, as_json: bool) -> None:
    if as_json:
        print_json(state.to_json())
        return
    table = Table(title=f"testbed {state.prefix}  faults: {', '.join(state.faults) or 'none'}")
    for column in ("container", "state", "health", "image"):
        table.add_column(column)
    for c in state.containers:
        table.add_row(c.name, c.state, c.health or "-", c.image)
    out.print(table)
    out.print(f"backend: {'up' if state.backend_up else 'down'}"
              f"{f' (pid {state.backend_pid})' if state.backend_pid else ''}")


@testbed.command("up")
@click.option("--fault", "faults", multiple=True, metavar="NAME",
              help="Switch on a fault (repeatable); see `podwarden testbed faults`.")
@common_options
def testbed_up(opts: Options, faults: tuple[str, ...]) -> int:
    """Build the busybox image and start the stack (idempotent: recreates it).

    \b
    Example:
      podwarden testbed up
      podwarden testbed up --fault indexer-lock-permission --fault restart-no
    """
    from agent import testbed as tb

    async def action(transport: Transport, config: Config) -> int:
        state = await tb.up(transport, config.testbed, faults, progress=progress)
        _print_testbed(state, opts.json)
        return EXIT_OK

    return _testbed_call(opts, action)


@testbed.command("down")
@common_options
def testbed_down(opts: Options) -> int:
    """Remove the stack's containers, stop the backend and delete its files.

    \b
    Example:
      podwarden testbed down
    """
    from agent import testbed as tb

    async def action(transport: Transport, config: Config) -> int:
        await tb.down(transport, config.testbed, progress=progress)
        if opts.json:
            print_json({"target": transport.name, "down": True})
        return EXIT_OK

    return _testbed_call(opts, action)


@testbed.command("status")
@common_options
def testbed_status(opts: Options) -> int:
    """Show the testbed's containers, backend and active faults.

    \b
    Example:
      podwarden testbed status --json
    """
    from agent import testbed as tb

    async def action(transport: Transport, config: Config) -> int:
        _print_testbed(await tb.status(transport, config.testbed), opts.json)
        return EXIT_OK

    return _testbed_call(opts, action)


@testbed.command("faults")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def testbed_faults(as_json: bool) -> int:
    """List the fault switches `testbed up --fault NAME` accepts.

    \b
    Example:
      podwarden testbed faults
    """
    from agent import testbed as tb

    if as_json:
        print_json({"faults": [{"name": n, "description": d} for n, d in tb.FAULTS.items()]})
        return EXIT_OK
    table = Table(title="testbed faults")
    table.add_column("fault")
    table.add_column("what it reproduces")
    for name, description in tb.FAULTS.items():
        table.add_row(name, description)
    out.print(table)
    return EXIT_OK


# ---------------------------------------------------------------- demo

@cli.command()
@click.option("--fault", "faults", multiple=True, metavar="NAME", help="Bring the testbed up with this fault.")
@common_options
def demo(opts: Options, faults: tuple[str, ...]) -> int:
    """Bring the testbed up on the target, run the baseline check against it, show its status.

    The check's probes and findings are stored in the --db store (default podwarden.db).

    \b
    Example:
      podwarden demo
      podwarden demo --fault indexer-lock-permission --fault health-needs-credentials
    Exit 0 (the check's verdict is printed, not returned).
    """
    from agent import testbed as tb
    from agent.check import render_table, run_check
    from agent.status import gather_status
    from store import StoreWriter

    config = opts.load_config()
    target = opts.target_for(config)
    db = opts.db_path(config)

    async def go() -> int:
        store = await StoreWriter.open(db, config.redaction.patterns)
        try:
            run_id = await store.start_run("demo", [target.name],
                                           json.loads(config.model_dump_json(exclude={"path"})))
            async with make_transport(target) as transport:
                progress(f"testbed up on {transport.name}" + (f" with faults {', '.join(faults)}" if faults else ""))
                await tb.up(transport, config.testbed, faults, progress=progress)
                progress("baseline check")
                try:
                    report = await run_check(transport, config, target, store=store, run_id=run_id,
                                             progress=progress)
                    node = await gather_status(transport, config, target.podman)
                except TransportError as exc:
                    raise TargetUnreachable(target.name, f"link lost: {exc.reason}") from None
            await store.end_run(run_id, report.verdict)
        finally:
            await asyncio.shield(store.close())
        if opts.json:
            print_json({"verdict": report.verdict, "run_id": run_id, "db": db,
                        "check": report.to_json(), "status": node.to_json()})
        else:
            out.print(render_table(report))
            out.print(f"stored as run {run_id} in {db}; next: `podwarden watch` and, in another terminal, "
                      f"kill a container's main process to see it recover", markup=False)
        return EXIT_OK

    return run_async(go())


# ---------------------------------------------------------------- entry point

def _report(exc: PodwardenError) -> int:
    # one plain line, never wrapped: scripts and people grep it
    sys.stderr.write(f"podwarden: error: {exc.message}\n")
    return exc.exit_code


def _first_podwarden_error(group: BaseExceptionGroup) -> PodwardenError | None:
    for exc in group.exceptions:
        if isinstance(exc, PodwardenError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_podwarden_error(exc)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI and map errors to exit codes (2 usage, 3 unreachable)."""
    try:
        result = cli.main(args=argv, prog_name="podwarden", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
        err.print("aborted")
        return 130
    except PodwardenError as exc:
        return _report(exc)
    except BaseExceptionGroup as group:
        # a failure inside a task group (a watcher, the store) arrives wrapped
        leaf = _first_podwarden_error(group)
        if leaf is None:
            raise
        return _report(leaf)
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("interrupted")
        return 130
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
