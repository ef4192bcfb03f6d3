"""Container states: one StrEnum and its named groups. Imports nothing from the project."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """What podwarden believes a container is doing."""

    UNKNOWN = "unknown"
    MISSING = "missing"
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"  # stopped on purpose: a user's (or podwarden's) podman stop / podman kill
    EXITED = "exited"  # died on its own
    RESTARTING = "restarting"
    CRASHLOOPING = "crashlooping"
    PAUSED = "paused"
    REMOVED = "removed"


# The main process is alive.
UP = frozenset({State.STARTING, State.RUNNING, State.HEALTHY, State.UNHEALTHY})
# Alive and not known to be sick: what "the container is fine" means.
GOOD = frozenset({State.RUNNING, State.HEALTHY})
# Not running and not expected to come back by itself.
DOWN = frozenset({State.MISSING, State.CREATED, State.STOPPED, State.EXITED, State.REMOVED})
# Trouble an operator must hear about.
BAD = frozenset({State.UNHEALTHY, State.EXITED, State.CRASHLOOPING, State.MISSING, State.REMOVED})
