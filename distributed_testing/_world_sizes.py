"""World-size parametrization: one test per world size, named ``<test>_world_size_<n>``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from distributed_testing._config import parse_world_size
from distributed_testing._errors import ConfigError

__all__ = [
    "checked_method_name",
    "class_world_size",
    "declared_world_size",
    "expand_world_sizes",
    "no_such_test",
    "required_world_size",
    "world_sizes",
    "zero_world_size_reason",
]

T = TypeVar("T")
SIZES_ATTR = "_dt_world_sizes"
REQUIRED_ATTR = "_required_world_size"  # PyTorch's attribute name for a test's world size
MARK = "world_size"  # the pytest mark: @pytest.mark.world_size(2, 4)
_EXPANDED_ATTR = "_dt_world_sizes_expanded"


def world_sizes(*sizes: int) -> Callable[[T], T]:
    """Run a test method, or every test of a class, once per world size.

    ``@world_sizes(2, 4)`` on ``test_sum`` makes ``test_sum_world_size_2`` and
    ``test_sum_world_size_4``; inside, ``self.world_size`` is that size.
    """
    if not sizes:
        raise ConfigError("world_sizes() needs at least one size. Example: @world_sizes(2, 4)", "world_sizes", ())
    checked = tuple(parse_world_size(size, "world_sizes(...)") for size in sizes)

    def decorate(target: T) -> T:
        if isinstance(target, type):
            for name in [n for n in dir(target) if n.startswith("test") and callable(getattr(target, n))]:
                _expand(target, name, getattr(target, name), checked)
            return target
        setattr(target, SIZES_ATTR, checked)
        return target

    return decorate


def expand_world_sizes(cls: type) -> None:
    """Expand what ``cls`` marks with ``world_sizes`` or ``@pytest.mark.world_size``.

    Called at class creation and again when a test case is built, since a
    class decorator or mark is applied after the class exists; idempotent.
    """
    class_sizes = _marked_sizes(cls.__dict__.get("pytestmark", ()))
    if class_sizes and not cls.__dict__.get(_EXPANDED_ATTR):
        setattr(cls, _EXPANDED_ATTR, True)
        world_sizes(*class_sizes)(cls)
    for name, member in list(vars(cls).items()):
        if not (name.startswith("test") and callable(member)):
            continue
        sizes = getattr(member, SIZES_ATTR, None) or _marked_sizes(getattr(member, "pytestmark", ()))
        if sizes and getattr(member, REQUIRED_ATTR, None) is None:
            _expand(cls, name, member, tuple(parse_world_size(s, "world_size mark") for s in sizes))
    declared = cls.__dict__.get("world_size")
    if declared is not None and not isinstance(declared, _RequiredFirst):
        cls.world_size = _RequiredFirst(declared)  # type: ignore[attr-defined]


def _marked_sizes(marks: Any) -> tuple[int, ...]:
    """The sizes of ``@pytest.mark.world_size(...)`` marks (read without importing pytest)."""
    return tuple(size for mark in marks if getattr(mark, "name", None) == MARK for size in mark.args)


def _expand(cls: type, name: str, method: Callable[..., Any], sizes: tuple[int, ...]) -> None:
    if name in cls.__dict__:
        delattr(cls, name)
    if hasattr(cls, name):  # inherited: hide it from the loader
        setattr(cls, name, None)
    for size in sizes:
        setattr(cls, f"{name}_world_size_{size}", _at_size(method, size))


def _at_size(method: Callable[..., Any], size: int) -> Callable[..., Any]:
    @functools.wraps(method)
    def sized(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    if hasattr(sized, SIZES_ATTR):
        delattr(sized, SIZES_ATTR)
    setattr(sized, REQUIRED_ATTR, size)
    sized.__name__ = f"{method.__name__}_world_size_{size}"
    return sized


def required_world_size(case: Any) -> int | None:
    """The world size the running test method asks for, if any."""
    method = getattr(type(case), getattr(case, "_testMethodName", ""), None)
    return getattr(method, REQUIRED_ATTR, None)


def declared_world_size(cls: type, default: Any) -> Any:
    """What ``cls`` itself declares as ``world_size`` (a value or a property), unwrapped."""
    import inspect

    declared = inspect.getattr_static(cls, "world_size", default)
    return declared.declared if isinstance(declared, _RequiredFirst) else declared


class _RequiredFirst:
    """A class's own ``world_size``, overridden by the test method's required size."""

    def __init__(self, declared: Any) -> None:
        self.declared = declared

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is not None:
            if "world_size" in obj.__dict__:
                return obj.__dict__["world_size"]
            required = required_world_size(obj)
            if required is not None:
                return required
        getter = getattr(self.declared, "__get__", None)
        if getter is not None:
            return getter(obj, owner) if obj is not None or not isinstance(self.declared, property) else self
        return self.declared

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["world_size"] = value


def checked_method_name(cls: type, method_name: str, methodName: str) -> str:  # noqa: N803
    """The test method to build, under either of PyTorch's argument names; it must exist."""
    name = methodName if methodName != "runTest" else method_name
    expand_world_sizes(cls)  # marks applied after the class was made
    if name != "runTest" and not hasattr(cls, name):
        raise ConfigError(no_such_test(cls, name), "test name", name)
    return name


def no_such_test(cls: type, name: str) -> str:
    tests = sorted(n for n in dir(cls) if n.startswith("test"))
    listed = ", ".join(tests) if tests else "no test methods"
    return f"{cls.__name__} has no test method {name!r}; it has: {listed}"


def class_world_size(case: Any) -> int:
    """The world size a test case asks for, 0 included (no rank can run here: its tests
    skip); anything else that is not a size is a ConfigError naming the class."""
    name = f"{type(case).__name__}.world_size"
    try:
        value = case.world_size
    except Exception as exc:  # a property that raises
        raise ConfigError(f"{name} raised {type(exc).__name__}: {exc}", name) from None
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    try:
        return parse_world_size(value, name)
    except ConfigError:
        raise ConfigError(
            f"{name} must be an integer >= 1 (or 0, when no rank can run here: its tests skip), got "
            f"{name}={value!r}. Example: class {type(case).__name__}(...): world_size = 2",
            name,
            value,
        ) from None


def zero_world_size_reason(case: Any) -> str:
    """Why a test whose class's world size is 0 skips, with the likely cause."""
    from distributed_testing import _devices
    from distributed_testing._hardware import gpus, note

    if _devices.cuda_device_count() == 0:  # a world size from the device count: for lack of GPUs
        return note(f"{type(case).__name__}.world_size is 0: torch.cuda.device_count() is 0 here; no rank to run",
                    gpus(1))
    return f"{type(case).__name__}.world_size is 0; no rank to run"
