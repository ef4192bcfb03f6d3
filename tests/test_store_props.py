"""Properties of the store on real SQLite files: round trips, event dedupe, redaction."""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machines.observations import (
    ActionObs,
    AgentObs,
    EventObs,
    LogObs,
    ProbeObs,
    SnapshotObs,
    obs_data,
    obs_to_json,
)
from store.redact import DEFAULT_PATTERNS
from store import Redactor, StoreReader, StoreWriter
from store.writer import COLUMN_FIELDS_BY_KIND, observation_row

DB_SETTINGS = settings(max_examples=60, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

texts = st.text(max_size=40)  # any unicode but surrogates: control characters, NUL, emoji
big = st.integers(min_value=-(2**62), max_value=2**62)
at_ns = st.integers(min_value=0, max_value=2**62)
maybe_int = st.none() | big
floats = st.floats(allow_nan=False, allow_infinity=False)
names = st.sampled_from(["bitcoind", "lnd", "electrs", ""]) | texts
targets = st.sampled_from(["node1", "node2"]) | texts
attributes = st.dictionaries(texts, texts, max_size=4).map(lambda d: tuple(sorted(d.items())))

events = st.builds(EventObs, targets, names, at_ns, texts, texts, maybe_int, st.none() | texts,
                   texts, attributes)
logs = st.builds(LogObs, targets, names, at_ns, texts, texts, st.booleans(), st.integers(0, 3))
snapshots = st.builds(SnapshotObs, targets, names, at_ns, st.booleans(), texts, texts,
                      st.none() | texts, maybe_int, big, big, big, big, texts, big, texts,
                      st.booleans())
probes = st.builds(ProbeObs, targets, names, at_ns, texts, texts, st.booleans(), floats, texts, texts)
actions = st.builds(ActionObs, targets, names, at_ns, texts, texts, st.booleans(), st.booleans())
agents = st.builds(AgentObs, targets, names, at_ns, texts, texts)
observations = st.one_of(events, logs, snapshots, probes, actions, agents)


def event_key(obs) -> tuple:
    return (obs.target, obs.container_id, obs.status, obs.at_ns)


def log_key(obs) -> tuple:
    """A log line's identity: its place (seq) in its stamp, not its text."""
    return (obs.target, obs.container, obs.at_ns, obs.seq)


def write_and_read(items: list, patterns: list[str] = ()) -> tuple[list[int], list]:
    """Write `items` through a StoreWriter into a fresh file; read them all back."""
    with tempfile.TemporaryDirectory(prefix="pw-prop-") as tmp:
        db = Path(tmp) / "pw.db"

        async def write() -> list[int]:
            async with StoreWriter.open(db, patterns, batch_size=7) as writer:
                return [writer.add(obs) for obs in items]

        ids = asyncio.run(write())
        with StoreReader(db, page_size=5) as reader:
            return ids, [(rec.id, rec.obs) for rec in reader.observation_records()]


@DB_SETTINGS
@given(st.lists(observations, max_size=30))
def test_any_observations_round_trip(items: list) -> None:
    ids, stored = write_and_read(items)
    first_of_key: dict[tuple, int] = {}
    expected = []
    for obs_id, obs in zip(ids, items):
        if obs.kind == "event":
            key = event_key(obs)
            if key in first_of_key:  # a repeated event is the stored one, not a new row
                assert obs_id == first_of_key[key]
                continue
            first_of_key[key] = obs_id
        if obs.kind == "log":
            key = ("log",) + log_key(obs)
            if key in first_of_key:  # the same line read again: not stored twice
                continue
            first_of_key[key] = obs_id
        expected.append((obs_id, obs))
    expected.sort(key=lambda pair: (pair[1].at_ns, pair[0]))
    assert stored == expected


@DB_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["n1", "n2"]), st.sampled_from(["c" * 64, "d" * 64]),
                          st.sampled_from(["start", "died", "health_status"]),
                          st.integers(0, 3), texts), max_size=60))
def test_event_dedupe_holds_for_any_sequence_with_repeats(spec: list) -> None:
    items = [EventObs(target, "ctr", at, cid, status, image=image)
             for target, cid, status, at, image in spec]
    ids, stored = write_and_read(items)
    by_key: dict[tuple, tuple[int, EventObs]] = {}
    for obs_id, obs in zip(ids, items):
        by_key.setdefault(event_key(obs), (obs_id, obs))
        assert by_key[event_key(obs)][0] == obs_id  # the same key always gets the same id
    assert sorted(stored, key=lambda p: p[0]) == sorted(by_key.values(), key=lambda p: p[0])
    assert len({event_key(obs) for _, obs in stored}) == len(stored)


@settings(max_examples=300, deadline=None)
@given(observations)
def test_stored_data_is_what_obs_to_json_writes_less_the_columns(obs) -> None:
    """`data` is byte for byte what json.dumps writes for the fields without a column of
    their own (schema migration 3: what a column holds is not stored twice)."""
    in_columns = COLUMN_FIELDS_BY_KIND.get(str(obs.kind), ())
    expected = json.dumps({k: v for k, v in obs_data(obs).items() if k not in in_columns},
                          separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    row = observation_row(obs, 1, None, Redactor())
    assert row[-1] == expected
    assert set(json.loads(obs_to_json(obs))) - set(json.loads(row[-1])) == set(in_columns)


CONFIG_PATTERNS = list(DEFAULT_PATTERNS)
# Characters that IGNORECASE matches with an ASCII letter although str.lower() differs.
_ODD_CASE = {"s": ["\u017f"], "k": ["\u212a"], "i": ["\u0130", "\u0131"]}


def case_variants(word: str) -> st.SearchStrategy[str]:
    """`word` with each letter in either case or an odd Unicode equivalent."""
    return st.tuples(*[st.sampled_from([c.lower(), c.upper(), *_ODD_CASE.get(c.lower(), [])])
                       for c in word]).map("".join)


# Text made of the patterns' own pieces, in any case and order, with odd characters mixed in.
keywords = st.sampled_from(["rpcpassword", "password", "rpcauth", "authorization:", "bearer",
                            "basic", "macaroon", "grpc-metadata-macaroon:", "secrets"])
pieces = (keywords.flatmap(case_variants)
          | st.sampled_from(["=", ":", " ", "\t", "\n", '"', "'", "deadbeef" * 4,
                             "0123456789abcdef", "x", "\u00e9"]))
secretish = st.lists(pieces | st.text(max_size=3), max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(CONFIG_PATTERNS + [r"\b[0-9a-f]{64}\b", r"(?x) pass \s* word",
                                                   r"(?i:auth)orization", r"secret(?=s)"]),
                min_size=1, max_size=4, unique=True),
       secretish)
def test_prefiltered_redaction_equals_plain_regex_substitution(patterns: list[str], text: str) -> None:
    redactor = Redactor(patterns)
    assert redactor.text(text) == redactor.naive(text)


def test_redaction_keeps_group_one_or_replaces_the_match() -> None:
    redactor = Redactor([r"(rpcpassword\s*=\s*)\S+", r"Bearer \S+"])
    assert redactor.text("rpcpassword = hunter2 x") == "rpcpassword = [REDACTED] x"
    assert redactor.text("Authorization: Bearer xyz") == "Authorization: [REDACTED]"
    assert re.search("hunter2|xyz", redactor.text("rpcpassword=hunter2 Bearer xyz")) is None
