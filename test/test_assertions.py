"""Tensor-aware assertEqual: pure tests, no rank processes."""

from __future__ import annotations

import pytest
import torch

from distributed_testing import MultiProcessTestCase


class _Case(MultiProcessTestCase):
    __test__ = False  # built by hand below, never collected

    def test_nothing(self) -> None:  # a method to build the case with
        pass


@pytest.fixture
def case() -> _Case:
    return _Case("test_nothing")


def test_equal_tensors_pass(case):
    case.assertEqual(torch.ones(4), torch.ones(4))


def test_different_tensors_fail_with_assert_close_text(case):
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        case.assertEqual(torch.ones(4), torch.zeros(4))


def test_msg_is_appended(case):
    with pytest.raises(AssertionError, match="on rank 3"):
        case.assertEqual(torch.ones(2), torch.zeros(2), "on rank 3")


def test_tolerances(case):
    case.assertEqual(torch.tensor([1.0]), torch.tensor([1.05]), atol=0.1, rtol=0)
    with pytest.raises(AssertionError):
        case.assertEqual(torch.tensor([1.0]), torch.tensor([1.05]), atol=0.01, rtol=0)


def test_only_atol_given_means_rtol_zero(case):
    with pytest.raises(AssertionError):
        case.assertEqual(torch.tensor([100.0]), torch.tensor([100.5]), atol=0.1)


def test_exact_dtype(case):
    with pytest.raises(AssertionError, match="dtype"):
        case.assertEqual(torch.ones(2), torch.ones(2, dtype=torch.float64))
    case.assertEqual(torch.ones(2), torch.ones(2, dtype=torch.float64), exact_dtype=False)


def test_tensor_against_numbers_and_lists(case):
    case.assertEqual(torch.tensor(3.0), 3.0)
    case.assertEqual(torch.tensor([1, 2]), [1, 2])
    with pytest.raises(AssertionError):
        case.assertEqual(torch.tensor([1, 2]), [1, 3])


def test_containers_of_tensors(case):
    case.assertEqual([torch.ones(1), {"a": torch.zeros(2)}], [torch.ones(1), {"a": torch.zeros(2)}])
    with pytest.raises(AssertionError):
        case.assertEqual([torch.ones(1)], [torch.zeros(1)])


def test_plain_values_keep_unittest_behaviour(case):
    case.assertEqual({"a": 1}, {"a": 1})
    with pytest.raises(AssertionError, match="1 != 2"):
        case.assertEqual(1, 2)


def test_not_equal(case):
    case.assertNotEqual(torch.ones(2), torch.zeros(2))
    case.assertNotEqual(1, 2)
    with pytest.raises(AssertionError):
        case.assertNotEqual(torch.ones(2), torch.ones(2))
