"""Pure tests of distributed_testing._config: parsing, validation and precedence."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import Runner

from distributed_testing import _config, _log, _settings
from distributed_testing._config import (
    DEFAULT_TIMEOUT,
    Settings,
    load,
    parse_backend,
    parse_bool,
    parse_init_method,
    parse_log_dir,
    parse_log_level,
    parse_start_method,
    parse_temp_dir,
    parse_timeout,
    parse_world_size,
    resolve_start_method,
    resolve_timeout,
)
from distributed_testing._errors import ConfigError, DistributedTestingError

_ENV_VARS = (
    "BACKEND",
    "WORLD_SIZE",
    "TEMP_DIR",
    "INIT_METHOD",
    "DISTRIBUTED_TESTING_START_METHOD",
    "DISTRIBUTED_TESTING_TIMEOUT",
    "DISTRIBUTED_TESTING_SHOW_OUTPUT",
    "DISTRIBUTED_TESTING_DEBUG_RANK",
    "DISTRIBUTED_TESTING_REPORT",
    "DISTRIBUTED_TESTING_LOG",
    "DISTRIBUTED_TESTING_FULL_TRACEBACKS",
    "DISTRIBUTED_TESTING_LOG_DIR",
    "DISTRIBUTED_TESTING_LOG_DIR_ALL",
)
ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = Settings(
    backend="gloo",
    backend_from_env=False,
    world_size=None,
    temp_dir=None,
    init_method="file://",
    start_method=None,
    timeout=None,
    show_output="0",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name the script from argv; settings must not leak in from the outer run."""
    monkeypatch.setattr(sys, "argv", ["test_x.py"])
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _error(func: Callable[..., object], *args: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        func(*args)
    return info.value


# -- WORLD_SIZE ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), (2, 2), (64, 64), ("1", 1), ("4", 4), (" 3 ", 3), ("+3", 3)],
)
def test_parse_world_size_accepts_positive_integers_and_numeric_strings(value: object, expected: int) -> None:
    assert parse_world_size(value) == expected


def test_parse_world_size_message_names_value_and_shows_example() -> None:
    err = _error(parse_world_size, "two")
    assert str(err).startswith("WORLD_SIZE must be an integer >= 1, got WORLD_SIZE='two'.")
    assert "Example:" in str(err)
    assert str(err) == "WORLD_SIZE must be an integer >= 1, got WORLD_SIZE='two'. Example: WORLD_SIZE=2 python test_x.py"


@pytest.mark.parametrize("value", ["0", "-1", "", " ", "2.0", "two", True, False, 0, -1, 2.5, None])
def test_parse_world_size_rejects(value: object) -> None:
    err = _error(parse_world_size, value)
    assert str(err).startswith(f"WORLD_SIZE must be an integer >= 1, got WORLD_SIZE={value!r}.")
    assert err.name == "WORLD_SIZE"
    assert err.value == value and type(err.value) is type(value)


def test_parse_world_size_error_uses_the_given_setting_name() -> None:
    err = _error(parse_world_size, 0, "Case.world_size")
    assert str(err).startswith("Case.world_size must be an integer >= 1, got Case.world_size=0.")
    assert err.name == "Case.world_size"


@pytest.mark.parametrize("value", ["++3", "\u00b2"])
def test_parse_world_size_non_decimal_digits_give_config_error(value: str) -> None:
    err = _error(parse_world_size, value)
    assert str(err).startswith("WORLD_SIZE must be an integer >= 1")


# -- BACKEND ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["gloo", "GLOO", " gloo "])
def test_parse_backend_normalises_an_available_backend(value: str) -> None:
    assert parse_backend(value) == "gloo"


def test_parse_backend_unknown_lists_allowed_and_available() -> None:
    err = _error(parse_backend, "bogus")
    assert str(err) == (
        "BACKEND must be one of gloo, nccl, ucc, mpi, xccl, got BACKEND='bogus'. "
        "This torch build has: gloo. Example: BACKEND=gloo WORLD_SIZE=2 python test_x.py"
    )
    assert (err.name, err.value) == ("BACKEND", "bogus")


def test_parse_backend_known_but_not_built_says_not_available() -> None:
    err = _error(parse_backend, "nccl")
    assert str(err) == (
        "BACKEND='nccl' is not available in this torch build, which has: gloo. "
        "Example: BACKEND=gloo WORLD_SIZE=2 python test_x.py"
    )
    assert (err.name, err.value) == ("BACKEND", "nccl")


@pytest.mark.parametrize("value", ["mpi", "ucc", "xccl"])
def test_parse_backend_other_unbuilt_backends_are_not_available(value: str) -> None:
    assert "is not available in this torch build, which has: gloo." in str(_error(parse_backend, value))


# -- TEMP_DIR -----------------------------------------------------------------


def test_parse_temp_dir_accepts_writable_directory_and_leaves_no_probe(tmp_path: Path) -> None:
    assert parse_temp_dir(str(tmp_path)) == str(tmp_path)
    assert os.listdir(tmp_path) == []


def test_parse_temp_dir_returns_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_temp_dir(".") == str(tmp_path)


def test_parse_temp_dir_missing(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    err = _error(parse_temp_dir, missing)
    assert str(err) == (
        f"TEMP_DIR must be an existing, writable directory, got TEMP_DIR={missing!r}, "
        "which does not exist. Example: mkdir -p /tmp/dt && TEMP_DIR=/tmp/dt BACKEND=gloo "
        "WORLD_SIZE=2 python test_x.py"
    )
    assert (err.name, err.value) == ("TEMP_DIR", missing)


def test_parse_temp_dir_a_file_is_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "barrier"
    path.write_text("")
    err = _error(parse_temp_dir, str(path))
    assert f"got TEMP_DIR={str(path)!r}, which is not a directory. Example:" in str(err)


def test_parse_temp_dir_unwritable_directory() -> None:
    # /proc refuses new files even to root (chmod would not stop root).
    err = _error(parse_temp_dir, "/proc")
    assert str(err).startswith(
        "TEMP_DIR must be an existing, writable directory, got TEMP_DIR='/proc', which is not writable ("
    )
    assert "Example: mkdir -p /tmp/dt" in str(err)


# -- INIT_METHOD --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["env://", "file://", "file:///tmp/rendezvous", "tcp://127.0.0.1:29500", "tcp://localhost:1", "tcp://[::1]:29500"],
)
def test_parse_init_method_accepts(value: str) -> None:
    assert parse_init_method(value) == value


def test_parse_init_method_unknown_scheme_message() -> None:
    err = _error(parse_init_method, "ftp://x")
    assert str(err) == (
        "INIT_METHOD must be file://, env:// or tcp://HOST:PORT, got INIT_METHOD='ftp://x'. "
        "Example: INIT_METHOD=env:// python test_x.py"
    )
    assert (err.name, err.value) == ("INIT_METHOD", "ftp://x")


@pytest.mark.parametrize("value", ["tcp://nohost", "tcp://:29500", "tcp://host:", "tcp://host:port", "", "/tmp/rdzv"])
def test_parse_init_method_rejects(value: str) -> None:
    err = _error(parse_init_method, value)
    assert str(err).startswith(f"INIT_METHOD must be file://, env:// or tcp://HOST:PORT, got INIT_METHOD={value!r}.")


# -- start method and timeout -------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("fork", "fork"), ("spawn", "spawn"), (" Spawn ", "spawn")])
def test_parse_start_method_accepts(value: str, expected: str) -> None:
    assert parse_start_method(value) == expected


def test_parse_start_method_message() -> None:
    err = _error(parse_start_method, "forkserver")
    assert str(err) == (
        "DISTRIBUTED_TESTING_START_METHOD must be one of fork, spawn, got "
        "DISTRIBUTED_TESTING_START_METHOD='forkserver'. "
        "Example: DISTRIBUTED_TESTING_START_METHOD=spawn python test_x.py"
    )
    assert err.name == "DISTRIBUTED_TESTING_START_METHOD"


@pytest.mark.parametrize("value", ["", "thread", "forks"])
def test_parse_start_method_rejects(value: str) -> None:
    assert str(_error(parse_start_method, value)).startswith("DISTRIBUTED_TESTING_START_METHOD must be one of fork, spawn")


@pytest.mark.parametrize(("value", "expected"), [("60", 60.0), ("0.5", 0.5), ("1e3", 1000.0), (10, 10.0), (2.5, 2.5)])
def test_parse_timeout_accepts_positive_numbers(value: object, expected: float) -> None:
    seconds = parse_timeout(value)
    assert seconds == expected and isinstance(seconds, float)


def test_parse_timeout_message() -> None:
    err = _error(parse_timeout, "abc")
    assert str(err) == (
        "DISTRIBUTED_TESTING_TIMEOUT must be a number of seconds > 0, got "
        "DISTRIBUTED_TESTING_TIMEOUT='abc'. Example: DISTRIBUTED_TESTING_TIMEOUT=60 python test_x.py"
    )


@pytest.mark.parametrize("value", ["0", "-1", "", "abc", "nan", "inf", "1e400", True, None, 0, -3.0])
def test_parse_timeout_rejects(value: object) -> None:
    err = _error(parse_timeout, value)
    assert str(err).startswith(f"DISTRIBUTED_TESTING_TIMEOUT must be a number of seconds > 0, got DISTRIBUTED_TESTING_TIMEOUT={value!r}.")
    assert err.value == value


# -- load() -------------------------------------------------------------------


def test_load_empty_environment_gives_defaults() -> None:
    assert load({}) == DEFAULTS


def test_load_empty_strings_count_as_unset() -> None:
    assert load({name: "" for name in _ENV_VARS}) == DEFAULTS


def test_load_parses_every_variable(tmp_path: Path) -> None:
    environ = {
        "BACKEND": "Gloo",
        "WORLD_SIZE": "3",
        "TEMP_DIR": str(tmp_path),
        "INIT_METHOD": "env://",
        "DISTRIBUTED_TESTING_START_METHOD": "spawn",
        "DISTRIBUTED_TESTING_TIMEOUT": "7.5",
        "DISTRIBUTED_TESTING_SHOW_OUTPUT": "1",
    }
    assert load(environ) == Settings(
        backend="gloo",
        backend_from_env=True,
        world_size=3,
        temp_dir=str(tmp_path),
        init_method="env://",
        start_method="spawn",
        timeout=7.5,
        show_output="1",
    )


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert load().world_size == 5


def test_load_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load({}).world_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORLD_SIZE", "two"),
        ("BACKEND", "bogus"),
        ("TEMP_DIR", "/nonexistent/dt-temp"),
        ("INIT_METHOD", "ftp://x"),
        ("DISTRIBUTED_TESTING_START_METHOD", "thread"),
        ("DISTRIBUTED_TESTING_TIMEOUT", "-1"),
    ],
)
def test_load_bad_value_names_the_variable(name: str, value: str) -> None:
    err = _error(load, {name: value})
    assert (err.name, err.value) == (name, value)
    assert f"{name}={value!r}" in str(err)


@pytest.mark.parametrize("value", ["0", "false", "no"])
def test_load_show_output_off_values(value: str) -> None:
    assert load({"DISTRIBUTED_TESTING_SHOW_OUTPUT": value}).show_output == "0"


@pytest.mark.parametrize("value", ["False", "NO"])
def test_load_show_output_off_values_are_case_insensitive(value: str) -> None:
    assert load({"DISTRIBUTED_TESTING_SHOW_OUTPUT": value}).show_output == "0"


@pytest.mark.parametrize(("value", "expected"), [("1", "1"), ("yes", "1"), ("On", "1"), ("live", "live"), (" LIVE ", "live")])
def test_load_show_output_after_and_live(value: str, expected: str) -> None:
    assert load({"DISTRIBUTED_TESTING_SHOW_OUTPUT": value}).show_output == expected


@pytest.mark.parametrize("value", ["bogus", "2", "lives", "y"])
def test_load_bad_show_output_lists_0_1_live(value: str) -> None:
    err = _error(load, {"DISTRIBUTED_TESTING_SHOW_OUTPUT": value})
    assert str(err) == (
        "DISTRIBUTED_TESTING_SHOW_OUTPUT must be one of 0, 1, live (0 and 1 also as false/true, no/yes, off/on), "
        f"got DISTRIBUTED_TESTING_SHOW_OUTPUT={value!r}. Example: DISTRIBUTED_TESTING_SHOW_OUTPUT=live python test_x.py"
    )
    assert (err.name, err.value) == ("DISTRIBUTED_TESTING_SHOW_OUTPUT", value)


# -- DISTRIBUTED_TESTING_LOG_DIR ----------------------------------------------

_LOG_DIR_ERROR = (
    "DISTRIBUTED_TESTING_LOG_DIR must be a directory that exists or can be made, is writable and is kept after the "
    "run (not inside a test's temporary directory), got DISTRIBUTED_TESTING_LOG_DIR="
)


def test_parse_log_dir_accepts_an_existing_or_makeable_directory_and_makes_nothing(tmp_path: Path) -> None:
    assert parse_log_dir(str(tmp_path)) == str(tmp_path)
    assert parse_log_dir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []  # checked by a probe file, removed; nothing made yet


def test_parse_log_dir_returns_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load({"DISTRIBUTED_TESTING_LOG_DIR": "logs"}).log_dir == str(tmp_path / "logs")


def test_parse_log_dir_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    err = _error(parse_log_dir, str(path))
    assert str(err) == f"{_LOG_DIR_ERROR}{str(path)!r}, which is a file. Example: DISTRIBUTED_TESTING_LOG_DIR=dt-logs python test_x.py"
    err = _error(parse_log_dir, str(path / "logs"))
    assert f"{str(path / 'logs')!r}, which cannot be made: {str(path)!r} is a file. Example:" in str(err)
    assert (err.name, err.value) == ("DISTRIBUTED_TESTING_LOG_DIR", str(path / "logs"))


def test_parse_log_dir_not_writable() -> None:
    # /proc refuses new files even to root (chmod would not stop root).
    err = _error(parse_log_dir, "/proc/dt-logs")
    assert str(err).startswith(f"{_LOG_DIR_ERROR}'/proc/dt-logs', which cannot be made: '/proc' is not writable (")


@pytest.mark.parametrize("name", ["dt-run-abcd_123", "dt-TestX-0a1b2c3d", "dt-pool-TestX-zzzzzzzz"])
def test_parse_log_dir_inside_a_temporary_directory_of_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    value = str(tmp_path / name / "logs")
    err = _error(parse_log_dir, value)
    assert str(err) == (
        f"{_LOG_DIR_ERROR}{value!r}, inside {str(tmp_path / name)!r}, a temporary directory this library removes "
        "after its test or run. Example: DISTRIBUTED_TESTING_LOG_DIR=dt-logs python test_x.py"
    )
    assert parse_log_dir(str(tmp_path / "dt-logs")) == str(tmp_path / "dt-logs")  # a name of the user's


def test_load_log_dir_all_needs_a_log_dir(tmp_path: Path) -> None:
    err = _error(load, {"DISTRIBUTED_TESTING_LOG_DIR_ALL": "1"})
    assert str(err) == (
        "DISTRIBUTED_TESTING_LOG_DIR_ALL=1 keeps every test's logs in DISTRIBUTED_TESTING_LOG_DIR, which is not set: "
        "set it to a directory, or unset DISTRIBUTED_TESTING_LOG_DIR_ALL. Example: DISTRIBUTED_TESTING_LOG_DIR=dt-logs "
        "DISTRIBUTED_TESTING_LOG_DIR_ALL=1 python test_x.py"
    )
    assert err.name == "DISTRIBUTED_TESTING_LOG_DIR_ALL"
    assert load({"DISTRIBUTED_TESTING_LOG_DIR_ALL": "0"}).log_dir_all is False
    both = load({"DISTRIBUTED_TESTING_LOG_DIR": str(tmp_path), "DISTRIBUTED_TESTING_LOG_DIR_ALL": "yes"})
    assert (both.log_dir, both.log_dir_all) == (str(tmp_path), True)


def test_load_strict_names_every_missing_variable() -> None:
    err = _error(load, {}, True)
    assert str(err) == (
        "--strict-env: BACKEND, WORLD_SIZE, TEMP_DIR are not set; strict mode needs each of "
        "BACKEND, WORLD_SIZE, TEMP_DIR. Example: mkdir -p /tmp/dt && TEMP_DIR=/tmp/dt "
        "BACKEND=gloo WORLD_SIZE=2 python test_x.py --strict-env"
    )
    assert (err.name, err.value) == ("BACKEND", None)


def test_load_strict_one_missing_variable(tmp_path: Path) -> None:
    err = _error(load, {"BACKEND": "gloo", "TEMP_DIR": str(tmp_path)}, True)
    assert str(err).startswith("--strict-env: WORLD_SIZE is not set; strict mode needs each of")
    assert err.name == "WORLD_SIZE"


def test_load_strict_empty_string_counts_as_missing(tmp_path: Path) -> None:
    err = _error(load, {"BACKEND": "gloo", "WORLD_SIZE": "", "TEMP_DIR": str(tmp_path)}, True)
    assert str(err).startswith("--strict-env: WORLD_SIZE is not set;")


def test_load_strict_with_everything_set(tmp_path: Path) -> None:
    settings = load({"BACKEND": "gloo", "WORLD_SIZE": "2", "TEMP_DIR": str(tmp_path)}, strict=True)
    assert (settings.backend, settings.world_size, settings.temp_dir) == ("gloo", 2, str(tmp_path))


def test_load_not_strict_missing_variables_are_fine() -> None:
    assert load({"BACKEND": "gloo"}, strict=False).world_size is None


# -- precedence ---------------------------------------------------------------


def test_resolve_start_method_class_attribute_wins() -> None:
    settings = load({"DISTRIBUTED_TESTING_START_METHOD": "fork"})
    assert resolve_start_method("spawn", settings) == "spawn"


def test_resolve_start_method_environment_beats_default() -> None:
    assert resolve_start_method(None, load({"DISTRIBUTED_TESTING_START_METHOD": "spawn"})) == "spawn"


def test_resolve_start_method_default_is_fork_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    assert resolve_start_method(None, DEFAULTS) == "fork"


def test_resolve_start_method_default_is_spawn_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert resolve_start_method(None, DEFAULTS) == "spawn"


def test_resolve_start_method_bad_class_attribute_names_the_attribute() -> None:
    err = _error(resolve_start_method, "forkserver", DEFAULTS)
    assert str(err).startswith("start_method must be one of fork, spawn, got start_method='forkserver'.")
    assert err.name == "start_method"


def test_resolve_timeout_class_attribute_wins() -> None:
    assert resolve_timeout(10, load({"DISTRIBUTED_TESTING_TIMEOUT": "60"})) == 10.0


def test_resolve_timeout_environment_beats_default() -> None:
    assert resolve_timeout(None, load({"DISTRIBUTED_TESTING_TIMEOUT": "60"})) == 60.0


def test_resolve_timeout_default_is_300_seconds() -> None:
    assert resolve_timeout(None, DEFAULTS) == DEFAULT_TIMEOUT == 300.0


@pytest.mark.parametrize("value", [0, -1, True, "soon"])
def test_resolve_timeout_bad_class_attribute_names_the_attribute(value: object) -> None:
    err = _error(resolve_timeout, value, DEFAULTS)
    assert str(err).startswith(f"timeout must be a number of seconds > 0, got timeout={value!r}.")
    assert err.name == "timeout"


# -- messages and ConfigError -------------------------------------------------


def test_script_name_uses_the_running_test_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/home/u/proj/test_ops.py", "-v"])
    assert _config.script_name() == "test_ops.py"
    assert str(_error(parse_world_size, "x")).endswith("Example: WORLD_SIZE=2 python test_ops.py")


def test_script_name_falls_back_when_not_a_python_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pytest"])
    assert _config.script_name() == "test_x.py"


def test_script_name_is_not_a_package_main(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/venv/lib/python3.11/site-packages/pytest/__main__.py"])
    assert _config.script_name() != "__main__.py"


def test_config_error_is_a_value_error_and_library_error() -> None:
    err = _error(parse_world_size, "two")
    assert isinstance(err, ValueError)
    assert isinstance(err, DistributedTestingError)


def test_config_error_pickle_round_trip_keeps_message_name_value() -> None:
    err = _error(parse_world_size, "two")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is ConfigError
    assert (str(copy), copy.name, copy.value) == (str(err), "WORLD_SIZE", "two")


def test_config_error_pickle_round_trip_of_strict_error() -> None:
    err = _error(load, {}, True)
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.name, copy.value) == (str(err), "BACKEND", None)


# -- switches: one parser for every boolean -----------------------------------


@pytest.mark.parametrize("value", ["1", "true", "True", "YES", "on", " On "])
def test_parse_bool_true_spellings(value: str) -> None:
    assert parse_bool(value, "DISTRIBUTED_TESTING_SHOW_OUTPUT") is True


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "off", " Off "])
def test_parse_bool_false_spellings(value: str) -> None:
    assert parse_bool(value, "DISTRIBUTED_TESTING_SHOW_OUTPUT") is False


def test_parse_bool_message() -> None:
    err = _error(parse_bool, "maybe", "DISTRIBUTED_TESTING_FULL_TRACEBACKS")
    assert str(err) == (
        "DISTRIBUTED_TESTING_FULL_TRACEBACKS must be 1 or 0 (or true/false, yes/no, on/off), got "
        "DISTRIBUTED_TESTING_FULL_TRACEBACKS='maybe'. Example: DISTRIBUTED_TESTING_FULL_TRACEBACKS=1 python test_x.py"
    )
    assert (err.name, err.value) == ("DISTRIBUTED_TESTING_FULL_TRACEBACKS", "maybe")


@pytest.mark.parametrize("name", ["DISTRIBUTED_TESTING_FULL_TRACEBACKS", "DISTRIBUTED_TESTING_LOG_DIR_ALL"])
@pytest.mark.parametrize("value", ["2", "maybe", "y", "enabled"])
def test_load_bad_switch_names_the_variable(name: str, value: str) -> None:
    err = _error(load, {name: value})
    assert str(err).startswith(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {name}={value!r}.")
    assert (err.name, err.value) == (name, value)


def test_load_full_tracebacks() -> None:
    assert load({}).full_tracebacks is False
    assert load({"DISTRIBUTED_TESTING_FULL_TRACEBACKS": "yes"}).full_tracebacks is True
    assert load({"DISTRIBUTED_TESTING_FULL_TRACEBACKS": "0"}).full_tracebacks is False


# -- DISTRIBUTED_TESTING_LOG ----------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("debug", "debug"), ("INFO", "info"), (" warning ", "warning")])
def test_load_log_level(value: str, expected: str) -> None:
    assert load({"DISTRIBUTED_TESTING_LOG": value}).log_level == expected


def test_load_log_is_off_by_default() -> None:
    assert load({}).log_level is None
    assert load({"DISTRIBUTED_TESTING_LOG": ""}).log_level is None


def test_parse_log_level_message() -> None:
    err = _error(parse_log_level, "loud")
    assert str(err) == (
        "DISTRIBUTED_TESTING_LOG must be one of debug, info, warning, got DISTRIBUTED_TESTING_LOG='loud'. "
        "Example: DISTRIBUTED_TESTING_LOG=debug python test_x.py"
    )
    assert (err.name, err.value) == ("DISTRIBUTED_TESTING_LOG", "loud")


@pytest.mark.parametrize("value", ["1", "error", "verbose", "on"])
def test_load_bad_log_level_names_the_variable(value: str) -> None:
    err = _error(load, {"DISTRIBUTED_TESTING_LOG": value})
    assert str(err).startswith(f"DISTRIBUTED_TESTING_LOG must be one of debug, info, warning, got DISTRIBUTED_TESTING_LOG={value!r}.")


@pytest.fixture
def library_logger() -> Iterator[logging.Logger]:
    """The library's logger, left as it was found (no handler of ours, its level)."""
    logger = logging.getLogger("distributed_testing")
    level = logger.level
    yield logger
    _log.remove_handler()
    _log.set_rank(None)
    logger.setLevel(level)


def test_configure_logging_adds_one_handler_and_names_process_and_logger(
    library_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    before = list(library_logger.handlers)
    assert _log.configure_logging(load({"DISTRIBUTED_TESTING_LOG": "debug"})) is True
    assert _log.configure_from_environment({"DISTRIBUTED_TESTING_LOG": "info"}) is False  # never twice
    assert len(library_logger.handlers) == len(before) + 1
    assert library_logger.level == logging.INFO
    logging.getLogger("distributed_testing._launcher").info("started %d ranks", 2)
    logging.getLogger("distributed_testing._launcher").debug("not at info")
    _log.set_rank(3)
    logging.getLogger("distributed_testing").warning("in a rank")
    lines = capsys.readouterr().err.splitlines()
    pid = os.getpid()
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d\.\d{{3}} \[pid {pid}\] distributed_testing\._launcher INFO: started 2 ranks", lines[0]
    ), lines
    assert lines[1].endswith(f"[pid {pid} rank 3] distributed_testing WARNING: in a rank"), lines
    assert len(lines) == 2
    _log.remove_handler()
    assert library_logger.handlers == before


def test_logging_is_off_without_the_variable(library_logger: logging.Logger) -> None:
    before = list(library_logger.handlers)
    assert _log.configure_logging(load({})) is False
    assert _log.configure_from_environment({}) is False
    assert library_logger.handlers == before


def test_configure_from_environment_rejects_a_bad_level(library_logger: logging.Logger) -> None:
    err = _error(_log.configure_from_environment, {"DISTRIBUTED_TESTING_LOG": "loud"})
    assert err.name == "DISTRIBUTED_TESTING_LOG"


# -- the table -------------------------------------------------------------------


def test_the_table_fills_every_settings_field_once() -> None:
    fields = [f.name for f in dataclasses.fields(Settings) if f.name != "backend_from_env"]
    assert sorted(s.field for s in _settings.SETTINGS) == sorted(fields)
    assert _config._VARIABLES == (*(s.variable for s in _settings.SETTINGS), _config.ENV_DEFAULTED_BACKEND)
    for attribute in ("variable", "option", "pytest_option"):
        names = [getattr(s, attribute) for s in _settings.SETTINGS if getattr(s, attribute)]
        assert len(names) == len(set(names)), attribute


def test_the_table_keeps_the_option_names() -> None:
    options = {s.variable: (s.option, s.pytest_option) for s in _settings.SETTINGS}
    assert options["BACKEND"] == ("--backend", "--dt-backend")
    assert options["WORLD_SIZE"] == ("--world-size", "--dt-world-size")
    assert options["DISTRIBUTED_TESTING_TIMEOUT"] == ("--timeout", "--dt-timeout")
    assert options["DISTRIBUTED_TESTING_START_METHOD"] == ("--start-method", "--dt-start-method")
    assert all(p.startswith("--dt-") for _, p in options.values() if p)


@pytest.mark.parametrize("setting", _settings.SETTINGS, ids=lambda s: s.variable)
def test_every_example_value_is_good(setting: _settings.Setting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.json").write_text('{"tests": []}')  # the durations example: an earlier run's report
    needs = {"DISTRIBUTED_TESTING_LOG_DIR": "dt-logs"} if setting.variable == "DISTRIBUTED_TESTING_LOG_DIR_ALL" else {}
    load({**needs, setting.variable: setting.example})  # raises when the example is bad


def _settings_table_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "tools" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_environment_table_is_the_generated_one() -> None:
    tool = _settings_table_tool()
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    generated = tool.replace_table(readme, tool.rst_table())
    assert readme == generated, f"README.rst's settings table is out of date; regenerate it: {tool.COMMAND}"


def test_settings_table_tool_writes_between_the_markers(tmp_path: Path) -> None:
    tool = _settings_table_tool()
    readme = tmp_path / "README.rst"
    readme.write_text(f"Intro\n\n{tool.START}\n\nold table\n\n{tool.END}\n\nMore\n")
    assert tool.main(["--write", str(readme)]) == 0
    text = readme.read_text()
    assert text == f"Intro\n\n{tool.START}\n\n{tool.rst_table()}\n{tool.END}\n\nMore\n"
    assert "``DISTRIBUTED_TESTING_LOG``" in text and "old table" not in text
    assert tool.main(["--write", str(readme)]) == 0 and readme.read_text() == text
    readme.write_text("no markers\n")
    assert tool.main(["--write", str(readme)]) == 2


# -- through real processes --------------------------------------------------------

LOGGED = """
class TestLogged(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_x(self):
        pass

if __name__ == "__main__":
    print(f"main pid {os.getpid()}", file=sys.stderr, flush=True)
    run_tests()
"""


@pytest.mark.slow
def test_log_debug_prints_the_library_log_lines(runner: Runner) -> None:
    path = str(runner.write(LOGGED))
    run = runner.run(path, DISTRIBUTED_TESTING_LOG="debug")
    assert run.returncode == 0, run.output
    pid = run.stderr.split("main pid ")[1].split()[0]
    lines = [line for line in run.stderr.splitlines() if " distributed_testing" in line and "DEBUG: " in line]
    assert any(f"[pid {pid}] distributed_testing DEBUG: fork server" in line for line in lines), run.stderr
    assert len(lines) == len(set(lines)), run.stderr  # one handler: no line twice
    quiet = runner.run(path)
    assert quiet.returncode == 0, quiet.output
    assert "DEBUG: " not in quiet.stderr


@pytest.mark.slow
def test_bad_log_level_stops_run_tests_with_exit_code_2(runner: Runner) -> None:
    run = runner.run(str(runner.write(LOGGED)), DISTRIBUTED_TESTING_LOG="loud")
    assert run.returncode == 2, run.output
    assert "error: DISTRIBUTED_TESTING_LOG must be one of debug, info, warning, got DISTRIBUTED_TESTING_LOG='loud'." in (
        run.stderr
    )


PLUGIN_DRIVER = """
import json, logging, os, sys
import pytest

names = json.loads(sys.argv[1])
options = json.loads(sys.argv[2])
before = {name: os.environ.get(name) for name in names}
code = pytest.main(["-q", "-p", "no:cacheprovider", "test_seen.py", *options])
after = {name: os.environ.get(name) for name in names}
handlers = [type(h).__name__ for h in logging.getLogger("distributed_testing").handlers]
print("RESULT " + json.dumps({"code": int(code), "before": before, "after": after, "handlers": handlers}))
"""

PLUGIN_SEEN = """
import json, logging, os

def test_seen():
    names = json.loads(os.environ["SEEN_NAMES"])
    seen = {name: os.environ.get(name) for name in names}
    handlers = [type(h).__name__ for h in logging.getLogger("distributed_testing").handlers]
    with open("seen.json", "w") as handle:
        json.dump({"env": seen, "handlers": handlers}, handle)
"""


def _plugin_run(runner: Runner, options: list[str], **env: str) -> tuple[dict[str, object], str]:
    names = [s.variable for s in _settings.SETTINGS]
    runner.write(PLUGIN_DRIVER, name="driver.py", header=False)
    runner.write(PLUGIN_SEEN, name="test_seen.py", header=False)
    run = runner.run("driver.py", json.dumps(names), json.dumps(options), SEEN_NAMES=json.dumps(names), **env)
    result = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, run.output
    return json.loads(result[0][len("RESULT ") :]), run.output


@pytest.mark.slow
def test_pytest_plugin_accepts_every_dt_option_and_restores_the_environment(runner: Runner) -> None:
    options: list[str] = []
    expected: dict[str, str] = {}
    durations = runner.tmp_path / "durations.json"
    durations.write_text('{"tests": []}')
    values = {  # where the example would change which tests run, or how often
        "TEMP_DIR": str(runner.tmp_path),
        "DISTRIBUTED_TESTING_SHARD": "1/1",
        "DISTRIBUTED_TESTING_DURATIONS": str(durations),
        "DISTRIBUTED_TESTING_REPEAT": "1",
    }
    for setting in _settings.SETTINGS:
        if setting.pytest_option is None:
            continue
        if setting.switch:
            options.append(setting.pytest_option)
            expected[setting.variable] = "1"
        else:
            value = values.get(setting.variable, setting.example)
            options += [setting.pytest_option, value]
            expected[setting.variable] = value
    result, output = _plugin_run(runner, options, WORLD_SIZE="5", DISTRIBUTED_TESTING_LOG="")
    assert result["code"] == 0, output
    seen = json.loads((runner.tmp_path / "seen.json").read_text())
    assert {name: seen["env"][name] for name in expected} == expected
    assert seen["handlers"] == ["_StderrHandler"]  # --dt-log turned the library's logging on
    assert result["after"] == result["before"]  # put back, WORLD_SIZE=5 included
    assert result["before"]["WORLD_SIZE"] == "5"
    assert result["handlers"] == []


@pytest.mark.slow
def test_pytest_plugin_switches_have_a_no_form(runner: Runner) -> None:
    switches = [s for s in _settings.SETTINGS if s.switch and s.pytest_option]
    options = ["--no-" + s.pytest_option[2:] for s in switches if s.pytest_option]
    result, output = _plugin_run(runner, options, DISTRIBUTED_TESTING_SHOW_OUTPUT="1")
    assert result["code"] == 0, output
    seen = json.loads((runner.tmp_path / "seen.json").read_text())
    assert {s.variable: seen["env"][s.variable] for s in switches} == {s.variable: "0" for s in switches}
    assert result["after"] == result["before"]


@pytest.mark.slow
def test_pytest_plugin_bad_log_level_is_a_usage_error(runner: Runner) -> None:
    runner.write(PLUGIN_SEEN, name="test_seen.py", header=False)
    run = runner.pytest("test_seen.py", "--dt-log", "loud")
    assert run.returncode == 4, run.output
    assert "DISTRIBUTED_TESTING_LOG must be one of debug, info, warning, got DISTRIBUTED_TESTING_LOG='loud'" in run.output


def test_a_backend_exported_as_the_library_default_is_not_the_user_s_choice() -> None:
    from distributed_testing._config import ENV_DEFAULTED_BACKEND, defaulted_backend

    assert load(defaulted_backend("gloo")).backend_from_env is False  # DTensorTestBase may pick cuda/nccl
    assert load({"BACKEND": "gloo"}).backend_from_env is True
    assert load({"BACKEND": "gloo", ENV_DEFAULTED_BACKEND: "nccl"}).backend_from_env is True  # the user changed it
