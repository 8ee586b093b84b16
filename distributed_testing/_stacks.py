"""Stacks and tracebacks as a user reads them: framework frames trimmed, a hung rank in one line.

``DISTRIBUTED_TESTING_FULL_TRACEBACKS=1`` keeps the framework's frames (to debug
this library itself).

At the deadline the parent first asks each live rank's helper thread (a byte
in the rank's *ask* FIFO): it writes, to the rank's *where* file, where the
rank's default process group is (its sequence number, what c10d's flight
recorder saw) and every thread's stack, dumped while it holds the GIL, so no
thread's frames change meanwhile (a rank blocked in a C++ collective has
released the GIL). A rank that does not answer soon (its main thread holds the
GIL in C) gets a signal instead: faulthandler writes its stacks to the rank's
stacks file from the signal handler, which works anywhere. The parent puts the
where record in front of the stacks as one ``WHERE_MARK`` line.
"""

from __future__ import annotations

import json
import linecache
import os
import re
import sysconfig
from typing import Any

from distributed_testing._errors import ConfigError

__all__ = [
    "ask_where",
    "flight_record",
    "rank_stacks",
    "show_framework_frames",
    "split_where",
    "stacks_key",
    "summarize_stacks",
    "trim_stacks",
    "where_answered",
    "write_answer",
]

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_THREAD_ID = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-fA-F]+ ")
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
# The rank's own helper thread (it answers "where are you"): never the user's business.
HELPER_FUNCTION = "_answer_where_requests"
# Frames of these are libraries: a hung rank's summary names the user's frame.
_LIBRARIES = (_STDLIB, sysconfig.get_paths()["purelib"] + os.sep, sysconfig.get_paths()["platlib"] + os.sep)
# c10d's functions that run (or wait for) a collective of a group: a rank whose
# innermost frame is one of these is inside that collective.
_C10D_FILES = (f"{os.sep}torch{os.sep}distributed{os.sep}distributed_c10d.py",)
_COLLECTIVES = frozenset(
    "all_reduce all_reduce_coalesced all_gather all_gather_into_tensor all_gather_coalesced _all_gather_base "
    "all_gather_object all_to_all all_to_all_single barrier monitored_barrier broadcast broadcast_object_list "
    "gather gather_object scatter scatter_object_list reduce reduce_scatter reduce_scatter_tensor "
    "_reduce_scatter_base send recv send_object_list recv_object_list batch_isend_irecv".split()
)
# A call at the start of a source line: ``time.sleep(5)``, ``x = work.wait()``.
_CALL = re.compile(r"^(?:[\w.\[\], ]+=\s*)?(?:await\s+)?(?P<name>[A-Za-z_][\w.]*)\s*\(")
_KEYWORDS = frozenset("if elif while for with return yield assert del not and or in is lambda".split())

WHERE_MARK = "distributed_testing where: "  # the first line of a rank's stacks: its where record


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


def _thread_texts(text: str) -> list[list[str]]:
    """faulthandler output split into one list of lines per thread (blank lines dropped)."""
    threads: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith(("Thread ", "Current thread ")) or not threads:
            threads.append([])
        if line.strip():
            threads[-1].append(line)
    return threads


def trim_stacks(text: str) -> str:
    """faulthandler output without the framework's frames, nor those a forked
    rank inherited from the parent (everything older than the rank's entry),
    nor the rank's helper thread, nor threads without a Python frame; thread ids
    and which thread dumped are left out (they differ from rank to rank and say
    nothing to a reader): every thread is a ``Thread``, the main one last."""
    if show_framework_frames():
        return text.strip("\n")
    kept: list[str] = []
    for thread in _thread_texts(text):
        helper = any(line.endswith(f" {HELPER_FUNCTION}") for line in thread)
        if helper or not any(_FRAME.match(line) for line in thread):
            continue  # the helper, or a thread without a Python frame (the helper before it first ran)
        lines = []
        in_parent = False
        for line in thread:
            if _frame_file(line) in _ENTRY_FILES and line.endswith(_ENTRY_FUNCTIONS):
                in_parent = True
            if in_parent or _is_framework(_frame_file(line)):
                continue
            lines.append(_THREAD_ID.sub("Thread ", line))
        if lines:
            kept += [*([""] if kept else []), *lines]
    return "\n".join(kept).strip("\n")


def stacks_key(trimmed: str) -> str:
    """What makes two ranks' trimmed stacks the same for a report (thread ids aside)."""
    return "\n".join(_THREAD_ID.sub("Thread ", line) for line in trimmed.splitlines())


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


def _callee(path: str, line: str, func: str) -> str:
    """What the user's innermost frame calls on its line (``time.sleep``), else its function."""
    source = linecache.getline(path, int(line)).strip()
    match = _CALL.match(source)
    if match and match["name"].split(".")[0] not in _KEYWORDS:
        return match["name"]
    return func


def summarize_stacks(text: str, record: dict[str, Any] | None = None) -> str:
    """Where a hung rank was, in one line: ``in all_reduce at test_x.py:41``; with the
    rank's where ``record``, which collective of the default group that is
    (``in barrier (collective #3 of the default group) at test_x.py:27``) or
    which the rank last ran (``in time.sleep at test_x.py:29 (after collective #2)``)."""
    record = record or {}
    blocks = [b for b in _thread_blocks(text) if any(not _is_library(f) for f, _, _ in b)]
    sequence = record.get("sequence", -1)
    if not blocks:
        after = f" (after collective #{sequence})" if sequence >= 0 else ""
        return f"no Python stack available{after}{_flight_note(record, False)}"
    frames = blocks[-1]  # the main thread is listed last
    user = next(frame for frame in frames if not _is_library(frame[0]))
    inner = frames[0]
    where = f"{user[0].rsplit(os.sep, 1)[-1]}:{user[1]}"
    in_collective = inner[0].endswith(_C10D_FILES) and inner[2] in _COLLECTIVES
    name = _callee(*inner) if inner is user else inner[2]
    if sequence < 0:
        return f"in {name} at {where}{_flight_note(record, in_collective)}"
    subgroup = record.get("group") if in_collective else None
    if subgroup:  # a collective of another group: its own count, and the default group's
        ranks = ", ".join(map(str, subgroup.get("ranks", ())))
        number = subgroup.get("sequence", -1)
        after = f"(after collective #{sequence} of the default group)"
        return f"in {name} (collective #{number} of the group of ranks {ranks}) at {where} {after}"
    if in_collective:
        return f"in {name} (collective #{sequence} of the default group) at {where}"
    return f"in {name} at {where} (after collective #{sequence}){_flight_note(record, False)}"


def _flight_note(record: dict[str, Any], in_collective: bool) -> str:
    """What the flight recorder adds where the Python stack cannot tell: a collective
    entered but not completed while the rank's Python code is elsewhere (NCCL runs
    collectives asynchronously). Only for recorders that track completion."""
    flight = record.get("flight") or {}
    entered, completed = flight.get("entered"), flight.get("completed", -1)
    if in_collective or not flight.get("tracks_completion") or not entered or entered[0] <= completed:
        return ""
    return f"; flight recorder: {entered[1]} #{entered[0]} not completed, last completed #{completed}"


# -- the where record: rank side and parent side ------------------------------


def where_path(stacks_path: str) -> str:
    """The file a rank writes its where record to."""
    return f"{stacks_path}.where"


def ask_path(stacks_path: str) -> str:
    """The FIFO the parent writes a byte to, to ask a rank for its where record."""
    return f"{stacks_path}.ask"


def ask_where(stacks_path: str) -> bool:
    """Parent: ask the rank for its where record and stacks; False if it has no helper to answer."""
    try:
        fd = os.open(ask_path(stacks_path), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody reads the FIFO; ENOENT: no FIFO
        return False
    try:
        os.write(fd, b"?")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def where_answered(stacks_path: str) -> bool:
    """Parent: whether the rank has answered (written its where file)."""
    return os.path.exists(where_path(stacks_path))


def rank_stacks(stacks_path: str, signalled: str) -> str:
    """Parent: what a rank's stacks are for the report: its where record as the first
    line, then the stacks the signal made it write (``signalled``: it did not answer
    in time, so they are the older, truer ones), else those its helper wrote."""
    try:
        with open(where_path(stacks_path), encoding="utf-8", errors="replace") as handle:
            record, _, answered = handle.read().partition("\n")
    except OSError:
        return signalled
    stacks = signalled if signalled.strip() else answered
    return f"{WHERE_MARK}{record}\n{stacks}" if record.strip() else stacks


def write_answer(stacks_path: str, record: dict[str, Any]) -> None:
    """Rank, on its helper thread: write the where record and every thread's stack,
    whole or not at all (the parent polls for the file). Holding the GIL while
    dumping, no other thread runs Python code, so no frame changes under the dump."""
    import faulthandler

    path = where_path(stacks_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        faulthandler.dump_traceback(handle, all_threads=True)
    os.replace(tmp, path)


def split_where(stacks: str) -> tuple[dict[str, Any], str]:
    """A rank's stacks as the parent read them -> (where record, faulthandler's text)."""
    if not stacks.startswith(WHERE_MARK):
        return {}, stacks
    line, _, rest = stacks.partition("\n")
    try:
        record = json.loads(line[len(WHERE_MARK) :])
    except ValueError:
        return {}, rest
    return (record if isinstance(record, dict) else {}), rest


def flight_record(dump: dict[str, Any], group_name: str, tracks_completion: bool) -> dict[str, Any]:
    """What c10d's flight recorder dump (``_dump_fr_trace_json``, active entries) says of
    one group: the last collective entered (``[number, name]``) and the last completed,
    numbered as the group's sequence number is; {} if it says nothing. The recorder
    ``tracks_completion`` for NCCL (its watchdog sees each collective finish); gloo's
    records collectives (not point-to-point operations) as they are entered and calls
    one completed once its work object is released."""
    status = (dump.get("pg_status") or {}).get(group_name) or {}
    if not status:
        return {}
    entered = int(status.get("last_enqueued_collective", -1))
    entries = [e for e in dump.get("entries") or [] if str((e.get("process_group") or [""])[0]) == group_name]
    name = str(entries[-1].get("profiling_name", "")).rpartition(":")[2] if entries else ""
    return {
        "entered": [entered, name or "a collective"] if entered >= 0 else None,
        "completed": int(status.get("last_completed_collective", -1)),
        "tracks_completion": tracks_completion,
    }
