"""A watch-fed store of one kind of object, after client-go's reflector: list (in pages), then
watch from the list's resourceVersion with bookmarks; a watch the server ends is resumed from the
last resourceVersion seen; `410 Gone` relists at once; any other failure relists after a backoff
with jitter. The store keeps answering, from what it last knew, all the while.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Final

from cachetools import LRUCache

from .kube import ApiError, Kind, KubeAPI, ObjectMeta

log = logging.getLogger("kubejoin.binding")

GONE_REMEMBERED: Final = 16384  # uids seen deleted or replaced, per kind
WATCH_SECONDS: Final = (300, 600)  # the server ends each watch after a random time in this range
BACKOFF: Final = (0.5, 30.0)  # first and longest wait after a failure
QUICK_END: Final = 1.0  # a watch that ends this soon with no event counts as a failure

# name -> uid for a live object; (uid, deletion time) for one being deleted. Plain strings for the
# common case keep 100,000 pods small and the hot-path comparison a string equality.
Entry = str | tuple[str, float]


class Store:
    """The objects of one kind: namespace -> name -> Entry, and the uids known to be gone."""

    def __init__(self, gone_remembered: int = GONE_REMEMBERED) -> None:
        self.objects: dict[str, dict[str, Entry]] = {}
        self.count = 0
        self.generation = 0  # moves on at every relist: what a GET saw before it may be stale
        self.gone: LRUCache[str, None] = LRUCache(maxsize=gone_remembered)

    def lookup(self, namespace: str, name: str) -> tuple[str, float | None] | None:
        names = self.objects.get(namespace)
        entry = names.get(name) if names is not None else None
        if entry is None:
            return None
        return (entry, None) if isinstance(entry, str) else entry

    def put(self, meta: ObjectMeta) -> None:
        names = self.objects.setdefault(meta.namespace, {})
        old = names.get(meta.name)
        if old is None:
            self.count += 1
        elif (old if isinstance(old, str) else old[0]) != meta.uid:  # replaced under the same name
            self.gone[old if isinstance(old, str) else old[0]] = None
        names[meta.name] = meta.uid if meta.deleted_at is None else (meta.uid, meta.deleted_at)
        self.gone.pop(meta.uid, None)

    def put_fetched(self, meta: ObjectMeta) -> None:
        """Adds what a GET found, unless the watch knows better: it saw that uid go, or already
        holds that uid (possibly with a newer deletionTimestamp)."""
        held = self.lookup(meta.namespace, meta.name)
        if meta.uid not in self.gone and (held is None or held[0] != meta.uid):
            self.put(meta)

    def remove(self, meta: ObjectMeta) -> None:
        self.gone[meta.uid] = None
        names = self.objects.get(meta.namespace)
        held = names.get(meta.name) if names is not None else None
        if names is not None and held is not None and (held if isinstance(held, str) else held[0]) == meta.uid:
            del names[meta.name]
            self.count -= 1
            if not names:
                del self.objects[meta.namespace]

    def replace(self, items: list[ObjectMeta]) -> None:
        """Swaps in a fresh list at once, so lookups never see a half-built store. Objects missing
        from it are not marked gone: one a GET added after the list's snapshot may be among them."""
        objects: dict[str, dict[str, Entry]] = {}
        for meta in items:
            objects.setdefault(meta.namespace, {})[meta.name] = (
                meta.uid if meta.deleted_at is None else (meta.uid, meta.deleted_at)
            )
        self.objects, self.count = objects, len(items)
        self.generation += 1


class Reflector:
    """Keeps one Store in step with the API server. `synced` is true while the last list
    completed and the watch runs; `restarts` counts relists after a failure or a 410."""

    def __init__(
        self,
        api: KubeAPI,
        kind: Kind,
        store: Store,
        *,
        backoff: tuple[float, float] = BACKOFF,
        watch_seconds: tuple[int, int] = WATCH_SECONDS,
        on_forbidden: Callable[[str, Kind], None] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.api = api
        self.kind = kind
        self.store = store
        self.synced = False
        self.restarts = 0
        self.synced_event = asyncio.Event()
        self.changed = asyncio.Event()  # set after every event applied (for waiting, not polling)
        self.backoff = backoff
        self._watch_seconds = watch_seconds
        self._on_forbidden = on_forbidden
        self._rng = rng

    async def _list(self) -> str:
        items: list[ObjectMeta] = []
        page: str | None = None
        while True:
            objects, version, page = await self.api.list_page(self.kind, page)
            items.extend(objects)
            if page is None:
                break
        self.store.replace(items)
        return version

    async def _watch(self, version: str) -> tuple[str, bool]:
        """Applies the events of one watch; returns the last resourceVersion and whether any
        event (bookmarks included) arrived."""
        low, high = self._watch_seconds
        seconds = low + int(self._rng() * (high - low))
        seen = False
        async for event in self.api.watch(self.kind, version, seconds):
            seen = True
            version = event.resource_version
            if event.object is None:  # BOOKMARK: only the resourceVersion moves on
                continue
            if event.type == "DELETED":
                self.store.remove(event.object)
            else:
                self.store.put(event.object)
            self.changed.set()
        return version, seen

    async def run(self) -> None:
        failures = 0
        version: str | None = None
        verb = "list"
        loop = asyncio.get_running_loop()
        while True:
            try:
                if version is None:
                    verb = "list"
                    version = await self._list()
                    self.synced = True
                    self.synced_event.set()
                verb = "watch"
                opened = loop.time()
                version, seen = await self._watch(version)
                if seen or loop.time() - opened >= QUICK_END:
                    failures = 0
                    continue
                # Ended at once with nothing in it (a proxy cutting it, a broken server): client-go
                # counts that as a failure too, or the watch would be reopened in a tight loop.
                failures += 1
                await self._back_off(failures, f"the {self.kind.resource} watch ended at once")
            except Exception as exc:  # anything but cancellation: the store must not go stale silently
                status = exc.status if isinstance(exc, ApiError) else 0
                if not isinstance(exc, ApiError):
                    log.exception("binding: %s %s failed unexpectedly", self.kind.resource, verb)
                self.synced = False
                self.synced_event.clear()
                self.restarts += 1
                version = None
                failures += 1
                if status == 410 and failures == 1:  # the usual case: relist at once
                    log.info("binding: %s watch expired (410 Gone); relisting", self.kind.resource)
                    continue
                if status == 403 and self._on_forbidden is not None:
                    self._on_forbidden(verb, self.kind)
                await self._back_off(failures, f"{self.kind.resource} {verb} failed ({exc})")

    async def _back_off(self, failures: int, why: str) -> None:
        low, high = self.backoff
        delay = min(low * 2 ** min(failures - 1, 16), high) * (0.5 + self._rng())
        log.warning("binding: %s; retrying in %.1f s", why, delay)
        await asyncio.sleep(delay)
