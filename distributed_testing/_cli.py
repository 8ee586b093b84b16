"""``python -m distributed_testing``: set the environment run_tests() reads, then run a test file.

Its options and the environment in ``--help`` come from the settings table
(``_settings.SETTINGS``); values are validated like the environment (a bad
value exits 2 with the fix). The file runs as ``__main__``, and if it does not
call run_tests() itself, its tests are run as if it did.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import types
from collections.abc import Sequence

from distributed_testing import _settings
from distributed_testing._errors import ConfigError
from distributed_testing._settings import SETTINGS

__all__ = ["main"]

PROG = "python -m distributed_testing"
_WIDTH = 39  # where the text of the environment help starts


def _environment_help() -> str:
    """The epilog: every variable, what it takes and its default, from the settings table."""
    lines = ["environment (each option sets the variable; run_tests() reads and validates them):"]
    for setting in SETTINGS:
        wrapped = _wrap(f"{setting.help}: {setting.values}") + _wrap(f"default: {setting.default}")
        lines.append(f"  {setting.variable:<{_WIDTH - 2}}{wrapped[0]}")
        lines.extend(" " * _WIDTH + more for more in wrapped[1:])
    return "\n".join(lines) + """

exit codes: 0 passed, 1 a test failed, 2 bad configuration or usage, 5 no tests ran,
130 interrupted

example:
  python -m distributed_testing --backend gloo --world-size 4 test_x.py -v -k all_reduce

shards (--shard i/n, --durations-file) are merged with:
  python -m distributed_testing merge --json run.json --junit run.xml shard-*.json shard-*.xml
"""


def _wrap(text: str) -> list[str]:
    """Plain text in lines that fit beside the variables, keeping ">= 1" together."""
    text = _settings.plain(text).replace(" >= ", "\xa0>=\xa0").replace(" > ", "\xa0>\xa0")
    lines = textwrap.wrap(text, 108 - _WIDTH, break_long_words=False, break_on_hyphens=False)
    return [line.replace("\xa0", " ") for line in lines]


ENVIRONMENT_HELP = _environment_help()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a distributed test file with its environment set from options.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for setting in SETTINGS:
        text = _settings.plain(setting.help)
        if setting.switch:
            text += f" (sets {setting.variable} to 1 or 0)"
            parser.add_argument(setting.option, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(setting.option, help=f"{text} (sets {setting.variable})")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, export them, and run the file; return its exit code.
    ``merge ...`` merges shards' records and JUnit files instead (see ``_merge``)."""
    args_given = list(sys.argv[1:] if argv is None else argv)
    if args_given[:1] == ["merge"] and not os.path.isfile("merge"):
        from distributed_testing import _merge

        return _merge.main(args_given[1:])
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
    from distributed_testing import _run

    _run.entry_command = PROG + (" --torch-compat" if args.torch_compat else "")  # for the Re-run line
    return _run_file(path, [path, *args.unittest_args, *extra])


def _environment(args: argparse.Namespace) -> dict[str, str]:
    """The variables the given options set, each checked as the variable would be."""
    env = {}
    for setting in SETTINGS:
        option = setting.option
        value = getattr(args, option[2:].replace("-", "_"))
        if value is None:
            continue
        if setting.switch:
            env[setting.variable] = "1" if value else "0"
            continue
        try:
            setting.parse(value, option)
        except ConfigError as exc:
            problem = str(exc).split(" Example: ")[0].replace(f"{option}=", f"{option} ")
            example = f"Example: {PROG} {option} {setting.example} test_x.py"
            raise ConfigError(f"{problem} {example}", option, value) from None
        env[setting.variable] = str(value)
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
    # As ``python FILE`` compiles it: bytes (the file's own coding line), and none of this
    # module's ``from __future__`` imports (its annotations would become strings there).
    with open(path, "rb") as handle:
        code = compile(handle.read(), path, "exec", dont_inherit=True)
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:  # the file called run_tests() (or sys.exit) itself
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return _runner.main(argv, module=module)
