"""Stacks and tracebacks as a user reads them: framework frames trimmed, a hung rank in one line.

``DISTRIBUTED_TESTING_FULL_TRACEBACKS=1`` keeps the framework's frames (to debug
this library itself).
"""

from __future__ import annotations

import os
import re
import sysconfig

from distributed_testing._errors import ConfigError

__all__ = ["show_framework_frames", "summarize_stacks", "trim_stacks"]

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
# Frames of these directories are the framework's, trimmed from reports.
_FRAMEWORK = (
    _PACKAGE_DIR,
    os.path.join(_STDLIB, "multiprocessing") + os.sep,
    os.path.join(_STDLIB, "unittest") + os.sep,
    os.path.join(sysconfig.get_paths()["purelib"], "expecttest") + os.sep,
)
# A rank's entry points: older frames belong to the process it was forked from.
_ENTRY_FILES = (os.path.join(_PACKAGE_DIR, "_rank.py"), os.path.join(_PACKAGE_DIR, "_pool_worker.py"))
_ENTRY_FUNCTIONS = (" rank_main", " pool_main")
# Frames of these are libraries: a hung rank's summary names the user's frame.
_LIBRARIES = (_STDLIB, sysconfig.get_paths()["purelib"] + os.sep, sysconfig.get_paths()["platlib"] + os.sep)


def _frame_file(line: str) -> str:
    match = _FRAME.match(line)
    return match["file"] if match else ""


def show_framework_frames() -> bool:
    """Whether reports keep the framework's own frames (``DISTRIBUTED_TESTING_FULL_TRACEBACKS``)."""
    from distributed_testing import _config

    try:
        return _config.load().full_tracebacks
    except ConfigError:
        return False  # the run reports the bad setting itself


def _is_framework(path: str) -> bool:
    return bool(path) and path.startswith(_FRAMEWORK)


def _is_library(path: str) -> bool:
    return path.startswith((*_LIBRARIES, *_FRAMEWORK))


def trim_stacks(text: str) -> str:
    """faulthandler output without the framework's frames, nor those a forked
    rank inherited from the parent (everything older than the rank's entry)."""
    if show_framework_frames():
        return text.strip("\n")
    kept: list[str] = []
    in_parent = False
    for line in text.splitlines():
        if line.startswith(("Thread ", "Current thread ")):
            in_parent = False
        elif _frame_file(line) in _ENTRY_FILES and line.endswith(_ENTRY_FUNCTIONS):
            in_parent = True
        if in_parent or _is_framework(_frame_file(line)):
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n")


def _thread_blocks(text: str) -> list[list[tuple[str, str, str]]]:
    blocks: list[list[tuple[str, str, str]]] = []
    for line in text.splitlines():
        if line.startswith(("Thread ", "Current thread ")):
            blocks.append([])
            continue
        match = _FRAME.match(line)
        if match and blocks:
            blocks[-1].append((match["file"], match["line"], match["func"]))
    return blocks


def summarize_stacks(text: str) -> str:
    """Where a hung rank was, in one line: ``in all_reduce at test_x.py:41``."""
    blocks = [b for b in _thread_blocks(text) if any(not _is_library(f) for f, _, _ in b)]
    if not blocks:
        return "no Python stack available"
    frames = blocks[-1]  # the main thread is listed last
    user = next(frame for frame in frames if not _is_library(frame[0]))
    inner = frames[0]
    where = f"{user[0].rsplit('/', 1)[-1]}:{user[1]}"
    return f"in {inner[2]} at {where}"
