"""Redaction: every secret form, the prose it leaves alone, linear time on adversarial
lines, the time budget for user patterns, idempotence and observations."""

from __future__ import annotations

import re
import string
import sys
import time
from typing import Callable

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

from machines.observations import ActionObs, AgentObs, EventObs, LogObs, ProbeObs, SnapshotObs
from store.redact import (
    _ODD_CASE,
    DEFAULT_PATTERNS,
    IDENTIFIER_FIELDS,
    REDACTED,
    TIMED_OUT,
    Redactor,
)

DEFAULTS = Redactor(DEFAULT_PATTERNS)
MACAROON_HEX = "0201036c6e6402f801030a10" + "deadbeef" * 8
MACAROON_B64 = "AgEDbG5kAvgBAwoQHIxV3uGn3XwMSpIWT7SGhhIBMBoWCgdhZGRyZXNzEgRyZWFk_-Xq9"
DIGEST_RESPONSE = "6629fae49393a05397450978507c4ef1"
DIGEST = ('Authorization: Digest username="bob", realm="lnd", nonce="dcd98b7102dd2f0e", '
          f'uri="/v1/getinfo", response="{DIGEST_RESPONSE}", opaque="5ccc069c403ebaf9"')

# (line, what the store keeps, the secret that must be gone)
SECRET_FORMS = [
    # new in this change
    ('{"password":"hunter2"}', '{"password":"[REDACTED]"}', "hunter2"),
    ('{"rpcpassword":"hunter 2 go"}', '{"rpcpassword":"[REDACTED]"}', "hunter 2 go"),
    ("{'password': 'it\\'s me'}", "{'password': '[REDACTED]'}", "me"),
    ('msg="{\\"password\\":\\"hunter2\\"}"', 'msg="{\\"password\\":\\"[REDACTED]\\"}"', "hunter2"),
    ("lnd --bitcoind.rpcpass=s3cretRpc --bitcoind.rpcuser=lnd",
     "lnd --bitcoind.rpcpass=[REDACTED] --bitcoind.rpcuser=lnd", "s3cretRpc"),
    ("GET http://user:pass@host/x 200", "GET http://user:[REDACTED]@host/x 200", "pass@"),
    ("redis://:s3cret@redis:6379/0", "redis://:[REDACTED]@redis:6379/0", "s3cret"),
    ("http://u:p@ss@host/", "http://u:[REDACTED]@host/", "p@ss"),
    ("Authorization=Bearer eyJhbGciOi.eyJzdWIi.SflKxw", "Authorization=Bearer [REDACTED]", "eyJhbGciOi"),
    ("Authorization: Token abc123def", "Authorization: Token [REDACTED]", "abc123def"),
    (DIGEST, DIGEST.replace(DIGEST_RESPONSE, REDACTED), DIGEST_RESPONSE),
    (f"lndconnect://node:10009?cert=MIICJzCCAc2gAwIBAgIQ&macaroon={MACAROON_B64}",
     f"lndconnect://node:10009?cert=MIICJzCCAc2gAwIBAgIQ&macaroon={REDACTED}", MACAROON_B64),
    (f'{{"macaroon": "{MACAROON_B64}", "host": "x"}}', '{"macaroon": "[REDACTED]", "host": "x"}',
     MACAROON_B64),
    ("config: password: hunter2 loaded", "config: password: [REDACTED] loaded", "hunter2"),
    ("password: correct horse battery", "password: [REDACTED]", "correct horse"),
    ("  - db_password: correcthorse", "  - db_password: [REDACTED]", "correcthorse"),
    ("PASSWORD=hunter2 DB_PASS=x1 passwd:y2 passphrase = z3",
     "PASSWORD=[REDACTED] DB_PASS=[REDACTED] passwd:[REDACTED] passphrase = [REDACTED]", "hunter2"),
    ('password="two words"', 'password="[REDACTED]"', "two words"),
    ("rpcpassword: hunter", "rpcpassword: [REDACTED]", "hunter"),
    ("x rpcpass: hunter2 ok", "x rpcpass: [REDACTED] ok", "hunter2"),
    # covered before this change too
    ("bitcoind: rpcpassword=hunter2rpc loaded", "bitcoind: rpcpassword=[REDACTED] loaded", "hunter2rpc"),
    ("RPCPASSWORD : hunter2rpc", "RPCPASSWORD : [REDACTED]", "hunter2rpc"),
    ("rpcauth=alice:c8b2$9f1e2d", "rpcauth=[REDACTED]", "c8b2$9f1e2d"),
    ("GET /v1/getinfo Authorization: Bearer xyzTok3n", "GET /v1/getinfo Authorization: Bearer [REDACTED]",
     "xyzTok3n"),
    ("Authorization: Basic dXNlcjpwYXNz==", "Authorization: Basic [REDACTED]", "dXNlcjpwYXNz"),
    ("curl -H 'Authorization: Bearer xyzTok3n'", "curl -H 'Authorization: Bearer [REDACTED]'", "xyzTok3n"),
    (f"lnd: macaroon {MACAROON_HEX} accepted", "lnd: macaroon [REDACTED] accepted", MACAROON_HEX),
    (f"Grpc-Metadata-macaroon: {MACAROON_HEX}", "Grpc-Metadata-macaroon: [REDACTED]", MACAROON_HEX),
    ("grpc-metadata-macaroon: 0201", "grpc-metadata-macaroon: [REDACTED]", "0201"),
]


@pytest.mark.parametrize("line, stored, secret", SECRET_FORMS)
def test_every_secret_form_is_redacted_and_its_key_kept(line: str, stored: str, secret: str) -> None:
    assert DEFAULTS.text(line) == stored
    assert secret not in stored
    assert DEFAULTS.naive(line) == stored


# Prose and vocabulary that looks like a key but holds no secret: stored as it is.
LEFT_ALONE = [
    "Invalid password: user not found",
    "login failed: wrong password: try again.",
    "x password: correcthorse rejected",  # the documented miss: a plain word after a mid-line `password: `
    "Password authentication failed for user \"bob\"",
    "--- PASS: TestLogin (0.01s)",
    "PASS: test_login",
    "bypass=true compass=north passes=3 tests pass=12 fail=0",
    "health check passed: ok",
    "password_file=/run/secrets/pw passwordless: true",
    "GET http://electrs:50001/blocks/tip/height 200",
    "ssh://git@github.com/x.git",
    "macaroon: /root/.lnd/data/chain/bitcoin/mainnet/admin.macaroon",
    "macaroon verification failed",
    "response=200 responses: 12",
    "Authorization failed for user bob",
    "rpcauth not set",
]


@pytest.mark.parametrize("line", LEFT_ALONE)
def test_ordinary_text_is_left_alone(line: str) -> None:
    assert DEFAULTS.text(line) is line
    assert DEFAULTS.naive(line) == line


def test_password_colon_rule_both_sides() -> None:
    """`password: value` is redacted at a line's start, and elsewhere unless prose follows."""
    assert DEFAULTS.text("password: hunter2") == "password: [REDACTED]"
    assert DEFAULTS.text("password: hunter") == "password: [REDACTED]"  # starts the line: a dump
    assert DEFAULTS.text("probe said\npassword: hunter") == "probe said\npassword: [REDACTED]"
    assert DEFAULTS.text("msg password: hunter2") == "msg password: [REDACTED]"
    assert DEFAULTS.text("msg password: s3cret! ok") == "msg password: [REDACTED] ok"
    assert DEFAULTS.text("msg password: hunter") == "msg password: [REDACTED]"  # ends the line
    assert DEFAULTS.text('msg="wrong password: denied"') == 'msg="wrong password: [REDACTED]"'
    assert DEFAULTS.text("msg password: hunter now") == "msg password: hunter now"  # prose
    assert DEFAULTS.text("Invalid password: don't retry.") == "Invalid password: don't retry."
    assert DEFAULTS.text("msg password:hunter") == "msg password:[REDACTED]"  # no space: a value


def test_defaults_are_public_strings_that_re_compiles() -> None:
    assert isinstance(DEFAULT_PATTERNS, tuple) and all(isinstance(p, str) for p in DEFAULT_PATTERNS)
    for pattern in DEFAULT_PATTERNS:
        re.compile(pattern)  # the config validates patterns with re
    assert DEFAULTS.patterns == DEFAULT_PATTERNS and DEFAULTS and not Redactor()


def test_invalid_pattern_raises_re_error() -> None:
    with pytest.raises(re.error):
        Redactor(["(unclosed"])


# -- linear time ---------------------------------------------------------------------------


def fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


# Lines built to make a pattern backtrack: keywords then long runs of separators, repeated
# keywords, near misses, long values that fail at the end.
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "authorization then spaces (the old 2.7 s)": lambda n: "Authorization: " + " " * n,
    "authorization bearer then spaces": lambda n: "authorization: bearer" + " " * n,
    "authorization then unicode spaces": lambda n: "Authorization:" + "\u3000" * n,
    "authorization= then a parameter-like run": lambda n: "authorization=" + "a" * n + "=x",
    "authorization repeated": lambda n: fill("authorization: ", n),
    "authorization= repeated": lambda n: fill("Authorization=", n),
    "authorization scheme repeated": lambda n: fill("authorization: bearer ", n),
    "password then spaces": lambda n: "password" + " " * n,
    "password: then spaces": lambda n: "password:" + " " * n,
    "password = spaces then a quote": lambda n: "password =" + " " * n + '"',
    "password repeated": lambda n: fill("password", n),
    "password: repeated": lambda n: fill("password:", n),
    "password: space repeated": lambda n: fill("password: ", n),
    "password: then one long word": lambda n: "x password: " + "a" * n,
    "password: word repeated": lambda n: "x " + fill("password: aaaa ", n),
    "quoted password of backslashes": lambda n: 'password="' + "\\" * n,
    "quoted password of escaped quotes": lambda n: 'password="' + '\\"' * (n // 2),
    "pass repeated": lambda n: fill("pass", n),
    "pass lines": lambda n: fill("pass\n", n),
    "indent then a near miss": lambda n: " " * n + "passwor",
    "a long word then password": lambda n: "a" * n + "password",
    "near-miss yaml lines": lambda n: fill("  - passwor\n", n),
    "dashes then password": lambda n: fill("- ", n) + "password",
    "tabs and newlines after password:": lambda n: fill("password:\t\t\n", n),
    "near misses of every keyword": lambda n: fill(
        "passwor authorizatio macaroo rpcaut respons :/ rpcpas ", n),
    "rpcauth then spaces": lambda n: "rpcauth" + " " * n,
    "rpcpass= repeated": lambda n: fill("rpcpass=", n),
    "macaroon then spaces": lambda n: "macaroon" + " " * n + "zz",
    "macaroon then separators": lambda n: "macaroon" + fill("=: \t'\"", n),
    "macaroon repeated": lambda n: fill("macaroon ", n),
    "macaroon with 31 hex repeated": lambda n: fill("macaroon " + "a" * 31 + " ", n),
    "macaroon then one long value": lambda n: "macaroon " + "a" * n,
    "grpc-metadata-macaroon then spaces": lambda n: "grpc-metadata-macaroon:" + " " * n,
    "response= with 31 hex repeated": lambda n: fill("response=" + "a" * 31 + " ", n),
    "response= repeated": lambda n: fill("response=", n),
    "url without @": lambda n: "http://u:" + "p" * n,
    "url of colons": lambda n: "://" + ":" * n,
    "url start repeated": lambda n: fill("://a:", n),
    "url with many @": lambda n: "://u:" + fill("@x", n),
    "a long scheme": lambda n: "a" * n + "://",
    "every keyword repeated": lambda n: fill(
        "password: rpcauth= authorization: bearer macaroon response= grpc-metadata-macaroon: ://u: ", n),
}


def best_time(redact: Callable[[str], str], text: str, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        redact(text)
        best = min(best, time.perf_counter() - started)
    return best


def growth(redact: Callable[[str], str], make: Callable[[int], str], size: int) -> float:
    """How much longer `redact` takes when the input doubles (linear: about 2, quadratic: 4).

    Other processes only ever make a run slower: small and large runs alternate so they
    share the machine's load, each keeps its best, and a ratio over 3 is measured again.
    """
    small, large = make(size), make(2 * size)
    ratio = float("inf")
    for _ in range(3):
        small_best = large_best = float("inf")
        for _ in range(3):
            small_best = min(small_best, best_time(redact, small, 1))
            large_best = min(large_best, best_time(redact, large, 1))
        ratio = min(ratio, large_best / max(small_best, 1e-6))
        if ratio < 3:
            break
    return ratio


@pytest.mark.parametrize("make", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_every_default_is_linear_on_adversarial_lines(make: Callable[[int], str]) -> None:
    # naive runs every pattern on the whole text (no prefilter to hide behind)
    assert growth(DEFAULTS.naive, make, 100_000) < 3
    assert best_time(DEFAULTS.naive, make(1_000_000), rounds=1) < 2.0  # ~0.1 s measured
    assert best_time(DEFAULTS.text, make(1_000_000), rounds=1) < 2.0


def test_the_growth_check_catches_the_old_quadratic_default() -> None:
    old = Redactor([r"(?i)(authorization:\s*(?:bearer|basic)?\s*)\S+"], budget=60)
    assert growth(old.naive, lambda n: "Authorization: " + " " * n, 1500) > 3


# -- the time budget for user patterns -----------------------------------------------------


def test_a_catastrophic_user_pattern_is_cut_off_and_nothing_leaks() -> None:
    redactor = Redactor([*DEFAULT_PATTERNS, r"(a|aa)+$"], budget=0.05)
    line = "rpcpassword=hunter2 " + "a" * 40 + "b"  # (a|aa)+$ backtracks exponentially here
    started = time.perf_counter()
    assert redactor.text(line) == TIMED_OUT  # never the line, nor half of it redacted
    assert time.perf_counter() - started < 0.5
    assert redactor.timeouts == 1 and redactor.timeouts_by_pattern == {r"(a|aa)+$": 1}
    assert redactor.text("nothing for it here") == "nothing for it here"  # has no "a" run: fast
    assert redactor.text("a" * 40 + "c") == TIMED_OUT and redactor.timeouts == 2  # a fresh budget each text


def test_the_classic_nested_quantifier_is_bounded() -> None:
    redactor = Redactor([r"(a+)+$"], budget=0.05)  # catastrophic in re; regex cuts it short
    started = time.perf_counter()
    assert redactor.text("a" * 40 + "b") in ("a" * 40 + "b", TIMED_OUT)
    assert time.perf_counter() - started < 0.5


def test_slow_user_patterns_cost_at_most_the_budget_per_text() -> None:
    redactor = Redactor([r"(x|xx)+y", r"(a|aa)+$"], budget=0.02)
    lines = ["x" * 60 + " " + "a" * 60 + "b"] * 20
    started = time.perf_counter()
    assert [redactor.text(line) for line in lines] == [TIMED_OUT] * 20
    assert time.perf_counter() - started < 20 * 0.02 + 1.0
    assert redactor.timeouts == 20


def test_defaults_never_time_out_even_with_no_budget() -> None:
    redactor = Redactor(DEFAULT_PATTERNS, budget=0)  # the defaults run on re, linear
    spaces = " " * 100_000
    assert redactor.text(f"Authorization: {spaces}x") == f"Authorization: {spaces}{REDACTED}"
    assert redactor.timeouts == 0


def test_user_patterns_keep_their_prefilter_and_their_meaning() -> None:
    # regex reads these differently from re: their prefilter is off, so text() == naive()
    for pattern, line, stored in [(r"pin=[[:digit:]]{4}", "pin=1234", REDACTED),
                                  (r"(?:secret){e<=1}", "my sekret", f"my {REDACTED}"),
                                  (r"(token=)\w+", "token=abc", f"token={REDACTED}")]:
        redactor = Redactor([pattern])
        assert redactor.text(line) == redactor.naive(line) == stored, pattern


def test_the_odd_case_table_is_every_code_point_ignorecase_maps_to_ascii() -> None:
    """The prefilter folds text with str.upper() plus _ODD_CASE: exact only if these are
    all the non-ASCII characters that match an ASCII letter under IGNORECASE."""
    letters = set(string.ascii_uppercase)
    pattern = "(?i)[a-z]|" + "|".join(string.ascii_lowercase)  # a class and literals
    engines = [re.compile(pattern), regex.compile(pattern)]
    needed = {}
    for code in range(128, sys.maxunicode + 1):
        char = chr(code)
        if char.upper() not in letters and any(engine.fullmatch(char) for engine in engines):
            needed[char] = next(c for c in string.ascii_uppercase
                                if re.fullmatch(f"(?i){c}", char) or regex.fullmatch(f"(?i){c}", char))
    assert needed == {c: f for c, f in _ODD_CASE.items() if c.upper() != f}


# -- idempotence, determinism, the prefilter ------------------------------------------------

# Text made of the patterns' own pieces, in any case and order, with the characters that
# end values (quotes, backslashes, spaces, newlines, &, @, /) and odd case mixed in.
_ODD = {"s": ["\u017f"], "k": ["\u212a"], "i": ["\u0130", "\u0131"]}


def case_variants(word: str) -> st.SearchStrategy[str]:
    return st.tuples(*[st.sampled_from([c.lower(), c.upper(), *_ODD.get(c.lower(), [])])
                       for c in word]).map("".join)


keywords = st.sampled_from(["password", "pass", "rpcpass", "rpcpassword", "passwd", "rpcauth",
                            "authorization", "bearer", "basic", "token", "digest", "response",
                            "macaroon", "grpc-metadata-macaroon", "username"])
pieces = (keywords.flatmap(case_variants)
          | st.sampled_from(["=", ":", ": ", " ", "  ", "\t", "\n", '"', "'", "\\", '\\"', "@", "/",
                             "://", "http://u:", "&", ",", ".", "-", "- ", "deadbeef" * 4, "0123456789abcdef",
                             "AgEDbG5k" * 4, "hunter2", "user", "x", "[REDACTED]", "\u00e9", "="]))
secretish = st.lists(pieces | st.text(max_size=3), max_size=14).map("".join)


AGAIN = Redactor(DEFAULT_PATTERNS)


@settings(max_examples=2000, deadline=None)
@given(secretish)
# a later pattern's replacement that lets an earlier one match: found by fuzzing
@example('://"=bearerabc==,rpcauth":"it\'s@')
@example('  http://u"=proxy-authorization":"it\'s@://@Token \'q\'@rpcpasswordDigest @')
def test_redaction_is_idempotent_and_exact(text: str) -> None:
    once = DEFAULTS.text(text)
    assert DEFAULTS.text(once) == once
    assert DEFAULTS.naive(text) == once  # the prefilter skips only what cannot match
    assert AGAIN.text(text) == once  # deterministic: another redactor, the same text


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([*DEFAULT_PATTERNS, r"\b[0-9a-f]{64}\b", r"(?x) pass \s* word",
                                 r"(?i:auth)orization", r"secret(?=s)", r"[[:alpha:]]{3}\d",
                                 r"(?i)ED\]", r"(?i)k+"]),
                min_size=1, max_size=5, unique=True),
       secretish)
def test_prefiltered_redaction_equals_plain_substitution(patterns: list[str], text: str) -> None:
    redactor = Redactor(patterns, budget=10)
    assert redactor.text(text) == redactor.naive(text)


secrets = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/_-.$!%", min_size=6,
                  max_size=30).filter(lambda s: re.search(r"\d", s) is not None)
FORMS = ["password={}", "password = {}", "PASSWORD:{}", '"password": "{}"', "'passwd': '{}'",
         '{{\\"password\\":\\"{}\\"}}', "x password: {} y", "password: {}", "--bitcoind.rpcpass={}",
         "rpcpassword: {}", "rpcauth={}", "Authorization: Bearer {}", "authorization={}",
         "Authorization: Token {}", "Proxy-Authorization: Basic {}", "grpc-metadata-macaroon: {}",
         "http://user:{}@host/", "env DB_PASS={} ok", "cli --pass={}"]


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(FORMS), secrets, st.sampled_from(["", "log: ", "2024-05-01 INFO "]),
       st.sampled_from(["", " done", "\n", '"', ", next=1"]))
def test_no_secret_survives_its_form(form: str, secret: str, before: str, after: str) -> None:
    if form.startswith("http"):
        secret = secret.replace("/", "%2F")  # a URL's password has no bare /: it would end the authority
    line = before + form.format(secret) + after
    stored = DEFAULTS.text(line)
    assert secret not in stored and REDACTED in stored, (line, stored)


# -- observations --------------------------------------------------------------------------

CID = "deadbeef" * 8  # a container id is 64 hex, like a macaroon


def test_observation_redacts_free_text_of_every_kind_and_leaves_identifiers() -> None:
    redactor = Redactor([*DEFAULT_PATTERNS, r"\b[0-9a-f]{64}\b"])
    secret = "password=hunter2"
    cases = [
        (EventObs("n", "lnd", 1, CID, "start", image=f"img {secret}",
                  attributes=(("env", secret), ("password=k", "v"), ("name", "lnd"))),
         dict(image="img password=[REDACTED]",
              attributes=(("env", "password=[REDACTED]"), ("password=[REDACTED]", "v"), ("name", "lnd")))),
        (LogObs("n", "lnd", 1, f"{secret} {CID}", stream="stderr", seq=3),
         dict(line=f"password=[REDACTED] {REDACTED}")),
        (SnapshotObs("n", "lnd", 1, True, CID, "running", "healthy", image=f"x {secret}",
                     restart_policy="always"),
         dict(image="x password=[REDACTED]")),
        (ProbeObs("n", "lnd", 1, "rpc", "exec", False, excerpt=secret, detail=f"Authorization: Bearer {CID}"),
         dict(excerpt="password=[REDACTED]", detail="Authorization: Bearer [REDACTED]")),
        (ActionObs("n", "lnd", 1, f"exec {secret}", detail=secret),
         dict(action="exec password=[REDACTED]", detail="password=[REDACTED]")),
        (AgentObs("n", "", 1, "connected", detail="ssh://u:hunter2@h/"),
         dict(detail="ssh://u:[REDACTED]@h/")),
    ]
    for obs, changed in cases:
        redacted = redactor.observation(obs)
        assert type(redacted) is type(obs)
        for name in type(obs).__dataclass_fields__:
            expected = changed.get(name, getattr(obs, name))
            assert getattr(redacted, name) == expected, (type(obs).__name__, name)
        for name in IDENTIFIER_FIELDS & set(type(obs).__dataclass_fields__):
            assert getattr(redacted, name) is getattr(obs, name)


def test_observation_returns_the_same_object_when_nothing_changes() -> None:
    plain = [EventObs("n", "lnd", 1, CID, "start", image="img", attributes=(("name", "lnd"),)),
             LogObs("n", "lnd", 1, "UpdateTip: new best=00000 height=800000"),
             SnapshotObs("n", "lnd", 1, True, CID, "running"),
             ProbeObs("n", "lnd", 1, "rpc", "exec", True, excerpt="{}"),
             ActionObs("n", "lnd", 1, "restart"), AgentObs("n", "", 1, "connected")]
    for obs in plain:
        assert DEFAULTS.observation(obs) is obs
        assert Redactor().observation(obs) is obs


def test_observation_fails_safe_per_field_on_timeout() -> None:
    redactor = Redactor([r"(a|aa)+$"], budget=0.02)
    obs = ProbeObs("n", "lnd", 1, "rpc", "exec", False, excerpt="a" * 40 + "b", detail="fine")
    assert redactor.observation(obs) == ProbeObs("n", "lnd", 1, "rpc", "exec", False,
                                                 excerpt=TIMED_OUT, detail="fine")


def test_identifier_fields_name_real_fields() -> None:
    fields = set()
    for cls in (EventObs, LogObs, SnapshotObs, ProbeObs, ActionObs, AgentObs):
        fields |= set(cls.__dataclass_fields__)
    assert IDENTIFIER_FIELDS <= fields
    assert isinstance(IDENTIFIER_FIELDS, frozenset)
