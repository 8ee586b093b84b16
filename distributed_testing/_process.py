"""Process plumbing shared by the test process, the fork server and ranks.

Messages between processes (length-prefixed pickles, descriptors alongside),
where a process's output goes (fds 1 and 2, for Python and C++ alike), the tie
that kills a rank with its parent, the parent's state a rank takes, connections
passed to a forked rank as descriptors, and importing the test file run as
``__main__``. Standard library only: the fork server imports it before torch.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "Descriptor",
    "apply_state",
    "describe_args",
    "die_with_parent",
    "flush",
    "import_main",
    "main_is",
    "output_to",
    "recv_message",
    "redirect_output",
    "send_message",
]

_PR_SET_PDEATHSIG = 1
_HEADER = struct.Struct("!I")
_MAX_FDS = 8


def send_message(sock: socket.socket, message: Any, fds: list[int] | None = None) -> None:
    """Send one pickled message (and, with it, ``fds``)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    header = _HEADER.pack(len(data))
    if fds:
        socket.send_fds(sock, [header], fds)
        sock.sendall(data)
    else:
        sock.sendall(header + data)


def recv_message(sock: socket.socket) -> tuple[Any, list[int]]:
    """Receive one message and the descriptors sent with it. EOFError when the peer is gone."""
    header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, _MAX_FDS)
    if not header:
        raise EOFError("the peer closed the socket")
    while len(header) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(header))
        if not more:
            raise EOFError("the peer closed the socket")
        header += more
    (size,) = _HEADER.unpack(header)
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the peer closed the socket mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return pickle.loads(b"".join(chunks)), list(fds)


@contextmanager
def output_to(path: str) -> Iterator[None]:
    """Point this process's fds 1 and 2 at ``path`` for a while (a child started, an import)."""
    flush()
    saved = (os.dup(1), os.dup(2))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (fd, *saved):
            os.close(descriptor)


def redirect_output(path: str) -> None:
    """Send fds 1 and 2 (Python, logging and C++ output alike) to ``path`` for good, stdin from /dev/null."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    # A test runner may have replaced sys.stdout with its own capture object.
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")


def flush() -> None:
    """Flush Python's streams, and C's stdio buffers (printf, std::cout), to their fds."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def main_is(path: str) -> bool:
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return isinstance(main_file, str) and os.path.abspath(main_file) == os.path.abspath(path)


def import_main(path: str) -> None:
    """Import the test file run as ``__main__`` (its ``if __name__ == "__main__"`` block does not run)."""
    from multiprocessing import process, spawn

    process.current_process()._inheriting = True  # type: ignore[attr-defined]
    try:
        spawn.import_main_path(path)
    finally:
        del process.current_process()._inheriting  # type: ignore[attr-defined]


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent or parent == 1:
        os._exit(1)


def apply_state(spec: dict[str, Any]) -> None:
    """Take the parent's environment, working directory, ``sys.path`` and umask."""
    environ = spec["env"]
    for name in [n for n in os.environ if n not in environ]:
        del os.environ[name]
    for name, value in environ.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    try:
        os.chdir(spec["cwd"])
    except OSError as exc:
        print(f"distributed_testing: the rank could not enter {spec['cwd']!r}: {exc}", file=sys.stderr)
    sys.path[:] = spec["path"]
    os.umask(spec["umask"])


class Descriptor:
    """Stands for the i-th descriptor sent with a fork request (a Connection, in args)."""

    def __init__(self, index: int, readable: bool, writable: bool) -> None:
        self.index, self.readable, self.writable = index, readable, writable

    @staticmethod
    def restore(arg: Any, fds: list[int]) -> Any:
        if not isinstance(arg, Descriptor):
            return arg
        from multiprocessing.connection import Connection

        return Connection(fds[arg.index], readable=arg.readable, writable=arg.writable)


def describe_args(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[int]]:
    """Replace each multiprocessing Connection in ``args`` by a placeholder; return its fds."""
    from multiprocessing.connection import Connection

    fds: list[int] = []
    out: list[Any] = []
    for arg in args:
        if isinstance(arg, Connection):
            out.append(Descriptor(len(fds), arg.readable, arg.writable))
            fds.append(arg.fileno())
        else:
            out.append(arg)
    return tuple(out), fds
