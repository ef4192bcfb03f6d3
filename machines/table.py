"""The container transition table, declared once as data, and the two ways to run it.

`TRANSITIONS` is the only place that says which trigger moves which state where.
`ContainerMachine` decides *which* trigger an observation means (that needs memory:
stop marks, death times, health); a router answers *where* that trigger leads. Two
routers run the same table: `TransitionsRouter` (one shared `transitions.Machine`)
and `DictRouter` (the table compiled to a dict, ~100x faster, for replay of long
windows). The property tests show they agree.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

from transitions import Machine

from machines.states import UP, State

# ignore_invalid_triggers logs a WARNING per ignored trigger; most observations are one.
logging.getLogger("transitions").setLevel(logging.ERROR)

Engine = Literal["dict", "transitions"]

_ALL = "*"
# States a container can die from (CREATED: the start itself failed).
_CAN_DIE = [State.UNKNOWN, State.CREATED, *sorted(UP), State.RESTARTING, State.PAUSED]
# States a start moves out of: already up stays up; crash-looping ends only by staying up.
_CAN_START = [s for s in State if s not in UP | {State.PAUSED, State.CRASHLOOPING}]
# The health triggers, keyed by podman's health_status value.
HEALTH_STATES: dict[str, State] = {
    "starting": State.STARTING,
    "healthy": State.HEALTHY,
    "unhealthy": State.UNHEALTHY,
}

TRANSITIONS: list[dict[str, Any]] = [
    # A name can be reused after a remove we may have missed: create always means a new container.
    {"trigger": "create", "source": _ALL, "dest": State.CREATED},
    {"trigger": "start", "source": _CAN_START, "dest": State.RUNNING},
    # podman resets a checked container's health to "starting" at every start (measured on 4.3).
    {"trigger": "start_checked", "source": _CAN_START, "dest": State.STARTING},
    *({"trigger": f"health_{value}", "source": [State.UNKNOWN, *sorted(UP)], "dest": dest}
      for value, dest in HEALTH_STATES.items()),
    {"trigger": "died", "source": _CAN_DIE, "dest": State.EXITED},
    # Also from a death first taken for a user stop that the restart policy then brought back
    # (podman never restarts a user stop), and from a death counted after the fact.
    {"trigger": "crashloop", "source": [*_CAN_DIE, State.EXITED, State.STOPPED], "dest": State.CRASHLOOPING},
    # A died paired with a stop/kill (event or our own action) is the user's doing.
    {"trigger": "user_died", "source": [*_CAN_DIE, State.CRASHLOOPING], "dest": State.STOPPED},
    # A died paired with an earlier restart event (`podman restart` writes restart before died):
    # the container comes back. A crash loop holds through it, as through any restart.
    {"trigger": "user_restart", "source": _CAN_DIE, "dest": State.RESTARTING},
    # The stop that caused a death arrived after it (podman 5 order, delivery reordering), or
    # the restart policy's silence showed it (4.3 often writes no stop event).
    {"trigger": "user_stop", "source": [State.EXITED, State.CRASHLOOPING], "dest": State.STOPPED},
    {"trigger": "restart", "source": [State.UNKNOWN, State.EXITED, State.STOPPED], "dest": State.RESTARTING},
    {"trigger": "pause", "source": [State.UNKNOWN, *sorted(UP)], "dest": State.PAUSED},
    {"trigger": "unpause", "source": [State.UNKNOWN, State.PAUSED], "dest": State.RUNNING},
    {"trigger": "remove", "source": _ALL, "dest": State.REMOVED},
    # The crash loop is over: up for the stable period since the last start, or a death it
    # counted turned out to be a user's. dest is what the container is doing now.
    *({"trigger": f"settle_{dest}", "source": State.CRASHLOOPING, "dest": dest}
      for dest in sorted(UP | {State.EXITED, State.RESTARTING})),
    # A snapshot that wins (first sight, or overruling the machine) moves straight to what it shows.
    *({"trigger": f"observe_{dest}", "source": _ALL, "dest": dest} for dest in State if dest is not State.UNKNOWN),
]


def _sources(row: dict[str, Any]) -> list[State]:
    """The source states of one table row, with the wildcard expanded."""
    source = row["source"]
    if source == _ALL:
        return list(State)
    return list(source) if isinstance(source, list) else [source]


def compile_table(rows: list[dict[str, Any]]) -> dict[tuple[str, State], State]:
    """The table as a (trigger, source) -> dest dict. Raises ValueError on an ambiguous row."""
    index: dict[tuple[str, State], State] = {}
    for row in rows:
        for source in _sources(row):
            key = (row["trigger"], source)
            if key in index:
                raise ValueError(f"transition table: {key} is declared twice")
            index[key] = row["dest"]
    return index


INDEX = compile_table(TRANSITIONS)
TRIGGERS = frozenset(row["trigger"] for row in TRANSITIONS)


class Model:
    """What a router moves: just the current state (transitions binds its triggers here)."""

    def __init__(self, state: State = State.UNKNOWN) -> None:
        self.state = state


class Router(Protocol):
    """Runs the table for many models: attach, fire a trigger, detach."""

    def attach(self, initial: State) -> Model: ...

    def fire(self, model: Model, trigger: str) -> None: ...

    def detach(self, model: Model) -> None: ...


class DictRouter:
    """The table compiled to a dict lookup; a trigger invalid in the current state does nothing."""

    def attach(self, initial: State) -> Model:
        """A new model in `initial`."""
        return Model(initial)

    def fire(self, model: Model, trigger: str) -> None:
        """Move `model` if the table has (trigger, its state)."""
        dest = INDEX.get((trigger, model.state))
        if dest is not None:
            model.state = dest

    def detach(self, model: Model) -> None:
        """Nothing to release."""


class TransitionsRouter:
    """One shared `transitions.Machine` for all models of a fleet (a Machine per model costs ~20x)."""

    def __init__(self) -> None:
        self.machine = Machine(
            model=None, states=State, transitions=TRANSITIONS, initial=State.UNKNOWN,
            auto_transitions=False, ignore_invalid_triggers=True,
        )

    def attach(self, initial: State) -> Model:
        """A new model registered with the shared machine in `initial`."""
        model = Model(initial)
        self.machine.add_model(model, initial=initial)
        return model

    def fire(self, model: Model, trigger: str) -> None:
        """Trigger `trigger` on `model`; invalid in its state means no move."""
        self.machine.events[trigger].trigger(model)

    def detach(self, model: Model) -> None:
        """Unregister `model`; the machine would otherwise keep it alive (pytransitions#642)."""
        self.machine.remove_model(model)


DICT_ROUTER = DictRouter()


def make_router(engine: Engine) -> Router:
    """A router for `engine`: "dict" shares one stateless router, "transitions" gets its own Machine."""
    if engine == "dict":
        return DICT_ROUTER
    if engine == "transitions":
        return TransitionsRouter()
    raise ValueError(f"unknown machine engine {engine!r}: use 'dict' or 'transitions'")
