"""Shards under pytest: this machine's part of the run."""

from __future__ import annotations
