"""The library's exception types: one base class, structured and picklable."""

from __future__ import annotations

__all__ = ["ConfigError", "DistributedTestingError", "RankAssertionError", "RankFailure"]


class DistributedTestingError(Exception):
    """Base class of every error this library raises on its own account."""


class ConfigError(DistributedTestingError, ValueError):
    """A bad setting: an environment variable, class attribute or argument.

    ``name`` is the setting, ``value`` what was given; the message says what is
    allowed and shows an example.
    """

    def __init__(self, message: str, name: str = "", value: object = None) -> None:
        super().__init__(message)
        self.name = name
        self.value = value

    def __reduce__(self) -> tuple[type, tuple[str, str, object]]:
        return (type(self), (str(self), self.name, self.value))


class RankFailure(DistributedTestingError, RuntimeError):
    """A distributed test failed in one or more ranks (or timed out).

    The message is the full report; ``ranks`` are the failing ranks. A
    RuntimeError, as PyTorch's framework raises (``assertRaises(RuntimeError)``
    around a threaded test body works on both).
    """

    def __init__(self, message: str, ranks: tuple[int, ...] = (), test_id: str = "", timed_out: bool = False) -> None:
        super().__init__(message)
        self.ranks = ranks
        self.test_id = test_id
        self.timed_out = timed_out

    def __reduce__(self) -> tuple[type, tuple[str, tuple[int, ...], str, bool]]:
        return (type(self), (str(self), self.ranks, self.test_id, self.timed_out))


class RankAssertionError(DistributedTestingError, AssertionError, RuntimeError):
    """A distributed test whose failing ranks all failed an assertion.

    An AssertionError, so unittest and pytest count it as a failure (not an
    error), and a RuntimeError, as PyTorch's framework raises; the message is
    the full report.
    """
