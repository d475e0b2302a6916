"""Prometheus metrics of kubejoin. Knows nothing of the verifier or the service: they report
through the methods of `Metrics`, which owns its own registry."""

from .metrics import FETCH_BUCKETS, JOIN_BUCKETS, Metrics
from .multiprocess import FILE_BYTES, FILES_PER_WORKER, directory_bound, fold_retired
from .reported import BindingStats, CacheStats

__all__ = [
    "FETCH_BUCKETS",
    "FILES_PER_WORKER",
    "FILE_BYTES",
    "JOIN_BUCKETS",
    "BindingStats",
    "CacheStats",
    "Metrics",
    "directory_bound",
    "fold_retired",
]
