"""``python -m distributed_testing``: set the environment run_tests() reads, then run a test file.

Options are validated like the environment (a bad value exits 2 with the
fix); the file runs as ``__main__``, and if it does not call run_tests()
itself, its tests are run as if it did.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Sequence

from distributed_testing import _config
from distributed_testing._errors import ConfigError

__all__ = ["main"]

PROG = "python -m distributed_testing"

ENVIRONMENT_HELP = """\
environment (each option sets the variable; run_tests() reads and validates them):
  BACKEND                            c10d backend: gloo, nccl, ucc, mpi, xccl
                                     (default: nccl with a GPU per rank, else gloo)
  WORLD_SIZE                         ranks per test, for classes that read it
                                     (default: each class's own; DistBackendTestCase: 2)
  TEMP_DIR                           scratch directory; barrier/ and test_dir/ are made in it
                                     (default: a private directory removed at exit)
  INIT_METHOD                        file:// (default), env:// or tcp://HOST:PORT
  DISTRIBUTED_TESTING_START_METHOD   fork (default on Linux: a warm fork server) or spawn
  DISTRIBUTED_TESTING_TIMEOUT        seconds a test may take (default 300)
  DISTRIBUTED_TESTING_DEBUG_RANK     run this rank in the main process (pdb works there)
  DISTRIBUTED_TESTING_SHOW_OUTPUT    1: show the ranks' output of passing tests too
  DISTRIBUTED_TESTING_REPORT         write a JSON record of the run to this file

exit codes: 0 passed, 1 a test failed, 2 bad configuration or usage, 5 no tests ran,
130 interrupted

example:
  python -m distributed_testing --backend gloo --world-size 4 test_x.py -v -k all_reduce
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a distributed test file with its environment set from options.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", help="sets BACKEND")
    parser.add_argument("--world-size", help="sets WORLD_SIZE")
    parser.add_argument("--temp-dir", help="sets TEMP_DIR")
    parser.add_argument("--init-method", help="sets INIT_METHOD")
    parser.add_argument("--start-method", help=f"sets {_config.ENV_START_METHOD}")
    parser.add_argument("--timeout", help=f"sets {_config.ENV_TIMEOUT}")
    parser.add_argument("--debug-rank", help=f"sets {_config.ENV_DEBUG_RANK}")
    parser.add_argument("--strict-env", action="store_true", help="missing BACKEND, WORLD_SIZE or TEMP_DIR is an error")
    parser.add_argument(
        "--torch-compat",
        action="store_true",
        help="run a suite written for torch.testing._internal.common_distributed unmodified: its "
        "MultiProcessTestCase, DistributedTestBase, MultiProcContinuousTest, TEST_SKIPS, skip guards and "
        "common_utils.run_tests become this library's (see distributed_testing.torch_compat)",
    )
    parser.add_argument("file", help="the test file to run")
    parser.add_argument("unittest_args", nargs=argparse.REMAINDER, help="passed to unittest: -v, -k, -f, names")
    return parser


# Each option: the variable it sets, its check, and a good value for examples.
_VARIABLES = {
    "backend": ("BACKEND", _config.parse_backend, "gloo"),
    "world_size": ("WORLD_SIZE", _config.parse_world_size, "2"),
    "temp_dir": ("TEMP_DIR", _config.parse_temp_dir, "/tmp"),
    "init_method": ("INIT_METHOD", _config.parse_init_method, "env://"),
    "start_method": (_config.ENV_START_METHOD, _config.parse_start_method, "spawn"),
    "timeout": (_config.ENV_TIMEOUT, _config.parse_timeout, "60"),
    "debug_rank": (_config.ENV_DEBUG_RANK, _config.parse_debug_rank, "0"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, export them, and run the file; return its exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    try:
        env = _environment(args)
        path = _check_file(args.file)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    os.environ.update(env)
    if args.torch_compat:
        from distributed_testing import torch_compat

        torch_compat.install(subprocesses=True)  # before the file imports from PyTorch; ranks too
    extra = ["--strict-env"] if args.strict_env else []
    return _run_file(path, [path, *args.unittest_args, *extra])


def _environment(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    for attr, (variable, parse, good) in _VARIABLES.items():
        value = getattr(args, attr)
        if value is not None:
            option = "--" + attr.replace("_", "-")
            try:
                parse(value, option)  # type: ignore[operator]
            except ConfigError as exc:
                problem = str(exc).split(" Example: ")[0].replace(f"{option}=", f"{option} ")
                example = f"Example: {PROG} {option} {good} test_x.py"
                raise ConfigError(f"{problem} {example}", option, value) from None
            env[variable] = str(value)
    return env


def _check_file(path: str) -> str:
    if not os.path.isfile(path):
        problem = "which does not exist" if not os.path.exists(path) else "which is not a file"
        raise ConfigError(
            f"FILE must be a Python test file, got {path!r}, {problem}. Example: {PROG} test_x.py -v", "FILE", path
        )
    return os.path.abspath(path)


def _run_file(path: str, argv: list[str]) -> int:
    """Run ``path`` as ``__main__``; run its tests if it does not run them itself."""
    from distributed_testing import _runner

    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = module  # rank processes import the test file as __main__
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(path))
    with open(path, encoding="utf-8") as handle:
        code = compile(handle.read(), path, "exec")
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:  # the file called run_tests() (or sys.exit) itself
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return _runner.main(argv, module=module)
