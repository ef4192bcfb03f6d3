"""Redaction of secrets before anything reaches the store.

Each pattern's match is replaced by `[REDACTED]`, keeping group 1 when the pattern has
groups: `(rpcpassword\\s*=\\s*)\\S+` turns `rpcpassword=hunter2` into
`rpcpassword=[REDACTED]`. Patterns run in order, each over the previous one's output,
and all of them again when one changed the text (a replacement can make an earlier
pattern match), until nothing changes.

Redaction runs on every string value (not on JSON text, where an `\\S+` would eat the
closing quote and break the document), so it costs per observation. Every pattern
needs a keyword (`password`, `authorization`, `://`), and a regex search with
IGNORECASE has no fast literal scan in CPython's engine (~0.6 us per pattern on a
100-character line). So each pattern's longest run of required literal characters is
taken from its parse tree, and the regex runs only on text that contains that run
(upper-cased for IGNORECASE patterns, with the few non-ASCII letters that IGNORECASE
matches with an ASCII one, like KELVIN SIGN for "k", folded too). The skip is exact: a
pattern that could match is always run.

Time: a pattern runs on text a container chose, so a pattern that backtracks stalls the
event loop (`(authorization:\\s*(?:bearer|basic)?\\s*)\\S+`, the old default, took 2.7 s
on 16,000 spaces). The defaults are written to run in linear time (possessive
quantifiers and atomic groups; tests/test_redact.py times them on adversarial lines) and
run on `re`. Any other pattern runs on the `regex` module with a timeout: each text gets
`budget` seconds for those patterns, and a text whose redaction runs out of time is
stored as `[REDACTED: redaction timed out]`, never unredacted; `timeouts` counts them.
A user pattern is written in `re` syntax (the config validates it with `re`); where
`regex` reads a construct differently (POSIX classes, fuzzy `{e<=1}`) its prefilter is
off, so the skip stays exact.

What the defaults redact, keeping the key or scheme so a reader knows what was there:

- a password (`password`, `passwd`, `passphrase`, `rpcpass`, `rpcpassword`, `pass`
  ending a compound key like `DB_PASS` or `--pass`) with a quoted value:
  `"password":"x"`, `password='x y'`, `\\"password\\":\\"x\\"`;
- the same keys assigned: `password=x`, `password = x`, `password:x` (no space after `:`),
  `--bitcoind.rpcpass=x`, `DB_PASS=x`;
- `password: x` (a colon, then space): the rule that keeps prose. When the key starts
  its line (a YAML or config dump) the rest of the line goes: `password: hunter2`,
  `password: correct horse`. Elsewhere the next token goes unless it is a plain word
  (letters, maybe with `'` or `-` inside, and one trailing `.,;:!?)`) followed by more
  words on the line: `Invalid password: user not found` stays, `msg password: hunter2
  ok`, `msg password: hunter` and `msg="wrong password: denied"` are redacted. So
  `msg password: correcthorse rejected` keeps `correcthorse`: the one miss this rule
  accepts to keep error messages readable. A bare `pass` (not `rpcpass`) never takes
  this rule (`PASS: test_login` is a test runner's);
- `rpcauth` with `=` or `:`, whatever follows (`user:salt$hash`);
- `Authorization` (and `Proxy-Authorization`) with `:` or `=`: the credentials after an
  optional scheme word (`Bearer`, `Basic`, `Token`, ...); a Digest header's parameters
  are left to the next rule;
- a Digest `response="<hex>"`;
- a macaroon: `macaroon` then `:`, `=`, quotes or spaces, then 32 or more hex or base64
  characters (`lndconnect://...&macaroon=AgEDbG5k...`), up to the next space, quote or `&`;
- `grpc-metadata-macaroon: <anything>`;
- a URL's password: `scheme://user:[REDACTED]@host/` (to the authority's last `@`).

The defaults are deterministic and idempotent: redacting redacted text changes nothing.
(A user pattern that times out on one machine may finish on a faster one.)
"""

from __future__ import annotations

import collections
import dataclasses
import re
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence, TypeVar

import regex

if TYPE_CHECKING:
    from machines.observations import Observation

REDACTED = "[REDACTED]"
TIMED_OUT = "[REDACTED: redaction timed out]"
DEFAULT_BUDGET = 0.05  # seconds per text for the patterns that run with a timeout
_MAX_PASSES = 4  # over all patterns, until one changes nothing (the defaults, fuzzed: 3 at most)

# Fields that hold podman's or podwarden's vocabulary (names, ids, states, stream names),
# never free text: not redacted, so that e.g. a bare 64-hex macaroon pattern cannot erase
# container ids. Everything else (log lines, excerpts, details, labels, images) is.
IDENTIFIER_FIELDS = frozenset({"target", "container", "container_id", "status", "health_status",
                               "health", "stream", "probe_type", "restart_policy"})

# Pieces of the default patterns. Every repeat that a failed match could backtrack into
# is possessive (`*+`, `++`) or atomic (`(?>...)`), so each pattern does bounded work per
# place where its keyword occurs and the search stays linear in the text.
_Q = r"""(?:\\?["'])?"""  # an optional quote, maybe escaped (JSON inside a JSON string)
_NOT_QUOTED = r"""(?!\\?["']|\s)"""  # a bare value follows (quoted ones are the first rule's)
_TOKEN = r"""(?:[^\s"\\]|\\[^\s"])++"""  # a bare value: up to a space or a (maybe escaped) "
_CREDENTIAL = r"""[^\s"'\\]++"""  # base64, hex, user:salt$hash: never a quote in it
# password, passphrase, passwd, rpcpass, or `pass` ending a compound key (DB_PASS, --pass):
# alone it is a word (`tests pass=12`, `bypass=true`)
_PASSWORD_KEY = r"pass(?:word|phrase|wd|(?<=rpcpass)|(?<=[_.-]pass))"
_PASSWORD_WORD = r"pass(?:word|phrase|wd|(?<=rpcpass))"  # not a bare `pass` (`PASS: test_x`)
# prose: a plain word, then more words on the line (`user not found`, `don't retry.`)
_PROSE = r"[^\W\d_]++(?:['-][^\W\d_]++)*+[.,;:!?)]?+[ \t]++(?=\S)"

# What podwarden redacts unless the config says otherwise (agent.config uses these).
DEFAULT_PATTERNS = (
    # a quoted password: everything up to the closing quote, spaces included
    r"(?i)(" + _PASSWORD_KEY + _Q + r"""[ \t]*+[:=][ \t]*+(\\?["']))(?:(?!\2)(?:[^\\\n]|\\.))++""",
    # password=value, password = value, password:value
    r"(?i)(" + _PASSWORD_KEY + _Q + r"(?:[ \t]*+=[ \t]*+|[ \t]*+:))" + _NOT_QUOTED + _TOKEN,
    # `password: value` starting a line (a YAML or config dump): the rest of the line
    r"""(?im)^([ \t]*+(?:-[ \t]++)?["']?[\w.-]*?""" + _PASSWORD_WORD
    + r"""["']?[ \t]*+:[ \t]++)(?!\\?["'])[^\n]++""",
    # `password: value` anywhere, unless prose follows (`Invalid password: user not found`)
    r"(?i)(" + _PASSWORD_WORD + _Q + r"""[ \t]*+:[ \t]++)(?!\\?["'])(?!""" + _PROSE + ")"
    + _TOKEN,
    # rpcauth=user:salt$hash
    r"(?i)(rpcauth" + _Q + r"[ \t]*+[=:][ \t]*+" + _Q + ")" + _CREDENTIAL,
    # Authorization: [scheme] credentials; a `name=` after the scheme is a Digest parameter list
    r"(?i)(authorization" + _Q + r"[ \t]*+[:=][ \t]*+" + _Q + r"(?>[a-z]++[ \t]++(?=\S)|)" + _Q
    + r")(?![\w-]++=[^=\s])" + _CREDENTIAL,
    # a Digest header's response (its other parameters are not secret)
    r"(?i)(\bresponse" + _Q + r"[ \t]*+=[ \t]*+" + _Q + r")[0-9a-f]{32,}+",
    # a macaroon in hex or base64 (not a path: `macaroon: /root/.lnd/...` stays)
    r"""(?i)(macaroon[\\"'=: \t]++)(?!/)(?=[a-z0-9+/_=-]{32})[^\s"'\\&]++""",
    # lnd's REST macaroon header, whatever its value
    r"(?i)(grpc-metadata-macaroon" + _Q + r"[ \t]*+[:=][ \t]*+" + _Q + ")" + _CREDENTIAL,
    # a URL's password, up to the authority's last @
    r"(://[^\s/?#@:]*+:)[^\s/?#]+(?=@)",
)
_TRUSTED = frozenset(DEFAULT_PATTERNS)  # linear by construction: run on `re`, no timeout


@dataclass(frozen=True, slots=True)
class _Rule:
    source: str
    regex: Any  # re.Pattern, or regex.Pattern when `timed`
    replacement: Any  # what re.sub takes: REDACTED, or a function keeping group 1
    literal: str | None  # a string every match contains; None: always run the regex
    folded: bool  # literal is compared with _fold(text) (upper-cased), not with the text
    timed: bool  # runs with the remaining time budget (the `regex` module)


def _mentions(node: Any, op: Any, code: int) -> bool:
    """Whether a parse tree (or part of one) holds the item (op, code) anywhere."""
    data = getattr(node, "data", node)  # a SubPattern holds its items in .data
    if isinstance(data, (list, tuple)):
        if len(data) == 2 and data[0] is op:
            return data[1] == code
        return any(_mentions(item, op, code) for item in data)
    return False


def _required_literal(pattern: re.Pattern[str], *, for_regex: bool = False) -> tuple[str | None, bool]:
    """The longest run of literal characters every match of `pattern` must contain.

    With `for_regex`, None where the `regex` module may read the pattern differently from
    `re`: a POSIX class (`[[:alpha:]]`) or fuzzy constraints (`(?:abc){e<=1}`), which `re`
    takes as literal characters.
    """
    if for_regex and "[:" in pattern.pattern:
        return None, False
    try:
        from re import _constants as sre
        from re import _parser as sre_parse

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tree = sre_parse.parse(pattern.pattern, pattern.flags)
    except Exception:  # a private module that moved or changed: just run the regex
        return None, False
    if for_regex and _mentions(tree, sre.LITERAL, ord("{")):
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
    return (literal.upper() if folded else literal), folded


def _minimal(literals: Iterable[str | None]) -> tuple[str, ...]:
    """The literals not containing another one (text without "password" has no "rpcpassword")."""
    unique = set(filter(None, literals))
    return tuple(sorted(lit for lit in unique if not any(o != lit and o in lit for o in unique)))


# The characters outside ASCII that IGNORECASE matches with an ASCII letter (in re or in
# regex; tests/test_redact.py checks every code point), with that letter: str.upper()
# turns the first and the last into no ASCII letter.
_ODD_CASE = {"\u0130": "I", "\u0131": "I", "\u017f": "S", "\u212a": "K"}
_ODD_CASE_TABLE = str.maketrans(_ODD_CASE)


def _fold(text: str) -> str:
    """`text` upper-cased so that an IGNORECASE literal occurs in it wherever it can match.

    Upper, not lower: `in` skips ahead past characters that share no bit of a 64-bit mask
    with the literal's, and lower-case letters share theirs with digits ("p" with "0"),
    which log lines are full of; upper-case letters share theirs with control characters.
    """
    if not text.isascii():
        for odd in _ODD_CASE:
            if odd in text:
                return text.translate(_ODD_CASE_TABLE).upper()
    return text.upper()


def _caseless(literal: str) -> bool:
    """Whether `literal` occurs in _fold(text) wherever it occurs in text."""
    return literal == literal.upper() == literal.lower() and not set(literal) & _ODD_CASE.keys()


def _keep_group_one(match: Any) -> str:
    return (match.group(1) or "") + REDACTED


_FREE_TEXT: dict[type, tuple[str, ...]] = {}


def _free_text_fields(cls: type) -> tuple[str, ...]:
    """The fields of an observation class that may hold free text (not identifiers)."""
    names = _FREE_TEXT.get(cls)
    if names is None:
        names = _FREE_TEXT[cls] = tuple(f.name for f in dataclasses.fields(cls)
                                        if f.name not in IDENTIFIER_FIELDS)
    return names


ObservationT = TypeVar("ObservationT", bound="Observation")


class Redactor:
    """Compiled redaction patterns, applied to text, JSON-ready values and observations."""

    def __init__(self, patterns: Iterable[str] = (), *, budget: float = DEFAULT_BUDGET) -> None:
        """Compile `patterns`; raises re.error for an invalid one (config validates first).

        `budget` is the time in seconds one text may spend in the patterns that are not
        defaults (those run with a timeout); the defaults run without one.
        """
        rules = []
        for source in patterns:
            with warnings.catch_warnings():  # "possible nested set": regex reads [[:alpha:]] as POSIX
                warnings.simplefilter("ignore", FutureWarning)
                compiled = checked = re.compile(source)  # `re` syntax, what the config validated
            timed = source not in _TRUSTED
            if timed:
                try:
                    compiled = regex.compile(source)
                except regex.error as exc:
                    raise re.error(f"the regex module cannot compile it: {exc}", source) from None
            # a function, not the template r"\g<1>[REDACTED]": re parses a template in
            # Python on every sub() call (~1 us), a function runs only on a match
            replacement = _keep_group_one if compiled.groups else REDACTED
            literal, folded = _required_literal(checked, for_regex=timed)
            folded = folded or (literal is not None and _caseless(literal))  # "://" too
            rules.append(_Rule(source, compiled, replacement, literal, folded, timed))
        self._rules = tuple(rules)
        self.patterns = tuple(rule.source for rule in self._rules)
        self.budget = budget
        # Texts whose redaction ran out of time, by the pattern that was running.
        self.timeouts_by_pattern: collections.Counter[str] = collections.Counter()
        # When every rule has a literal, most text is settled by a few `in` checks: the
        # gates, each a literal no other contains, with the rules whose literal holds it
        # (text without "pass" has no "rpcpass"). Text that passes a gate runs its rules.
        self._folded_gates: tuple[tuple[str, tuple[int, ...]], ...] | None = None
        self._exact_gates: tuple[tuple[str, tuple[int, ...]], ...] = ()
        if all(rule.literal is not None for rule in rules):
            gates: dict[bool, list[tuple[str, tuple[int, ...]]]] = {True: [], False: []}
            for folded in (True, False):
                for literal in _minimal(r.literal for r in rules if r.folded is folded):
                    gated = tuple(i for i, r in enumerate(rules)
                                  if r.folded is folded and literal in r.literal)  # type: ignore[operator]
                    gates[folded].append((literal, gated))
            self._folded_gates, self._exact_gates = tuple(gates[True]), tuple(gates[False])

    def __bool__(self) -> bool:
        return bool(self._rules)

    @property
    def timeouts(self) -> int:
        """How many texts were stored as TIMED_OUT because a pattern ran out of time."""
        return self.timeouts_by_pattern.total()

    def text(self, text: str) -> str:
        """`text` with every pattern's matches replaced (the same object when none
        matched); TIMED_OUT when the patterns ran out of time on it."""
        folded = text.upper() if text.isascii() else _fold(text)
        if self._folded_gates is not None:  # the common case, inline: no gate passed
            for literal, _ in self._folded_gates:
                if literal in folded:
                    break
            else:
                for literal, _ in self._exact_gates:
                    if literal in text:
                        break
                else:
                    return text
        return self._redact(text, folded, self._positions(text, folded))

    def _positions(self, text: str, folded: str) -> Sequence[int]:
        """The rules that may match `text`, in order: those whose gate it passes."""
        if self._folded_gates is None:
            return range(len(self._rules))
        positions: Sequence[int] = ()
        for literal, gated in self._folded_gates:
            if literal in folded:
                positions = tuple(sorted({*positions, *gated})) if positions else gated
        for literal, gated in self._exact_gates:
            if literal in text:
                positions = tuple(sorted({*positions, *gated})) if positions else gated
        return positions

    def _redact(self, text: str, folded: str, positions: Sequence[int]) -> str:
        """`text` redacted by the rules at `positions`, then by all of them again until
        nothing changes."""
        rules = self._rules
        started: float | None = None
        for _ in range(_MAX_PASSES):
            changed, k = False, 0
            while k < len(positions):
                position = positions[k]
                k += 1
                rule = rules[position]
                if rule.literal is not None and rule.literal not in (folded if rule.folded else text):
                    continue
                if not rule.timed:
                    redacted = rule.regex.sub(rule.replacement, text)
                else:
                    if started is None:
                        started = time.perf_counter()
                    remaining = self.budget - (time.perf_counter() - started)
                    try:
                        if remaining <= 0:
                            raise TimeoutError
                        redacted = rule.regex.sub(rule.replacement, text, timeout=remaining)
                    except TimeoutError:
                        self.timeouts_by_pattern[rule.source] += 1
                        return TIMED_OUT
                if redacted != text:
                    text, folded, changed = redacted, _fold(redacted), True
                    # the replacement may have made another rule's literal: check them all
                    positions, k = range(position + 1, len(rules)), 0
            if not changed:
                break
            # A replacement can make an earlier pattern match (`rpcauth":"x'@` inside a
            # URL's password): run them again until nothing changes, so that redacting
            # redacted text changes nothing.
            positions = self._positions(text, folded)
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

    def observation(self, obs: ObservationT) -> ObservationT:
        """`obs` with every free-text field redacted (IDENTIFIER_FIELDS left alone), and
        EventObs.attributes' keys and values; `obs` itself when nothing changed."""
        if not self._rules:
            return obs
        changes: dict[str, Any] = {}
        for name in _free_text_fields(type(obs)):
            value = getattr(obs, name)
            if type(value) is str:
                redacted: Any = self.text(value)
            elif type(value) is tuple:  # EventObs.attributes: (key, value) pairs
                pairs = [(self.text(k), self.text(v)) if type(k) is str and type(v) is str else (k, v)
                         for k, v in value]
                if all(new[0] is old[0] and new[1] is old[1] for new, old in zip(pairs, value)):
                    continue
                redacted = tuple(pairs)
            else:
                continue
            if redacted is not value:
                changes[name] = redacted
        return dataclasses.replace(obs, **changes) if changes else obs

    def naive(self, text: str) -> str:
        """The same result as `text`, without the literal prefilter or the time budget
        (the reference for tests)."""
        for _ in range(_MAX_PASSES):
            before = text
            for rule in self._rules:
                text = rule.regex.sub(rule.replacement, text)
            if text == before:
                break
        return text
