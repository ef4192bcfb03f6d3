"""Container log lines exactly as the processes wrote them, read from conmon's own log file.

`podman logs` cannot be read exactly: it prints a partial record (a write without a
trailing newline, or a piece of a long line) without a newline, glued to whatever record
comes next, so a line whose text holds `NAME TIME ` is indistinguishable from two glued
records, and a container's own text could forge another container's record. conmon's
k8s-file log (inspect's `HostConfig.LogConfig.Path`, the default log driver of podman
4.3 on Debian) has no such ambiguity. Measured here (podman 4.3.1, conmon 2.1):

    2026-11-30T13:54:04.524875416+00:00 stdout P no newline at end
    2026-11-30T13:54:05.525055213+00:00 stdout F x

- one record per line: conmon's time (RFC3339, nine fraction digits, numeric zone), the
  stream, `P` (the line goes on in the stream's next record) or `F` (the line ends here),
  one space, then the bytes the process wrote (any byte but a newline, `\\r` included);
- every record of one read of the container's pipe carries the same time: a burst of
  identical lines shares one nanosecond (~70 lines a stamp measured), so a line's
  identity is its byte offset in the file, never its (time, text);
- the file outlives restarts: every run of the container appends to it, and a partial
  record left at a death (`printf 'partial'; exit 1`) stays `P`, followed by the next
  run's first record. Only the death between them says the line ended: see `LogJoiner`.

`FOLLOWER` is a small Perl program run on the node (perl-base is an essential package
on Debian and its derivatives): it follows several such files on one channel, each from
its own byte offset, and prints every complete record prefixed with its file's index and
offset. Perl reads with `stat` and `sysread` every 0.2 s: no process is started per poll.
Where the node has no perl, or a container logs to journald, the watcher falls back to
`podman logs` (see `PodmanLogsParser`), which cannot be exact for partial lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from agent.podman import INT64_MAX, INT64_MIN, NS_PER_S, ParseError, parse_time_ns

# A joined line longer than this many characters is cut here, the same way every time.
MAX_LINE_CHARS = 1 << 20
CUT_MARK = " [line cut at 1 MiB]"

_K8S_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})) (stdout|stderr) ([PF])(?: (.*))?",
    re.ASCII | re.DOTALL)


class K8sRecord(NamedTuple):
    """One record of conmon's k8s-file log."""

    at_ns: int
    stream: str  # stdout | stderr
    partial: bool  # P: the line continues in the stream's next record
    text: str


def parse_k8s_record(line: str) -> K8sRecord | ParseError:
    """One line of a k8s-file log as a record; a ParseError for anything else."""
    match = _K8S_RE.fullmatch(line)
    if match is None:
        return ParseError("log", "not a k8s-file record (TIME STREAM P|F TEXT)", line[:200])
    try:
        at_ns = parse_time_ns(match.group(1))
    except ValueError as exc:
        return ParseError("log", str(exc), line[:200])
    if not INT64_MIN <= at_ns <= INT64_MAX:
        return ParseError("log", "time outside int64 ns", line[:200])
    return K8sRecord(at_ns, match.group(2), match.group(3) == "P", match.group(4) or "")


# ---------------------------------------------------------------- joining partial records


class Line(NamedTuple):
    """One whole log line: the time and offset of its first record, its stream and text."""

    container: str
    at_ns: int
    seq: int  # byte offset of the first record in the log file (its identity)
    stream: str
    text: str
    # where a resumed follow may start so that no line is lost or cut, when `seq` is not
    # such a point (the other stream had a line open when this one began): the last offset
    # before it at which no line was open (see LogObs.resume)
    resume: int | None = None


@dataclass
class _Pending:
    at_ns: int
    seq: int
    safe: int | None  # the last offset with no line open, when another line was open at seq
    parts: list[str] = field(default_factory=list)
    size: int = 0
    cut: bool = False

    def add(self, text: str) -> None:
        if self.cut:
            return
        room = MAX_LINE_CHARS - self.size
        if len(text) > room:
            self.parts.append(text[:room])
            self.size = MAX_LINE_CHARS
            self.cut = True
        else:
            self.parts.append(text)
            self.size += len(text)

    def text(self) -> str:
        joined = "".join(self.parts)
        return joined + CUT_MARK if self.cut else joined


# started_between(container, after_ns, upto_ns): True if the container (re)started in
# (after_ns, upto_ns], False if not, None if not known yet (events lag behind logs).
BoundaryOracle = Callable[[str, int, int], "bool | None"]


class LogJoiner:
    """Joins one container's partial records into whole lines, per stream.

    A `P` record waits for the rest of its line: the stream's next record. A death ends
    a line too: conmon leaves the last partial write of a run as `P`, and the next run's
    first record follows it. The `oracle` says whether the container started again in
    between; while it cannot say yet (podman's event stream lags its log file), the
    records wait in order (`hold`), and `release` retries them later. A stdout partial is
    never joined with a stderr record. Lines are cut at MAX_LINE_CHARS, identically live
    and on a re-read.

    Resuming: an offset where no line is open is a safe place to start reading again (no
    line is cut, and every line begun before it is finished, so was stored before any
    line after it). A line's `seq` is such a place unless the other stream had a line open
    then; that line carries the last such place instead (`Line.resume`). The newest of
    these among the stored lines is where a follow resumes after a crash.
    """

    def __init__(self, container: str, oracle: BoundaryOracle | None = None, start: int | None = None) -> None:
        """`start`: the offset reading begins at (a safe place, as above); default: the first record's."""
        self.container = container
        self._oracle = oracle
        self._pending: dict[str, _Pending] = {}
        self._held: list[tuple[int, int, K8sRecord]] = []
        self._quiet: int | None = start  # the last offset at which no line was open

    @property
    def holding(self) -> bool:
        """Records wait for the event stream to say whether a restart came between."""
        return bool(self._held)

    def feed(self, offset: int, record: K8sRecord, end: int | None = None, *, force: bool = False) -> list[Line]:
        """The lines `record` (bytes `offset` to `end` of the file) completes, in order."""
        end = offset + 1 if end is None else end
        if self._held and not force:
            self._held.append((offset, end, record))
            return []
        return self._take(offset, end, record, force)

    def release(self, force: bool = False) -> list[Line]:
        """Retry held records (after new events, or `force` once waiting is over)."""
        held, self._held = self._held, []
        out: list[Line] = []
        for index, (offset, end, record) in enumerate(held):
            if self._held:  # blocked again: keep the rest behind it, in order
                self._held.extend(held[index:])
                break
            out.extend(self._take(offset, end, record, force))
        return out

    def flush(self) -> list[Line]:
        """Everything pending, as it is (the stream ended for good, e.g. the container was removed)."""
        out = self.release(force=True)
        for stream, pending in sorted(self._pending.items(), key=lambda item: item[1].seq):
            del self._pending[stream]
            out.append(self._line(stream, pending))
        return out

    def _line(self, stream: str, pending: _Pending) -> Line:
        return Line(self.container, pending.at_ns, pending.seq, stream, _text(pending.text()), pending.safe)

    def _take(self, offset: int, end: int, record: K8sRecord, force: bool) -> list[Line]:
        out: list[Line] = []
        pending = self._pending.get(record.stream)
        if pending is not None:
            ended = self._oracle(self.container, pending.at_ns, record.at_ns) if self._oracle else False
            if ended is None and not force:
                self._held.append((offset, end, record))
                return out
            if ended:
                # the run that wrote the partial died: its line ended with it
                del self._pending[record.stream]
                out.append(self._line(record.stream, pending))
                pending = None
        if self._quiet is None:
            self._quiet = offset
        if pending is None:
            if not self._pending:
                self._quiet = offset
            pending = _Pending(record.at_ns, offset, self._quiet if self._pending else None)
        pending.add(record.text)
        if record.partial:
            self._pending[record.stream] = pending
        else:
            self._pending.pop(record.stream, None)
            out.append(self._line(record.stream, pending))
        if not self._pending:
            self._quiet = end
        return out


def _text(text: str) -> str:
    """Follower lines are decoded with surrogateescape, so a UTF-8 character that conmon
    split across two records is whole again once they are joined; decode it properly now."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# ---------------------------------------------------------------- the follower on the node

# argv after the script: FILE_SPEC... where FILE_SPEC is INDEX:START:PATH and START is a
# byte offset, or `t` and a time in ns (start at the first record at or after it, found
# by bisection: conmon's times only grow within one file, except across a clock change).
# Output lines:  R INDEX OFFSET LENGTH RECORD (LENGTH: bytes taken from the file, newline
#                included)  |  M INDEX (no such file yet)  |
#                T INDEX SIZE (file shrank: read again from 0)  |  N INDEX (file replaced)
FOLLOWER = r"""
use strict; use warnings;
my $POLL = 0.2; my $CHUNK = 65536; my $MAXBUF = 1 << 20;
sub days_from_civil { my ($y,$m,$d)=@_; $y -= $m <= 2; my $era = int(($y >= 0 ? $y : $y-399) / 400);
  my $yoe = $y - $era*400; my $doy = int((153*($m + ($m > 2 ? -3 : 9)) + 2)/5) + $d-1;
  my $doe = $yoe*365 + int($yoe/4) - int($yoe/100) + $doy; return $era*146097 + $doe - 719468; }
sub rec_ns { my ($l)=@_; return undef unless $l =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|([+-])(\d\d):(\d\d)) /;
  my $s = days_from_civil($1,$2,$3)*86400 + $4*3600 + $5*60 + $6;
  if ($8 ne 'Z') { my $off = $10*3600 + $11*60; $s -= ($9 eq '-' ? -$off : $off); }
  my $f = defined $7 ? $7 : ''; $f .= '0' x (9 - length $f); return $s * 1000000000 + $f; }
sub line_at { my ($fh,$pos)=@_; sysseek($fh,$pos,0); my $b=''; my $n;
  while (($n = sysread($fh, my $c, 4096)) ) { $b .= $c; my $k = index($b, "\n"); if ($k >= 0) { return substr($b,0,$k); } last if length($b) > $MAXBUF; }
  return undef; }
sub next_start { my ($fh,$pos)=@_; return 0 if $pos <= 0; sysseek($fh,$pos-1,0); my $b='';
  while (sysread($fh, my $c, 4096)) { $b .= $c; my $k = index($b, "\n"); return $pos + $k if $k >= 0; }
  return -1; }
sub by_time { my ($fh,$t)=@_; my $size = (stat($fh))[7]; my ($lo,$hi) = (0,$size);
  while ($hi - $lo > 4096) { my $mid = int(($lo+$hi)/2); my $s = next_start($fh,$mid);
    if ($s < 0 || $s >= $hi) { $hi = $mid; next; } my $l = line_at($fh,$s); my $ns = defined $l ? rec_ns($l) : undef;
    if (!defined $ns || $ns >= $t) { $hi = $mid; } else { $lo = $s + 1; } }
  my $pos = next_start($fh,$lo); $pos = $size if $pos < 0;
  while ($pos < $size) { my $l = line_at($fh,$pos); last unless defined $l; my $ns = rec_ns($l);
    last if defined $ns && $ns >= $t; $pos += length($l) + 1; }
  return $pos; }
my @files;
for my $spec (@ARGV) { my ($i,$start,$p) = split /:/, $spec, 3;
  push @files, { i=>$i, start=>$start, p=>$p, fh=>undef, off=>0, buf=>'', ino=>-1, missing=>0 }; }
my $out = '';
sub flush_out { while (length $out) { my $n = syswrite(STDOUT, $out); exit 0 unless defined $n; substr($out,0,$n) = ''; } }
sub open_file { my ($f,$start)=@_; my $fh; unless (open($fh, '<:raw', $f->{p})) {
    $out .= "M $f->{i}\n" unless $f->{missing}++; return; }
  $f->{missing} = 0; my @st = stat($fh); $f->{ino} = $st[1]; $f->{fh} = $fh; $f->{buf} = '';
  my $pos = 0; if ($start =~ /^t(-?\d+)$/) { $pos = by_time($fh,$1); } else { $pos = $start; $pos = 0 if $pos > $st[7]; }
  sysseek($fh,$pos,0); $f->{off} = $pos; }
while (1) {
  my $busy = 0;
  for my $f (@files) {
    if (!$f->{fh}) { open_file($f, $f->{start}); next unless $f->{fh}; }
    my $fh = $f->{fh}; my $size = (stat($fh))[7]; my $end = $f->{off} + length($f->{buf});
    if ($size < $end) { $out .= "T $f->{i} $size\n"; sysseek($fh,0,0); $f->{off} = 0; $f->{buf} = ''; $end = 0; }
    my $n = sysread($fh, my $chunk, $CHUNK);
    if ($n) { $busy = 1; $f->{buf} .= $chunk;
      while ((my $k = index($f->{buf}, "\n")) >= 0) {
        $out .= "R $f->{i} $f->{off} " . ($k + 1) . " " . substr($f->{buf},0,$k) . "\n"; $f->{off} += $k + 1; substr($f->{buf},0,$k+1) = ''; }
      if (length($f->{buf}) > $MAXBUF) { my $l = length $f->{buf}; $out .= "R $f->{i} $f->{off} $l $f->{buf}\n"; $f->{off} += $l; $f->{buf} = ''; }
    } elsif (defined $n) {
      my @st = stat($f->{p});
      if (@st && $st[1] != $f->{ino}) { $out .= "N $f->{i}\n"; close($fh); $f->{fh} = undef; open_file($f, 0); $busy = 1; }
    }
    flush_out() if length($out) > $CHUNK;
  }
  flush_out();
  select(undef, undef, undef, $POLL) unless $busy;
}
"""


def follower_argv(files: Iterable[tuple[int, str, str]]) -> list[str]:
    """`perl -e FOLLOWER INDEX:START:PATH ...`; START is an offset or `t<ns>`. Raises ValueError."""
    argv = ["perl", "-e", FOLLOWER]
    for index, start, path in files:
        if not re.fullmatch(r"\d+|t-?\d+", start):
            raise ValueError(f"invalid start {start!r}: an offset or t<ns>")
        if not path.startswith("/") or "\n" in path or "\0" in path:
            raise ValueError(f"invalid log path {path!r}")
        argv.append(f"{int(index)}:{start}:{path}")
    return argv


class FollowerLine(NamedTuple):
    """One output line of FOLLOWER."""

    what: str  # R record, M missing, T truncated, N replaced
    index: int
    offset: int  # R: the record's offset; T: the file's new size
    length: int = 0  # R: bytes the record took in the file, its newline included
    record: str = ""


def parse_follower_line(line: str) -> FollowerLine | ParseError:
    """One FOLLOWER output line."""
    what, _, rest = line.partition(" ")
    if what == "R":
        index, _, rest = rest.partition(" ")
        offset, _, rest = rest.partition(" ")
        length, sep, record = rest.partition(" ")
        if index.isdigit() and offset.isdigit() and length.isdigit() and sep:
            return FollowerLine("R", int(index), int(offset), int(length), record)
    elif what in ("M", "N") and rest.isdigit():
        return FollowerLine(what, int(rest), 0)
    elif what == "T":
        index, _, size = rest.partition(" ")
        if index.isdigit() and size.isdigit():
            return FollowerLine("T", int(index), int(size))
    return ParseError("log", "not a follower line", line[:200])


# ---------------------------------------------------------------- podman logs (the fallback)

# The time as podman 4.3 logs prints it (Go layout 2006-01-02T15:04:05.000000000Z07:00):
# always nine fraction digits (measured: `...T10:13:05.969260880Z`), `Z` or a numeric zone.
PODMAN_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}(?:Z|[+-]\d{2}:\d{2})"


class PodmanLogsParser:
    """`podman logs --timestamps [--names]` output into lines, for nodes where conmon's file
    cannot be read (journald driver, no perl). Inexact by nature: a partial record is
    glued to the next record, so a glue is recognised only as podman prints one exactly:
    a followed container's name and a time in podman's own format, no earlier than that
    container's last line and no later than the node's clock allows (`latest_ns()`), so
    text can neither forge a record dated in the future nor move a resume point. Text
    holding a plausible `NAME TIME ` is still misread as a glue: only conmon's file
    tells. A line's identity is its index among the container's lines sharing its time."""

    def __init__(self, names: Iterable[str], latest_ns: Callable[[], int]) -> None:
        self.names = sorted(set(names), key=len, reverse=True)
        self.single = self.names[0] if len(self.names) == 1 else None
        self._latest_ns = latest_ns
        alternatives = "|".join(re.escape(n) for n in self.names)
        self._head = re.compile(rf"(?:({alternatives}) )?({PODMAN_TIME}) ?", re.ASCII)
        # podman glues the next record straight onto a partial one (`...at endweb 2026-...`),
        # so no boundary can be asked of the name: longest names are tried first
        self._inner = re.compile(rf"({alternatives}) ({PODMAN_TIME})(?: |$)", re.ASCII) \
            if self.single is None else re.compile(rf"({PODMAN_TIME}) ", re.ASCII)
        self._last: dict[str, tuple[int, int]] = {}  # container -> (at_ns, lines in that stamp)
        self._pending: dict[str, tuple[int, int, str]] = {}

    def _plausible(self, container: str, at_ns: int) -> bool:
        last = self._last.get(container)
        return (last is None or at_ns >= last[0]) and at_ns <= self._latest_ns() + 5 * NS_PER_S

    def feed(self, raw: str) -> list[Line | ParseError]:
        """The whole lines one output line completes."""
        head = self._head.match(raw)
        if head is None or (self.single is None and head.group(1) is None):
            return [ParseError("log", "no leading `[NAME ]TIME `", raw[:200])]
        container = head.group(1) or self.single or ""
        try:
            at_ns = parse_time_ns(head.group(2))
        except ValueError as exc:
            return [ParseError("log", str(exc), raw[:200])]
        pieces: list[tuple[str, int, str]] = []
        rest, start = raw, head.end()
        while True:
            found = None
            for candidate in self._inner.finditer(rest, start):
                name = candidate.group(1) if self.single is None else self.single
                stamp = candidate.group(2) if self.single is None else candidate.group(1)
                try:
                    ns = parse_time_ns(stamp)
                except ValueError:
                    continue
                if self._plausible(name, ns):
                    found = (candidate, name, ns)
                    break
            if found is None:
                pieces.append((container, at_ns, rest[start:]))
                break
            candidate, name, ns = found
            pieces.append((container, at_ns, rest[start:candidate.start()] + "\0partial"))
            container, at_ns, start = name, ns, candidate.end()
        out: list[Line | ParseError] = []
        for container, at_ns, text in pieces:
            partial = text.endswith("\0partial")
            if partial:
                text = text[: -len("\0partial")]
            held = self._pending.pop(container, None)
            if held is not None:
                at_ns, seq, text = held[0], held[1], held[2] + text
            else:
                seq = self._seq(container, at_ns)
            if partial:
                self._pending[container] = (at_ns, seq, text)
            else:
                out.append(Line(container, at_ns, seq, "merged", _cap(text)))
        return out

    def _seq(self, container: str, at_ns: int) -> int:
        last = self._last.get(container)
        count = last[1] + 1 if last is not None and last[0] == at_ns else 0
        self._last[container] = (at_ns, count)
        return count

    def flush(self) -> list[Line]:
        """Partial lines still held when the output ended."""
        out = [Line(c, at_ns, seq, "merged", _cap(text)) for c, (at_ns, seq, text) in self._pending.items()]
        self._pending.clear()
        return out


def _cap(text: str) -> str:
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + CUT_MARK
