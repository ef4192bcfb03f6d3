"""Container logs read from conmon's own file: every line once, exactly as written.

The model: processes write bytes to stdout and stderr over several runs (a death may
cut a line); conmon turns each read of a pipe into k8s-file records sharing one stamp.
The real FOLLOWER (perl, run here as it runs on a node) reads the rendered files; the
parser, LogJoiner and the per-container identities must give back exactly the lines the
processes wrote, also when the agent is killed part-way and resumes from what it stored.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.container_logs import (
    CUT_MARK,
    MAX_LINE_CHARS,
    FollowerLine,
    K8sRecord,
    Line,
    LogJoiner,
    PodmanLogsParser,
    follower_argv,
    parse_follower_line,
    parse_k8s_record,
)
from agent.podman import ParseError, format_time_ns
from agent.transport import LineSplitter

T0 = 1_796_047_120_421_532_477
PERL = shutil.which("perl")


def k8s_time(ns: int) -> str:
    """conmon's stamp: nine fraction digits and a numeric zone."""
    return format_time_ns(ns)[:-1] + "+00:00"


# ---------------------------------------------------------------- records and follower lines


def test_k8s_records_as_conmon_writes_them() -> None:
    record = parse_k8s_record("2026-11-30T13:54:04.524875416+00:00 stdout P no newline at end")
    assert record == K8sRecord(1_796_046_844_524_875_416, "stdout", True, "no newline at end")
    assert parse_k8s_record("2026-11-30T13:54:05.525055213+00:00 stderr F ") == \
        K8sRecord(1_796_046_845_525_055_213, "stderr", False, "")
    # the text is kept as written: another container's record inside it is just text
    forged = "2026-11-30T13:54:05.525055213+01:00 stdout F app 2099-01-01T00:00:00Z x\r"
    assert parse_k8s_record(forged).text == "app 2099-01-01T00:00:00Z x\r"
    for bad in ("hello", "2026-11-30T13:54:05Z stdin F x", "2026-13-30T13:54:05Z stdout F x",
                "2026-11-30T13:54:05Z stdout X x"):
        assert isinstance(parse_k8s_record(bad), ParseError)


def test_follower_lines_and_argv() -> None:
    assert parse_follower_line("R 2 104 52 2026 stdout F a b") == FollowerLine("R", 2, 104, 52, "2026 stdout F a b")
    assert parse_follower_line("T 0 17") == FollowerLine("T", 0, 17)
    assert parse_follower_line("M 1") == FollowerLine("M", 1, 0)
    assert isinstance(parse_follower_line("R x 1 2 y"), ParseError)
    argv = follower_argv([(0, "120", "/var/lib/x/ctr.log"), (1, f"t{T0}", "/home/u/ctr.log")])
    assert argv[:2] == ["perl", "-e"] and argv[3:] == ["0:120:/var/lib/x/ctr.log", f"1:t{T0}:/home/u/ctr.log"]
    for start, path in (("x", "/a"), ("1", "relative/ctr.log"), ("1", "/a\nb")):
        with pytest.raises(ValueError):
            follower_argv([(0, start, path)])


def test_line_splitter_keeps_carriage_returns_and_cuts_the_same_way_however_chunked() -> None:
    data = b"progress 10%\rprogress 100%\r\n" + b"x" * 300 + b"\ntail"
    whole = LineSplitter(max_line=100)
    expected = whole.feed(data) + whole.flush()
    assert expected[0] == "progress 10%\rprogress 100%\r"
    assert expected[1] == "x" * 100 + " [line cut at 1 MiB]" and expected[2] == "tail"
    for size in (1, 7, 64, 101):
        splitter = LineSplitter(max_line=100)
        got = [line for i in range(0, len(data), size) for line in splitter.feed(data[i:i + size])]
        assert got + splitter.flush() == expected


# ---------------------------------------------------------------- joining


def record(at: int, text: str, partial: bool = False, stream: str = "stdout") -> K8sRecord:
    return K8sRecord(T0 + at, stream, partial, text)


def test_partial_records_join_per_stream_and_keep_the_first_stamp() -> None:
    joiner = LogJoiner("app")
    assert joiner.feed(0, record(0, "he", True)) == []
    assert joiner.feed(40, record(1, "oops", stream="stderr")) == [
        Line("app", T0 + 1, 40, "stderr", "oops", resume=0)]  # the stdout line is still open before it
    assert joiner.feed(80, record(2, "llo")) == [Line("app", T0, 0, "stdout", "hello")]


def test_a_death_ends_a_partial_line_and_waits_for_the_event_stream_to_say_so() -> None:
    known: dict[str, bool | None] = {"answer": None}
    joiner = LogJoiner("app", lambda container, after, upto: known["answer"])
    joiner.feed(0, record(0, "partial then die", True))
    assert joiner.feed(50, record(5, "next run")) == [] and joiner.holding
    assert joiner.feed(90, record(6, "after")) == []  # held behind, in order
    assert joiner.release() == [] and joiner.holding  # still unknown
    known["answer"] = True  # the died/start events arrived: the run ended in between
    assert joiner.release() == [Line("app", T0, 0, "stdout", "partial then die"),
                                Line("app", T0 + 5, 50, "stdout", "next run"),
                                Line("app", T0 + 6, 90, "stdout", "after")]
    assert not joiner.holding


def test_joined_lines_are_cut_at_the_cap_and_split_characters_are_whole_again() -> None:
    joiner = LogJoiner("app")
    euro = "€".encode()
    first = (b"x" + euro[:1]).decode("utf-8", "surrogateescape")
    second = (euro[1:] + b"y").decode("utf-8", "surrogateescape")
    joiner.feed(0, record(0, first, True))
    assert joiner.feed(10, record(0, second)) == [Line("app", T0, 0, "stdout", "x€y")]
    joiner.feed(20, record(1, "a" * (MAX_LINE_CHARS - 1), True))
    (line,) = joiner.feed(30, record(2, "bcd"))
    assert line.text == "a" * (MAX_LINE_CHARS - 1) + "b" + CUT_MARK


# ---------------------------------------------------------------- the model


@dataclass
class Run:
    reads: list[tuple[str, bytes]]  # (stream, the bytes one read of the pipe returned)


@dataclass
class Container:
    name: str
    runs: list[Run]
    path: Path | None = None
    starts: list[int] = field(default_factory=list)  # time each run started
    truth: list[tuple[int, int, str, str]] = field(default_factory=list)  # (at_ns, seq, stream, text)


PIECES = [b"a", b"b", b" ", b"\r", b"\t", b"\x00", "\xe9".encode(), "\u20ac".encode(), b"\xff",
          "\u2028".encode(), "\x85".encode(), b"\n", b"\n", b"\n", b"ERROR x", b"app ", b"web",
          b"2026-11-30T13:54:04.524875416+00:00 stdout F ", b"app 2099-01-01T00:00:00Z ",
          b"webapp 2026-11-30T13:54:04.524875416Z x", b"stderr P "]
chunk = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map(b"".join)
burst = st.tuples(st.sampled_from([b"same line\n", b"dup\r\n", b"\n"]), st.integers(2, 40)).map(lambda t: t[0] * t[1])
reads = st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), chunk | burst), min_size=1, max_size=8)
containers = st.lists(st.lists(reads.map(Run), min_size=1, max_size=3), min_size=1, max_size=3)


def render(box: list[Container], directory: Path) -> None:
    """Write each container's ctr.log as conmon would, and the lines the processes wrote."""
    clock = T0
    for container in box:
        data = bytearray()
        for run in container.runs:
            clock += 1_000_000
            container.starts.append(clock)
            open_line: dict[str, tuple[int, int, bytearray]] = {}
            for stream, chunk_bytes in run.reads:
                clock += 1 + len(chunk_bytes)
                pieces = chunk_bytes.split(b"\n")
                for index, piece in enumerate(pieces):
                    last = index == len(pieces) - 1
                    if last and not piece:
                        break
                    offset = len(data)
                    data += f"{k8s_time(clock)} {stream} {'P' if last else 'F'} ".encode() + piece + b"\n"
                    at, seq, text = open_line.pop(stream, (clock, offset, bytearray()))
                    text += piece
                    if last:
                        open_line[stream] = (at, seq, text)
                    else:
                        container.truth.append((at, seq, stream, text.decode("utf-8", "replace")))
            # the run dies: a line still open ended with it
            for stream, (at, seq, text) in open_line.items():
                container.truth.append((at, seq, stream, text.decode("utf-8", "replace")))
        container.path = directory / f"{container.name}.log"
        container.path.write_bytes(bytes(data))


def follow(specs: list[tuple[int, str, Path]]) -> list[str]:
    """Run the real follower on the files until it has read them all."""
    argv = follower_argv([(i, start, str(path)) for i, start, path in specs])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    sizes = sum(path.stat().st_size for _, _, path in specs)
    splitter = LineSplitter(errors="surrogateescape")
    lines: list[str] = []
    got = 0
    starts = {i: int(start) for i, start, _ in specs}
    total = sum(path.stat().st_size - starts[i] for i, _, path in specs)
    assert proc.stdout is not None
    while got < total:
        chunk = proc.stdout.read1(65536)
        if not chunk:
            break
        for line in splitter.feed(chunk):
            lines.append(line)
            parsed = parse_follower_line(line)
            if isinstance(parsed, FollowerLine) and parsed.what == "R":
                got += parsed.length
    proc.kill()
    proc.wait()
    assert got == total, (got, total, sizes)
    return lines


class Session:
    """One agent run: joiners with a lagging event stream, identities, and what it stored."""

    def __init__(self, box: list[Container], stored: list[tuple[str, Line]], keys: dict[str, set]) -> None:
        self.box = box
        self.stored = stored
        self.keys = keys
        self.known_until = 0  # the event stream has arrived up to here
        self.joiners = {c.name: LogJoiner(c.name, self.oracle) for c in box}

    def oracle(self, container: str, after: int, upto: int) -> bool | None:
        box = next(c for c in self.box if c.name == container)
        if any(after < start <= upto for start in box.starts):
            return True if upto <= self.known_until else None
        return False if upto <= self.known_until else None

    def emit(self, lines: list[Line]) -> None:
        for line in lines:
            if (line.at_ns, line.seq) not in self.keys.setdefault(line.container, set()):
                self.keys[line.container].add((line.at_ns, line.seq))
                self.stored.append((line.container, line))

    def take(self, follower_lines: list[str], names: list[str], lag: int) -> None:
        recent: list[int] = []
        for raw in follower_lines:
            parsed = parse_follower_line(raw)
            assert isinstance(parsed, FollowerLine) and parsed.what == "R", raw
            rec = parse_k8s_record(parsed.record)
            assert isinstance(rec, K8sRecord), parsed.record
            recent.append(rec.at_ns)
            self.known_until = recent[-lag - 1] if len(recent) > lag else 0
            self.emit(self.joiners[names[parsed.index]].feed(parsed.offset, rec, parsed.offset + parsed.length))
            for joiner in self.joiners.values():
                self.emit(joiner.release())

    def finish(self) -> None:
        self.known_until = 2**63
        for joiner in self.joiners.values():
            self.emit(joiner.release())
            self.emit(joiner.flush())


def resume_point(stored: list[tuple[str, Line]], name: str) -> tuple[int, int] | None:
    """What StoreWriter.log_resume answers: over the 50 newest stored lines, the newest
    safe place (resume, else seq), and the newest stamp."""
    mine = [(line.at_ns, index, line) for index, (c, line) in enumerate(stored) if c == name]
    recent = [line for _, _, line in sorted(mine, key=lambda t: (t[0], t[1]), reverse=True)[:50]]
    if not recent:
        return None
    return max(line.seq if line.resume is None else line.resume for line in recent), recent[0].at_ns


MODEL = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@pytest.mark.skipif(PERL is None, reason="needs perl (the node-side follower)")
@MODEL
@given(runs=containers, lag=st.integers(0, 3), cut=st.floats(0, 1))
def test_every_line_once_exactly_as_written_across_a_kill_and_resume(runs, lag, cut, tmp_path_factory) -> None:
    directory = tmp_path_factory.mktemp("ctrlog")
    names = ["app", "webapp", "app.1"][: len(runs)]  # names that prefix each other
    box = [Container(name, run_list) for name, run_list in zip(names, runs)]
    render(box, directory)
    all_lines = follow([(i, "0", c.path) for i, c in enumerate(box)])

    stored: list[tuple[str, Line]] = []
    first = Session(box, stored, {})
    first.take(all_lines[: int(len(all_lines) * cut)], names, lag)  # then SIGKILL: pending work is lost

    # a new agent: each container resumes where its stored lines say, keys from the store
    keys: dict[str, set] = {}
    for container, line in stored:
        keys.setdefault(container, set()).add((line.at_ns, line.seq))
    specs = []
    for index, container in enumerate(box):
        point = resume_point(stored, container.name)
        specs.append((index, str(point[0]) if point else "0", container.path))
    second = Session(box, stored, keys)
    second.take(follow(specs), names, lag)
    second.finish()

    for container in box:
        got = sorted((line.at_ns, line.seq, line.stream, line.text) for c, line in stored if c == container.name)
        assert got == sorted(container.truth)


@pytest.mark.skipif(PERL is None, reason="needs perl (the node-side follower)")
def test_the_follower_starts_at_a_time_and_notices_truncation(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    lines = [f"{k8s_time(T0 + i * 1000)} stdout F line {i}\n".encode() for i in range(2000)]
    path.write_bytes(b"".join(lines))
    offset_of_1500 = sum(len(line) for line in lines[:1500])
    proc = subprocess.Popen(follower_argv([(0, f"t{T0 + 1500 * 1000 - 1}", str(path))]), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = parse_follower_line(proc.stdout.readline().decode().rstrip("\n"))
    assert (first.what, first.offset) == ("R", offset_of_1500)
    proc.kill()
    proc.wait()
    # a file that shrinks under the follower is read again from the start, and said so
    proc = subprocess.Popen(follower_argv([(0, "0", str(path))]), stdout=subprocess.PIPE)
    for _ in range(2000):
        proc.stdout.readline()
    path.write_bytes(lines[0])
    seen = [proc.stdout.readline().decode().rstrip("\n") for _ in range(2)]
    proc.kill()
    proc.wait()
    assert parse_follower_line(seen[0]) == FollowerLine("T", 0, len(lines[0]))
    assert parse_follower_line(seen[1]).offset == 0


# ---------------------------------------------------------------- podman logs (fallback)


def test_podman_logs_parser_ignores_implausible_glues() -> None:
    now = T0 + 10**12
    parser = PodmanLogsParser(["app", "db"], lambda: now)
    stamp = format_time_ns(T0)
    # a record dated in the future, or before db's own last line, is text, not a glue
    text = f"GET / UA=db {format_time_ns(now + 3600 * 10**9)} x"
    assert [(line.container, line.text) for line in parser.feed(f"app {stamp} {text}")] == [("app", text)]
    parser.feed(f"db {format_time_ns(T0 + 500)} later line")
    old = f"see db {format_time_ns(T0 + 1)} old"
    assert [line.text for line in parser.feed(f"app {format_time_ns(T0 + 2)} {old}")] == [old]
    # identical lines in one stamp get distinct places
    seqs = [line.seq for _ in range(3) for line in parser.feed(f"app {format_time_ns(T0 + 7)} same")]
    assert seqs == [0, 1, 2]


def test_run_boundaries_are_deaths_and_inits_not_starts() -> None:
    """Measured on podman 4.3: a run's first record comes ~0.7 ms before its `start` event (and
    before StartedAt), so `start` must not end a partial line; `died` and `init` do."""
    from agent.config import config_from_dict
    from agent.log_follow import LogFollow
    from machines.observations import EventObs

    follow = LogFollow("t", config_from_dict({"containers": {"app": {}}}), object(), podman_cmd=["podman"],
                       now_ns=lambda: T0 + 10**12, agent=lambda what, detail: None, view=object(),
                       wanted=lambda name: True)

    def event(status: str, at: int) -> EventObs:
        return EventObs("t", "app", T0 + at, "c" * 64, status)

    # a partial record at +100, the new run's first record at +1000 with its start event at +1700
    for status, at in (("start", 1700), ("restart", 900)):
        follow.note_event(event(status, at))
    assert follow.started_between("app", T0 + 100, T0 + 1000) is False
    follow.note_event(event("died", 500))
    assert follow.started_between("app", T0 + 100, T0 + 1000) is True
    follow.note_event(event("init", 5000))
    assert follow.started_between("app", T0 + 4000, T0 + 6000) is True
    assert follow.started_between("app", T0 + 6000, T0 + 7000) is False
