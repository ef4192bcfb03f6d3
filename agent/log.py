"""Logging set-up for the application: loguru to stderr, std logging (asyncssh) routed into it."""

from __future__ import annotations

import logging
import sys

import asyncssh
from loguru import logger


class _Intercept(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, "{}", record.getMessage())


def setup_logging(verbose: int = 0) -> None:
    """Send podwarden's own log to stderr: warnings by default, info with -v, debug with -vv."""
    level = "WARNING" if verbose <= 0 else "INFO" if verbose == 1 else "DEBUG"
    logger.remove()
    # diagnose=False: tracebacks with local values could print secrets
    logger.add(sys.stderr, level=level, diagnose=False, backtrace=False,
               format="<dim>{time:HH:mm:ss}</dim> {level: <7} {extra} {message}")
    logging.basicConfig(handlers=[_Intercept()], level=logging.WARNING, force=True)
    asyncssh.set_log_level("WARNING" if verbose < 2 else "INFO")
    logging.getLogger("transitions").setLevel(logging.ERROR)
