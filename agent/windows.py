"""What a drift window expects, shared by the verbs that open one (watch, soak) and the one
that replays it (replay): the detector built from config, and the agent records that mark
a window's start and end in the store."""

from __future__ import annotations

from agent.config import Config
from machines.drift import DriftDetector, DriftSettings

_S = 1_000_000_000
# the `what` of the agent records a window puts in the store when it opens and closes
WINDOW_START, WINDOW_END = "window-start", "window-end"


def drift_detector(config: Config, targets: list[str]) -> DriftDetector:
    """A detector expecting each configured container of each target in its expected state."""
    expected = {(target, name): own.expected_state for target in targets for name, own in config.containers.items()}
    settings = DriftSettings(link_lost_max_ns=int(config.soak.link_lost_max * _S), max_per_kind=config.soak.max_per_kind)
    return DriftDetector(expected, settings, others=None if config.containers else "running")
