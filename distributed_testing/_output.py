"""A rank's output beyond the report's excerpt: whole logs kept in a log directory,
output shown after a test, and output streamed live while it runs."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading
from typing import TYPE_CHECKING

from distributed_testing import _launcher
from distributed_testing._config import script_name
from distributed_testing._outcomes import RankView

if TYPE_CHECKING:
    from distributed_testing._launcher import RankHandle

__unittest = True

__all__ = ["LiveOutput", "keep_logs", "log_path", "print_outputs"]

logger = logging.getLogger(__name__)

LIVE_POLL = 0.05  # seconds between looks at the ranks' output files when it is shown live


def log_path(log_dir: str, test_id: str, rank: int) -> str:
    """Where a test's rank log is kept: ``<log_dir>/<test id>/rank<N>/output.log``, the test id
    with the script's name for ``__main__`` and characters other than ``[\\w.-]`` as ``_``."""
    if test_id.startswith("__main__."):
        test_id = os.path.splitext(script_name())[0] + test_id[len("__main__") :]
    return os.path.join(log_dir, re.sub(r"[^\w.-]", "_", test_id), f"rank{rank}", "output.log")


def keep_logs(ranks: list[RankHandle], log_dir: str, test_id: str, offsets: list[int] | None = None) -> dict[int, str]:
    """Copy each rank's whole output (from its offset) into ``log_dir``; {rank: path kept}.

    A test's earlier logs there (a previous run of it) are replaced. A copy that fails is
    logged and left out: keeping logs never fails a test.
    """
    kept: dict[int, str] = {}
    if not ranks:
        return kept
    shutil.rmtree(os.path.dirname(os.path.dirname(log_path(log_dir, test_id, 0))), ignore_errors=True)
    for i, handle in enumerate(ranks):
        target = log_path(log_dir, test_id, handle.rank)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(handle.output_path, "rb") as source, open(target, "wb") as copy:
                source.seek(offsets[i] if offsets else 0)
                shutil.copyfileobj(source, copy)
        except OSError as exc:
            logger.warning("could not keep rank %d's log of %s in %s: %s", handle.rank, test_id, target, exc)
            continue
        kept[handle.rank] = target
    return kept


def print_outputs(views: list[RankView]) -> None:
    """Every rank's output (its excerpt), ``[rank N]`` first, to stderr: output shown after a test."""
    for view in views:
        for line in view.output.splitlines():
            print(f"[rank {view.rank}] {line}", file=sys.stderr)


class LiveOutput:
    """Copies the lines the ranks write to this process's stderr, ``[rank N]`` first, as they come.

    One thread per test looks at the ranks' output files every ``LIVE_POLL`` seconds (and
    sleeps on an event in between, so closing it is immediate); ``close`` copies what is
    left, a last line without its line end included. Use it as a context manager.
    """

    def __init__(self, ranks: list[RankHandle], offsets: list[int] | None = None) -> None:
        self._stream = sys.stderr  # as it is now: pytest swaps it per test
        self._sources = [(h.rank, h.output_path) for h in ranks]
        self._positions = list(offsets) if offsets else [0] * len(ranks)
        self._partial = [b""] * len(ranks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distributed_testing live output", daemon=True)
        self._thread.start()

    def __enter__(self) -> LiveOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(LIVE_POLL):
            self._copy(last=False)

    def _copy(self, last: bool) -> None:
        lines: list[str] = []
        for i, (rank, path) in enumerate(self._sources):
            data = self._partial[i] + _launcher.read_bytes(path, self._positions[i], 1 << 24)
            self._positions[i] += len(data) - len(self._partial[i])
            if last:
                complete, self._partial[i] = data.removesuffix(b"\n"), b""
            else:
                complete, _, self._partial[i] = data.rpartition(b"\n")
            if complete:
                text = complete.decode("utf-8", errors="replace")
                lines += [f"[rank {rank}] {line}\n" for line in text.split("\n")]
        if lines:
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
            except (OSError, ValueError):  # the stream was closed under us: nothing to show it on
                pass

    def close(self) -> None:
        """Stop the thread and copy what the ranks wrote since it last looked."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._copy(last=True)
