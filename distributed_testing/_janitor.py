"""The janitor: a tiny helper process that removes a run's temp directories if the run is killed.

A SIGKILLed test process cannot clean up after itself. It registers each
directory it makes with the janitor over a pipe ("+path" / "-path" lines);
when the pipe closes because the test process is gone, the janitor removes
whatever is still registered and exits. Imports nothing but the stdlib.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
from typing import IO

__all__ = ["register", "unregister"]

_pipe: IO[str] | None = None
_DONE = "=done"  # the last line of a run that exited normally


def _send(line: str) -> None:
    global _pipe
    if _pipe is None:
        if not sys.platform.startswith("linux"):
            return
        proc = subprocess.Popen(
            [sys.executable, "-m", "distributed_testing._janitor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # Ctrl-C in the terminal is for the run, not for it
        )
        _pipe = proc.stdin
        atexit.register(_close, proc)
    try:
        assert _pipe is not None
        _pipe.write(line + "\n")
        _pipe.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass


def register(path: str) -> None:
    """Remove ``path`` if this process dies without unregistering it."""
    _send(f"+{path}")


def unregister(path: str) -> None:
    """``path`` was cleaned up (or handed over): forget it."""
    _send(f"-{path}")


def _close(proc: subprocess.Popen[str]) -> None:
    """A normal exit: every owner cleans up after itself, so the janitor removes nothing."""
    if proc.stdin is not None:
        try:
            proc.stdin.write(f"{_DONE}\n")
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
    proc.wait()


def _serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    paths: set[str] = set()
    for line in sys.stdin:
        if line.rstrip("\n") == _DONE:
            return
        path = line[1:].rstrip("\n")
        if line.startswith("+"):
            paths.add(path)
        elif line.startswith("-"):
            paths.discard(path)
    for path in paths:  # the pipe closed without "done": the run was killed
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    _serve()
