"""Retries, flaky outcomes and hardware accounting under pytest."""

from __future__ import annotations
