"""The command line: options, a call to the verb's module, rendering, and exit codes. Nothing else.

Each verb's work lives in its own module (agent/status.py, watch.py, check.py, testbed.py,
demo.py, ...); rendering in agent/render.py. Errors become one-line messages and exit
codes only here: 2 bad usage or config, 3 target unreachable, 1 anything else podwarden
raises on purpose. With --json every outcome, errors included, is one JSON document
(`watch --json` prints one JSON object per line instead).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from agent import render
from agent.config import Config, TargetConfig, config_from_dict, load_config, parse_duration, resolve_target
from agent.errors import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    PodwardenError,
    TargetUnreachable,
    UsageError,
)
from agent.log import setup_logging
from store.errors import StoreError

DEFAULT_CONFIG = "config.toml"
Failure = (PodwardenError, StoreError)

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
    printed: bool = False  # the --json document is out: an error after it needs no second one

    def load_config(self) -> Config:
        """The config named by --config, else ./config.toml, else built-in defaults."""
        if self.config is None and not Path(DEFAULT_CONFIG).exists():
            return config_from_dict({}, "<defaults>")
        return load_config(self.config or DEFAULT_CONFIG)

    def target_for(self, config: Config) -> TargetConfig:
        return resolve_target(config, self.target, self.identity, self.known_hosts)

    def targets_for(self, config: Config, all_targets: bool) -> list[TargetConfig]:
        if all_targets:
            if not config.targets:
                raise UsageError("--all-targets: the config has no [targets]")
            # each through resolve_target: a mistyped ssh_alias is exit 2 here, not exit 3 at connect
            return [resolve_target(config, name, self.identity, self.known_hosts) for name in config.targets]
        return [self.target_for(config)]

    def db_path(self, config: Config) -> str:
        return self.db or config.podwarden.db

    def never_acts(self, verb: str) -> None:
        """Refuse --dry-run on a verb that changes nothing on the node (exit 2)."""
        if self.dry_run:
            raise UsageError(f"--dry-run: `{verb}` never changes the node, so there is nothing to rehearse; "
                             "drop --dry-run (it applies to testbed, experiment, and the hooks of watch and soak)")

    def emit(self, document: Any) -> None:
        """The verb's one JSON document on stdout."""
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()
        self.printed = True


def error_json(exc: BaseException) -> dict[str, Any]:
    """An error as the `error` object of a --json document: kind, exit code, message and its facts."""
    kinds = ((ConfigError, "config"), (UsageError, "usage"), (TargetUnreachable, "unreachable"),
             (StoreError, "store"))
    document: dict[str, Any] = {
        "kind": next((kind for cls, kind in kinds if isinstance(exc, cls)), type(exc).__name__),
        "exit_code": getattr(exc, "exit_code", EXIT_FAIL), "message": getattr(exc, "message", str(exc)),
    }
    if isinstance(exc, ConfigError):
        document.update(file=exc.path, key=exc.key, problem=exc.problem)
    if isinstance(exc, TargetUnreachable):
        document.update(target=exc.target, reason=exc.reason)
    return document


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Declare the shared options once, hand them to the verb as `opts`, and with --json
    answer an error with a JSON document too."""

    @click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                  help="Config file (default ./config.toml).")
    @click.option("--db", type=click.Path(dir_okay=False), default=None,
                  help="SQLite store file (default from config: podwarden.db).")
    @click.option("--target", default=None, metavar="NAME|local|ssh://user@host:port|SSH-ALIAS",
                  help="Which node to talk to: a configured target, local, an ssh URL or a Host alias of your "
                       "ssh config (default: the config's default_target).")
    @click.option("--identity", type=click.Path(dir_okay=False), default=None,
                  help="SSH private key file for the target.")
    @click.option("--known-hosts", "known_hosts", type=click.Path(dir_okay=False), default=None,
                  help="known_hosts file to verify the target's host key (default ~/.ssh/known_hosts).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
    @click.option("--dry-run", is_flag=True,
                  help="Print each step that would change the node, and change nothing (testbed, experiment).")
    @click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, db: str | None, target: str | None,
                identity: str | None, known_hosts: str | None, as_json: bool, dry_run: bool,
                verbose: int, **kwargs: Any) -> Any:
        setup_logging(verbose)
        opts = Options(config, db, target, identity, known_hosts, as_json, dry_run, verbose)
        try:
            return func(*args, opts=opts, **kwargs)
        except Failure as exc:
            if opts.json and not opts.printed:
                opts.emit({"verdict": "fail", "error": error_json(exc)})
            raise

    return wrapper


def metrics_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--metrics and --metrics-any-address, for the verbs that watch (watch, soak, run)."""
    func = click.option("--metrics-any-address", "metrics_any_address", is_flag=True,
                        help="Allow --metrics on an address other than loopback (the metrics name every "
                             "container and its state).")(func)
    return click.option("--metrics", default=None, metavar="HOST:PORT",
                        help="Serve Prometheus metrics at http://HOST:PORT/metrics meanwhile (default [watch] "
                             "metrics; off: none). Loopback only unless --metrics-any-address.")(func)


def run_async(coro: Awaitable[int]) -> int:
    """Run a verb's coroutine; Ctrl-C cancels it cleanly."""
    return asyncio.run(coro)  # type: ignore[arg-type]


def progress(message: str) -> None:
    """Progress of long work, on stderr so --json output stays clean (never read as markup)."""
    err.print(Text.assemble(("… ", "dim"), message))


def seconds_of(option: str, value: str | None) -> float | None:
    """A duration option in seconds (None stays None); raises UsageError naming the option."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"{option}: must be more than 0 (got {value!r})")
    return seconds


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="podwarden")
def cli() -> None:
    """podwarden watches a Podman node overnight, proves its resilience and reports in the morning.

    \b
    Start with:
      podwarden testbed up        # a miniature stack on local podman
      podwarden status            # every expected and present container
      podwarden demo              # testbed up, then the baseline check against it
    """


# ---------------------------------------------------------------- status

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
    from agent.status import status as look

    opts.never_acts("status")
    config = opts.load_config()
    node = run_async(look(config, opts.target_for(config)))
    if opts.json:
        opts.emit(node.to_json())
        return EXIT_OK
    for part in render.node_status(node):
        out.print(part)
    for problem in node.problems:
        err.print(Text.assemble(("warning: ", "yellow"), problem))
    return EXIT_OK


# ---------------------------------------------------------------- watch

@cli.command()
@click.option("--for", "duration", default=None, metavar="DURATION",
              help="Stop after this long (30s, 5m, 8h). Default: until Ctrl-C or SIGTERM.")
@click.option("--all-targets", is_flag=True, help="Watch every target in the config at once.")
@click.option("--no-dashboard", is_flag=True, help="No live table (for logs and CI); progress on stderr.")
@metrics_options
@common_options
def watch(opts: Options, duration: str | None, all_targets: bool, no_dashboard: bool, metrics: str | None,
          metrics_any_address: bool) -> int:
    """Record everything the node says until stopped: events, logs, snapshots, state changes.

    Every observation goes to the SQLite store; a dropped link is reconnected and
    backfilled with `podman events --since`, so nothing is lost and nothing is doubled.
    Remediation hooks act as configured (the built-in one starts again a container left
    stopped); with --dry-run they only record what they would have done.

    \b
    Example:
      podwarden watch --for 8h
      podwarden watch --target ssh://bitcoin@127.0.0.1:2222 --json | jq .
      podwarden watch --dry-run            # hooks record what they would do, and do nothing
      podwarden watch --metrics 127.0.0.1:9464   # Prometheus scrapes http://127.0.0.1:9464/metrics
    """
    from agent import watch as verb
    from agent.dashboard import render as frame
    from agent.recording import recording
    from agent.stopping import install_stop_signals
    from machines.observations import AgentObs

    config = opts.load_config()
    seconds = seconds_of("--for", duration)
    targets = opts.targets_for(config, all_targets)
    db = opts.db_path(config)
    expected = {(t.name or t.describe(), name): c.expected_state
                for t in targets for name, c in config.containers.items()}

    def line(document: dict) -> None:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()

    async def go() -> int:
        stop = asyncio.Event()
        undo = install_stop_signals(stop)
        try:
            async with recording(config, "watch", [t.name for t in targets], db) as rec:
                watchers = await verb.watchers_for(rec, targets)
                window = verb.Window(rec, watchers, dry_run=opts.dry_run,
                                     progress=None if opts.json else progress)
                if opts.json:
                    rec.sink.on_change.append(lambda change: line(render.change_line(change)))
                    rec.sink.on_observation.append(
                        lambda obs: line(render.agent_line(obs)) if isinstance(obs, AgentObs) else None)
                else:
                    err.print(f"recording run {rec.run_id} into {db}" + (" (hooks: dry run)" if opts.dry_run else ""),
                              markup=False)
                served = {"metrics": metrics, "metrics_any_address": metrics_any_address}
                if opts.json or no_dashboard:
                    await verb.watch(rec, watchers, stop, seconds, window=window, **served)
                else:
                    def draw() -> Any:
                        return frame(rec.fleet, [w.view for w in watchers], rec.started_ns,
                                     len(rec.sink.changes), expected=expected, drifts=len(window.detector.drifts))

                    with Live(draw(), console=out, refresh_per_second=2, transient=False) as live:
                        await verb.watch(rec, watchers, stop, seconds, window=window,
                                         on_tick=lambda: live.update(draw()), **served)
                count = len(rec.sink.changes)
                drifts = len(window.detector.drifts)
        finally:
            undo()
        if not opts.json:
            err.print(f"stopped: {count} state changes, {drifts} drift(s) stored in {db}", markup=False)
        return EXIT_OK

    return run_async(go())


# ---------------------------------------------------------------- check

@cli.command()
@click.option("--all-targets", is_flag=True, help="Check every target in the config.")
@click.option("--no-store", is_flag=True, help="Don't record the probes and findings in the store.")
@common_options
def check(opts: Options, all_targets: bool, no_store: bool) -> int:
    """Baseline of a node: inventory, every probe, every policy, recent log errors, diagnosis.

    Findings name the container, the rule, the cause and the fix. Snapshots, probes,
    state changes and findings are stored with the run unless --no-store; every stored
    run ends with a verdict (pass, fail, unreachable, error or interrupted).

    \b
    Example:
      podwarden check
      podwarden check --json | jq '.findings[] | {container, rule, cause}'
    Exit 0 when everything passes, 1 when anything fails, 2 for a bad config, 3 when the
    target (or podman on it) does not answer; with --json, one JSON document in every case.
    """
    from agent.check import check as verb

    opts.never_acts("check")
    config = opts.load_config()
    targets = opts.targets_for(config, all_targets)
    db = None if no_store else opts.db_path(config)
    outcome = run_async(verb(config, targets, db, progress))

    def document(target: TargetConfig, report: Any, failure: TargetUnreachable | None) -> dict:
        doc = report.to_json() if report is not None else {
            "target": target.name, "verdict": "fail", "findings": [], "probes": [], "containers": []}
        if failure is not None:
            doc["error"] = error_json(failure)
        return doc

    failures = outcome.failures
    if opts.json:
        if len(outcome.results) == 1:
            opts.emit({**document(*outcome.results[0]), "run_id": outcome.run_id})
        else:
            opts.emit({"verdict": outcome.verdict, "run_id": outcome.run_id,
                       "targets": [document(*result) for result in outcome.results],
                       **({"error": error_json(failures[0])} if failures else {})})
    else:
        for _, report, _ in outcome.results:
            if report is not None:
                out.print(render.check_report(report))
        if len(outcome.results) > 1:
            out.print(Text(f"verdict: {outcome.verdict}", style="bold green" if outcome.verdict == "pass" else "bold red"))
        if outcome.run_id is not None:
            err.print(f"stored as run {outcome.run_id} in {db}", markup=False)
    if failures:
        raise failures[0]
    return EXIT_OK if outcome.verdict == "pass" else EXIT_FAIL


# ---------------------------------------------------------------- testbed

@cli.group()
def testbed() -> None:
    """The miniature seed stack (node, lightning, indexer, three UIs, a host backend) on podman."""


def _show_plan(opts: Options, title: str, planned: list[str]) -> int:
    if opts.json:
        opts.emit({"dry_run": True, "steps": planned})
    else:
        out.print(render.steps(title, planned))
    return EXIT_OK


def _show_testbed(opts: Options, state: Any) -> int:
    if opts.json:
        opts.emit(state.to_json())
    else:
        for part in render.testbed_status(state):
            out.print(part)
    return EXIT_OK


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
      podwarden testbed up --dry-run          # the steps, nothing changed
    """
    from agent import testbed as tb

    config = opts.load_config()
    result = run_async(tb.verb_up(opts.target_for(config), config.testbed, faults, dry_run=opts.dry_run,
                                  progress=progress))
    if opts.dry_run:
        return _show_plan(opts, "testbed up would (--dry-run: nothing changed):", result)  # type: ignore[arg-type]
    return _show_testbed(opts, result)


@testbed.command("down")
@common_options
def testbed_down(opts: Options) -> int:
    """Remove the stack's containers, stop the backend and delete its files.

    \b
    Example:
      podwarden testbed down
      podwarden testbed down --dry-run
    """
    from agent import testbed as tb

    config = opts.load_config()
    target = opts.target_for(config)
    planned = run_async(tb.verb_down(target, config.testbed, dry_run=opts.dry_run, progress=progress))
    if opts.dry_run:
        return _show_plan(opts, "testbed down would (--dry-run: nothing changed):", planned)
    if opts.json:
        opts.emit({"target": target.name, "down": True})
    return EXIT_OK


@testbed.command("status")
@common_options
def testbed_status(opts: Options) -> int:
    """Show the testbed's containers, backend and active faults.

    \b
    Example:
      podwarden testbed status --json
    """
    from agent import testbed as tb

    opts.never_acts("testbed status")
    config = opts.load_config()
    return _show_testbed(opts, run_async(tb.verb_status(opts.target_for(config), config.testbed)))


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
        sys.stdout.write(json.dumps({"faults": [{"name": n, "description": d} for n, d in tb.FAULTS.items()]},
                                    indent=2) + "\n")
        return EXIT_OK
    out.print(render.testbed_faults(tb.FAULTS))
    return EXIT_OK


# ---------------------------------------------------------------- experiment

@cli.group()
def experiment() -> None:
    """Resilience experiments (the seed's cycle C3): restart, cascade, service crash, with timed verdicts.

    Each runs inside a watch of the target (recorded like `watch`), refuses to start when
    the steady state does not hold, and rolls back what it stopped on Ctrl-C or SIGTERM.
    """


def _experiment(opts: Options, kind: str, subjects: list[str], **options: Any) -> int:
    from agent.experiment import ExperimentInterrupted, run_experiments
    from agent.stopping import install_stop_signals

    config = options.pop("config")
    target = opts.target_for(config)
    db = opts.db_path(config)

    async def go() -> Any:
        stop = asyncio.Event()
        undo = install_stop_signals(stop)
        try:
            return await run_experiments(config, target, db, kind, subjects, dry_run=opts.dry_run, stop=stop,
                                         progress=progress, **options)
        finally:
            undo()

    try:
        outcome = run_async(go())
    except ExperimentInterrupted as exc:
        return _interrupted(opts, db, exc)
    if opts.json:
        opts.emit(outcome.to_json())
    else:
        out.print(render.experiments(outcome))
        if outcome.run_id is not None:
            err.print(f"stored as run {outcome.run_id} in {db}", markup=False)
    return EXIT_OK if outcome.verdict == "pass" else EXIT_FAIL


@experiment.command("restart")
@click.argument("names", nargs=-1, metavar="NAME...")
@click.option("--all", "all_containers", is_flag=True, help="Every container the config expects up, in dependency order.")
@click.option("--how", type=click.Choice(["crash", "stop", "kill"]), default="crash", show_default=True,
              help="crash: SIGKILL the main process from the host (the restart policy applies); "
                   "stop/kill: through podman (which suppresses the restart policy).")
@click.option("--deadline", default=None, metavar="DURATION",
              help="How long it may take to be back (default: the container's restart_deadline, else 30s).")
@common_options
def experiment_restart(opts: Options, names: tuple[str, ...], all_containers: bool, how: str,
                       deadline: str | None) -> int:
    """Make containers die and prove each comes back within its deadline, probes passing, no new errors.

    \b
    Example:
      podwarden experiment restart tb-node
      podwarden experiment restart --all --how crash --json
      podwarden experiment restart tb-lightning --how stop     # podman stop: does anything bring it back?
    Exit 0 pass, 1 fail (or refused: the steady state did not hold), 3 unreachable, 130 interrupted.
    """
    from agent.experiment import restart_subjects

    config = opts.load_config()
    subjects = restart_subjects(config, names, all_containers)
    return _experiment(opts, "restart", subjects, config=config, how=how,
                       deadline_s=seconds_of("--deadline", deadline))


@experiment.command("cascade")
@click.argument("upstream", metavar="UPSTREAM")
@click.option("--hold", default=None, metavar="DURATION", help="How long the upstream stays down (default 60s).")
@click.option("--recovery", default=None, metavar="DURATION",
              help="How long everything may take to be back once it returns (default 120s).")
@common_options
def experiment_cascade(opts: Options, upstream: str, hold: str | None, recovery: str | None) -> int:
    """Stop an upstream, hold, start it: every dependent must survive, recover and reconnect.

    A dependent may stay running, turn unhealthy or restart while the upstream is down,
    but must not end dead for good; afterwards all must be back in their expected
    state, probes passing, each having logged its `reconnect` pattern (or no new error).

    \b
    Example:
      podwarden experiment cascade tb-node
      podwarden experiment cascade tb-node --hold 10s --recovery 60s --json
    Exit 0 pass, 1 fail, 3 unreachable, 130 interrupted (the upstream is started again).
    """
    config = opts.load_config()
    if upstream not in config.containers:
        raise UsageError(f"experiment cascade: {upstream!r} is not in the config's [containers] "
                         f"({', '.join(config.containers) or 'none'})")
    return _experiment(opts, "cascade", [upstream], config=config, hold_s=seconds_of("--hold", hold),
                       recovery_s=seconds_of("--recovery", recovery))


@experiment.command("service")
@click.argument("name", metavar="NAME")
@click.option("--deadline", default=None, metavar="DURATION",
              help="How long it may take to be active again (default: the service's restart_deadline).")
@common_options
def experiment_service(opts: Options, name: str, deadline: str | None) -> int:
    """Kill a host service hard (its kill_command): it must be active again, healthy, and no container notice.

    \b
    Example:
      podwarden experiment service tb-backend
    Exit 0 pass, 1 fail, 3 unreachable, 130 interrupted (the service is started again).
    """
    config = opts.load_config()
    if name not in config.services:
        raise UsageError(f"experiment service: {name!r} is not in the config's [services] "
                         f"({', '.join(config.services) or 'none'})")
    return _experiment(opts, "service", [name], config=config, deadline_s=seconds_of("--deadline", deadline))


# ---------------------------------------------------------------- soak

@cli.command()
@click.option("--for", "duration", default=None, metavar="DURATION",
              help="How long the window lasts once every target is watched (default [soak] duration: 5m).")
@click.option("--all-targets", is_flag=True, help="Soak every target in the config at once.")
@metrics_options
@common_options
def soak(opts: Options, duration: str | None, all_targets: bool, metrics: str | None,
         metrics_any_address: bool) -> int:
    """Hold a window and prove zero drift (the seed's C5), or list exactly what drifted and why.

    Watches as `watch` does (hooks included), re-runs every probe each [soak]
    probe_interval, shows a countdown and the drift so far, and ends PASS or FAIL; each
    drift names the container, its kind, podman's time and the reason.

    \b
    Example:
      podwarden soak --for 5m
      podwarden soak --for 60s --json | jq '.drifts[] | {container, kind, reason}'
    Exit 0 pass, 1 drift, 3 unreachable, 130 interrupted.
    """
    from agent.soak import soak as verb
    from agent.stopping import install_stop_signals

    config = opts.load_config()
    seconds = seconds_of("--for", duration) or config.soak.duration
    targets = opts.targets_for(config, all_targets)
    db = opts.db_path(config)

    async def go() -> Any:
        stop = asyncio.Event()
        undo = install_stop_signals(stop)
        try:
            return await verb(config, targets, db, seconds, dry_run=opts.dry_run, stop=stop, progress=progress,
                              metrics=metrics, metrics_any_address=metrics_any_address), stop.is_set()
        finally:
            undo()

    outcome, interrupted = run_async(go())
    if opts.json:
        opts.emit({**outcome.to_json(), **({"verdict": "interrupted"} if interrupted else {})})
    else:
        out.print(render.soak(outcome))
        if outcome.run_id is not None:
            err.print(f"stored as run {outcome.run_id} in {db}", markup=False)
    if interrupted:
        return 130
    return EXIT_OK if outcome.verdict == "pass" else EXIT_FAIL


# ---------------------------------------------------------------- run

@cli.command("run")
@click.option("--soak-for", "soak_for", default=None, metavar="DURATION",
              help="How long the soak lasts (default [soak] duration: 5m).")
@click.option("--skip", "skip", multiple=True, type=click.Choice(["experiments", "check", "soak"]),
              help="Leave a stage out (repeatable).")
@click.option("--only", "kinds", multiple=True, type=click.Choice(["restart", "cascade", "service"]),
              help="Run only these kinds of experiment (repeatable; default all three).")
@click.option("--hold", default=None, metavar="DURATION", help="How long a cascade's upstream stays down.")
@click.option("--recovery", default=None, metavar="DURATION", help="How long a cascade may take to recover.")
@click.option("--fail-fast", is_flag=True, help="Stop the plan at the first failed stage or experiment.")
@click.option("--report-dir", default=None, type=click.Path(file_okay=False),
              help="Where the report goes (default [podwarden] reports: ./reports).")
@metrics_options
@common_options
def run_plan(opts: Options, soak_for: str | None, skip: tuple[str, ...], kinds: tuple[str, ...], hold: str | None,
             recovery: str | None, fail_fast: bool, report_dir: str | None, metrics: str | None,
             metrics_any_address: bool) -> int:
    """The whole overnight plan as one run: baseline check, experiments, check, soak, status, report.

    Every experiment the config allows (a crash of each container expected up, a cascade
    of each container others depend on, a hard kill of each service with a
    kill_command), then the check again, the soak, the final status; recorded as one run
    and reported as Markdown and HTML in the reports folder. A failed stage does not stop
    the plan unless --fail-fast.

    \b
    Example:
      podwarden run                                  # the night, with the config's durations
      podwarden run --soak-for 10m --only restart --json
      podwarden run --skip experiments --soak-for 1h # a quiet night: check and soak only
    Exit 0 every stage passed, 1 a stage failed, 3 unreachable, 130 interrupted.
    """
    from agent.experiment import ExperimentInterrupted
    from agent.run import run as verb
    from agent.stopping import install_stop_signals

    config = opts.load_config()
    target = opts.target_for(config)
    db = opts.db_path(config)
    soak_s = seconds_of("--soak-for", soak_for)

    async def go() -> Any:
        stop = asyncio.Event()
        undo = install_stop_signals(stop)
        try:
            return await verb(config, target, db, soak_s=soak_s, skip=skip, kinds=kinds or ("restart", "cascade",
                              "service"), hold_s=seconds_of("--hold", hold),
                              recovery_s=seconds_of("--recovery", recovery), fail_fast=fail_fast,
                              dry_run=opts.dry_run, report_dir=report_dir, stop=stop, progress=progress,
                              metrics=metrics, metrics_any_address=metrics_any_address)
        finally:
            undo()

    try:
        outcome = run_async(go())
    except ExperimentInterrupted as exc:
        return _interrupted(opts, db, exc)
    if opts.json:
        opts.emit(outcome.to_json())
    else:
        out.print(render.run_outcome(outcome))
        err.print(f"stored as run {outcome.run_id} in {db}", markup=False)
    return _run_exit(outcome)


def _interrupted(opts: Any, db: str, exc: Exception) -> int:
    """Say that an experiment (alone or in `run`) was interrupted and rolled back; exit 130."""
    err.print(Text(f"interrupted while waiting for {exc}: rolled back what the experiment stopped; "
                   f"stored as an interrupted run in {db}"))
    if opts.json:
        opts.emit({"verdict": "interrupted", "error": {"kind": "interrupted", "exit_code": 130,
                                                       "message": f"interrupted while waiting for {exc}"}})
    return 130


def _run_exit(outcome: Any) -> int:
    """`run` and `demo`: 130 interrupted, 3 the target lost (said on stderr), 0 pass (or a
    rehearsal), else 1."""
    if outcome.report_error:
        err.print(Text(f"podwarden: warning: {outcome.report_error}"))
    if outcome.interrupted:
        return 130
    if outcome.unreachable is not None:
        sys.stderr.write(f"podwarden: error: {outcome.unreachable.message}\n")
        return outcome.unreachable.exit_code
    return EXIT_OK if outcome.verdict in ("pass", "dry-run") else EXIT_FAIL


# ---------------------------------------------------------------- report

@cli.command()
@click.option("--run", "run_id", type=int, default=None, help="Which run (default: the newest `run`, else the newest).")
@click.option("--format", "fmt", type=click.Choice(["md", "html", "json"]), default=None,
              help="md (default), html or json; with -o, the file's suffix says it unless given.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write to this file instead of stdout.")
@common_options
def report(opts: Options, run_id: int | None, fmt: str | None, output: str | None) -> int:
    """The morning report of a run, from the store alone: what broke, when, why, and whether it recovered.

    The Issue Log (each finding with cause, fix and evidence), the probes, every
    experiment's and the soak's verdict, the remediation actions, each container's final
    state, and a timeline (a lane per container coloured by state, deaths, drift, actions
    and findings marked; in HTML each mark shows its evidence on hover).

    \b
    Example:
      podwarden report                       # the newest run, Markdown on stdout
      podwarden report --run 7 --format html -o night.html
      podwarden report --format json | jq '.findings[] | {container, rule, cause}'
    Exit 0 the run passed; 1 it did not, is unfinished, or there is no such run.
    """
    from agent import report as morning

    opts.never_acts("report")
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        fmt = {"htm": "html", "html": "html", "json": "json"}.get(suffix, "md")
    config = opts.load_config()
    db = opts.db_path(config)
    built = morning.load(db, run_id)
    if output:
        try:
            path = morning.write(built, fmt, output)
        except OSError as exc:
            raise UsageError(f"report -o {output}: cannot write it: {exc.strerror or exc}") from None
        err.print(f"run {built.run['id']} ({built.run['command']}, {built.verdict}): {path}", markup=False)
    elif opts.json and fmt != "json":
        opts.emit(built.to_json())
    else:
        sys.stdout.write(morning.render(built, fmt))
        opts.printed = True
    return EXIT_OK if built.verdict == "pass" else EXIT_FAIL


# ---------------------------------------------------------------- query

@cli.command()
@click.argument("subject", metavar="SUBJECT")
@click.argument("sql", required=False, metavar="[SQL]")
@click.option("--container", "containers", multiple=True, help="Only this container (repeatable).")
@click.option("--kind", "kinds", multiple=True, help="Subject's kind: event status, stream, rule, command... (repeatable).")
@click.option("--status", "statuses", multiple=True, help="Subject's status: event status, new state, severity, verdict.")
@click.option("--since", default=None, metavar="TIME", help="From this time: 2026-11-30T02:00:00Z, '2026-11-30 02:00' (UTC) or 2h (ago).")
@click.option("--until", default=None, metavar="TIME", help="Before this time (same forms).")
@click.option("--run", "run_ids", type=int, multiple=True, help="Only rows of this run, observations another run stored first that it saw too included (repeatable).")
@click.option("--grep", default=None, metavar="REGEX", help="logs: lines this regular expression matches.")
@click.option("--errors", is_flag=True, help="logs: only lines the container's error patterns matched.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most this many rows (default: 100 in a table, all with --json/--csv; 0 = all).")
@click.option("--newest-first", is_flag=True, help="Newest rows first.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row instead of a table.")
@common_options
def query(opts: Options, subject: str, sql: str | None, containers: tuple[str, ...],
          kinds: tuple[str, ...], statuses: tuple[str, ...], since: str | None, until: str | None,
          run_ids: tuple[int, ...], grep: str | None, errors: bool, limit: int | None, newest_first: bool,
          as_csv: bool) -> int:
    """Read the store: a SUBJECT with filters, or `sql "SELECT ..."` (read-only).

    --target NAME keeps the rows of that target (nothing is asked of it).

    \b
    Subjects:
    {subjects}

    \b
    Example:
      podwarden query changes --since 8h --status exited --status crashlooping
      podwarden query logs --container tb-indexer --errors --since '2026-11-30 02:00'
      podwarden query logs --grep 'connection (refused|reset)' --limit 20 --newest-first
      podwarden query findings --run 7 --json | jq '.[] | {{container, rule, cause}}'
      podwarden query sql "SELECT container, count(*) FROM changes WHERE to_state = 'exited' GROUP BY 1"
    Exit 0 (also for no rows), 1 a query the store refuses (a write, bad SQL, a bad --grep
    regex, a filter the subject does not have), 2 bad usage.
    """
    from agent import query as verb
    from store import StoreReader
    from store.query import Filters

    opts.never_acts("query")
    if opts.json and as_csv:
        raise UsageError("query: --json or --csv, not both")
    config = opts.load_config()
    db = opts.db_path(config)
    table_limit = None
    if subject == "sql":
        if not sql:
            raise UsageError('query sql: give the statement, e.g. podwarden query sql "SELECT * FROM runs"')
        given = [name for name, value in (("--target", opts.target), ("--container", containers), ("--kind", kinds),
                                          ("--status", statuses), ("--since", since), ("--until", until),
                                          ("--run", run_ids), ("--grep", grep), ("--errors", errors),
                                          ("--newest-first", newest_first)) if value]
        if given:
            raise UsageError(f"query sql: {', '.join(given)} filter subjects; put the condition in the SQL")
    elif sql is not None:
        raise UsageError(f"query {subject}: unexpected argument {sql!r} (only `query sql` takes SQL)")
    else:
        filters = Filters(target=opts.target, container=containers or None, kind=kinds or None,
                          status=statuses or None, since_ns=verb.parse_when("--since", since),
                          until_ns=verb.parse_when("--until", until), run_id=run_ids or None, grep=grep,
                          errors=True if errors else None, newest_first=newest_first,
                          limit=(limit or None) if (opts.json or as_csv or limit is not None) else None)
    if not (opts.json or as_csv):
        table_limit = 100 if limit is None else (limit or None)
    with StoreReader(db) as reader:
        if subject == "sql":
            answer = verb.user_sql(reader, sql or "", limit=table_limit + 1 if table_limit else limit)
        else:
            if table_limit:
                filters = dataclasses.replace(filters, limit=table_limit + 1)
            answer = verb.select(reader, subject, filters)
        if opts.json:
            opts.printed = True  # the array is closed even on an error: one document either way
            verb.write_json(answer, sys.stdout)
        elif as_csv:
            verb.write_csv(answer, sys.stdout)
        else:
            columns, rows, more = verb.page(subject, answer, table_limit or (1 << 62))
            out.print(render.query_table(subject, columns, rows, more))
    return EXIT_OK


def _subjects_help() -> str:
    from store.query import SUBJECTS

    # continuation lines carry the docstring's own indent: click dedents the help as a whole
    return "\n    ".join(f"  {name:<12} {spec.help}" for name, spec in SUBJECTS.items())


query.help = (query.help or "").format(subjects=_subjects_help())


# ---------------------------------------------------------------- replay

@cli.command()
@click.option("--run", "run_id", type=int, default=None, help="Replay this run (default: the newest, unless --since/--until).")
@click.option("--since", default=None, metavar="TIME", help="Replay a window from this time (a soak's, say): 2026-11-30T02:00:00Z or 2h.")
@click.option("--until", default=None, metavar="TIME", help="... up to this time.")
@click.option("--soak", "soak_run", type=int, default=None, metavar="RUN",
              help="Replay the soak window of this run (its stored start and end).")
@click.option("--verify", is_flag=True, help="Compare with the changes stored live: exit 1 at the first difference.")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=None, metavar="N",
              help="Pace the changes at N times the speed they happened (gaps capped at 5s); default: at once.")
@common_options
def replay(opts: Options, run_id: int | None, since: str | None, until: str | None, soak_run: int | None,
           verify: bool, speed: float | None) -> int:
    """Replay stored observations through fresh state machines: the night again, change by change.

    Prints the timeline: every state change, drift, podwarden action and stored finding
    with its time. A run replays from its first observation with the machine settings it
    was recorded with, and --verify proves the replay makes exactly the changes stored
    live. Drift is found again in each window the store marks (a watch's, a soak's) with
    the config of now: new expectations apply to old nights. A window (--since/--until,
    or --soak RUN) starts from each container's newest snapshot before it. --target NAME
    keeps one target's observations (nothing is asked of it).

    \b
    Example:
      podwarden replay --run 7 --verify
      podwarden replay --soak 7 --speed 60        # the soak window, a minute a second
      podwarden replay --since '2026-11-30 02:00' --until '2026-11-30 03:00' --json
    Exit 0, 1 the replay differs from the stored changes (--verify), 2 bad usage.
    """
    from agent import query as q
    from agent.replay import replay_verb, scope
    from store import StoreReader

    opts.never_acts("replay")
    config = opts.load_config()
    db = opts.db_path(config)
    since_ns, until_ns = q.parse_when("--since", since), q.parse_when("--until", until)

    def show(kind: str, at_ns: int, item: Any) -> None:
        out.print(render.replayed_item(kind, at_ns, item), soft_wrap=True)

    with StoreReader(db) as reader:
        try:
            run_id, since_ns, until_ns = scope(reader, run_id, soak_run, since_ns, until_ns)
            outcome = replay_verb(reader, run_id=run_id, since_ns=since_ns, until_ns=until_ns, target=opts.target,
                                  verify=verify, speed=speed, on_item=None if opts.json else show,
                                  progress=progress, config=config)
        except ValueError as exc:
            raise UsageError(f"replay: {exc}") from None
    if opts.json:
        opts.emit(outcome.to_json())
    else:
        out.print(render.replay_summary(outcome))
    return EXIT_FAIL if outcome.verified is False else EXIT_OK


# ---------------------------------------------------------------- init

@cli.command()
@click.option("-o", "--output", default=DEFAULT_CONFIG, type=click.Path(dir_okay=False), show_default=True,
              help="Where to write the config.")
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
@click.option("--only", "only", multiple=True, metavar="PATTERN",
              help="Describe only containers whose name matches this glob (repeatable), e.g. 'btc-*'.")
@common_options
def init(opts: Options, output: str, force: bool, only: tuple[str, ...]) -> int:
    """Discover the target's containers and write a commented starting config for it.

    One entry per container (its health check as a probe, an http probe per published
    HTTP port, the expected state from its current state), the target as given
    (ssh://user@host:port, a configured target, or local). Nothing is changed on the node
    (its health checks are run once); an existing file is never overwritten without --force.

    \b
    Example:
      podwarden init --target mynode -o mynode.toml
      podwarden init --target ssh://bitcoin@10.0.0.5:22 --identity ~/.ssh/id_ed25519 --force
      podwarden init --target local --only 'btc-*' -o btc.toml
    Exit 0 written, 2 the file exists (without --force), 3 unreachable.
    """
    from agent.init import init as verb

    opts.never_acts("init")
    config = opts.load_config() if opts.config else config_from_dict({}, "<defaults>")
    target = opts.target_for(config)
    outcome = run_async(verb(config, target, opts.target, output, force=force, progress=progress, only=only))
    if opts.json:
        opts.emit(outcome.to_json())
    else:
        out.print(render.init_outcome(outcome))
    return EXIT_OK


# ---------------------------------------------------------------- demo

@cli.command()
@click.option("--fault", "faults", multiple=True, metavar="NAME", help="Bring the testbed up with this fault.")
@click.option("--soak-for", "soak_for", default=None, metavar="DURATION", help="The soak's window (default 20s).")
@click.option("--report-dir", default=None, type=click.Path(file_okay=False),
              help="Where the report goes (default [podwarden] reports: ./reports).")
@common_options
def demo(opts: Options, faults: tuple[str, ...], soak_for: str | None, report_dir: str | None) -> int:
    """Bring the testbed up on the target, run the whole plan against it, and write the report.

    The plan is `podwarden run` with short windows (cascade hold 5s, soak 20s): the
    baseline check, every experiment, the check again, the soak and the final status,
    stored as one run in the --db store (default podwarden.db); the report goes to
    ./reports as Markdown and HTML.

    \b
    Example:
      podwarden demo
      podwarden demo --fault dependent-dies          # see a cascade fail, and why
      podwarden demo --fault indexer-lock-permission --fault health-needs-credentials
    Exit 0 every stage passed, 1 a stage failed (as a fault makes it), 3 unreachable, 130 interrupted.
    """
    from agent.demo import DEMO_SOAK_S
    from agent.demo import demo as verb
    from agent.experiment import ExperimentInterrupted
    from agent.stopping import install_stop_signals

    if opts.dry_run:
        raise UsageError("--dry-run: rehearse the demo's steps with `podwarden testbed up --dry-run` and "
                         "`podwarden experiment restart --all --dry-run`")
    config = opts.load_config()
    db = opts.db_path(config)
    target = opts.target_for(config)
    soak_s = seconds_of("--soak-for", soak_for) or DEMO_SOAK_S

    async def go() -> Any:
        stop = asyncio.Event()
        undo = install_stop_signals(stop)
        try:
            return await verb(config, target, db, faults, progress, soak_s=soak_s, report_dir=report_dir, stop=stop)
        finally:
            undo()

    try:
        outcome = run_async(go())
    except ExperimentInterrupted as exc:
        err.print(Text(f"interrupted while waiting for {exc}: rolled back what the experiment stopped"))
        return 130
    if opts.json:
        opts.emit({**outcome.to_json(), "db": db})
    else:
        out.print(render.run_outcome(outcome))
        err.print(f"stored as run {outcome.run_id} in {db}; next: `podwarden report` (or open "
                  f"{outcome.reports[-1] if outcome.reports else 'the report'}), `podwarden watch`", markup=False)
    return _run_exit(outcome)


# ---------------------------------------------------------------- entry point

def _report(exc: BaseException) -> int:
    # one plain line, never wrapped: scripts and people grep it
    sys.stderr.write(f"podwarden: error: {getattr(exc, 'message', str(exc))}\n")
    return getattr(exc, "exit_code", EXIT_FAIL)


def _first_failure(group: BaseExceptionGroup) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, Failure):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_failure(exc)
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
    except Failure as exc:
        return _report(exc)
    except BaseExceptionGroup as group:
        # a failure inside a task group (a watcher, the store) arrives wrapped
        leaf = _first_failure(group)
        if leaf is None:
            raise
        return _report(leaf)
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("interrupted")
        return 130
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
