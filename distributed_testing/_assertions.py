"""Tensor-aware equality: ``assertEqual`` with ``torch.testing.assert_close`` semantics.

PyTorch's own TestCase compares tensors, containers of tensors and tensors
against plain numbers; suites moving over rely on that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import expecttest
import torch

__unittest = True

__all__ = ["TensorAssertions", "assert_same_on_all_ranks", "assert_tensors_equal", "involves_tensor"]


def involves_tensor(value: Any) -> bool:
    """Whether ``value`` is a tensor or a (nested) sequence or mapping holding one."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(involves_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(involves_tensor(v) for v in value)
    return False


def assert_tensors_equal(
    actual: Any,
    expected: Any,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    exact_dtype: bool = True,
    exact_device: bool = False,
    msg: str | None = None,
) -> None:
    """Raise AssertionError unless ``actual`` and ``expected`` are close.

    A tensor compared with a number or a list is compared with the tensor made
    from it (dtype then not enforced), as PyTorch's TestCase does.
    """
    if isinstance(actual, torch.Tensor) != isinstance(expected, torch.Tensor) and not (
        isinstance(actual, (list, tuple, Mapping)) and isinstance(expected, (list, tuple, Mapping))
    ):
        tensor = actual if isinstance(actual, torch.Tensor) else expected
        if isinstance(actual, torch.Tensor):
            expected = torch.as_tensor(expected, dtype=tensor.dtype, device=tensor.device)
        else:
            actual = torch.as_tensor(actual, dtype=tensor.dtype, device=tensor.device)
        exact_dtype = False
    if (atol is None) != (rtol is None):  # assert_close wants both or neither
        atol = 0.0 if atol is None else atol
        rtol = 0.0 if rtol is None else rtol
    try:
        torch.testing.assert_close(
            actual,
            expected,
            atol=atol,
            rtol=rtol,
            check_dtype=exact_dtype,
            check_device=exact_device,
            equal_nan=True,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{msg}" if msg else str(exc)) from None


class TensorAssertions(expecttest.TestCase):
    """assertEqual and assertNotEqual that understand tensors, for the base classes."""

    def assertEqual(  # noqa: N802
        self,
        first: Any,
        second: Any,
        msg: Any = None,
        *,
        atol: float | None = None,
        rtol: float | None = None,
        exact_dtype: bool = True,
        exact_device: bool = False,
    ) -> None:
        """unittest's assertEqual, with ``torch.testing.assert_close`` for tensors."""
        if involves_tensor(first) or involves_tensor(second) or atol is not None or rtol is not None:
            assert_tensors_equal(
                first, second, atol=atol, rtol=rtol, exact_dtype=exact_dtype, exact_device=exact_device, msg=msg
            )
        else:
            super().assertEqual(first, second, msg)

    def assertNotEqual(self, first: Any, second: Any, msg: Any = None, **kwargs: Any) -> None:  # noqa: N802
        """The negation of :meth:`assertEqual`, tensors included."""
        if not (involves_tensor(first) or involves_tensor(second) or kwargs):
            super().assertNotEqual(first, second, msg)
            return
        try:
            self.assertEqual(first, second, **kwargs)
        except AssertionError:
            return
        raise self.failureException(msg or f"{first!r} == {second!r}")

    def assertEqualOnRank(self, first: Any, second: Any, msg: Any = None, *, rank: int = 0, **kwargs: Any) -> None:  # noqa: N802
        """assertEqual, checked only on ``rank`` (PyTorch's name)."""
        if getattr(self, "rank", None) == rank:
            self.assertEqual(first, second, msg, **kwargs)

    def assertNotEqualOnRank(self, first: Any, second: Any, msg: Any = None, *, rank: int = 0) -> None:  # noqa: N802
        """assertNotEqual, checked only on ``rank``."""
        if getattr(self, "rank", None) == rank:
            self.assertNotEqual(first, second, msg)

    def assertSameOnAllRanks(self, value: Any, group: Any = None, msg: str | None = None) -> None:  # noqa: N802
        """Every rank holds the same ``value``: see :func:`assert_same_on_all_ranks`."""
        assert_same_on_all_ranks(value, group, msg)

    def assertExpectedInline(self, actual: Any, expect: str, skip: int = 0, **options: Any) -> None:  # noqa: N802
        """expecttest's check, made safe for ranks.

        In a rank the value is also recorded, so the parent can tell when ranks
        disagree; with EXPECTTEST_ACCEPT=1 ranks do not write the file: the
        parent accepts once, for all of them. ``options`` go to the next class's
        check (PyTorch's TestCase: ``ignore_comments``, ``ignore_empty_lines``).
        """
        from distributed_testing import _expect

        actual, expect = _expect.normalized(self, actual, expect, options)
        if not _expect.record(self, actual, expect, skip + 1):
            super().assertExpectedInline(actual, expect, skip=skip + 1, **options)


def assert_same_on_all_ranks(value: Any, group: Any = None, msg: str | None = None) -> None:
    """Raise AssertionError unless every rank of ``group`` holds the same ``value``.

    Tensors, nested lists/dicts of them and picklable Python objects. A
    mismatch names the ranks that differ from rank 0 and shows each one's
    value; for tensors, the first index where they differ.
    """
    import torch.distributed as dist

    size = dist.get_world_size(group)
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, _to_cpu(value), group=group)
    reference = gathered[0]
    differing = [rank for rank in range(1, size) if not _same(gathered[rank], reference)]
    if differing:
        raise AssertionError(_difference_report(gathered, differing, msg))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b) or _nan_equal(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return False


def _nan_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(a.is_floating_point() and torch.equal(a.nan_to_num(0.123456), b.nan_to_num(0.123456)))


def _difference_report(values: list[Any], differing: list[int], msg: str | None) -> str:
    who = f"rank {differing[0]} differs" if len(differing) == 1 else f"ranks {', '.join(map(str, differing))} differ"
    lines = [f"{who} from rank 0 (of {len(values)} ranks)"]
    for rank in [0, *differing]:
        lines.append(f"  rank {rank}: {_describe(values[rank], values[0] if rank else None)}")
    if msg:
        lines.append(msg)
    return "\n".join(lines)


def _describe(value: Any, reference: Any) -> str:
    if isinstance(value, torch.Tensor) and isinstance(reference, torch.Tensor):
        if value.shape != reference.shape or value.dtype != reference.dtype:
            return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
        index = tuple(int(i) for i in (value != reference).nonzero()[0]) if value.numel() else ()
        return f"first differs at index {index}: {value[index].item()!r} (rank 0: {reference[index].item()!r})"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + " [...]"
