"""The table of settings: every variable, its options, its check, its default and its help.

One :class:`Setting` per environment variable. ``_config.load()`` reads the
variables into ``Settings`` from this table, ``python -m distributed_testing``
and the pytest plugin make their options from it, and
``tools/settings_table.py`` writes README's table from it. Nothing here reads
the environment: the parsers (``_parsers``) check one value each and raise
:class:`ConfigError` naming the variable, the value, what is allowed and an
example command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from distributed_testing._parsers import (
    ENV_DEBUG_RANK,
    ENV_DURATIONS,
    ENV_FULL_TRACEBACKS,
    ENV_LOG,
    ENV_LOG_DIR,
    ENV_LOG_DIR_ALL,
    ENV_MAX_RANKS,
    ENV_NODES,
    ENV_REPEAT,
    ENV_REPORT,
    ENV_REQUIRE_HARDWARE,
    ENV_RETRIES,
    ENV_SHARD,
    ENV_SHOW_OUTPUT,
    ENV_START_METHOD,
    ENV_TIMEOUT,
    SHOW_LIVE,
    SHOW_OFF,
    parse_backend,
    parse_bool,
    parse_debug_rank,
    parse_durations,
    parse_init_method,
    parse_log_dir,
    parse_log_level,
    parse_max_ranks,
    parse_nodes,
    parse_path,
    parse_repeat,
    parse_retries,
    parse_shard,
    parse_show_output,
    parse_start_method,
    parse_temp_dir,
    parse_timeout,
    parse_world_size,
)

__all__ = ["SETTINGS", "Setting", "plain"]

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
        variable=ENV_REPORT, field="report_path", option="--report", pytest_option="--dt-report",
        parse=parse_path,
        values="a file path",
        default="off",
        help="write a JSON record of the run to this file",
        example="report.json",
    ),
    Setting(
        variable=ENV_MAX_RANKS, field="max_ranks", option="--max-ranks", pytest_option="--dt-max-ranks",
        parse=parse_max_ranks,
        values="an integer >= 1",
        default="the CPU count (GPU tests are bounded by their device leases)",
        help="most ranks alive at once across pytest-xdist workers; a wider test runs alone",
        example="4",
    ),
    Setting(
        variable=ENV_SHARD, field="shard", option="--shard", pytest_option="--dt-shard",
        parse=parse_shard,
        values="``i/n``, 1 <= i <= n",
        default="off: every selected test",
        help="run shard i of n disjoint shards whose union is the whole run (for n machines)",
        example="1/3",
    ),
    Setting(
        variable=ENV_DURATIONS, field="durations", option="--durations-file", pytest_option="--dt-durations",
        parse=parse_durations,
        values="a JSON file: an earlier run's report",
        default="off: shards by a stable hash of each test's name",
        help="balance shards by these recorded durations (weighted by world size)",
        example="report.json",
    ),
    Setting(
        variable=ENV_RETRIES, field="retries", option="--retries", pytest_option="--dt-retries",
        parse=parse_retries,
        values="an integer >= 0",
        default="0",
        help="re-run a failing or hung test on fresh ranks up to this many times; a pass on a retry is flaky",
        example="2",
        unset=0,
    ),
    Setting(
        variable=ENV_REPEAT, field="repeat", option="--repeat", pytest_option="--dt-repeat",
        parse=parse_repeat,
        values="an integer >= 1",
        default="1",
        help="run each selected test this many times, to find flaky ones",
        example="20",
        unset=1,
    ),
    Setting(
        variable=ENV_REQUIRE_HARDWARE, field="require_hardware", option="--require-hardware",
        pytest_option="--dt-require-hardware", parse=parse_bool,
        values="``1`` or ``0`` (or true/false, yes/no, on/off)",
        default="off: such tests are skipped and counted apart",
        help="a test not run for lack of hardware (GPUs, a backend) fails instead of skipping",
        example="1",
        unset=False,
        switch=True,
    ),
    Setting(
        variable=ENV_NODES, field="nodes", option="--nodes", pytest_option="--dt-nodes",
        parse=parse_nodes,
        values="an integer >= 1",
        default="1",
        help="simulate this many nodes: each rank's ``LOCAL_RANK``, ``GROUP_RANK`` and ``LOCAL_WORLD_SIZE`` as "
        "torchrun would set them",
        example="2",
        unset=1,
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
