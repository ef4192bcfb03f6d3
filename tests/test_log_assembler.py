"""Partial log records (a write split by conmon) come back as the lines the process wrote."""

from __future__ import annotations

from hypothesis import given, strategies as st

from agent.podman import LogAssembler, LogLine, format_time_ns

T0 = 1_795_777_291_518_567_000
NAMES = ["tb-node", "tb-lightning"]
text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)


def _render(records: list[tuple[str, int, str, bool]], single: bool) -> list[str]:
    """podman's output: each record `NAME TIME text`, a newline only after complete ones."""
    out, current = [], ""
    for name, at_ns, piece, complete in records:
        prefix = "" if single else f"{name} "
        current += f"{prefix}{format_time_ns(at_ns)} {piece}"
        if complete:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


@st.composite
def writes(draw, single: bool):
    names = NAMES[:1] if single else NAMES
    lines = draw(st.lists(st.tuples(st.sampled_from(names), text), min_size=1, max_size=12))
    records, expected, at = [], [], T0
    for name, line in lines:
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(line) - 1)), max_size=2))) if len(line) > 1 else []
        parts = [line[a:b] for a, b in zip([0, *cuts], [*cuts, len(line)])]
        expected.append(LogLine(name, at + 1, line))
        for index, part in enumerate(parts):
            at += 1
            records.append((name, at, part, index == len(parts) - 1))
    return records, expected


@given(writes(single=False))
def test_multi_container_partials_are_rejoined(case):
    records, expected = case
    assembler = LogAssembler(NAMES)
    got = [r for raw in _render(records, single=False) for r in assembler.feed(raw)]
    assert sorted(got) == sorted(expected)
    assert assembler.flush() == []


@given(writes(single=True))
def test_single_container_partials_are_rejoined(case):
    records, expected = case
    assembler = LogAssembler(NAMES[:1])
    got = [r for raw in _render(records, single=True) for r in assembler.feed(raw)]
    assert got == expected


def test_the_measured_podman_43_output():
    assembler = LogAssembler(["pwt-p", "pwt-q"])
    raw = ["pwt-p 2026-11-27T11:01:31.518567000Z part-one pwt-q 2026-11-27T11:01:31.736291293Z q-line",
           "pwt-p 2026-11-27T11:01:31.820022238Z part-two"]
    got = [r for line in raw for r in assembler.feed(line)]
    assert [(r.container, r.text) for r in got] == [("pwt-q", "q-line"), ("pwt-p", "part-one part-two")]


# ---------------------------------------------------------------- error-line matching

from hypothesis import example  # noqa: E402

from agent.config import DEFAULT_ERROR_PATTERNS  # noqa: E402
from agent.watcher import LogMatcher  # noqa: E402



@given(st.text(alphabet=st.sampled_from("abcdefilnoprstuyERFAILCDſK \t:-é"), max_size=60)
       | st.sampled_from(["ERROR: x", "unable to connect", "craſh", "FAILED", "permission  denied",
                          "Permission denied", "timeouts", "no problem here"]))
@example("craſh happened")
def test_the_default_pattern_prefilter_never_changes_the_answer(line):
    fast = LogMatcher(DEFAULT_ERROR_PATTERNS, ["ignore-me"])
    slow = LogMatcher(list(DEFAULT_ERROR_PATTERNS) + ["(?!)"], ["ignore-me"])  # no prefilter
    assert slow._words is None and fast._words is not None
    assert fast.is_error(line) == slow.is_error(line)
