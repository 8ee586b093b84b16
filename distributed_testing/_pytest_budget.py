"""The rank budget and device leases under pytest-xdist."""

from __future__ import annotations
