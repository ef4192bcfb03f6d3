"""Redaction of secrets before anything reaches the store.

Each pattern's match is replaced by `[REDACTED]`, keeping group 1 when the pattern has
groups: `(rpcpassword\\s*=\\s*)\\S+` turns `rpcpassword=hunter2` into
`rpcpassword=[REDACTED]`. Patterns run in order, each over the previous one's output.

Redaction runs on every string value (not on JSON text, where an `\\S+` would eat the
closing quote and break the document), so it costs per observation. Most patterns
start with a keyword (`rpcpassword`, `authorization:`), and a regex search with
IGNORECASE has no fast literal scan in CPython's engine (~0.8 us per pattern on a
100-character line). So each pattern's longest run of required literal characters is
taken from its parse tree, and the regex runs only on text that contains that run
(lower-cased for IGNORECASE patterns, and then only on ASCII text, where case folding
is exactly str.lower()). The skip is exact: a pattern that could match is always run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

REDACTED = "[REDACTED]"


# What podwarden redacts unless the config says otherwise (agent.config uses these).
DEFAULT_PATTERNS = (
    r"(?i)(rpcpassword\s*[=:]\s*)\S+",
    r"(?i)(rpcauth\s*[=:]\s*)\S+",
    r"(?i)(authorization:\s*(?:bearer|basic)?\s*)\S+",
    r"(?i)(macaroon[\"'=:\s]+)[0-9a-f]{32,}",
    r"(?i)(grpc-metadata-macaroon:\s*)\S+",
    r"(?i)(password\s*[=:]\s*)\S+",
)


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: re.Pattern[str]
    replacement: str
    literal: str | None  # a string every match contains; None: always run the regex
    folded: bool  # literal is lower-cased and compared with lower-cased ASCII text


def _required_literal(pattern: re.Pattern[str]) -> tuple[str | None, bool]:
    """The longest run of literal characters every match of `pattern` must contain."""
    try:
        from re import _constants as sre
        from re import _parser as sre_parse

        tree = sre_parse.parse(pattern.pattern, pattern.flags)
    except Exception:  # a private module that moved or changed: just run the regex
        return None, False
    folded = bool(tree.state.flags & re.IGNORECASE)
    best: list[int] = []
    run: list[int] = []

    def walk(items: Any) -> None:
        nonlocal best, run
        for op, arg in items:
            if op is sre.LITERAL:
                run.append(arg)
                continue
            if op is sre.SUBPATTERN and not arg[1] and not arg[2]:
                walk(arg[3])  # a plain group is concatenated in place
                continue
            if len(run) > len(best):
                best = run
            run = []

    try:
        walk(tree)
    except Exception:
        return None, False
    if len(run) > len(best):
        best = run
    literal = "".join(map(chr, best))
    if not literal or (folded and not literal.isascii()):
        return None, False
    return (literal.lower() if folded else literal), folded


def _minimal(literals: Iterable[str | None]) -> tuple[str, ...]:
    """The literals not containing another one (text without "password" has no "rpcpassword")."""
    unique = set(filter(None, literals))
    return tuple(sorted(lit for lit in unique if not any(o != lit and o in lit for o in unique)))


class Redactor:
    """Compiled redaction patterns, applied to text and to JSON-ready values."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        """Compile `patterns`; raises re.error for an invalid one (config validates first)."""
        rules = []
        for source in patterns:
            regex = re.compile(source)
            replacement = r"\g<1>" + REDACTED if regex.groups else REDACTED
            literal, folded = _required_literal(regex)
            rules.append(_Rule(regex, replacement, literal, folded))
        self._rules = tuple(rules)
        self.patterns = tuple(rule.regex.pattern for rule in self._rules)
        # When every rule has a literal, most text is settled by a few `in` checks.
        gated = all(rule.literal is not None for rule in rules)
        self._folded_literals = _minimal(r.literal for r in rules if r.folded) if gated else None
        self._exact_literals = _minimal(r.literal for r in rules if not r.folded) if gated else None

    def __bool__(self) -> bool:
        return bool(self._rules)

    def text(self, text: str) -> str:
        """`text` with every pattern's matches replaced."""
        if self._folded_literals is not None and text.isascii():
            lowered = text.lower()
            for literal in self._folded_literals:
                if literal in lowered:
                    break
            else:
                for literal in self._exact_literals:
                    if literal in text:
                        break
                else:
                    return text
        folded: str | bool | None = None  # lower-cased text; False: not ASCII, no prefilter
        for rule in self._rules:
            if rule.literal is not None:
                if not rule.folded:
                    if rule.literal not in text:
                        continue
                else:
                    if folded is None:
                        # Only ASCII text folds exactly like str.lower(): elsewhere
                        # IGNORECASE also matches e.g. KELVIN SIGN for "k".
                        folded = text.lower() if text.isascii() else False
                    if folded is not False and rule.literal not in folded:
                        continue
            redacted = rule.regex.sub(rule.replacement, text)
            if redacted != text:
                text = redacted
                folded = None
        return text

    def value(self, value: Any) -> Any:
        """A JSON-ready value with every string in it (dict keys too) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value

    def naive(self, text: str) -> str:
        """The same result as `text`, without the literal prefilter (the reference for tests)."""
        for rule in self._rules:
            text = rule.regex.sub(rule.replacement, text)
        return text
