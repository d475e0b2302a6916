"""prometheus_client's multiprocess directory, bounded by the live workers.

Each worker writes its own files (`counter_PID.db`, `histogram_PID.db`, `gauge_MODE_PID.db`); a
dead worker's counts must stay in the sums, so prometheus_client keeps its counter and histogram
files forever and the directory grew with every restart (60 restarts filled a 1 MiB emptyDir, and
the next write was a SIGBUS). `fold_retired` adds a dead worker's counter and histogram files into
one retired generation and removes its files, gauges included: the directory then holds the live
workers' files and one retired generation (two for a moment during a fold).

A generation is a directory `retired.N` written under another name and renamed into place, so a
scrape sees it whole or not at all. It names the workers folded into it (`pids`), whose own files
a scrape skips while they are being removed; a scrape that finds a file gone meanwhile reads again.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client.core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

RETIRED: Final = "retired."
# The files one worker writes: counters, histograms, and one per gauge mode kubejoin uses (livesum,
# livemax, livemin, livemostrecent). tests/test_workers.py counts them on a running service.
FILES_PER_WORKER: Final = 6
# prometheus_client's first size of a file (sparse: only the pages written take memory); it grows
# only beyond about 300 series of one type in one worker, and kubejoin's label values are bounded.
FILE_BYTES: Final = 64 * 1024
# Retired files at most: two generations of counters and histograms, for a moment during a fold.
RETIRED_FILES: Final = 4
# Folds are rare and quick: a scrape that met one reads again, this many times at most.
READ_ATTEMPTS: Final = 5


def directory_bound(workers: int) -> int:
    """The most bytes the directory holds with `workers` live workers, however many died."""
    return (FILES_PER_WORKER * workers + RETIRED_FILES) * FILE_BYTES


def _pid(path: str) -> str:
    """The process a worker's file belongs to: `counter_123.db`, `gauge_livesum_123.db`."""
    return os.path.basename(path)[: -len(".db")].rsplit("_", 1)[-1]


def _generations(directory: str) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir(directory):
        number = entry[len(RETIRED) :]
        if entry.startswith(RETIRED) and number.isdigit():
            found.append((int(number), os.path.join(directory, entry)))
    return sorted(found)


def _folded_pids(generation: str) -> set[str]:
    with open(os.path.join(generation, "pids"), encoding="ascii") as handle:
        return set(handle.read().split())


def _files(directory: str) -> list[str]:
    """The files a scrape sums: the newest retired generation's and the workers' not in it."""
    generations = _generations(directory)
    if not generations:
        return glob.glob(os.path.join(directory, "*.db"))
    newest = generations[-1][1]
    folded = _folded_pids(newest)
    workers = [path for path in glob.glob(os.path.join(directory, "*.db")) if _pid(path) not in folded]
    return glob.glob(os.path.join(newest, "*.db")) + workers


class FoldedCollector(Collector):
    """prometheus_client's MultiProcessCollector over a directory whose dead workers are folded."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        for attempt in range(READ_ATTEMPTS):
            try:
                merged = MultiProcessCollector.merge(_files(self._directory), accumulate=True)  # type: ignore[no-untyped-call]
            except FileNotFoundError:  # a fold removed a file between the listing and the read
                if attempt == READ_ATTEMPTS - 1:
                    raise
                continue
            yield from merged
            return


def _write(path: str, metrics: Iterable[Metric]) -> None:
    values = MmapedDict(path)  # type: ignore[no-untyped-call]
    try:
        for metric in metrics:
            for sample in metric.samples:
                key = mmap_key(
                    metric.name, sample.name, list(sample.labels), list(sample.labels.values()), metric.documentation
                )
                values.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        values.close()  # type: ignore[no-untyped-call]


def fold_retired(pid: int, directory: str) -> None:
    """Adds the counts of worker `pid`, which has exited, into the retired generation and removes
    its files: counters and histograms keep their totals, its gauges go."""
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    generations = _generations(directory)
    previous = generations[-1][1] if generations else None
    if previous is not None:  # a fold cut short left files that its generation already holds
        for stale in _folded_pids(previous):
            for path in glob.glob(os.path.join(directory, f"*_{stale}.db")):
                os.remove(path)
    own = glob.glob(os.path.join(directory, f"*_{pid}.db"))
    counts = [path for path in own if not os.path.basename(path).startswith("gauge_")]
    if counts:
        number = generations[-1][0] + 1 if generations else 1
        staging = os.path.join(directory, f"new-{RETIRED}{number}")
        shutil.rmtree(staging, ignore_errors=True)  # what a fold that failed halfway left
        os.mkdir(staging)
        retired = glob.glob(os.path.join(previous, "*.db")) if previous else []
        merged = MultiProcessCollector.merge(retired + counts, accumulate=False)  # type: ignore[no-untyped-call]
        by_type: dict[str, list[Metric]] = {}
        for metric in merged:
            by_type.setdefault(metric.type, []).append(metric)
        for kind, metrics in by_type.items():
            _write(os.path.join(staging, f"{kind}_retired.db"), metrics)
        with open(os.path.join(staging, "pids"), "w", encoding="ascii") as handle:
            handle.write(f"{pid}\n")
        os.rename(staging, os.path.join(directory, f"{RETIRED}{number}"))
    for path in own:
        os.remove(path)
    if counts and previous is not None:
        shutil.rmtree(previous)
