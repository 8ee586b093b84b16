"""Configuration: the one module that reads the environment.

Every variable of the table in :mod:`distributed_testing._settings` is parsed
and validated here into a frozen :class:`Settings`; the rest of the library
receives settings and never touches ``os.environ`` for configuration. A bad
value raises :class:`ConfigError` with a message that names the variable, the
value, what is allowed and an example command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from distributed_testing import _devices, _slurm
from distributed_testing._errors import ConfigError
from distributed_testing._parsers import (
    ENV_DEBUG_RANK,
    ENV_FULL_TRACEBACKS,
    ENV_LOG,
    ENV_LOG_DIR,
    ENV_LOG_DIR_ALL,
    ENV_REPORT,
    ENV_SHOW_OUTPUT,
    ENV_START_METHOD,
    ENV_TIMEOUT,
    INIT_SCHEMES,
    SHOW_AFTER,
    SHOW_LIVE,
    SHOW_OFF,
    START_METHODS,
    parse_backend,
    parse_bool,
    parse_debug_rank,
    parse_init_method,
    parse_log_dir,
    parse_log_level,
    parse_show_output,
    parse_start_method,
    parse_temp_dir,
    parse_timeout,
    parse_world_size,
    script_name,
)
from distributed_testing._settings import SETTINGS

__all__ = [
    "DEFAULT_TIMEOUT",
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
    "SHOW_AFTER",
    "SHOW_LIVE",
    "SHOW_OFF",
    "START_METHODS",
    "STRICT_VARIABLES",
    "Settings",
    "keeps_logs",
    "load",
    "parse_backend",
    "parse_bool",
    "parse_debug_rank",
    "parse_init_method",
    "parse_log_dir",
    "parse_log_level",
    "parse_show_output",
    "parse_start_method",
    "parse_temp_dir",
    "parse_timeout",
    "parse_world_size",
    "resolve_start_method",
    "resolve_timeout",
    "script_name",
]

DEFAULT_TIMEOUT = 300.0
# The variables --strict-env insists on, as test_distributed_spawn.py does.
STRICT_VARIABLES = ("BACKEND", "WORLD_SIZE", "TEMP_DIR")


@dataclass(frozen=True)
class Settings:
    """The resolved environment of a run: a field per setting of the table, and ``backend_from_env``.

    ``None`` means the variable was not set and each class uses its own value.
    """

    backend: str
    backend_from_env: bool
    world_size: int | None
    temp_dir: str | None
    init_method: str
    start_method: str | None
    timeout: float | None
    show_output: str  # SHOW_OFF ("0"), SHOW_AFTER ("1") or SHOW_LIVE ("live")
    report_path: str | None = None  # where run_tests() writes a JSON record of the run
    debug_rank: int | None = None  # the rank run in the main process, for pdb
    log_level: str | None = None  # debug, info or warning: the library logs to stderr
    full_tracebacks: bool = False  # keep the framework's own frames in tracebacks and stacks
    log_dir: str | None = None  # keep failing tests' full rank logs here (absolute)
    log_dir_all: bool = False  # and passing (and skipped) tests' too
    max_ranks: int | None = None  # most ranks alive at once across pytest-xdist workers (None: CPU count)
    shard: tuple[int, int] | None = None  # (i, n): run the i-th of n shards
    durations: str | None = None  # an earlier run's JSON report, to balance shards
    retries: int = 0  # re-runs of a failing or hung test on fresh ranks
    repeat: int = 1  # runs of each selected test
    require_hardware: bool = False  # a test skipped for lack of hardware fails instead
    nodes: int = 1  # simulated nodes the ranks of a test are spread over


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """A variable's value; unset and empty both mean 'not given'."""
    value = environ.get(name)
    return value if value else None


@dataclass(frozen=True)
class Launch:
    """What a launcher (torchrun, or Slurm/MPI through it) told this process."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    agent_store: bool  # torchrun hosts the store at MASTER_ADDR:MASTER_PORT
    run_id: str


LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launch_info(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launcher's variables when ``RANK`` is set (torchrun mode), or what a task of a
    multi-task srun step stands for (:mod:`._slurm`), else None.

    Raises ConfigError when they are incomplete or inconsistent.
    """
    env = os.environ if environ is None else environ
    if _get(env, "RANK") is None:
        derived = _slurm.launch_env(env)
        if not derived:
            return None
        env = {**env, **derived}
    missing = [name for name in LAUNCH_VARIABLES if _get(env, name) is None]
    example = "Example: torchrun --standalone --nproc-per-node=2 test_x.py"
    if missing:
        raise ConfigError(
            f"RANK is set, so this process was started by a launcher, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; a launcher sets all of "
            f"{', '.join(LAUNCH_VARIABLES)}. {example}",
            missing[0],
        )
    world = parse_world_size(env["WORLD_SIZE"])
    numbers = {}
    for name in ("RANK", "LOCAL_RANK", "MASTER_PORT"):
        if not re.fullmatch(r"[0-9]+", env[name].strip()):
            raise ConfigError(f"{name} must be an integer >= 0, got {name}={env[name]!r}. {example}", name, env[name])
        numbers[name] = int(env[name])
    if numbers["RANK"] >= world:
        raise ConfigError(
            f"RANK must be below WORLD_SIZE, got RANK={numbers['RANK']} with WORLD_SIZE={world}. {example}",
            "RANK",
            numbers["RANK"],
        )
    if not 0 < numbers["MASTER_PORT"] < 65536:
        raise ConfigError(f"MASTER_PORT must be a TCP port, got MASTER_PORT={env['MASTER_PORT']!r}. {example}")
    return Launch(
        rank=numbers["RANK"],
        world_size=world,
        local_rank=numbers["LOCAL_RANK"],
        master_addr=env["MASTER_ADDR"],
        master_port=numbers["MASTER_PORT"],
        agent_store=(_get(env, "TORCHELASTIC_USE_AGENT_STORE") or "").lower() == "true",
        run_id=_get(env, "TORCHELASTIC_RUN_ID") or f"{env['MASTER_ADDR']}-{numbers['MASTER_PORT']}",
    )


def missing_strict(environ: Mapping[str, str]) -> list[str]:
    """The strict-mode variables that are not set."""
    return [name for name in STRICT_VARIABLES if _get(environ, name) is None]


def strict_error(missing: list[str]) -> ConfigError:
    """The error --strict-env gives when variables are missing."""
    verb = "is" if len(missing) == 1 else "are"
    return ConfigError(
        f"--strict-env: {', '.join(missing)} {verb} not set; strict mode needs each "
        f"of {', '.join(STRICT_VARIABLES)}. Example: mkdir -p /tmp/dt && TEMP_DIR=/tmp/dt "
        f"BACKEND=gloo WORLD_SIZE=2 python {script_name()} --strict-env",
        missing[0],
        None,
    )


# Set next to BACKEND when this library exported its own default (for PyTorch-style
# code that reads BACKEND): such a BACKEND is not the user's choice, so classes
# that pick a backend per device (DTensorTestBase, with_comms) still pick their own.
ENV_DEFAULTED_BACKEND = "DISTRIBUTED_TESTING_DEFAULTED_BACKEND"
_VARIABLES = (*(setting.variable for setting in SETTINGS), ENV_DEFAULTED_BACKEND)


def defaulted_backend(backend: str) -> dict[str, str]:
    """The variables that export ``backend`` as this library's default, not the user's choice."""
    return {"BACKEND": backend, ENV_DEFAULTED_BACKEND: backend}


def load(environ: Mapping[str, str] | None = None, strict: bool = False) -> Settings:
    """Read and validate every variable; raise ConfigError on the first bad one.

    Reading ``os.environ`` is cached on the variables' values, so the checks
    (a TEMP_DIR write probe among them) run once per distinct environment.
    """
    if environ is None:
        return _load_cached(tuple(os.environ.get(name) for name in _VARIABLES), strict)
    return _load(environ, strict)


@functools.lru_cache(maxsize=8)
def _load_cached(values: tuple[str | None, ...], strict: bool) -> Settings:
    env = {name: value for name, value in zip(_VARIABLES, values, strict=True) if value is not None}
    return _load(env, strict)


def _load(env: Mapping[str, str], strict: bool) -> Settings:
    if strict and missing_strict(env):
        raise strict_error(missing_strict(env))
    fields: dict[str, Any] = {}
    for setting in SETTINGS:  # in the table's order: the first bad value is the one reported
        value = _get(env, setting.variable)
        fields[setting.field] = setting.parse(value, setting.variable) if value is not None else setting.unset
    if fields["log_dir_all"] and fields["log_dir"] is None:
        raise ConfigError(
            f"{ENV_LOG_DIR_ALL}={_get(env, ENV_LOG_DIR_ALL)} keeps every test's logs in {ENV_LOG_DIR}, "
            f"which is not set: set it to a directory, or unset {ENV_LOG_DIR_ALL}. Example: "
            f"{ENV_LOG_DIR}=dt-logs {ENV_LOG_DIR_ALL}=1 python {script_name()}",
            ENV_LOG_DIR_ALL,
            _get(env, ENV_LOG_DIR_ALL),
        )
    backend_from_env = fields["backend"] is not None and _get(env, ENV_DEFAULTED_BACKEND) != _get(env, "BACKEND")
    if fields["backend"] is None:
        fields["backend"] = _devices.default_backend(fields["world_size"] or 2)
    return Settings(backend_from_env=backend_from_env, **fields)


# BACKEND as the shell gave it, before any test code could change it: a different
# value later was set by the test (PyTorch's test_c10d_logger.py sets it in setUp).
SHELL_BACKEND = os.environ.get("BACKEND")


def load_for_test(reads_backend: bool = True) -> tuple[Settings, str]:
    """The settings a test starts its ranks with, and why it must skip ('' if it need not).

    A BACKEND the test itself set (not the shell) that this build cannot run is
    not a usage error of the run: a class that reads BACKEND skips (an unknown
    name stays an error), one that does not (PyTorch's) runs with its ranks
    seeing the test's value, as on PyTorch's framework.
    """
    try:
        return load(), ""
    except ConfigError as exc:
        value = os.environ.get("BACKEND")
        if exc.name != "BACKEND" or value == SHELL_BACKEND or value is None:
            raise
    settings = load({k: v for k, v in os.environ.items() if k != "BACKEND"})
    if not reads_backend:
        return settings, ""
    have = ", ".join(_devices.available_backends()) or "none"
    shell = f"the shell's is {SHELL_BACKEND!r}" if SHELL_BACKEND else "the shell set none"
    problem = f"BACKEND={value!r} was set by the test, not the shell ({shell}), and this torch build"
    if value.strip().lower() not in _devices.KNOWN_BACKENDS:
        raise ConfigError(
            f"{problem} knows no such backend: it has {have}. Example: os.environ['BACKEND'] = 'gloo'",
            "BACKEND",
            value,
        )
    from distributed_testing._hardware import note

    return settings, note(f"{problem} cannot run it: it has {have}", f"needs backend {value.strip().lower()}")


def world_size_from_env() -> int | None:
    """Only ``WORLD_SIZE`` (None: not set): what a class's world size reads, whatever else is set."""
    value = _get(os.environ, "WORLD_SIZE")
    return parse_world_size(value) if value is not None else None


def current_backend(environ: Mapping[str, str] | None = None) -> str:
    """Only the backend: what guards need, without validating everything else."""
    env = os.environ if environ is None else environ
    value = _get(env, "BACKEND")
    return parse_backend(value) if value is not None else _devices.default_backend(2)


def default_start_method() -> str:
    """fork where it is safe and fast (Linux), spawn elsewhere."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def resolve_start_method(class_value: str | None, settings: Settings) -> str:
    """The class attribute wins, then the environment, then the platform default."""
    if class_value is not None:
        return parse_start_method(class_value, "start_method")
    return settings.start_method or default_start_method()


def resolve_timeout(class_value: object, settings: Settings) -> float:
    """As for start methods: the class attribute, the environment, then 300 s."""
    if class_value is not None:
        return parse_timeout(class_value, "timeout")
    return settings.timeout or DEFAULT_TIMEOUT


def keeps_logs(settings: Settings, failed: bool) -> bool:
    """Whether a test's full rank logs go to the log directory: a failing test's, or every test's."""
    return settings.log_dir is not None and (failed or settings.log_dir_all)


def running_under_pytest() -> bool:
    """Whether a pytest session is running this test (for the re-run hint)."""
    return "_pytest" in sys.modules and bool(os.environ.get("PYTEST_CURRENT_TEST"))


@contextlib.contextmanager
def environ_set(values: Mapping[str, str], unset: Iterable[str] = ()) -> Iterator[None]:
    """Set (and ``unset``) environment variables for a block, then put back what was there."""
    unset = tuple(unset)
    saved = {name: os.environ.get(name) for name in (*values, *unset)}
    for name in unset:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
