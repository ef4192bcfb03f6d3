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
# The health triggers, keyed by podman's health_status value.
HEALTH_STATES: dict[str, State] = {
    "starting": State.STARTING,
    "healthy": State.HEALTHY,
    "unhealthy": State.UNHEALTHY,
}

TRANSITIONS: list[dict[str, Any]] = [
    # A name can be reused after a remove we may have missed: create always means a new container.
    {"trigger": "create", "source": _ALL, "dest": State.CREATED},
    # Already up stays up; crash-looping ends only by staying up (see `settle_*`).
    {"trigger": "start", "source": [s for s in State if s not in UP | {State.PAUSED, State.CRASHLOOPING}],
     "dest": State.RUNNING},
    *({"trigger": f"health_{value}", "source": [State.UNKNOWN, *sorted(UP)], "dest": dest}
      for value, dest in HEALTH_STATES.items()),
    {"trigger": "died", "source": _CAN_DIE, "dest": State.EXITED},
    {"trigger": "crashloop", "source": _CAN_DIE, "dest": State.CRASHLOOPING},
    # A died within the window after a stop/kill event is the user's doing.
    {"trigger": "user_died", "source": [*_CAN_DIE, State.CRASHLOOPING], "dest": State.STOPPED},
    # podman 5 may log the stop just after the died it caused: the death was the user's.
    {"trigger": "user_stop", "source": [State.EXITED, State.CRASHLOOPING], "dest": State.STOPPED},
    {"trigger": "restart", "source": [State.UNKNOWN, State.EXITED, State.STOPPED], "dest": State.RESTARTING},
    {"trigger": "pause", "source": [State.UNKNOWN, *sorted(UP)], "dest": State.PAUSED},
    {"trigger": "unpause", "source": [State.UNKNOWN, State.PAUSED], "dest": State.RUNNING},
    {"trigger": "remove", "source": _ALL, "dest": State.REMOVED},
    # Up for the stable period since the last start: the crash loop is over.
    *({"trigger": f"settle_{dest}", "source": State.CRASHLOOPING, "dest": dest} for dest in sorted(UP)),
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
