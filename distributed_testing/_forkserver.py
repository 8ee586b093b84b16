"""The parent's side of the fork server: start it, fork ranks from it, teach it modules.

The fast start method forks each rank from a warm server (see ``_server``)
rather than from the test process, whose threads (OpenMP's pool, CUDA) a
child would not get. The server is a *zygote* forked from the test process
before any test runs (``prepare``, called by the front ends), when that is
safe: no Python thread but the main one, no CUDA, no OpenMP pool; it then
costs no second ``import torch``. Otherwise it is a fresh interpreter that
imports torch and the test modules. Either way:

* each rank gets the parent's environment, working directory, ``sys.path``
  and umask as they are when its test starts, as a spawned rank would;
* the module that defines the test class is imported into the server before
  its first rank is forked, and modules ranks imported while testing are
  imported after the test (``learn``), so later tests start with them;
* a preload that would start a thread or initialise CUDA in the server is
  refused and logged; the copy of the server forked just before that import
  serves from then on (the broken one only waits for its own ranks).

No file is made: parent and server talk over a socket pair; the server and its
ranks die with the test process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.connection
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

from distributed_testing import _process, _server
from distributed_testing._errors import DistributedTestingError

__all__ = ["ForkedProcess", "learn", "prepare", "prepare_for", "process_class", "shutdown"]

logger = logging.getLogger("distributed_testing")

_lock = threading.RLock()
_current: _Connection | None = None
_zygote_wanted = False  # prepare() was called: fork a zygote if it is safe
_refused: dict[str, str] = {}  # module -> why the server may not import it (this run)
_learned: list[str] = []  # modules the server imported after tests: a replacement imports them too
_asked: set[str] = set()  # modules already sent to the server to learn
_ATTEMPTS = 4  # servers tried for one rank before giving up


class ServerError(DistributedTestingError):
    """The fork server could not start or fork a rank."""


class _Connection:
    """One running server: its process, its socket, and replies still to read."""

    def __init__(self, kind: str, sock: socket.socket, process: Any, owner: int) -> None:
        self.kind = kind  # "zygote" or "fresh"
        self.sock = sock
        self.process = process  # a pid (zygote) or a Popen (fresh)
        self.owner = owner
        self.pending = 0  # preload requests whose replies are still unread
        self.info: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.process if isinstance(self.process, int) else self.process.pid  # type: ignore[no-any-return]

    def request(self, message: tuple[Any, ...], fds: list[int] | None = None) -> Any:
        self.settle()
        _process.send_message(self.sock, message, fds)
        reply, _ = _process.recv_message(self.sock)
        return reply

    def ready(self) -> dict[str, Any]:
        """The server's first message: what it imported. EOFError if it is not fit to fork from."""
        if self.info is None:
            reply, _ = _process.recv_message(self.sock)
            self.info = reply[1]
            _log_report(self.kind, self.pid, self.info)
        if self.info.get("unfit"):
            raise EOFError(self.info["unfit"])
        return self.info

    def settle(self) -> None:
        """Read the replies to earlier preload requests."""
        self.ready()
        while self.pending:
            reply, _ = _process.recv_message(self.sock)
            self.pending -= 1
            _log_report("learned", self.pid, reply[1])

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if isinstance(self.process, int):
                _reap(self.process)
            else:
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()


def _log_report(kind: str, pid: int, info: dict[str, Any]) -> None:
    for name, reason in info.get("refused", ()):
        _refused.setdefault(name, reason)
        logger.debug("fork server %d: did not preload %s: %s", pid, name, reason)
    _asked.difference_update(info.get("untried", ()))  # asked again after the next test
    if info.get("successor"):
        logger.debug("fork server %d: its backup %d, forked before that import, serves now", pid, info["successor"])
    if info.get("accepted"):
        logger.debug("fork server %d (%s): preloaded %s", pid, kind, ", ".join(info["accepted"]))
    if info.get("unfit"):
        logger.debug("fork server %d (%s) is not fit to fork ranks: %s", pid, kind, info["unfit"])


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# -- starting a server -------------------------------------------------------------


def prepare(modules: Iterable[str] = ()) -> None:
    """Called by a front end once its tests are loaded and before any runs: the moment
    the test process can be forked into a zygote that is what a fresh import would be."""
    global _zygote_wanted
    with _lock:
        _zygote_wanted = True
        if _current is None or _current.owner != os.getpid():
            _start(list(modules))


def prepare_for(classes: Iterable[type]) -> None:
    """``prepare`` if any of these test classes forks its ranks from the server."""
    modules = _forking_modules(classes)
    if modules:
        prepare(modules)


def _forking_modules(classes: Iterable[type]) -> list[str]:
    """The modules of the distributed test classes among ``classes`` that fork their ranks."""
    from distributed_testing import _config
    from distributed_testing._errors import ConfigError

    found = [
        getattr(sys.modules.get(f"distributed_testing.{module}"), name, None)
        for module, name in (("_testcase", "MultiProcessTestCase"), ("_continuous", "MultiProcContinuousTest"))
    ]
    bases = tuple(base for base in found if base is not None)
    if not bases:
        return []
    try:
        settings = _config.load()
    except ConfigError:
        return []  # the front end reports it
    modules: dict[str, None] = {}
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, bases)):
            continue
        try:
            method = _config.resolve_start_method(getattr(cls, "start_method", None), settings)
        except ConfigError:
            continue  # reported when its tests run
        if method == "fork":
            modules[cls.__module__] = None
    return list(modules)


def _zygote_problem() -> str:
    """Why this process may not be forked into a server now, or ''."""
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return f"the test process runs Python threads ({names})"
    if threading.current_thread() is not threading.main_thread():
        return "not called from the main thread"
    cuda = sys.modules.get("torch.cuda")
    if cuda is not None and cuda.is_initialized():
        return "CUDA is initialised in the test process"
    return ""


def _start(modules: list[str]) -> _Connection:
    global _current, _zygote_wanted
    problem = _zygote_problem() if _zygote_wanted else "no front end prepared one before the tests"
    _zygote_wanted = False  # a zygote only from the state before any test ran
    if not problem:
        # Whether it is fit (torch imported, no OpenMP pool) is read at its first use.
        _current = _fork_zygote(modules)
        return _current
    logger.debug("fork server: a fresh interpreter, not a zygote: %s", problem)
    _current = _start_fresh(modules)
    return _current


def _fork_zygote(modules: list[str]) -> _Connection:
    parent_end, server_end = socket.socketpair()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the zygote: never returns into the test process's stack
        try:
            parent_end.close()
            _process.die_with_parent()
            _server.serve(server_end, modules, None, zygote=True)
        finally:
            os._exit(1)
    server_end.close()
    logger.debug("fork server: zygote %d forked from the test process", pid)
    return _Connection("zygote", parent_end, pid, os.getpid())


def _start_fresh(modules: list[str]) -> _Connection:
    parent_end, server_end = socket.socketpair()
    process = subprocess.Popen(
        # Not ``-m``: the server's classes must be those of distributed_testing._server.
        [sys.executable, "-c", "from distributed_testing._server import main; main()", str(server_end.fileno())],
        pass_fds=[server_end.fileno()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    server_end.close()
    main_path = getattr(sys.modules.get("__main__"), "__file__", None)
    config = {
        "parent": os.getpid(),
        "argv": list(sys.argv),
        "path": list(sys.path),
        "cwd": os.getcwd(),
        "main_path": os.path.abspath(main_path) if main_path and os.path.isfile(main_path) else None,
        "preload": [m for m in [*modules, *_learned] if m not in _refused],
    }
    _process.send_message(parent_end, config)
    logger.debug("fork server: fresh interpreter %d started", process.pid)
    return _Connection("fresh", parent_end, process, os.getpid())


def _connection(module: str) -> _Connection:
    """The running server of this process, started (or replaced) if need be."""
    global _current
    if _current is not None and _current.owner != os.getpid():
        _current = None  # a forked child of the test process: the server is its parent's
    if _current is None:
        _start([module])
    assert _current is not None
    return _current


def _replace(reason: str) -> None:
    global _current
    logger.debug("fork server: replacing it with a fresh interpreter: %s", reason)
    if _current is not None:
        _current.close()
    _current = None


def shutdown() -> None:
    """Stop this process's server (its ranks die with it)."""
    global _current
    with _lock:
        if _current is not None and _current.owner == os.getpid():
            _current.close()
        _current = None


atexit.register(shutdown)


# -- forking a rank ------------------------------------------------------------------


def _parent_state() -> dict[str, Any]:
    """What a spawned rank would inherit from this process now."""
    umask = os.umask(0)
    os.umask(umask)
    return {"env": dict(os.environ), "cwd": os.getcwd(), "path": list(sys.path), "umask": umask}


def fork_rank(module: str, payload: bytes, fds: list[int], output: str) -> tuple[int, int]:
    """Fork a rank that runs ``payload``; return its pid and the read end of its exit pipe."""
    status_r, status_w = os.pipe()
    spec = {"module": module, "payload": payload, "output": output, **_parent_state()}
    try:
        with _lock:
            # A server replaced for a refused module is not asked for it again: each
            # retry makes progress, and a few are enough (unfit zygote, two refusals).
            for attempt in range(1, _ATTEMPTS + 1):
                connection = _connection(module)
                spec["preload"] = module if module not in _refused else None
                try:
                    reply = connection.request(("fork", spec), [status_w, *fds])
                except (EOFError, OSError) as exc:
                    reason = str(exc) or "it exited"
                    if attempt == _ATTEMPTS:
                        raise ServerError(f"the fork server {connection.pid} failed: {reason}") from None
                    _replace(f"server {connection.pid} stopped: {reason}")
                    continue
                if reply[0] == "forked":
                    if reply[2] is not None:
                        _log_report(connection.kind, connection.pid, reply[2])
                    return reply[1], status_r
                _log_report(connection.kind, connection.pid, reply[1])  # its backup serves: ask again
            raise ServerError(f"no fork server could fork a rank of {module}")
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)


def learn(modules: Iterable[str]) -> None:
    """Ask the server to import what a rank imported while testing; read the reply later."""
    with _lock:
        names = [m for m in modules if m not in _asked and m not in _refused]
        connection = _current
        if not names or connection is None or connection.owner != os.getpid():
            return
        _asked.update(names)
        _learned.extend(name for name in names if name not in _learned)
        try:
            connection.settle()
            _process.send_message(connection.sock, ("preload", names, list(sys.path)))
            connection.pending += 1
        except (EOFError, OSError) as exc:
            _replace(f"server {connection.pid} stopped: {exc}")


# -- the Process-like handle -------------------------------------------------------------


class ForkedProcess:
    """A rank forked by the server, with the parts of ``multiprocessing.Process`` tests use.

    Its parent is the server, so its exit status comes through a pipe the server
    writes when it reaps it: the pipe's read end is the ``sentinel``.
    """

    _start_method = "fork"

    def __init__(
        self,
        group: Any = None,
        target: Any = None,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        daemon: bool | None = None,
        module: str = "__main__",
        output: str = os.devnull,
    ) -> None:
        self._target, self._args, self._kwargs = target, tuple(args), dict(kwargs or {})
        self.name = name or "rank"
        self.daemon = daemon
        self._module = module
        self.output = output  # where the rank's fds 1 and 2 point from its first instruction
        self.pid: int | None = None
        self.sentinel: int = -1
        self._exitcode: int | None = None

    def start(self) -> None:
        args, fds = _process.describe_args(self._args)
        payload = pickle.dumps((self._target, args, self._kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        self.pid, self.sentinel = fork_rank(self._module, payload, fds, self.output)

    @property
    def exitcode(self) -> int | None:
        if self._exitcode is None and self.sentinel >= 0:
            if multiprocessing.connection.wait([self.sentinel], 0):
                self._read_status()
        return self._exitcode

    def _read_status(self) -> None:
        data = os.read(self.sentinel, 4)
        # No status: the server died, and its ranks with it (PR_SET_PDEATHSIG).
        self._exitcode = struct.unpack("!i", data)[0] if len(data) == 4 else -9

    def join(self, timeout: float | None = None) -> None:
        if self._exitcode is None and self.sentinel >= 0:
            if multiprocessing.connection.wait([self.sentinel], timeout):
                self._read_status()

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def _signal(self, signum: int) -> None:
        if self.pid is not None and self.exitcode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(15)

    def kill(self) -> None:
        self._signal(9)

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"<ForkedProcess {self.name} pid={self.pid} exitcode={self._exitcode}>"


def process_class(module: str) -> Any:
    """A ``multiprocessing.Process``-shaped class whose instances fork from the server."""

    class Process(ForkedProcess):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("module", module)
            super().__init__(*args, **kwargs)

    return Process
