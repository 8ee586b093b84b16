"""The library's own logging, turned on by ``DISTRIBUTED_TESTING_LOG`` (debug, info, warning).

The library logs what it does to processes (starts, preloads refused,
escalations, fallbacks, pool rebuilds) to ``logging.getLogger("distributed_testing")``
and its children. Off by default: no handler is added and the logger's level
is left alone. With a level set, each process gets one handler (never two)
that writes to whatever ``sys.stderr`` is when a line is logged: the terminal
in the test process, pytest's capture inside a test, a rank's output file in a
rank. Every line names the process (pid, and rank where known) and the logger::

    12:03:04.567 [pid 4242 rank 1] distributed_testing._launcher DEBUG: ...

Rank processes inherit the environment, so they log too: a forked one keeps
its parent's handler; a spawned one (or a fresh fork-server interpreter) calls
:func:`configure_from_environment` when it starts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from distributed_testing._parsers import ENV_LOG, parse_log_level

if TYPE_CHECKING:
    from distributed_testing._config import Settings

__all__ = ["LOGGER", "configure_from_environment", "configure_logging", "remove_handler", "set_rank"]

LOGGER = "distributed_testing"
FORMAT = "%(asctime)s.%(msecs)03d [%(dt_process)s] %(name)s %(levelname)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"

_rank: int | None = None  # this process's rank, once it is one


def set_rank(rank: int | None) -> None:
    """Name ``rank`` in this process's log lines (a rank calls it when it starts)."""
    global _rank
    _rank = rank


def configure_logging(settings: Settings) -> bool:
    """Turn the library's logging on at ``settings.log_level``; True when a handler was added now."""
    return _configure(settings.log_level)


def configure_from_environment(environ: Mapping[str, str] | None = None) -> bool:
    """As :func:`configure_logging`, reading only ``DISTRIBUTED_TESTING_LOG`` (no torch import).

    For processes that do not load every setting: ranks, fork servers, the
    pytest plugin before any test is collected. A bad value raises ConfigError.
    """
    value = (os.environ if environ is None else environ).get(ENV_LOG)
    return _configure(parse_log_level(value) if value else None)


def remove_handler() -> None:
    """Take this process's handler off again and give the logger its level back."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
        logger.setLevel(handler.previous_level)


def _configure(level: str | None) -> bool:
    if level is None:
        return False
    logger = logging.getLogger(LOGGER)
    added = not any(isinstance(h, _StderrHandler) for h in logger.handlers)
    if added:
        handler = _StderrHandler(logger.level)
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        handler.addFilter(_name_the_process)
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    return added


def _name_the_process(record: logging.LogRecord) -> bool:
    rank = _rank if _rank is not None else os.environ.get("RANK")  # RANK: a torchrun rank
    record.dt_process = f"pid {record.process}" + (f" rank {rank}" if rank is not None else "")
    return True


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr``: pytest swaps it, a rank's points at its output file."""

    def __init__(self, previous_level: int) -> None:
        super().__init__()
        self.previous_level = previous_level  # the logger's, restored by remove_handler()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
