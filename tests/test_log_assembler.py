"""The error-line matcher the log follow applies to every line (its prefilter is exact)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from agent.config import DEFAULT_ERROR_PATTERNS
from agent.log_follow import LogMatcher


# ---------------------------------------------------------------- error-line matching


@given(st.text(alphabet=st.sampled_from("abcdefilnoprstuyERFAILCDſK \t:-é"), max_size=60)
       | st.sampled_from(["ERROR: x", "unable to connect", "craſh", "FAILED", "permission  denied",
                          "Permission denied", "timeouts", "no problem here"]))
@example("craſh happened")
def test_the_default_pattern_prefilter_never_changes_the_answer(line):
    fast = LogMatcher(DEFAULT_ERROR_PATTERNS, ["ignore-me"])
    slow = LogMatcher(list(DEFAULT_ERROR_PATTERNS) + ["(?!)"], ["ignore-me"])  # no prefilter
    assert slow._words is None and fast._words is not None
    assert fast.is_error(line) == slow.is_error(line)
