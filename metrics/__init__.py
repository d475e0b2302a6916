"""Prometheus metrics of kubejoin. Knows nothing of the verifier or the service: they report
through the methods of `Metrics`, which owns its own registry."""

from .metrics import FETCH_BUCKETS, JOIN_BUCKETS, Metrics
from .reported import BindingStats, CacheStats

__all__ = [
    "FETCH_BUCKETS",
    "JOIN_BUCKETS",
    "BindingStats",
    "CacheStats",
    "Metrics",
]
