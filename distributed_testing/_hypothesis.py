"""Hypothesis on distributed tests: draw and shrink in the parent, run each example on every rank.

Ranks that each ran hypothesis would draw different values (and deadlock in
their collectives) and shrink apart. Here hypothesis runs once, in the parent,
with the test's inner function replaced by one that sends the drawn example
to all ranks and folds their results. Its database, settings, shrinking and
"Falsifying example" report are hypothesis's own; only the parent writes the
database. On the warm pool an example costs a few milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Callable, Iterator
from typing import Any

from distributed_testing._errors import ConfigError

__unittest = True

__all__ = ["Example", "bind_example", "is_hypothesis_test", "run_examples"]

# (args, kwargs) of one drawn example, as the ranks receive it.
Example = tuple[tuple[Any, ...], dict[str, Any]]


def is_hypothesis_test(method: Any) -> bool:
    """Whether ``method`` is decorated with hypothesis's ``@given``."""
    handle = getattr(method, "hypothesis", None)
    return handle is not None and hasattr(handle, "inner_test")


def run_examples(method: Any, case: Any, dispatch: Callable[[Example], None]) -> None:
    """Run hypothesis for ``method`` in this process; ``dispatch`` runs one example on the ranks.

    ``dispatch`` raises what the ranks' fold says (a failure makes hypothesis
    shrink; a skip skips).
    """
    __tracebackhide__ = True
    handle = method.hypothesis
    original = handle.inner_test

    @functools.wraps(original)  # hypothesis names the test in its "Falsifying example"
    def on_the_ranks(*args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        # hypothesis passes the test case itself as ``self=`` or first; the ranks have their own.
        kwargs.pop("self", None)
        if args and args[0] is case:
            args = args[1:]
        dispatch(_checked((args, kwargs)))

    handle.inner_test = on_the_ranks
    try:
        with _without_explain(method):
            method(case)
    finally:
        handle.inner_test = original


@contextlib.contextmanager
def _without_explain(method: Any) -> Iterator[None]:
    """Leave out hypothesis's explain phase: it traces lines in this process, where the test's own
    lines never run, so it could only name this library's lines (and costs rank round trips)."""
    from hypothesis import Phase, settings

    current = getattr(method, "_hypothesis_internal_use_settings", None)
    if not isinstance(current, settings) or Phase.explain not in current.phases:
        yield
        return
    method._hypothesis_internal_use_settings = settings(
        current, phases=[phase for phase in current.phases if phase is not Phase.explain]
    )
    try:
        yield
    finally:
        method._hypothesis_internal_use_settings = current


def _checked(example: Example) -> Example:
    try:
        pickle.dumps(example)
    except Exception as exc:
        raise ConfigError(
            f"a drawn example must be picklable to reach the ranks, got {example!r}: {exc}. "
            "Example: draw plain values (ints, lists, tensors) and build objects inside the test",
            "example",
            example,
        ) from None
    return example


def bind_example(case: Any, name: str, example: Example) -> Callable[[], Any]:
    """In a rank: the test method with hypothesis removed, applied to the parent's example."""
    method = getattr(type(case), name)
    inner = method.hypothesis.inner_test
    args, kwargs = example

    @functools.wraps(method)
    def run_example() -> Any:
        return inner(case, *args, **kwargs)

    return run_example
