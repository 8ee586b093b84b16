"""The matrix's plan: the command line, the configurations it asks for, and which cannot run here.

Everything here happens before a test file starts: parsing and checking the
options, listing every configuration, why a configuration is skipped on this
machine, and the usage errors (exit code 2) that stop a run before it begins.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from distributed_testing import _devices
from distributed_testing._runner import EXIT_USAGE

__all__ = [
    "DEFAULT_BACKENDS",
    "DEFAULT_INITS",
    "DEFAULT_WORLD_SIZES",
    "EPILOG",
    "INIT_URLS",
    "Config",
    "Options",
    "Plan",
    "UsageError",
    "build_parser",
    "check_options",
    "configurations",
    "nothing_to_run",
    "print_skip_notes",
    "skip_reason",
    "usage_error",
]

# The INIT_METHOD each --init-method name sets: "file://" is a rendezvous file per test.
INIT_URLS = {"file": "file://", "env": "env://"}
DEFAULT_BACKENDS, DEFAULT_WORLD_SIZES, DEFAULT_INITS = ("gloo",), (2,), ("file",)

EPILOG = """\
examples:
  %(prog)s test/test_x.py
  %(prog)s test/test_x.py test/test_y.py --world-size 2 4 --init-method file env -j 2
  %(prog)s test/test_x.py --backend gloo nccl --junit-xml results.xml

Each configuration runs each FILE in a fresh process with BACKEND, WORLD_SIZE,
INIT_METHOD (file:// or env://) and a fresh TEMP_DIR (with barrier/ and
test_dir/) set. A backend this torch build lacks, or nccl with fewer CUDA
devices than ranks, is skipped with a note. In the table, "failed" counts
failures and errors.

exit codes: 0 all passed, 1 a test failed, 2 bad usage, 130 interrupted.
"""


class UsageError(Exception):
    """A problem with what the user asked for; the run stops with exit code 2."""


@dataclass(frozen=True)
class Config:
    """One cell of the matrix."""

    backend: str
    world_size: int
    init_method: str  # a key of INIT_URLS

    @property
    def name(self) -> str:
        return f"{self.backend}-ws{self.world_size}-{self.init_method}"


@dataclass(frozen=True)
class Options:
    """The validated command line."""

    files: tuple[str, ...]
    backends: tuple[str, ...]
    world_sizes: tuple[int, ...]
    init_methods: tuple[str, ...]
    jobs: int
    junit_xml: str | None
    keep_temp: bool
    prog: str  # the program's name, for messages


# Every configuration with why it cannot run here ("" when it can), in the order given.
Plan = list[tuple[Config, str]]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line: FILE... and the matrix's axes."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run distributed test files over every combination of backend, world size and init "
        "method, as PyTorch's run_test.py runs test_distributed_spawn.py; print a summary table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("files", nargs="+", metavar="FILE", help="test files that end with run_tests()")
    add("--backend", dest="backends", nargs="+", action="extend", type=_backend_arg, metavar="B",
        help=f"c10d backends, of {', '.join(_devices.KNOWN_BACKENDS)} (default: gloo)")
    add("--world-size", dest="world_sizes", nargs="+", action="extend", metavar="N",
        type=_positive_int("--world-size 2 4"), help="ranks per test (default: 2)")
    add("--init-method", dest="init_methods", nargs="+", action="extend", metavar="M", type=_init_arg,
        help="file (a rendezvous file per test) or env (MASTER_ADDR/MASTER_PORT) (default: file)")
    add("-j", "--jobs", type=_positive_int("-j 2"), default=1, metavar="J",
        help="configurations run at once, each in its own process and TEMP_DIR (default: 1)")
    add("--junit-xml", metavar="PATH", help="write a JUnit XML file with a testsuite per configuration")
    add("--keep-temp", action="store_true", help="keep each configuration's TEMP_DIR, output and report")
    return parser


def _positive_int(example: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\+?[0-9]+", text.strip()) or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}. Example: {example}")
        return int(text)

    return parse


def _backend_arg(text: str) -> str:
    backend = text.strip().lower()
    if backend in _devices.KNOWN_BACKENDS:
        return backend
    have = ", ".join(_devices.available_backends()) or "none"
    hint = " (to give a FILE after --backend, end the list with --: --backend gloo -- FILE)" if (
        text.endswith(".py") or os.path.exists(text)
    ) else ""
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(_devices.KNOWN_BACKENDS)}, got {text!r}{hint}. "
        f"This torch build has: {have}. Example: --backend gloo"
    )


def _init_arg(text: str) -> str:
    method = text.strip().lower().removesuffix("://")
    if method not in INIT_URLS:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(INIT_URLS)}, got {text!r}. Example: --init-method file env"
        )
    return method


def check_options(args: argparse.Namespace, prog: str) -> Options:
    """Check what argparse cannot: the files and the JUnit path."""
    files: list[str] = []
    for path in args.files:
        _check_file(path, prog)
        if os.path.realpath(path) not in {os.path.realpath(f) for f in files}:
            files.append(path)
    if args.junit_xml:
        _check_junit_path(args.junit_xml)
    return Options(
        files=tuple(files),
        backends=_unique(args.backends or DEFAULT_BACKENDS),
        world_sizes=_unique(args.world_sizes or DEFAULT_WORLD_SIZES),
        init_methods=_unique(args.init_methods or DEFAULT_INITS),
        jobs=args.jobs,
        junit_xml=args.junit_xml,
        keep_temp=args.keep_temp,
        prog=prog,
    )


def _check_file(path: str, prog: str) -> None:
    problem = ""
    if not os.path.exists(path):
        problem = f"test file {path!r} does not exist"
    elif os.path.isdir(path):
        problem = f"{path!r} is a directory, not a test file"
    elif not os.access(path, os.R_OK):
        problem = f"test file {path!r} is not readable"
    if problem:
        raise UsageError(f"{problem}. Example: {prog} test/test_x.py --world-size 2 4")


def _check_junit_path(path: str) -> None:
    """Fail before the run, not after it: PATH must not be a directory; its folder must be writable."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # write_junit makes the missing folders
        folder = os.path.dirname(folder)
    problem = "is a directory" if os.path.isdir(path) else ""
    if not problem and not os.access(folder, os.W_OK):
        problem = f"cannot be written: {folder!r} is not writable"
    if problem:
        raise UsageError(f"--junit-xml {path!r} {problem}. Example: --junit-xml results.xml")


def _unique(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


def configurations(options: Options) -> list[Config]:
    """Every combination of backend, world size and init method, in the order given."""
    return [
        Config(backend, size, init)
        for backend in options.backends
        for size in options.world_sizes
        for init in options.init_methods
    ]


def skip_reason(config: Config) -> str:
    """Why ``config`` cannot run on this machine and torch build, or ``""``."""
    if not _devices.backend_available(config.backend):
        have = ", ".join(_devices.available_backends()) or "none"
        return f"{config.backend} is not available in this torch build, which has: {have}"
    if config.backend == "nccl":
        count = _devices.cuda_device_count()
        if count < config.world_size:
            found = f"found {count} CUDA device{'s' * (count != 1)}"
            return f"nccl needs a CUDA device per rank: world size {config.world_size}, {found}"
    return ""


def nothing_to_run(plan: Plan, options: Options) -> str:
    """The usage error when every configuration is skipped."""
    reasons = "; ".join(dict.fromkeys(why for _, why in plan))
    return (
        f"no configuration can run: {reasons}. "
        f"Example: {options.prog} {options.files[0]} --backend gloo --world-size {options.world_sizes[0]}"
    )


def print_skip_notes(plan: Plan, out: TextIO) -> None:
    """A note per skip reason, naming the configurations it skips."""
    by_reason: dict[str, list[str]] = {}
    for config, why in plan:
        if why:
            by_reason.setdefault(why, []).append(config.name)
    for why, names in by_reason.items():
        print(f"note: skipping {', '.join(names)}: {why}", file=out, flush=True)


def usage_error(prog: str, message: str) -> int:
    """Print ``message`` as argparse prints its errors; return exit code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE
