"""Tensor-aware equality: ``assertEqual`` with ``torch.testing.assert_close`` semantics.

PyTorch's own TestCase compares tensors, containers of tensors and tensors
against plain numbers; suites moving over rely on that.
"""

from __future__ import annotations

import unittest
from collections.abc import Mapping
from typing import Any

import torch

__unittest = True

__all__ = ["TensorAssertions", "assert_tensors_equal", "involves_tensor"]


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


class TensorAssertions(unittest.TestCase):
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
