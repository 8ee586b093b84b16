"""Run suites written for PyTorch's ``common_distributed`` on this engine, unmodified.

``install()`` points the framework names of ``torch.testing._internal.common_distributed``
(the four test-case classes, ``TEST_SKIPS``, ``TestSkip``, the skip guards,
``at_least_x_gpu``, ``with_nccl_blocking_wait``, ``DEFAULT_WORLD_SIZE``,
``run_subtests`` and ``spawn_threads_and_init_comms``: ``REPLACED``) and
``torch.testing._internal.common_utils.run_tests`` at this library's, so a file that
imports them from PyTorch *after* ``install()`` runs on this engine::

    from distributed_testing import torch_compat
    torch_compat.install()  # before anything imports from PyTorch's test helpers

    from torch.testing._internal.common_distributed import MultiProcessTestCase  # ours now

PyTorch's helper modules imported earlier (``common_dtensor``, ``common_fsdp``) have
the names they took rebound and the classes they derived rebased. Helpers that are
test data rather than framework (``DistTestCases``,
``init_multigpu_helper``, ``simple_sparse_reduce_tests``, ``verify_ddp_error_logged``,
DDP models, ...) stay PyTorch's.

The classes installed keep PyTorch's ``common_utils.TestCase`` as a base, after
this library's class: suites use its ``assertEqual`` (``exact_dtype``,
``atol``/``rtol``, number-vs-tensor rules), ``assertEqualIgnoreType``,
``assertGreaterAlmostEqual``, ``assertLogs`` on the ``torch`` logger and its
``setUp``/``tearDown`` state checks, and PyTorch's ``run_tests`` refuses classes
that do not derive from it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.machinery
import os
import shutil
import sys
import tempfile
import threading
import types
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from distributed_testing import _guards
from distributed_testing._parsers import ENV_TIMEOUT

__unittest = True  # hide these frames from user tracebacks

__all__ = [
    "REPLACED",
    "DistributedTestBase",
    "MultiProcContinuousTest",
    "MultiProcessTestCase",
    "MultiThreadedTestCase",
    "install",
    "installed",
    "run_tests",
    "uninstall",
]

TORCH_MODULE = "torch.testing._internal.common_distributed"
UTILS_MODULE = "torch.testing._internal.common_utils"
ENV_FLAG = "DISTRIBUTED_TESTING_TORCH_COMPAT"  # "1": Python processes of this run install at start

_CLASSES = ("MultiProcessTestCase", "DistributedTestBase", "MultiProcContinuousTest", "MultiThreadedTestCase")
_GUARDS = (*_guards.GUARDS, *_guards.HELPERS)
_THREADED = ("run_subtests", "spawn_threads_and_init_comms")
#: The names of ``common_distributed`` that ``install()`` replaces (and ``common_utils.run_tests``).
REPLACED: tuple[str, ...] = (*_CLASSES, "TEST_SKIPS", "TestSkip", *_GUARDS, *_THREADED)

# Module globals PyTorch's suites read from the environment at import, which the
# parent changes per test (TestDistBackend.setUp exports a fresh INIT_METHOD): a
# spawned rank imports the suite afresh and sees this test's value, a rank forked
# from the warm fork server has the value of the test that started the server.
# (module, global, variable, default)
_IMPORT_TIME_ENV = (("torch.testing._internal.distributed.distributed_test", "INIT_METHOD", "INIT_METHOD", "env://"),)
# PyTorch's runner modes our runner does not have: run_tests() hands these to PyTorch's.
_PYTORCH_RUNNER_MODES = (
    "TEST_IN_SUBPROCESS",
    "USE_PYTEST",
    "TEST_SAVE_XML",
    "TEST_DISCOVER",
    "SHOWLOCALS",
    "SLOW_TESTS_FILE",
    "DISABLED_TESTS_FILE",
    "RERUN_DISABLED_TESTS",
)
# Everything else this module reads or sets in PyTorch, as (module, dotted name), besides
# REPLACED in common_distributed: a test fails, naming it, when the installed torch lacks one.
_TORCH_NAMES_USED: tuple[tuple[str, str], ...] = (
    (UTILS_MODULE, "run_tests"),
    (UTILS_MODULE, "TestCase"),
    (UTILS_MODULE, "TestCase.assertEqual"),
    (UTILS_MODULE, "TestCase.assertNotEqual"),
    (UTILS_MODULE, "TestCase._should_stop_test_suite"),
    (UTILS_MODULE, "PRINT_REPRO_ON_FAILURE"),
    (UTILS_MODULE, "parse_cmd_line_args"),
    (UTILS_MODULE, "UNITTEST_ARGS"),
    (UTILS_MODULE, "RUN_PARALLEL"),
    (TORCH_MODULE, "TIMEOUT_DEFAULT"),
    *((UTILS_MODULE, name) for name in _PYTORCH_RUNNER_MODES),
    *((module, name) for module, name, _variable, _default in _IMPORT_TIME_ENV),
)

if TYPE_CHECKING:  # made on first use (they need PyTorch's TestCase): see _build_classes
    MultiProcessTestCase: Any
    DistributedTestBase: Any
    MultiProcContinuousTest: Any
    MultiThreadedTestCase: Any

_MISSING = object()
_PYTORCH_DEFAULT_TIMEOUT = 300
_deadline_before: list[str | None] = []  # ENV_TIMEOUT before install() set it from PyTorch's, while installed
_saved: dict[tuple[str, str], Any] = {}  # (module, name) -> PyTorch's value, while installed
_classes_cache: dict[str, type] = {}
_boot_dir: str | None = None  # the sitecustomize directory of install(subprocesses=True)


def install(subprocesses: bool = False) -> None:
    """Make the framework names of PyTorch's ``common_distributed`` resolve to this library's.

    Idempotent. Call it before the suite imports from PyTorch's test helpers. Rank
    processes re-import the test file, so a call at its top covers them too; from a
    ``conftest.py`` or a runner script, pass ``subprocesses=True`` (what
    ``python -m distributed_testing --torch-compat`` does): every Python process
    started from here on (the fork server, spawned ranks) installs at start-up.
    """
    if not installed():
        _apply(importlib.import_module(TORCH_MODULE))
    if subprocesses:
        _enable_in_subprocesses()


def installed() -> bool:
    """Whether ``install()`` is in effect in this process."""
    return bool(_saved)


def uninstall() -> None:
    """Restore PyTorch's names, and the bases of PyTorch's classes that ``install()`` rebased.

    Classes defined while installed keep the bases they were made with."""
    for (module_name, name), value in _saved.items():
        if value is _MISSING:  # a name this torch version does not have
            delattr(sys.modules[module_name], name)
        else:
            setattr(sys.modules[module_name], name, value)
    _saved.clear()
    for cls, bases in _rebased.items():
        cls.__bases__ = bases
    _rebased.clear()
    if _deadline_before:
        before = _deadline_before.pop()
        if before is None:
            os.environ.pop(ENV_TIMEOUT, None)
        else:
            os.environ[ENV_TIMEOUT] = before
    _remove_import_hook()
    os.environ.pop(ENV_FLAG, None)


def _apply(torch_module: types.ModuleType) -> None:
    utils: Any = importlib.import_module(UTILS_MODULE)
    ours_for: dict[int, tuple[Any, Any]] = {}  # id(PyTorch's value) -> (PyTorch's value, ours)
    for name, value in _replacements().items():
        _saved[(TORCH_MODULE, name)] = original = getattr(torch_module, name, _MISSING)
        setattr(torch_module, name, value)
        if isinstance(original, (type, dict)) or callable(original):  # not DEFAULT_WORLD_SIZE: 4 is every 4
            ours_for[id(original)] = (original, value)
    _saved[(UTILS_MODULE, "run_tests")] = utils.run_tests
    ours_for[id(utils.run_tests)] = (utils.run_tests, run_tests)
    utils.run_tests = run_tests
    _adopt_earlier_imports(ours_for)
    _adopt_pytorch_deadline(torch_module)


def _adopt_pytorch_deadline(torch_module: types.ModuleType) -> None:
    """PyTorch's per-test deadline when it is not its default 300 s (DISTRIBUTED_TESTS_DEFAULT_TIMEOUT,
    500 s under TSAN) and this library's is not set: a CI job that raised it keeps it here."""
    seconds = getattr(torch_module, "TIMEOUT_DEFAULT", _PYTORCH_DEFAULT_TIMEOUT)
    usable = isinstance(seconds, int) and seconds > 0
    if not usable or seconds == _PYTORCH_DEFAULT_TIMEOUT or os.environ.get(ENV_TIMEOUT):
        return
    _deadline_before.append(os.environ.get(ENV_TIMEOUT))
    os.environ[ENV_TIMEOUT] = str(seconds)


def _adopt_earlier_imports(ours_for: dict[int, tuple[Any, Any]]) -> None:
    """PyTorch's test helpers imported before ``install()`` took PyTorch's names.

    Their module globals bound to a replaced name (``common_dtensor``'s
    ``run_subtests``, ``skip_if_lt_x_gpu``, ``TEST_SKIPS``) are rebound to ours, and
    the classes they derived from PyTorch's bases (``common_distributed``'s own
    ``DynamoDistributedMultiProcTestCase`` and ``C10dTorchCommsTestBase``,
    ``DTensorTestBase``, ``FSDPTest``, ...) are rebased on ours, so the order of
    imports does not matter.
    """

    def ours(value: Any) -> Any:
        entry = ours_for.get(id(value))
        return entry[1] if entry is not None and entry[0] is value else value

    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("torch.testing._internal") or module is None:
            continue
        for name, value in list(vars(module).items()):
            if ours(value) is not value:
                if module_name not in (TORCH_MODULE, UTILS_MODULE):
                    _saved[(module_name, name)] = value
                    setattr(module, name, ours(value))
            elif isinstance(value, type) and value.__module__ == module_name:
                bases = tuple(ours(base) for base in value.__bases__)
                if bases != value.__bases__:
                    _rebased.setdefault(value, value.__bases__)
                    value.__bases__ = bases


_rebased: dict[type, tuple[type, ...]] = {}  # a class of PyTorch's -> its own bases, while installed


def _replacements() -> dict[str, Any]:
    from distributed_testing import _guards, _skips, _threaded

    values: dict[str, Any] = {name: getattr(_guards, name) for name in _GUARDS}
    values.update((name, getattr(_threaded, name)) for name in _THREADED)
    values["TEST_SKIPS"] = _skips.TEST_SKIPS
    values["TestSkip"] = _skips.TestSkip
    values.update((name, _compat_class(name)) for name in _CLASSES)
    return values


# -- the classes --------------------------------------------------------------


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return _compat_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _compat_class(name: str) -> type:
    if not _classes_cache:
        _classes_cache.update(_build_classes())
    return _classes_cache[name]


def _build_classes() -> dict[str, type]:
    """This library's classes with PyTorch's TestCase mixed in behind them."""
    from distributed_testing import _continuous, _testcase, _threaded

    torch_case: Any = importlib.import_module(UTILS_MODULE).TestCase

    class PyTorchFlavour:
        """PyTorch's assertions ahead of our tensor-aware ones in the MRO; its repro line off."""

        assertEqual = torch_case.assertEqual  # noqa: N815
        assertNotEqual = torch_case.assertNotEqual  # noqa: N815

        def __init__(self, method_name: str = "runTest", methodName: str = "runTest") -> None:  # noqa: N803
            with _without_pytorch_repro():
                super().__init__(method_name, methodName)  # type: ignore[call-arg]

        def _should_stop_test_suite(self) -> bool:
            return False  # as PyTorch's: one test's failure does not stop the suite

    class MultiProcessTestCase(PyTorchFlavour, _testcase.MultiProcessTestCase, torch_case):  # type: ignore[misc]
        """Our MultiProcessTestCase with PyTorch's assertions and world size default."""

        # PyTorch's world size: ``requires_world_size(n)``, else DEFAULT_WORLD_SIZE (4 but
        # on ROCm); WORLD_SIZE is not read.
        _dt_default_world_size = _guards.DEFAULT_WORLD_SIZE
        _dt_reads_world_size = False
        _dt_reads_backend = False  # a BACKEND the test sets is its own business, as on PyTorch's
        _dt_unspawned_skips = True  # PyTorch's passes a test whose setUp starts no rank, unrun: a skip here

        def _rank_setup(self) -> None:
            _refresh_import_time_env()
            super()._rank_setup()

    class DistributedTestBase(_testcase.DistributedTestBase, MultiProcessTestCase):
        """Our DistributedTestBase with PyTorch's assertions."""

    class MultiProcContinuousTest(PyTorchFlavour, _continuous.MultiProcContinuousTest, torch_case):  # type: ignore[misc]
        """Our MultiProcContinuousTest with PyTorch's assertions."""

    class MultiThreadedTestCase(PyTorchFlavour, _threaded.MultiThreadedTestCase, torch_case):  # type: ignore[misc]
        """Our MultiThreadedTestCase with PyTorch's assertions."""

        _dt_unspawned_skips = True  # as MultiProcessTestCase's

    classes: dict[str, type] = {
        "MultiProcessTestCase": MultiProcessTestCase,
        "DistributedTestBase": DistributedTestBase,
        "MultiProcContinuousTest": MultiProcContinuousTest,
        "MultiThreadedTestCase": MultiThreadedTestCase,
    }
    for name, cls in classes.items():
        cls.__module__, cls.__qualname__ = __name__, name
    return classes


_repro_lock = threading.Lock()  # rank threads build their test cases at once


@contextlib.contextmanager
def _without_pytorch_repro() -> Iterator[None]:
    """PyTorch's TestCase wraps each test to append a repro line to its error; ours
    reports one with the environment (``Re-run: BACKEND=... WORLD_SIZE=...``)."""
    utils: Any = sys.modules[UTILS_MODULE]
    with _repro_lock:
        saved = getattr(utils, "PRINT_REPRO_ON_FAILURE", False)
        utils.PRINT_REPRO_ON_FAILURE = False
        try:
            yield
        finally:
            utils.PRINT_REPRO_ON_FAILURE = saved


def _refresh_import_time_env() -> None:
    """In a rank: give suite globals read from the environment at import this test's values."""
    for module_name, name, variable, default in _IMPORT_TIME_ENV:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, name):
            setattr(module, name, os.environ.get(variable, default))


# -- run_tests ----------------------------------------------------------------


def run_tests(argv: Sequence[str] | None = None) -> None:
    """``common_utils.run_tests`` on this library's runner.

    PyTorch's own options are taken off the command line as PyTorch does
    (``--accept`` still works); a mode only PyTorch's runner has
    (``--subprocess``, ``--use-pytest``, ``--save-xml``, ...) runs PyTorch's runner,
    whose tests still run on this engine.
    """
    utils: Any = importlib.import_module(UTILS_MODULE)
    parse = getattr(utils, "parse_cmd_line_args", None)
    if parse is not None:
        parse()
    original = _saved.get((UTILS_MODULE, "run_tests"))
    if original is not None and _pytorch_runner_mode(utils):
        original(argv)
        return
    from distributed_testing import _runner

    _runner.run_tests(list(argv) if argv is not None else list(getattr(utils, "UNITTEST_ARGS", None) or sys.argv))


def _pytorch_runner_mode(utils: Any) -> bool:
    # PyTorch turns --save-xml on by itself when it detects CI (IS_CI): only an
    # explicit --save-xml asks for PyTorch's runner (and its xmlrunner dependency).
    modes = [name for name in _PYTORCH_RUNNER_MODES if name != "TEST_SAVE_XML" or _asked_for_xml()]
    return any(getattr(utils, name, None) for name in modes) or getattr(utils, "RUN_PARALLEL", 1) > 1


def _asked_for_xml() -> bool:
    return any(arg == "--save-xml" or arg.startswith("--save-xml=") for arg in sys.argv)


# -- every Python process of the run -------------------------------------------

_SITECUSTOMIZE = '''\
"""Written by distributed_testing.torch_compat.install(subprocesses=True); removed at exit."""
import importlib.machinery, importlib.util, os, sys

if os.environ.get({flag!r}) == "1":
    try:
        from distributed_testing import torch_compat as _dt_torch_compat

        _dt_torch_compat._install_on_import()
    except Exception as _dt_exc:  # never stop an interpreter from starting
        sys.stderr.write(f"distributed_testing.torch_compat: not installed in pid {{os.getpid()}}: {{_dt_exc!r}}\\n")

# Run the sitecustomize this file shadows, if there is one.
_dt_here = os.path.dirname(os.path.abspath(__file__))
_dt_path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _dt_here]
_dt_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _dt_path)
if _dt_spec is not None and _dt_spec.loader is not None:
    _dt_spec.loader.exec_module(importlib.util.module_from_spec(_dt_spec))
'''


def _enable_in_subprocesses() -> None:
    """Put a sitecustomize on PYTHONPATH that installs in every Python process started from here.

    Rank processes are fresh interpreters (the fork server, spawn) that import the
    test file before anything of ours runs; Python's start-up hook is the one place
    that runs first. The hook is lazy: a process that never imports
    ``common_distributed`` pays nothing.
    """
    global _boot_dir
    os.environ[ENV_FLAG] = "1"
    if _boot_dir is not None:
        return
    from distributed_testing import _janitor

    _boot_dir = tempfile.mkdtemp(prefix="dt-torch-compat-")
    _janitor.register(_boot_dir)
    with open(os.path.join(_boot_dir, "sitecustomize.py"), "w", encoding="utf-8") as handle:
        handle.write(_SITECUSTOMIZE.format(flag=ENV_FLAG))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _boot_dir + (os.pathsep + old if old else "")
    atexit.register(_remove_boot_dir, _boot_dir, os.getpid())


def _remove_boot_dir(path: str, owner: int) -> None:
    if os.getpid() != owner:  # a forked child running the parent's atexit handlers
        return
    from distributed_testing import _janitor

    shutil.rmtree(path, ignore_errors=True)
    _janitor.unregister(path)


class _InstallOnImport:
    """A meta path finder: install() right after ``common_distributed`` is first imported."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != TORCH_MODULE:
            return None
        _remove_import_hook()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            run(module)
            if not installed():
                _apply(module)

        setattr(spec.loader, "exec_module", exec_module)  # noqa: B010  # this spec's own loader object
        return spec


def _install_on_import() -> None:
    """install() now if PyTorch's module is loaded, else as soon as it is."""
    if TORCH_MODULE in sys.modules:
        install()
    elif not any(isinstance(finder, _InstallOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _InstallOnImport())  # type: ignore[arg-type]


def _remove_import_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _InstallOnImport)]
