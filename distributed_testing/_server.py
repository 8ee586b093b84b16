"""The fork server's side: a warm process that forks rank processes on request and learns.

It is either a zygote (forked from the test process before any test ran) or a
fresh interpreter; either way it has imported torch and the test modules and
has run nothing else. It keeps no thread, never initialises CUDA, and refuses
(and reports) any preload that would break that. Each rank it forks first
sends its output to the rank's log, then takes the parent's environment,
working directory, ``sys.path`` and umask as they are when its test starts,
and only then unpickles and runs its target.

The parent talks to it over one socket pair (no file on disk), in
length-prefixed pickles; file descriptors travel with ``SCM_RIGHTS``.
Imports nothing heavy itself: the preloads are what it imports.
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any

from distributed_testing._process import (
    Descriptor,
    apply_state,
    die_with_parent,
    flush,
    import_main,
    main_is,
    output_to,
    recv_message,
    redirect_output,
    send_message,
)

__all__ = ["BASE_PRELOAD", "serve", "thread_count"]

# What every server imports before it forks anything.
BASE_PRELOAD = ("torch", "torch.distributed", "distributed_testing._rank", "distributed_testing._testcase")
PROBE_WAIT = 5.0  # seconds a probe of torch's parallel ops may take before the server is refused
# Modules that are the process's entry point or the server itself: never learned.
_NEVER = frozenset({"__mp_main__", "distributed_testing.__main__"})


# -- what a preload may not do ---------------------------------------------------


def thread_count() -> int:
    """This process's OS threads (Python's and native ones, e.g. OpenMP's pool)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return threading.active_count()


def _cuda_initialized() -> bool:
    cuda = sys.modules.get("torch.cuda")
    return bool(cuda is not None and cuda.is_initialized())


class _Guard:
    """What the server looked like before an import, to tell what the import changed."""

    def __init__(self) -> None:
        self.threads = thread_count()
        self.python_threads = threading.active_count()

    def violation(self, native: bool = True) -> str:
        """Why the server is no longer safe to fork from, or ''.

        ``native=False`` for torch itself: the thread numpy's OpenBLAS starts at
        import is fork-safe (it stops its pool around a fork).
        """
        if _cuda_initialized():
            return "it initialised CUDA (a forked CUDA context is unusable)"
        if threading.active_count() > self.python_threads:
            names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
            return f"it started a Python thread ({names}); a fork copies no thread"
        now = thread_count()
        if native and now > self.threads:
            return f"it started {now - self.threads} native thread(s); a fork copies no thread"
        return ""


# -- the server ----------------------------------------------------------------


class _Server:
    """The loop: fork ranks, report their exits, import what it is asked to."""

    def __init__(self, sock: socket.socket, main_path: str | None) -> None:
        self.sock = sock
        self.main_path = main_path
        self.main_loaded = main_path is None or main_is(main_path)
        self.status_fds: dict[int, int] = {}  # rank pid -> write end of its exit-status pipe
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.refused: dict[str, str] = {}
        self.successor: tuple[int, int, list[str]] = (0, -1, [])  # a backup to take over: pid, pipe, imports

    # Preloading.

    def preload(
        self, names: list[str] | tuple[str, ...], path: list[str] | None = None, native: bool = True
    ) -> dict[str, Any]:
        """Import ``names`` one at a time, checking after each that forking stays safe.

        Returns what was imported, what was refused and why, and, if an import
        broke the server (threads, CUDA), that reason: the server then stops.
        """
        accepted: list[str] = []
        imported: list[str] = []
        refused: list[tuple[str, str]] = []
        saved_path = list(sys.path)
        if path is not None:
            sys.path[:] = [*path, *(p for p in saved_path if p not in path)]
        try:
            for name in names:
                if not self._wanted(name):
                    continue
                guard = _Guard()
                started = time.monotonic()
                try:
                    with output_to(os.devnull):  # ranks print their own, to their logs
                        if name == "__main__":
                            self._load_main()
                        else:
                            importlib.import_module(name)
                except BaseException as exc:  # a module may raise anything, SystemExit included
                    self.refused[name] = f"importing it raised {type(exc).__name__}: {exc}"
                    refused.append((name, self.refused[name]))
                    continue
                broken = guard.violation(native)
                if broken:
                    untried = list(names[names.index(name) + 1 :])
                    return _report(accepted, imported, [*refused, (name, broken)], broken, untried)
                accepted.append(f"{name} ({time.monotonic() - started:.2f} s)")
                imported.append(name)
        finally:
            sys.path[:] = saved_path
        gc.freeze()  # what was imported lives as long as the server
        return _report(accepted, imported, refused)

    def _wanted(self, name: str) -> bool:
        if name == "__main__":
            return not self.main_loaded
        return name not in sys.modules and name not in self.refused and name not in _NEVER

    def learn(self, names: list[str], path: list[str] | None) -> dict[str, Any]:
        """``preload`` behind a backup: a copy of this server, forked first, takes over
        if an import breaks this one, so a refused module never costs a fresh server."""
        names = [name for name in names if self._wanted(name)]
        if not names:
            return _report([], [], [])
        successor, wake = self._fork_backup()
        report = self.preload(names, path)
        if not report["broken"]:
            os.close(wake)  # the backup reads EOF and exits
            return report
        report["successor"] = successor
        self.successor = (successor, wake, report["imported"])
        return report

    def _fork_backup(self) -> tuple[int, int]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(write_fd)
                die_with_parent()
                chunks = list(iter(lambda: os.read(read_fd, 1 << 16), b""))
                if chunks:  # told to take over, with what the broken server had imported safely
                    self._take_over(pickle.loads(b"".join(chunks)))
            finally:
                os._exit(0)
        os.close(read_fd)
        return pid, write_fd

    def _take_over(self, imported: list[str]) -> None:
        """In the backup: become the server (the ranks of the old one are not ours)."""
        signal.set_wakeup_fd(-1)
        for fd in (self.wake_r, self.wake_w, *self.status_fds.values()):
            os.close(fd)
        self.status_fds = {}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.preload(imported)
        self.loop()

    def hand_over(self) -> None:
        """In a broken server: let the backup serve; stay its parent, and reap our own ranks. Never returns."""
        successor, wake, imported = self.successor
        os.write(wake, pickle.dumps(imported))
        os.close(wake)
        self.sock.close()
        while successor not in self.reap():
            select.select([self.wake_r], [], [])
            os.read(self.wake_r, 4096)
        os._exit(0)

    def _load_main(self) -> None:
        if self.main_path is not None and not self.main_loaded:
            import_main(self.main_path)
            self.main_loaded = True

    # Forking.

    def fork(self, spec: dict[str, Any], fds: list[int]) -> int:
        """Fork one rank; the child never returns from here."""
        status_w, passed = fds[0], fds[1:]
        pid = os.fork()
        if pid == 0:
            try:
                self._close_in_child(status_w)
                _run_rank(spec, passed, self.main_path if not self.main_loaded else None)
            finally:
                os._exit(1)
        self.status_fds[pid] = status_w
        for fd in passed:
            os.close(fd)
        return pid

    def _close_in_child(self, keep: int) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(keep)  # only the server reports a rank's exit
        for fd in (self.wake_r, self.wake_w, *self.status_fds.values()):
            os.close(fd)
        self.sock.close()

    def reap(self) -> list[int]:
        """Tell the parent the exit status of every rank that has exited; return the reaped pids."""
        reaped: list[int] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return reaped
            if pid == 0:
                return reaped
            reaped.append(pid)
            fd = self.status_fds.pop(pid, None)
            if fd is not None:
                try:
                    os.write(fd, struct.pack("!i", os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                os.close(fd)

    def loop(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        while True:
            waitables: list[Any] = [self.sock, self.wake_r]
            ready = select.select(waitables, [], [])[0]
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
            self.reap()
            if self.sock not in ready:
                continue
            try:
                message, fds = recv_message(self.sock)
            except (EOFError, OSError):
                return  # the parent is gone: its ranks die with this process
            if not self.handle(message, fds):
                return

    def handle(self, message: tuple[Any, ...], fds: list[int]) -> bool:
        """Answer one request; False when the server must stop."""
        kind = message[0]
        if kind == "fork":
            spec = message[1]
            report = self.learn([spec["preload"]], spec["path"]) if spec.get("preload") else None
            if report is not None and report["broken"]:
                for fd in fds:
                    os.close(fd)
                send_message(self.sock, ("broken", report))  # the parent asks the backup again
                self.hand_over()
            send_message(self.sock, ("forked", self.fork(spec, fds), report))
            return True
        if kind == "preload":
            report = self.learn(message[1], message[2])
            send_message(self.sock, ("preloaded", report))
            if report["broken"]:
                self.hand_over()
            return True
        return False  # "quit"


def _report(
    accepted: list[str],
    imported: list[str],
    refused: list[tuple[str, str]],
    broken: str = "",
    untried: list[str] | None = None,
) -> dict[str, Any]:
    return {"accepted": accepted, "imported": imported, "refused": refused, "broken": broken, "untried": untried or []}


# -- a rank, just forked ---------------------------------------------------------


def _run_rank(spec: dict[str, Any], fds: list[int], main_path: str | None) -> None:
    """Become a rank: output first, then the parent's process state, then the target."""
    redirect_output(spec["output"])
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 1
    try:
        apply_state(spec)
        from distributed_testing import _rank

        _rank.modules_at_start = frozenset(sys.modules)
        if main_path is not None and spec.get("module") == "__main__":
            import_main(main_path)  # the server could not: the rank does, as a spawned one would
        target, args, kwargs = pickle.loads(spec["payload"])
        args = tuple(Descriptor.restore(arg, fds) for arg in args)
        target(*args, **kwargs)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        flush()
        os._exit(code)


# -- starting ---------------------------------------------------------------------


def probe_parallel_ops() -> str:
    """Whether a child of this process can run a parallel torch op ('' if so).

    A process that already ran one holds an OpenMP thread pool a forked child
    does not get: the child's first parallel op hangs. Try it in a child.
    """
    torch = sys.modules.get("torch")
    if torch is None or torch.get_num_threads() < 2:
        return ""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            torch.ones(1 << 20).add_(1).sum()
            os.write(write_fd, b"1")
        finally:
            os._exit(0)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], PROBE_WAIT)
    ok = bool(ready) and os.read(read_fd, 1) == b"1"
    os.close(read_fd)
    if not ok:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if ok:
        return ""
    return "a parallel torch op ran in the test process before the tests started (OpenMP's pool does not fork)"


def serve(sock: socket.socket, preload: list[str], main_path: str | None, zygote: bool) -> None:
    """Import ``preload`` (checking each), say whether this server is fit, then serve. Never returns."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        server = _Server(sock, main_path)
        started = time.monotonic()
        base = server.preload(BASE_PRELOAD, native=False)
        unfit = base["broken"]
        if not unfit and zygote:
            unfit = probe_parallel_ops()
        more = _report([], [], []) if unfit else server.learn(preload, None)
        report = {key: base[key] + more[key] for key in ("accepted", "refused")}
        info = {"pid": os.getpid(), "seconds": time.monotonic() - started, **report, "unfit": unfit}
        send_message(sock, ("ready", info))
        if more["broken"]:
            server.hand_over()
        if not unfit:
            server.loop()
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def main() -> None:
    """A fresh interpreter's server: ``python -c "...; main()" FD``."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    config, _ = recv_message(sock)
    if config["parent"] != os.getppid():
        os._exit(1)
    die_with_parent()
    sys.argv[:] = config["argv"]
    sys.path[:] = config["path"]
    os.chdir(config["cwd"])
    serve(sock, config["preload"], config["main_path"], zygote=False)

