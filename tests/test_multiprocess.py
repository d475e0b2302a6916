"""metrics/multiprocess.py: a dead worker's files folded into one retired generation, on files
written as prometheus_client's multiprocess mode writes them (one set per worker pid)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from metrics import FILES_PER_WORKER, directory_bound, fold_retired
from metrics.multiprocess import RETIRED_FILES, FoldedCollector


def write_worker(directory: Path, pid: int, joins: float, seconds: float, in_flight: float) -> None:
    """The files of one worker: a counter, a histogram (bucket le=1 and +Inf, sum) and a gauge."""
    files: dict[str, list[tuple[str, str, dict[str, str], float]]] = {
        f"counter_{pid}.db": [("joins", "joins_total", {"reason": "ok"}, joins)],
        f"histogram_{pid}.db": [
            ("duration", "duration_bucket", {"le": "1.0"}, joins),
            ("duration", "duration_bucket", {"le": "+Inf"}, 0.0),
            ("duration", "duration_sum", {}, seconds),
        ],
        f"gauge_livesum_{pid}.db": [("in_flight", "in_flight", {}, in_flight)],
    }
    for name, samples in files.items():
        values = MmapedDict(str(directory / name))  # type: ignore[no-untyped-call]
        for metric, sample, labels, value in samples:
            key = mmap_key(metric, sample, list(labels), list(labels.values()), "help")
            values.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
        values.close()  # type: ignore[no-untyped-call]


def scraped(directory: Path) -> dict[str, float]:
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for metric in FoldedCollector(str(directory)).collect()
        for sample in metric.samples
    }


def test_a_dead_workers_counts_stay_and_its_gauges_go(tmp_path: Path) -> None:
    write_worker(tmp_path, 101, joins=3, seconds=0.5, in_flight=2)
    write_worker(tmp_path, 102, joins=4, seconds=1.5, in_flight=1)
    before = scraped(tmp_path)
    assert before["joins_total[('reason', 'ok')]"] == 7 and before["in_flight[]"] == 3
    fold_retired(101, str(tmp_path))
    after = scraped(tmp_path)
    assert after["in_flight[]"] == 1  # the dead worker's gauge is gone
    del before["in_flight[]"], after["in_flight[]"]
    assert after == before  # counters and histograms (buckets, sum, count) keep their totals
    assert not list(tmp_path.glob("*_101.db"))


def test_the_directory_is_bounded_by_the_live_workers_however_many_died(tmp_path: Path) -> None:
    """Before: each dead worker left its counter and histogram files (60 restarts filled 1 MiB)."""
    live = 102
    write_worker(tmp_path, live, joins=1, seconds=0.1, in_flight=0)
    for dead in range(1000, 1060):
        write_worker(tmp_path, dead, joins=1, seconds=0.25, in_flight=1)
        fold_retired(dead, str(tmp_path))
        files = list(tmp_path.rglob("*.db"))
        assert len(files) <= FILES_PER_WORKER + RETIRED_FILES
        assert sum(path.stat().st_size for path in files) <= directory_bound(1)
    totals = scraped(tmp_path)
    assert totals["joins_total[('reason', 'ok')]"] == 61
    assert totals["duration_count[]"] == 61 and totals["duration_sum[]"] == 60 * 0.25 + 0.1
    assert totals["in_flight[]"] == 0


def test_a_fold_that_failed_halfway_does_not_stop_the_next(tmp_path: Path) -> None:
    write_worker(tmp_path, 101, joins=2, seconds=0.5, in_flight=0)
    (tmp_path / "new-retired.1").mkdir()  # left by a fold that stopped before its rename
    fold_retired(101, str(tmp_path))
    assert scraped(tmp_path)["joins_total[('reason', 'ok')]"] == 2
