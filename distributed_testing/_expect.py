"""expecttest across ranks: record each rank's value, compare them, accept once in the parent.

A rank that rewrote the source file itself would race the other ranks, and
a fresh rank process knows nothing of the line shifts earlier accepts made.
So ranks only record (file, line, actual, expected); the parent, whose
expecttest keeps the edit history for the whole run, does the rewriting.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

from distributed_testing import _rank

__unittest = True

__all__ = ["normalized", "record", "settle"]

Expectation = tuple[str, int, str, str]  # file, line, actual, expected


def accepting() -> bool:
    """Whether the run accepts new output (read each time, as expecttest does)."""
    return bool(os.getenv("EXPECTTEST_ACCEPT"))


def normalized(case: Any, actual: Any, expect: str, options: dict[str, Any]) -> tuple[str, str]:
    """The value and expectation as the next check compares them: PyTorch's TestCase takes any
    value (its ``str()``), drops ANSI colours and, when asked, comment and empty lines."""
    actual = actual if isinstance(actual, str) else str(actual)
    steps = [getattr(case, "_remove_ansi_escape", None)]
    steps += [getattr(case, "remove_comment_lines", None)] if options.get("ignore_comments") else []
    steps += [getattr(case, "remove_empty_lines", None)] if options.get("ignore_empty_lines") else []
    for step in filter(None, steps):
        actual, expect = step(actual), step(expect)
    return actual, expect


def record(case: Any, actual: str, expect: str, skip: int) -> bool:
    """In a rank (process or thread), note the value; return True when the rank must not check it itself."""
    recorded = _rank.expectation_list()
    if recorded is None:
        return False
    filters = getattr(case, "_expect_filters", None)
    if filters:
        import expecttest

        actual = expecttest.replace_many(filters, actual)
    frame = traceback.extract_stack(limit=2 + skip)[0]
    recorded.append((frame.filename, int(frame.lineno or 0), actual, expect))
    return accepting()


def settle(views: list[Any], test_id: str) -> str:
    """Compare the ranks' values; accept agreed new output once. Return a disagreement report or ""."""
    by_place: dict[tuple[str, int], dict[int, tuple[str, str]]] = {}
    for view in views:
        if view.result is None:
            continue
        for file, line, actual, expect in view.result.expectations:
            by_place.setdefault((file, line), {})[view.rank] = (actual, expect)
    reports = []
    for (file, line), values in sorted(by_place.items()):
        actuals = {actual for actual, _ in values.values()}
        if len(actuals) > 1:
            shown = "\n".join(f"  rank {rank}: {actual!r}" for rank, (actual, _) in sorted(values.items()))
            reports.append(f"ranks disagree on assertExpectedInline at {os.path.basename(file)}:{line}:\n{shown}")
        elif accepting():
            actual, expect = next(iter(values.values()))
            if actual != expect:
                _accept(file, line, actual, expect, test_id)
    return "\n\n".join(reports)


def _accept(file: str, line: int, actual: str, expect: str, test_id: str) -> None:
    import expecttest

    expecttest.assert_expected_inline(actual, expect, pos=expecttest.PositionInfo(file, line), debug_id=test_id)
