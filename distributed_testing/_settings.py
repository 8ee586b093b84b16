"""The table of settings: every variable, its options, its check, its default and its help.

One :class:`Setting` per environment variable. ``_config.load()`` reads the
variables into ``Settings`` from this table, ``python -m distributed_testing``
and the pytest plugin make their options from it, and
``tools/settings_table.py`` writes README's table from it. Nothing here reads
the environment: the parsers check one value each and raise
:class:`ConfigError` naming the variable, the value, what is allowed and an
example command.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from distributed_testing import _devices
from distributed_testing._errors import ConfigError

__all__ = [
    "BOOLEAN_VALUES",
    "ENV_DEBUG_RANK",
    "ENV_FULL_TRACEBACKS",
    "ENV_LOG",
    "ENV_LOG_DIR",
    "ENV_LOG_DIR_ALL",
    "ENV_REPORT",
    "ENV_SHOW_OUTPUT",
    "ENV_START_METHOD",
    "ENV_TIMEOUT",
    "INIT_SCHEMES",
    "LOG_LEVELS",
    "SETTINGS",
    "SHOW_AFTER",
    "SHOW_LIVE",
    "SHOW_OFF",
    "START_METHODS",
    "Setting",
    "parse_backend",
    "parse_bool",
    "parse_debug_rank",
    "parse_init_method",
    "parse_log_dir",
    "parse_log_level",
    "parse_path",
    "parse_show_output",
    "parse_start_method",
    "parse_temp_dir",
    "parse_timeout",
    "parse_world_size",
    "plain",
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


# -- the table ----------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: where it comes from, how it is checked, how it is explained.

    ``values``, ``default`` and ``help`` are reStructuredText (README's table
    shows them as they are); :func:`plain` turns them into ``--help`` text.
    """

    variable: str  # the environment variable
    field: str  # the Settings field it fills
    option: str  # python -m distributed_testing's option
    pytest_option: str | None  # the pytest plugin's option; None where pytest has no use for it
    parse: Callable[[str, str], object]  # (value, name) -> the field's value; raises ConfigError
    values: str  # what is allowed
    default: str  # what happens when it is not set, as users read it
    help: str  # one line: what it does
    example: str  # a good value, for example commands
    unset: object = None  # the field's value when the variable is not set
    switch: bool = False  # a boolean: its options take no value (--show-output, --no-show-output)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        variable="BACKEND", field="backend", option="--backend", pytest_option="--dt-backend",
        parse=parse_backend,
        values="gloo, nccl, ucc, mpi, xccl (what this torch build has)",
        default="nccl with a GPU per rank, else gloo",
        help="c10d backend for the ranks",
        example="gloo",
    ),
    Setting(
        variable="WORLD_SIZE", field="world_size", option="--world-size", pytest_option="--dt-world-size",
        parse=parse_world_size,
        values="an integer >= 1",
        default="the class's own (``MultiProcessTestCase``: 4, ``DistBackendTestCase``: 2)",
        help="ranks per test, for classes that read it",
        example="2",
    ),
    Setting(
        variable="TEMP_DIR", field="temp_dir", option="--temp-dir", pytest_option="--dt-temp-dir",
        parse=parse_temp_dir,
        values="an existing, writable directory",
        default="a private directory, removed at exit",
        help="scratch directory; ``barrier`` and ``test_dir`` are created in it",
        example="/tmp",
    ),
    Setting(
        variable="INIT_METHOD", field="init_method", option="--init-method", pytest_option="--dt-init-method",
        parse=parse_init_method,
        values="``file://``, ``env://`` or ``tcp://HOST:PORT``",
        default="``file://`` in the per-test directory",
        help="how the ranks rendezvous",
        example="env://",
        unset="file://",
    ),
    Setting(
        variable=ENV_START_METHOD, field="start_method", option="--start-method", pytest_option="--dt-start-method",
        parse=parse_start_method,
        values="``fork`` (a warm fork server) or ``spawn``",
        default="fork on Linux, else spawn",
        help="how rank processes start",
        example="spawn",
    ),
    Setting(
        variable=ENV_TIMEOUT, field="timeout", option="--timeout", pytest_option="--dt-timeout",
        parse=parse_timeout,
        values="a number > 0",
        default="300",
        help="seconds a test may take before its ranks' stacks are taken",
        example="60",
    ),
    Setting(
        variable=ENV_SHOW_OUTPUT, field="show_output", option="--show-output", pytest_option="--dt-show-output",
        parse=parse_show_output,
        values="``0``, ``1`` (after each test, passing ones too) or ``live`` (each line to stderr as a "
        "rank writes it)",
        default="``0``: with failures only (pytest ``-s``: ``live``)",
        help="show the ranks' output",
        example=SHOW_LIVE,
        unset=SHOW_OFF,
    ),
    Setting(
        variable=ENV_LOG_DIR, field="log_dir", option="--log-dir", pytest_option="--dt-log-dir",
        parse=parse_log_dir,
        values="a writable directory, made if missing, outside the tests' temporary directories",
        default="off: the logs go with each test's temporary directory",
        help="keep each failing test's full rank logs as ``DIR/<test id>/rank<N>/output.log``",
        example="dt-logs",
    ),
    Setting(
        variable=ENV_LOG_DIR_ALL, field="log_dir_all", option="--log-dir-all", pytest_option="--dt-log-dir-all",
        parse=parse_bool,
        values="``1`` or ``0`` (or true/false, yes/no, on/off)",
        default="off: failing tests only",
        help=f"keep passing and skipped tests' logs in ``{ENV_LOG_DIR}`` too",
        example="1",
        unset=False,
        switch=True,
    ),
    Setting(
        variable=ENV_DEBUG_RANK, field="debug_rank", option="--debug-rank", pytest_option="--dt-debug-rank",
        parse=parse_debug_rank,
        values="a rank, an integer >= 0",
        default="off",
        help="run this rank in the main process, where ``breakpoint()`` and pdb work",
        example="0",
    ),
    Setting(
        variable=ENV_REPORT, field="report_path", option="--report",
        pytest_option=None,  # run_tests() writes this record; pytest has --junitxml
        parse=parse_path,
        values="a file path",
        default="off",
        help="write a JSON record of the run to this file",
        example="report.json",
    ),
    Setting(
        variable=ENV_LOG, field="log_level", option="--log", pytest_option="--dt-log",
        parse=parse_log_level,
        values="``debug``, ``info`` or ``warning``",
        default="off",
        help="log what the library does (processes, preloads, fallbacks) to stderr",
        example="debug",
    ),
    Setting(
        variable=ENV_FULL_TRACEBACKS, field="full_tracebacks", option="--full-tracebacks",
        pytest_option="--dt-full-tracebacks", parse=parse_bool,
        values="``1`` or ``0`` (or true/false, yes/no, on/off)",
        default="off",
        help="show the framework's own frames in tracebacks and stacks",
        example="1",
        unset=False,
        switch=True,
    ),
)


def plain(text: str) -> str:
    """reStructuredText inline literals as plain text, for --help."""
    return text.replace("``", "")
