"""Stopping a long verb cleanly: the first Ctrl-C or SIGTERM asks, a second one insists."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable


def install_stop_signals(stop: asyncio.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set `stop` (a clean, flushed stop), a second one cancels; returns an undo."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    installed = []

    def on_signal() -> None:
        if stop.is_set() and main_task is not None:
            # a second Ctrl-C: the clean stop is stuck (a frozen node), cut it short
            main_task.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return undo
