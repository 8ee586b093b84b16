"""Configuration: the one module that reads the environment.

Every variable is parsed and validated here into a frozen :class:`Settings`;
the rest of the library receives settings and never touches ``os.environ``
for configuration. A bad value raises :class:`ConfigError` with a message that
names the variable, the value, what is allowed and an example command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from distributed_testing import _devices
from distributed_testing._errors import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT",
    "STRICT_VARIABLES",
    "Settings",
    "load",
    "parse_backend",
    "parse_init_method",
    "parse_start_method",
    "parse_temp_dir",
    "parse_timeout",
    "parse_world_size",
    "resolve_start_method",
    "resolve_timeout",
]

START_METHODS = ("fork", "spawn")
INIT_SCHEMES = ("file://", "env://", "tcp://")
DEFAULT_TIMEOUT = 300.0
# The variables --strict-env insists on, as test_distributed_spawn.py does.
STRICT_VARIABLES = ("BACKEND", "WORLD_SIZE", "TEMP_DIR")

ENV_START_METHOD = "DISTRIBUTED_TESTING_START_METHOD"
ENV_TIMEOUT = "DISTRIBUTED_TESTING_TIMEOUT"
ENV_SHOW_OUTPUT = "DISTRIBUTED_TESTING_SHOW_OUTPUT"
ENV_REPORT = "DISTRIBUTED_TESTING_REPORT"
ENV_DEBUG_RANK = "DISTRIBUTED_TESTING_DEBUG_RANK"


@dataclass(frozen=True)
class Settings:
    """The resolved environment of a run.

    ``None`` means the variable was not set and each class uses its own value.
    """

    backend: str
    backend_from_env: bool
    world_size: int | None
    temp_dir: str | None
    init_method: str
    start_method: str | None
    timeout: float | None
    show_output: bool
    report_path: str | None = None  # where run_tests() writes a JSON record of the run
    debug_rank: int | None = None  # the rank run in the main process, for pdb


def script_name() -> str:
    """The test file as the user ran it, for example commands in messages."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return argv0 if argv0.endswith(".py") and argv0 != "__main__.py" else "test_x.py"


def _example(assignments: str) -> str:
    return f"Example: {assignments} python {script_name()}"


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """A variable's value; unset and empty both mean 'not given'."""
    value = environ.get(name)
    return value if value else None


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
    """The launcher's variables when ``RANK`` is set (torchrun mode), else None.

    Raises ConfigError when they are incomplete or inconsistent.
    """
    env = os.environ if environ is None else environ
    if _get(env, "RANK") is None:
        return None
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


_VARIABLES = (
    "BACKEND",
    "WORLD_SIZE",
    "TEMP_DIR",
    "INIT_METHOD",
    ENV_START_METHOD,
    ENV_TIMEOUT,
    ENV_SHOW_OUTPUT,
    ENV_REPORT,
    ENV_DEBUG_RANK,
)


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
    world = _get(env, "WORLD_SIZE")
    world_size = parse_world_size(world) if world is not None else None
    backend_value = _get(env, "BACKEND")
    if backend_value is not None:
        backend = parse_backend(backend_value)
    else:
        backend = _devices.default_backend(world_size or 2)
    temp = _get(env, "TEMP_DIR")
    init = _get(env, "INIT_METHOD")
    start = _get(env, ENV_START_METHOD)
    timeout = _get(env, ENV_TIMEOUT)
    return Settings(
        backend=backend,
        backend_from_env=backend_value is not None,
        world_size=world_size,
        temp_dir=parse_temp_dir(temp) if temp is not None else None,
        init_method=parse_init_method(init) if init is not None else "file://",
        start_method=parse_start_method(start) if start is not None else None,
        timeout=parse_timeout(timeout) if timeout is not None else None,
        show_output=(_get(env, ENV_SHOW_OUTPUT) or "0").strip().lower() not in ("0", "false", "no"),
        report_path=_get(env, ENV_REPORT),
        debug_rank=parse_debug_rank(debug) if (debug := _get(env, ENV_DEBUG_RANK)) is not None else None,
    )


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


def running_under_pytest() -> bool:
    """Whether a pytest session is running this test (for the re-run hint)."""
    return "_pytest" in sys.modules and bool(os.environ.get("PYTEST_CURRENT_TEST"))


@contextlib.contextmanager
def environ_set(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for a block, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
