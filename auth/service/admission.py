"""Who gets served now. Two bounds, checked in this order on every join:

- per remote address, requests whose body is still arriving (`limits.max_pending_per_address`):
  reading a body costs the sender nothing and us a coroutine, a buffer and a timer, so one
  address cannot hold more than a few, whatever it sends;
- overall, joins being judged once their body is complete (`limits.max_in_flight`): a slot is
  taken only when there is work to do, so slow senders never take slots from real joins.

`active` counts every join handler from its first line to its last, for the drain at SIGTERM.
"""

from __future__ import annotations

import asyncio


class Admission:
    def __init__(self, *, max_in_flight: int, max_pending_per_address: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_pending_per_address = max_pending_per_address
        self.in_flight = 0
        self.active = 0
        self.idle = asyncio.Event()  # set whenever no join handler runs
        self.idle.set()
        self._pending: dict[str, int] = {}  # only addresses with a body arriving: bounded by them

    def begin(self) -> None:
        self.active += 1
        self.idle.clear()

    def end(self) -> None:
        self.active -= 1
        if not self.active:
            self.idle.set()

    def start_reading(self, remote: str) -> bool:
        """Takes a reading place for remote; False when it holds all of its places."""
        count = self._pending.get(remote, 0)
        if count >= self.max_pending_per_address:
            return False
        self._pending[remote] = count + 1
        return True

    def done_reading(self, remote: str) -> None:
        count = self._pending.pop(remote) - 1
        if count:
            self._pending[remote] = count

    def pending(self, remote: str) -> int:
        return self._pending.get(remote, 0)

    def take_slot(self) -> bool:
        if self.in_flight >= self.max_in_flight:
            return False
        self.in_flight += 1
        return True

    def release_slot(self) -> None:
        self.in_flight -= 1
