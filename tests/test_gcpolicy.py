"""The serving process's collector policy: what is alive at start-up leaves every later collection."""

from __future__ import annotations

import gc
import weakref

from auth.service.gcpolicy import freeze_after_start


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_freeze_after_start_takes_live_objects_out_of_the_collectors_walk() -> None:
    marker = ["alive at start-up"]  # a tracked container
    garbage = weakref.ref(_Node())  # start-up garbage
    try:
        frozen = freeze_after_start()
        assert garbage() is None  # collected first, not frozen
        assert frozen == gc.get_freeze_count() > 0
        assert not any(obj is marker for obj in gc.get_objects())  # frozen objects are not walked
        later = ["made while serving"]
        assert any(obj is later for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(obj is marker for obj in gc.get_objects())
