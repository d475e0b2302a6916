"""A watch-fed store of one kind of object, after client-go's reflector: list (in pages), then
watch from the list's resourceVersion with bookmarks; a watch the server ends is resumed from the
last resourceVersion seen; `410 Gone` relists at once; any other failure relists after a backoff
with jitter. The store keeps answering, from what it last knew, all the while.

Beyond client-go: a watch that delivers nothing, not even the bookmark the API server sends about
once a minute, for `idle_timeout` is broken (a blackholed connection, a stuck proxy) and relists;
a watch the server ends early counts as a failure even if a bookmark came first (else a proxy that
cuts every watch would have it reopened many times a second); and a wait after the API server
could not be reached ends as soon as its /readyz answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Generic, NamedTuple, TypeVar

from ..claims import uid_key
from ..identity import UidKey
from ..labels import EMPTY, LabelShape, Packed
from .api import ApiError, Kind, KubeAPI, ObjectMeta

log = logging.getLogger("kubejoin.binding")
K = TypeVar("K")
V = TypeVar("V")

GONE_REMEMBERED: Final = 16384  # uids seen deleted or replaced, per kind
WATCH_SECONDS: Final = (300, 600)  # the server ends each watch after a random time in this range
BACKOFF: Final = (0.5, 30.0)  # first and longest wait after a failure
# kube-apiserver sends a bookmark to every watch that asks, about once a minute: two and a half
# minutes of silence is a connection that no longer delivers (binding.watch_idle_timeout)
WATCH_IDLE_TIMEOUT: Final = 150.0
# A watch the server ends sooner than this (and sooner than it was asked to last) counts as a
# failure, whatever it delivered first; failures are forgotten only after a watch that lasted.
HEALTHY_WATCH: Final = 60.0
PROBE_EVERY: Final = 1.0  # while waiting after "unreachable", ask /readyz this often


class Recent(Generic[K, V]):
    """A map bounded to `size` entries that forgets the oldest first. Leaner than cachetools'
    LRUCache (one OrderedDict, no per-key sizes); order is insertion, since nothing here is "used"
    again. `added` counts new keys: a key is forgotten only after `size` newer ones came."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.added = 0
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def __setitem__(self, key: K, value: V) -> None:
        if key not in self._entries:
            self.added += 1
        self._entries[key] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)


class Store:
    """The objects of one kind, by uid only, and the uids known to be gone.

    kube-apiserver looks an object up by the token's name and compares uids. Holding uids alone
    answers the same question: a uid is never reused, and the token's name, namespace and uid were
    signed together by the API server that made that object, so "an object with this uid exists"
    means "the object the token names exists". It keeps 100,000 pods in about 12 MB whatever the
    length of their names, and the hot-path check is one set membership per object. Uids are
    held as `claims.uid_key` gives them; the methods here take the uid strings.

    Beside the uids, the label keys allow rules read (`shape`; None: no labels), packed, only
    for objects that have one of those keys. With `by_name` (namespaces: a token names its
    namespace by name alone) also name -> (uid, labels); namespaces are few.
    """

    def __init__(
        self, gone_remembered: int = GONE_REMEMBERED, *, shape: LabelShape | None = None, by_name: bool = False
    ) -> None:
        self.live: set[UidKey] = set()  # objects not being deleted
        self.terminating: dict[UidKey, float] = {}  # -> deletionTimestamp (unix seconds)
        self.shape = shape  # what `labels` holds: changed only by a relist (replace)
        self.labels: dict[UidKey, Packed] = {}
        self.named: dict[str, tuple[str, Packed]] | None = {} if by_name else None
        self.generation = 0  # moves on at every relist: what a GET saw before it may be stale
        # True if another object took its name (replaced), False if it was just deleted
        self.gone: Recent[UidKey, bool] = Recent(gone_remembered)
        # hash((namespace, name)) of an object deleted lately -> its uid. Only for the reason code
        # (a replacement or a deletion), so a hash is enough: a collision can only pick the other
        # of two refusals.
        self._deleted_names: Recent[int, UidKey] = Recent(gone_remembered)

    @property
    def count(self) -> int:
        return len(self.live) + len(self.terminating)

    def __contains__(self, uid: str) -> bool:
        key = uid_key(uid)
        return key in self.live or key in self.terminating

    def labels_of(self, key: UidKey) -> dict[str, str]:
        """The kept labels of a held object, by uid key."""
        return self.shape.view(self.labels.get(key, EMPTY)) if self.shape is not None else {}

    def deleted_at(self, uid: str) -> float | None:
        """When the object being deleted was deleted; None for a live or unknown one."""
        return self.terminating.get(uid_key(uid))

    def gone_as(self, key: UidKey, namespace: str, name: str) -> bool | None:
        """For a uid seen go: True if another object now has its name, False if deleted (its name
        free, or taken by an object that went too); None if not known to be gone."""
        replaced = self.gone.get(key)
        if replaced and hash((namespace, name)) in self._deleted_names:
            return False  # the replacement went too: kube-apiserver would say not found
        return replaced

    def note_appeared(self, meta: ObjectMeta, key: UidKey) -> None:
        """An object appeared: if another was deleted under its name lately, that one was replaced."""
        self.replaced(hash((meta.namespace, meta.name)), key)

    def replaced(self, name: int, key: UidKey) -> None:
        before = self._deleted_names.pop(name)
        if before is not None and before != key:
            self.gone[before] = True

    def deleted_under(self, name: int) -> UidKey | None:
        return self._deleted_names.get(name)

    def put(self, meta: ObjectMeta) -> None:
        key = uid_key(meta.uid)
        if meta.deleted_at is None:
            self.live.add(key)
            self.terminating.pop(key, None)  # a deletion is never undone, but trust the server
        else:
            self.live.discard(key)
            self.terminating[key] = meta.deleted_at
        if meta.labels:
            self.labels[key] = meta.labels
        else:
            self.labels.pop(key, None)
        if self.named is not None:
            self.named[meta.name] = (meta.uid, meta.labels)
        self.gone.pop(key)
        self.note_appeared(meta, key)

    def put_fetched(self, meta: ObjectMeta) -> None:
        """Adds what a GET found, unless the watch knows better: it saw that uid go, or already
        holds that uid (possibly with a newer deletionTimestamp)."""
        if uid_key(meta.uid) not in self.gone and meta.uid not in self:
            self.put(meta)

    def remove(self, meta: ObjectMeta) -> None:
        key = uid_key(meta.uid)
        self.live.discard(key)
        self.terminating.pop(key, None)
        self.labels.pop(key, None)
        if self.named is not None and self.named.get(meta.name, ("",))[0] == meta.uid:
            del self.named[meta.name]
        self.gone[key] = False
        self._deleted_names[hash((meta.namespace, meta.name))] = key

    def snapshot(self, shape: LabelShape | None) -> Snapshot:
        """An empty list to fill, its objects decoded with `shape` (the labels it will hold)."""
        return Snapshot(self, shape)

    def replace(self, snapshot: Snapshot) -> None:
        """Swaps in a fresh list at once, so lookups never see a half-built store (nor labels of
        one shape read with another). Objects missing from it are not marked gone: one a GET
        added after the list's snapshot may be among them."""
        self.live, self.terminating = snapshot.live, snapshot.terminating
        self.shape, self.labels, self.named = snapshot.shape, snapshot.labels, snapshot.named
        self.generation += 1
        for name, key in snapshot.appeared:
            self.replaced(name, key)


class Snapshot:
    """The objects of one list, gathered page by page for Store.replace: the uids of live objects,
    those being deleted with their deletion time, and the labels of `shape`."""

    def __init__(self, store: Store, shape: LabelShape | None) -> None:
        self._store = store
        self.shape = shape
        self.live: set[UidKey] = set()
        self.terminating: dict[UidKey, float] = {}
        self.labels: dict[UidKey, Packed] = {}
        self.named: dict[str, tuple[str, Packed]] | None = {} if store.named is not None else None
        # (name hash, uid) of objects under a recently deleted name: replacements first seen in
        # this list, applied only if the list completes
        self.appeared: list[tuple[int, UidKey]] = []

    def add(self, meta: ObjectMeta) -> None:
        key = uid_key(meta.uid)
        if meta.deleted_at is None:
            self.live.add(key)
        else:
            self.terminating[key] = meta.deleted_at
        if meta.labels:
            self.labels[key] = meta.labels
        if self.named is not None:
            self.named[meta.name] = (meta.uid, meta.labels)
        name = hash((meta.namespace, meta.name))
        if self._store.deleted_under(name) not in (None, key):
            self.appeared.append((name, key))


class WatchEnd(NamedTuple):
    """How a watch the server ended went."""

    version: str  # the last resourceVersion seen: the next watch resumes from it
    lasted: float  # seconds
    healthy: bool  # it lasted `healthy_watch` seconds, or as long as it was asked to


class Reflector:
    """Keeps one Store in step with the API server. `synced` is true while the last list
    completed and a watch from it is open (or about to reopen at once); `restarts` counts
    relists after a failure or a 410, and watches that ended early."""

    def __init__(
        self,
        api: KubeAPI,
        kind: Kind,
        store: Store,
        *,
        backoff: tuple[float, float] = BACKOFF,
        watch_seconds: tuple[int, int] = WATCH_SECONDS,
        idle_timeout: float = WATCH_IDLE_TIMEOUT,
        healthy_watch: float = HEALTHY_WATCH,
        probe_every: float = PROBE_EVERY,
        on_forbidden: Callable[[str, Kind], None] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.api = api
        self.kind = kind
        self.store = store
        # the labels the next list keeps: ahead of the store's while a relist brings new keys
        self.shape = store.shape
        self.synced = False
        self.restarts = 0
        self.synced_event = asyncio.Event()
        self.changed = asyncio.Event()  # set after every event applied (for waiting, not polling)
        self.backoff = backoff
        self.idle_timeout = idle_timeout
        self.healthy_watch = healthy_watch
        self.probe_every = probe_every
        self._watch_seconds = watch_seconds
        self._on_forbidden = on_forbidden
        self._rng = rng

    async def _list(self) -> str:
        # Each page is folded in as it arrives: 100,000 objects are never all decoded at once.
        shape = self.shape  # one shape for the whole list, whatever want() says meanwhile
        snapshot = self.store.snapshot(shape)
        page: str | None = None
        while True:
            objects, version, page = await self.api.list_page(self.kind, page, shape)
            for meta in objects:
                snapshot.add(meta)
            if page is None:
                break
        self.store.replace(snapshot)
        return version

    def _opened(self) -> None:
        # A watch resumed from the store's resourceVersion is open again: the store is current.
        self.synced = True

    async def _watch(self, version: str) -> WatchEnd:
        """Applies the events of one watch until the server ends it. Raises ApiError if nothing,
        not even a bookmark, came for `idle_timeout`."""
        low, high = self._watch_seconds
        seconds = low + int(self._rng() * (high - low))
        loop = asyncio.get_running_loop()
        opened = loop.time()
        # bounded: a server that never ends the watch it was asked to end is left after this
        give_up = opened + seconds + self.idle_timeout
        # the store's shape, not the next list's: events are put into the store as it is
        events = self.api.watch(self.kind, version, seconds, labels=self.store.shape, opened=self._opened)
        async with contextlib.aclosing(events):
            while loop.time() < give_up:
                try:
                    async with asyncio.timeout(self.idle_timeout) as idle:
                        event = await anext(events)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if not idle.expired():
                        raise
                    raise ApiError(
                        0,
                        f"watch of {self.kind.resource}: nothing received, not even a bookmark, for "
                        f"{self.idle_timeout:g} s (binding.watch_idle_timeout): treating it as broken",
                    ) from None
                version = event.resource_version
                if event.object is None:  # BOOKMARK: only the resourceVersion moves on
                    continue
                if event.type == "DELETED":
                    self.store.remove(event.object)
                else:
                    self.store.put(event.object)
                self.changed.set()
        lasted = loop.time() - opened
        return WatchEnd(version, lasted, lasted >= min(self.healthy_watch, seconds))

    async def run(self) -> None:
        failures = 0
        gone = 0  # 410s since the last watch that lasted
        version: str | None = None
        verb = "list"
        while True:  # until cancelled: every path through it either watches or waits
            try:
                if version is None:
                    verb = "list"
                    version = await self._list()
                    self.synced = True
                    self.synced_event.set()
                verb = "watch"
                end = await self._watch(version)
                version = end.version
                if end.healthy:
                    failures = gone = 0
                    continue
                # Ended early (a proxy cutting it, a server restarting): resumed from `version`,
                # nothing is lost, but only after a backoff, or a proxy that cuts every watch
                # right after a bookmark has it reopened many times a second.
                failures += 1
                self.restarts += 1
                self.synced = False  # until the next watch opens: deletions meanwhile are unseen
                why = f"the {self.kind.resource} watch ended after {end.lasted:.1f} s"
                await self._back_off(failures, why, probe=False)
            except Exception as exc:  # anything but cancellation: the store must not go stale silently
                status = exc.status if isinstance(exc, ApiError) else 0
                if not isinstance(exc, ApiError):
                    log.exception("binding: %s %s failed unexpectedly", self.kind.resource, verb)
                self.synced = False
                self.synced_event.clear()
                self.restarts += 1
                version = None
                if status == 410:
                    gone += 1
                    if gone == 1:  # the usual case: relist at once
                        log.info("binding: %s watch expired (410 Gone); relisting", self.kind.resource)
                        continue
                failures += 1
                if status == 403 and self._on_forbidden is not None:
                    self._on_forbidden(verb, self.kind)
                unreachable = isinstance(exc, ApiError) and exc.unreachable
                await self._back_off(failures, f"{self.kind.resource} {verb} failed ({exc})", probe=unreachable)

    async def _back_off(self, failures: int, why: str, *, probe: bool) -> None:
        """Waits before a retry, longer after each failure. With `probe` (the API server could not
        be reached), the wait ends as soon as its /readyz answers: an API server that comes back
        gets a relist at once, not after up to 45 s of a cache that no watch keeps current."""
        low, high = self.backoff
        delay = min(low * 2 ** min(failures - 1, 16), high) * (0.5 + self._rng())
        log.warning("binding: %s; retrying in %.1f s", why, delay)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        every = self.probe_every
        for _ in range(int(delay / every) + 1 if probe else 0):
            # on the ticks of a grid, so that the kinds waiting on one API server ask together
            await asyncio.sleep(every - loop.time() % every)
            if loop.time() >= deadline:
                return
            try:  # a probe that hangs ends with the wait (the probe itself goes on, shared)
                async with asyncio.timeout(deadline - loop.time()):
                    ready = await self.api.ready(shared_within=every / 2)
            except TimeoutError:
                return
            if ready:
                log.info("binding: the API server answers again; %s retried now", self.kind.resource)
                return
        await asyncio.sleep(max(0.0, deadline - loop.time()))
