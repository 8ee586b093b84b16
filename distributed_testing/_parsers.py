"""The checks of the settings: one parser per kind of value, and the variables' names.

Each parser takes ``(value, name)``, returns the checked value and raises
:class:`ConfigError` naming the variable (or option), the value, what is
allowed and an example command. Nothing here reads the environment.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

from distributed_testing import _devices
from distributed_testing._errors import ConfigError

__all__ = [
    "BOOLEAN_VALUES",
    "ENV_DEBUG_RANK",
    "ENV_DURATIONS",
    "ENV_FULL_TRACEBACKS",
    "ENV_LOG",
    "ENV_LOG_DIR",
    "ENV_LOG_DIR_ALL",
    "ENV_MAX_RANKS",
    "ENV_NODES",
    "ENV_REPEAT",
    "ENV_REPORT",
    "ENV_REQUIRE_HARDWARE",
    "ENV_RETRIES",
    "ENV_SHARD",
    "ENV_SHOW_OUTPUT",
    "ENV_START_METHOD",
    "ENV_TIMEOUT",
    "INIT_SCHEMES",
    "LOG_LEVELS",
    "SHOW_AFTER",
    "SHOW_LIVE",
    "SHOW_OFF",
    "START_METHODS",
    "parse_backend",
    "parse_bool",
    "parse_count",
    "parse_debug_rank",
    "parse_durations",
    "parse_init_method",
    "parse_log_dir",
    "parse_log_level",
    "parse_max_ranks",
    "parse_nodes",
    "parse_path",
    "parse_repeat",
    "parse_retries",
    "parse_shard",
    "parse_show_output",
    "parse_start_method",
    "parse_temp_dir",
    "parse_timeout",
    "parse_world_size",
    "script_name",
]

START_METHODS = ("fork", "spawn")
INIT_SCHEMES = ("file://", "env://", "tcp://")
LOG_LEVELS = ("debug", "info", "warning")
# Spellings of a boolean, lower case: (true ones, false ones).
BOOLEAN_VALUES = (("1", "true", "yes", "on"), ("0", "false", "no", "off"))
# DISTRIBUTED_TESTING_SHOW_OUTPUT: off, after each test (passing ones too), or live as ranks write.
SHOW_OFF, SHOW_AFTER, SHOW_LIVE = "0", "1", "live"

ENV_START_METHOD = "DISTRIBUTED_TESTING_START_METHOD"
ENV_TIMEOUT = "DISTRIBUTED_TESTING_TIMEOUT"
ENV_SHOW_OUTPUT = "DISTRIBUTED_TESTING_SHOW_OUTPUT"
ENV_REPORT = "DISTRIBUTED_TESTING_REPORT"
ENV_DEBUG_RANK = "DISTRIBUTED_TESTING_DEBUG_RANK"
ENV_LOG = "DISTRIBUTED_TESTING_LOG"
ENV_FULL_TRACEBACKS = "DISTRIBUTED_TESTING_FULL_TRACEBACKS"
ENV_LOG_DIR = "DISTRIBUTED_TESTING_LOG_DIR"
ENV_LOG_DIR_ALL = "DISTRIBUTED_TESTING_LOG_DIR_ALL"
ENV_MAX_RANKS = "DISTRIBUTED_TESTING_MAX_RANKS"
ENV_SHARD = "DISTRIBUTED_TESTING_SHARD"
ENV_DURATIONS = "DISTRIBUTED_TESTING_DURATIONS"
ENV_RETRIES = "DISTRIBUTED_TESTING_RETRIES"
ENV_REPEAT = "DISTRIBUTED_TESTING_REPEAT"
ENV_REQUIRE_HARDWARE = "DISTRIBUTED_TESTING_REQUIRE_HARDWARE"
ENV_NODES = "DISTRIBUTED_TESTING_NODES"
# mkdtemp's names of the directories this library makes and removes: dt-run-, dt-pool-<Class>-, dt-<Class>-.
_OWN_TEMP = re.compile(r"dt-[A-Za-z_][\w-]*-[a-z0-9_]{8}")


def script_name() -> str:
    """The test file as the user ran it, for example commands in messages."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return argv0 if argv0.endswith(".py") and argv0 != "__main__.py" else "test_x.py"


def _example(assignments: str) -> str:
    return f"Example: {assignments} python {script_name()}"


# -- parsers: (value, name) -> the checked value ------------------------------


def parse_backend(value: str, name: str = "BACKEND") -> str:
    """Validate a c10d backend name against this torch build."""
    backend = value.strip().lower()
    have = ", ".join(_devices.available_backends()) or "none"
    if backend not in _devices.KNOWN_BACKENDS:
        raise ConfigError(
            f"{name} must be one of {', '.join(_devices.KNOWN_BACKENDS)}, got "
            f"{name}={value!r}. This torch build has: {have}. "
            + _example(f"{name}=gloo WORLD_SIZE=2"),
            name,
            value,
        )
    if not _devices.backend_available(backend):
        raise ConfigError(
            f"{name}={value!r} is not available in this torch build, which has: "
            f"{have}. " + _example(f"{name}=gloo WORLD_SIZE=2"),
            name,
            value,
        )
    return backend


def parse_world_size(value: object, name: str = "WORLD_SIZE") -> int:
    """Validate a world size: an integer >= 1 (a numeric string is accepted)."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\+?[0-9]+", value.strip()):
        number = int(value.strip())
    if number is None or number < 1:
        raise ConfigError(
            f"{name} must be an integer >= 1, got {name}={value!r}. "
            + _example("WORLD_SIZE=2"),
            name,
            value,
        )
    return number


def parse_temp_dir(value: str, name: str = "TEMP_DIR") -> str:
    """Validate a scratch directory: it must exist, be a directory, be writable."""
    problem = None
    if not os.path.exists(value):
        problem = "which does not exist"
    elif not os.path.isdir(value):
        problem = "which is not a directory"
    else:
        problem = _write_problem(value)
    if problem:
        raise ConfigError(
            f"{name} must be an existing, writable directory, got {name}={value!r}, "
            f"{problem}. Example: mkdir -p /tmp/dt && {name}=/tmp/dt BACKEND=gloo "
            f"WORLD_SIZE=2 python {script_name()}",
            name,
            value,
        )
    return os.path.abspath(value)


def _write_problem(directory: str) -> str | None:
    """Try to create a file (os.access lies to root); say why it failed."""
    try:
        fd, path = tempfile.mkstemp(dir=directory, prefix=".dt-probe-")
    except OSError as exc:
        return f"which is not writable ({exc.strerror})"
    os.close(fd)
    os.unlink(path)
    return None


def parse_init_method(value: str, name: str = "INIT_METHOD") -> str:
    """Validate an init method: ``file://[PATH]``, ``env://`` or ``tcp://HOST:PORT``."""
    ok = value.startswith(INIT_SCHEMES)
    if ok and value.startswith("tcp://"):
        host, _, port = value[len("tcp://") :].rpartition(":")
        ok = bool(host) and port.isdigit()
    if not ok:
        raise ConfigError(
            f"{name} must be file://, env:// or tcp://HOST:PORT, got {name}={value!r}. "
            + _example(f"{name}=env://"),
            name,
            value,
        )
    return value


def parse_start_method(value: str, name: str = ENV_START_METHOD) -> str:
    """Validate how rank processes start: ``fork`` or ``spawn``."""
    method = value.strip().lower()
    if method not in START_METHODS:
        raise ConfigError(
            f"{name} must be one of {', '.join(START_METHODS)}, got {name}={value!r}. "
            + _example(f"{ENV_START_METHOD}=spawn"),
            name,
            value,
        )
    return method


def parse_timeout(value: object, name: str = ENV_TIMEOUT) -> float:
    """Validate a per-test deadline in seconds: a number > 0."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not seconds > 0 or seconds == float("inf"):
        raise ConfigError(
            f"{name} must be a number of seconds > 0, got {name}={value!r}. "
            + _example(f"{ENV_TIMEOUT}=60"),
            name,
            value,
        )
    return seconds


def parse_debug_rank(value: object, name: str = ENV_DEBUG_RANK) -> int:
    """Validate the rank to run in the main process: an integer >= 0."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise ConfigError(
            f"{name} must be a rank, an integer >= 0, got {name}={value!r}. "
            + _example(f"{ENV_DEBUG_RANK}=1") + " -k test_name",
            name,
            value,
        )
    return int(text)


def parse_bool(value: object, name: str) -> bool:
    """Validate a switch: 1/0, true/false, yes/no or on/off, in any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in BOOLEAN_VALUES[0]:
        return True
    if text in BOOLEAN_VALUES[1]:
        return False
    raise ConfigError(
        f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {name}={value!r}. " + _example(f"{name}=1"),
        name,
        value,
    )


def parse_log_level(value: str, name: str = ENV_LOG) -> str:
    """Validate the library's log level: debug, info or warning."""
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"{name} must be one of {', '.join(LOG_LEVELS)}, got {name}={value!r}. " + _example(f"{ENV_LOG}=debug"),
            name,
            value,
        )
    return level


def parse_show_output(value: object, name: str = ENV_SHOW_OUTPUT) -> str:
    """Validate when ranks' output is shown: 0 (with failures), 1 (after each test) or live (as written)."""
    text = str(value).strip().lower()
    if text == SHOW_LIVE:
        return SHOW_LIVE
    if isinstance(value, bool) or text in BOOLEAN_VALUES[0] + BOOLEAN_VALUES[1]:
        return SHOW_AFTER if parse_bool(value, name) else SHOW_OFF
    raise ConfigError(
        f"{name} must be one of {SHOW_OFF}, {SHOW_AFTER}, {SHOW_LIVE} (0 and 1 also as false/true, no/yes, "
        f"off/on), got {name}={value!r}. " + _example(f"{ENV_SHOW_OUTPUT}={SHOW_LIVE}"),
        name,
        value,
    )


def parse_log_dir(value: str, name: str = ENV_LOG_DIR) -> str:
    """Validate where failing tests' full rank logs are kept: a directory that is or can be
    made, writable, and not inside a temporary directory this library removes."""
    path = os.path.abspath(value)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = _write_problem(existing) if os.path.isdir(existing) else "which is a file"
    if problem and existing != path:
        problem = problem.replace("which is", f"which cannot be made: {existing!r} is", 1)
    if problem is None and (removed := _own_temp_dir(path)):
        problem = f"inside {removed!r}, a temporary directory this library removes after its test or run"
    if problem:
        raise ConfigError(
            f"{name} must be a directory that exists or can be made, is writable and is kept after the run "
            f"(not inside a test's temporary directory), got {name}={value!r}, {problem}. "
            + _example(f"{name}=dt-logs"),
            name,
            value,
        )
    return path


def _own_temp_dir(path: str) -> str | None:
    """The temporary directory of this library's that ``path`` is in (removed after use), if any."""
    root = os.path.realpath(tempfile.gettempdir())
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root or real == root:
        return None
    first = os.path.relpath(real, root).split(os.sep)[0]
    return os.path.join(root, first) if _OWN_TEMP.fullmatch(first) else None


def parse_path(value: str, name: str) -> str:
    """A file to write: taken as given (its directory is checked when it is written)."""
    return value


def parse_count(value: object, name: str, least: int, example: str) -> int:
    """Validate a whole number >= ``least`` (a numeric string is accepted)."""
    text = str(value).strip()
    number = int(text) if not isinstance(value, bool) and re.fullmatch(r"\+?[0-9]+", text) else None
    if number is None or number < least:
        raise ConfigError(
            f"{name} must be an integer >= {least}, got {name}={value!r}. " + _example(f"{name}={example}"),
            name,
            value,
        )
    return number


def parse_max_ranks(value: object, name: str = ENV_MAX_RANKS) -> int:
    """Validate the most ranks alive at once across pytest-xdist workers: >= 1."""
    return parse_count(value, name, 1, "4")


def parse_retries(value: object, name: str = ENV_RETRIES) -> int:
    """Validate how often a failing or hung test is re-run on fresh ranks: >= 0."""
    return parse_count(value, name, 0, "2")


def parse_repeat(value: object, name: str = ENV_REPEAT) -> int:
    """Validate how many times each selected test runs: >= 1."""
    return parse_count(value, name, 1, "20")


def parse_nodes(value: object, name: str = ENV_NODES) -> int:
    """Validate how many nodes the ranks of one test are spread over on this machine: >= 1."""
    return parse_count(value, name, 1, "2")


def parse_shard(value: object, name: str = ENV_SHARD) -> tuple[int, int]:
    """Validate a shard ``i/n`` (1 <= i <= n): this machine runs the i-th of n disjoint parts."""
    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", str(value))
    index, count = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 1 <= index <= count:
        raise ConfigError(
            f"{name} must be i/n, shard i of n with 1 <= i <= n, got {name}={value!r}. "
            + _example(f"{name}=1/3"),
            name,
            value,
        )
    return index, count


def parse_durations(value: str, name: str = ENV_DURATIONS) -> str:
    """Validate a durations file from an earlier run: an existing JSON file (its tests are
    checked against the collected ones when a run is split into shards)."""
    problem = ""
    try:
        with open(value, encoding="utf-8") as handle:
            json.load(handle)
    except FileNotFoundError:
        problem = "which does not exist"
    except IsADirectoryError:
        problem = "which is a directory"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"which cannot be read ({exc})"
    except json.JSONDecodeError as exc:
        problem = f"which is not JSON ({exc})"
    if problem:
        raise ConfigError(
            f"{name} must be a JSON file of an earlier run's durations (a report written by "
            f"DISTRIBUTED_TESTING_REPORT), got {name}={value!r}, {problem}. "
            + _example(f"{name}=report.json {ENV_SHARD}=1/3"),
            name,
            value,
        )
    return os.path.abspath(value)
