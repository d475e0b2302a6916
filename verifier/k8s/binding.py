"""Live binding: the checks kube-apiserver's ServiceAccount token validator makes on the objects a
token names (pkg/serviceaccount/claims.go), answered from a watch-fed cache instead of a call per
token.

In kube-apiserver's order: the service account exists with the token's uid and is not deleted
beyond the leeway; the pod likewise (a pod in its graceful termination period still passes); then,
with `nodes`, the node exists with the token's uid. kube-apiserver itself only reads the node claim
of a pod-bound token; kubejoin also checks it, so a token from a node that was deleted or replaced
stops working too.

The cache holds uids, not names (verifier.k8s.watch.Store says why that answers the same question). A lookup it
cannot answer costs one GET, shared by every check waiting for the same object.
An object seen deleted or replaced on the watch is refused from memory: uids are never reused, so
no GET is needed to know that it is gone.

Beside the uids, the cache keeps the label keys that allow rules read (`want`), for `objects` to
hand to the rules from memory; namespaces, which only rules read, are watched only while one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from enum import Enum
from typing import Final, NamedTuple

from cachetools import TTLCache

from ..errors import BindingRefusal, Reason
from ..identity import Identity, ObjectRef
from ..labels import NO_LABELS, LabelKeys, LabelKind, ObjectView, WantedKeys, covered, shape_for
from .api import KINDS, NAMESPACE, NODE, POD, SERVICE_ACCOUNT, ApiError, Kind, KubeAPI, ObjectMeta
from .watch import BACKOFF, WATCH_IDLE_TIMEOUT, WATCH_SECONDS, Reflector, Store

log = logging.getLogger("kubejoin.binding")

LOOKUP_RESULTS: Final = ("cache", "api", "not_found", "error")


class KindReasons(NamedTuple):
    """The refusals of one kind of object."""

    not_found: Reason
    uid_mismatch: Reason
    deleted: Reason


# A node is checked for existence and uid only (as the contract says); once the watch has seen it
# go, its tokens get node_not_found.
_REASONS: Final = {
    "serviceaccount": KindReasons(
        Reason.SERVICE_ACCOUNT_NOT_FOUND, Reason.SERVICE_ACCOUNT_UID_MISMATCH, Reason.SERVICE_ACCOUNT_DELETED
    ),
    "pod": KindReasons(Reason.POD_NOT_FOUND, Reason.POD_UID_MISMATCH, Reason.POD_DELETED),
    "node": KindReasons(Reason.NODE_NOT_FOUND, Reason.NODE_UID_MISMATCH, Reason.NODE_NOT_FOUND),
}


class Memory(Enum):
    """What the cache knows of one object (a refusal it is sure of is raised instead)."""

    HOLDS = "holds"
    ASK = "ask"  # the cache cannot answer: ask the API server


ABSENT_REMEMBERED: Final = 16384
ABSENT_SECONDS: Final = 5.0
_ABSENT_SAYS: Final = "named by the token was not there when last looked up (a few seconds ago)"


class BindingStats(NamedTuple):
    """What the metrics show, read at scrape time (the hot path only adds to integers)."""

    objects: dict[str, int]
    synced: dict[str, bool]
    lookups: dict[tuple[str, str], int]
    restarts: dict[str, int]


class LiveBinding:
    """The watch-fed binding check against one cluster's API server."""

    def __init__(
        self,
        api: KubeAPI,
        *,
        leeway: float,
        nodes: bool = True,
        clock: Callable[[], float] = time.time,
        backoff: tuple[float, float] = BACKOFF,
        watch_seconds: tuple[int, int] = WATCH_SECONDS,
        watch_idle_timeout: float = WATCH_IDLE_TIMEOUT,
        wanted: WantedKeys = NO_LABELS,
    ) -> None:
        self.api = api
        self._leeway = leeway
        self._clock = clock
        self.nodes = nodes
        self._wanted = wanted
        self._backoff, self._watch_seconds, self._idle_timeout = backoff, watch_seconds, watch_idle_timeout
        self.kinds = tuple(kind for kind in KINDS if nodes or kind is not NODE)
        self.stores: dict[str, Store] = {}
        self.reflectors: dict[str, Reflector] = {}
        for kind in self.kinds:
            self._watch_kind(kind)
        if wanted.namespace:
            self._watch_kind(NAMESPACE)
        self._accounts, self._pods = self.stores[SERVICE_ACCOUNT.name], self.stores[POD.name]
        self._nodes = self.stores.get(NODE.name, Store())
        self._inflight: dict[tuple[str, str, str], asyncio.Future[ObjectMeta | None]] = {}
        self._started = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retired: set[asyncio.Task[None]] = set()  # cancelled by want(), not yet finished
        self._forbidden_said: set[tuple[str, str]] = set()
        # (kind, uid) a GET found absent or replaced: refused without asking again for a few seconds,
        # so a token of a long-gone pod costs one GET per few seconds, not one per join. Short,
        # because one shared GET may have started before a pod of that name was recreated.
        self._absent: TTLCache[tuple[str, str], Reason] = TTLCache(ABSENT_REMEMBERED, ABSENT_SECONDS, timer=clock)
        self.lookups: Counter[tuple[str, str]] = Counter()
        self.fast = 0  # checks answered wholly by the fast path (a service account and pod each)
        self.fast_nodes = 0  # ... of which also looked up a node

    # -- the hot path -----------------------------------------------------------------------
    def check_cached(self, identity: Identity) -> bool:
        # One set membership per object: a live object with the token's uid, and no clock to read.
        if identity.service_account.key in self._accounts.live and identity.pod.key in self._pods.live:
            node = identity.node
            if node is None or not self.nodes:
                self.fast += 1
                return True
            if node.key in self._nodes.live:
                self.fast += 1
                self.fast_nodes += 1
                return True
        now = self._clock()
        return all(self._judge(kind, identity, ref, now) is Memory.HOLDS for kind, ref in self._objects(identity))

    def _objects(self, identity: Identity) -> list[tuple[Kind, ObjectRef]]:
        objects = [(SERVICE_ACCOUNT, identity.service_account), (POD, identity.pod)]
        if identity.node is not None and self.nodes:
            objects.append((NODE, identity.node))
        return objects

    def _judge(self, kind: Kind, identity: Identity, ref: ObjectRef, now: float) -> Memory:
        """What memory says of one object; raises the refusal the cache is sure of."""
        store, namespace = self.stores[kind.name], identity.namespace
        if ref.key in store.live or ref.key in store.terminating:
            self.lookups[kind.name, "cache"] += 1
            self._refuse_if_deleted(kind, identity, ref, store.terminating.get(ref.key), now)
            return Memory.HOLDS
        replaced = store.gone_as(ref.key, namespace if kind.namespaced else "", ref.name)
        if replaced is not None:  # seen deleted or replaced on the watch
            self.lookups[kind.name, "cache"] += 1
            what = _describe(kind, namespace, ref.name)
            reasons = _REASONS[kind.name]
            if replaced:
                raise BindingRefusal(
                    reasons.uid_mismatch, f"{what} was replaced: it now has another uid than the token's", identity
                )
            raise BindingRefusal(reasons.deleted, f"{what} named by the token was deleted", identity)
        return Memory.ASK

    def _refuse_if_deleted(
        self, kind: Kind, identity: Identity, ref: ObjectRef, deleted_at: float | None, now: float
    ) -> None:
        if deleted_at is not None and kind is not NODE and deleted_at < now - self._leeway:
            what = _describe(kind, identity.namespace, ref.name)
            raise BindingRefusal(
                _REASONS[kind.name].deleted, f"{what} was deleted at {int(deleted_at)}; now is {int(now)}", identity
            )

    # -- asking the API server --------------------------------------------------------------
    async def check(self, identity: Identity) -> None:
        now = self._clock()
        for kind, ref in self._objects(identity):
            if self._judge(kind, identity, ref, now) is Memory.ASK:
                absent = self._absent.get((kind.name, ref.uid))
                if absent is not None:  # a GET said so a moment ago
                    self.lookups[kind.name, "cache"] += 1
                    what = _describe(kind, identity.namespace, ref.name)
                    raise BindingRefusal(absent, f"{what} {_ABSENT_SAYS}", identity)
                await self._ask(kind, identity, ref, now)

    async def _ask(self, kind: Kind, identity: Identity, ref: ObjectRef, now: float) -> None:
        namespace = identity.namespace
        scope = namespace if kind.namespaced else ""
        what = _describe(kind, namespace, ref.name)
        try:
            found = await asyncio.shield(self._fetch(kind, scope, ref.name))
        except ApiError as exc:
            self.lookups[kind.name, "error"] += 1
            if exc.status == 403:
                self._forbidden("get", kind)
            raise BindingRefusal(
                Reason.BINDING_UNAVAILABLE, f"could not look up {what} in the cluster: {exc}", identity
            ) from None
        except Exception:  # e.g. an unreadable bearer token file: still a 503, never a traceback
            self.lookups[kind.name, "error"] += 1
            log.exception("binding: looking up %s failed unexpectedly", what)
            raise BindingRefusal(
                Reason.BINDING_UNAVAILABLE, f"could not look up {what} in the cluster", identity
            ) from None
        reasons = _REASONS[kind.name]
        if found is None:
            self.lookups[kind.name, "not_found"] += 1
            self._absent[kind.name, ref.uid] = reasons.not_found
            raise BindingRefusal(reasons.not_found, f"{what} named by the token does not exist", identity)
        self.lookups[kind.name, "api"] += 1
        if found.uid != ref.uid:
            self._absent[kind.name, ref.uid] = reasons.uid_mismatch
            raise BindingRefusal(
                reasons.uid_mismatch, f"{what} has another uid than the token's: it was replaced", identity
            )
        self._refuse_if_deleted(kind, identity, ref, found.deleted_at, now)

    def _fetch(self, kind: Kind, namespace: str, name: str) -> asyncio.Future[ObjectMeta | None]:
        """One GET per object at a time, whoever asks."""
        key = (kind.name, namespace, name)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._get_and_keep(kind, namespace, name))
            self._inflight[key] = future

            def done(finished: asyncio.Future[ObjectMeta | None]) -> None:
                self._inflight.pop(key, None)
                if not finished.cancelled():
                    finished.exception()  # retrieved: every waiter may have gone

            future.add_done_callback(done)
        return future

    async def _get_and_keep(self, kind: Kind, namespace: str, name: str) -> ObjectMeta | None:
        """GETs an object and adds it to the store, but only into a store that a running watch
        keeps current and that no relist replaced meanwhile: a relist may have dropped this very
        object (its DELETED event never seen), and with no watch nothing would ever remove it."""
        store, reflector = self.stores[kind.name], self.reflectors[kind.name]
        generation, added = store.generation, store.gone.added
        # the labels the store holds now: a relist that changes them also moves the generation on
        found = await self.api.get(kind, namespace, name, store.shape)
        # ... and only while the store still remembers every uid that went meanwhile: a uid is
        # forgotten only after `size` newer ones, and this very object may be among those gone.
        if (
            found is not None
            and reflector.synced
            and store.generation == generation
            and store.gone.added - added < store.gone.size
        ):
            store.put_fetched(found)
        return found

    def _forbidden(self, verb: str, kind: Kind) -> None:
        if (verb, kind.resource) not in self._forbidden_said:
            self._forbidden_said.add((verb, kind.resource))
            log.error(
                "binding: the API server refused to %s %s (403 Forbidden). kubejoin's ServiceAccount needs "
                "get, list and watch on %s (ClusterRole in k8s/rbac.yaml); until then tokens are checked by GET "
                "where allowed and refused with binding_unavailable where not",
                verb,
                kind.resource,
                kind.resource,
            )

    # -- labels for allow rules ---------------------------------------------------------------
    def _watch_kind(self, kind: Kind) -> None:
        store = Store(shape=shape_for(self._keys(kind)), by_name=kind is NAMESPACE)
        self.stores[kind.name] = store
        self.reflectors[kind.name] = Reflector(
            self.api,
            kind,
            store,
            on_forbidden=self._forbidden,
            backoff=self._backoff,
            watch_seconds=self._watch_seconds,
            idle_timeout=self._idle_timeout,
        )

    def _keys(self, kind: Kind, wanted: WantedKeys | None = None) -> LabelKeys:
        wanted = self._wanted if wanted is None else wanted
        if kind is POD:
            return wanted.pod
        if kind is NODE:
            return wanted.node
        if kind is NAMESPACE:
            return wanted.namespace
        return frozenset()  # service accounts: no rule reads their labels

    @property
    def wanted(self) -> WantedKeys:
        return self._wanted

    def want(self, wanted: WantedKeys) -> None:
        """The label keys the allow rules now read (a tokens file reloaded). A kind whose keys
        grew beyond what its store holds relists with the new keys, its store answering uid
        questions meanwhile (objects() for that kind refuses until the list lands); namespaces
        start being watched once a rule reads them. Keys that went stay kept until the kind's
        next relist; a namespace watch, once started, runs until close (its metrics series
        would otherwise stay behind at their last value)."""
        if wanted == self._wanted:
            return
        self._wanted = wanted
        if wanted.namespace and NAMESPACE.name not in self.reflectors:
            self._watch_kind(NAMESPACE)
            if self._started:
                self._run(NAMESPACE.name)
        for name, reflector in self.reflectors.items():
            keys, shape = self._keys(reflector.kind), reflector.shape
            if covered(shape, keys):
                if (shape.wanted if shape is not None else frozenset()) != keys:
                    # fewer keys: the next relist (after a 410, say) keeps only these
                    reflector.shape = shape_for(keys)
                continue
            reflector.shape = shape_for(keys)
            if name in self._tasks:
                log.info("binding: allow rules read new %s label keys; relisting %s", name, reflector.kind.resource)
                reflector.synced = False  # no watch runs until the list lands: deletions wait for it
                self._run(name)
            else:  # never listed: nothing held to keep answering from
                reflector.store.shape = reflector.shape

    def objects(
        self, identity: Identity, kinds: frozenset[LabelKind], keys: WantedKeys | None = None
    ) -> tuple[ObjectView | None, ObjectView | None, ObjectView | None]:
        """The token's pod, namespace and node as the cache holds them, with the label keys the
        allow rules read; only the kinds asked are looked up, the others None, and so is an
        object the cache does not hold (a node when the token names none). From memory only,
        never a request. Raises BindingRefusal(binding_unavailable) when the cache cannot answer
        truthfully: that kind's labels still loading after want() grew them, the cache not
        keeping a key of `keys` (the keys of the rules being judged, which a reload since they
        were read may have dropped), its watch not synced and the object not held, or the kind
        not watched at all."""
        pod = self._view(POD, identity, identity.pod, keys) if "pod" in kinds else None
        namespace = self._namespace(identity, keys) if "namespace" in kinds else None
        node = None
        if "node" in kinds and identity.node is not None:
            node = self._view(NODE, identity, identity.node, keys)
        return pod, namespace, node

    def _view(self, kind: Kind, identity: Identity, ref: ObjectRef, keys: WantedKeys | None) -> ObjectView | None:
        store = self._loaded(kind, identity, keys)
        if ref.key in store.live or ref.key in store.terminating:
            return ObjectView(ref.name, ref.uid, store.labels_of(ref.key))
        self._refuse_unsynced(kind, identity, ref.name)
        return None

    def _namespace(self, identity: Identity, keys: WantedKeys | None) -> ObjectView | None:
        store = self._loaded(NAMESPACE, identity, keys)
        held = store.named.get(identity.namespace) if store.named is not None else None
        if held is None:
            self._refuse_unsynced(NAMESPACE, identity, identity.namespace)
            self.lookups[NAMESPACE.name, "not_found"] += 1
            return None
        self.lookups[NAMESPACE.name, "cache"] += 1
        uid, packed = held
        return ObjectView(identity.namespace, uid, store.shape.view(packed) if store.shape is not None else {})

    def _loaded(self, kind: Kind, identity: Identity, keys: WantedKeys | None) -> Store:
        """The kind's store, if it holds the label keys the rules read."""
        store = self.stores.get(kind.name)
        if store is None:
            why = "binding.nodes is false" if kind is NODE else "no allow rule reads namespace labels"
            raise BindingRefusal(
                Reason.BINDING_UNAVAILABLE,
                f"{kind.name} labels are not known: {kind.resource} are not watched ({why})",
                identity,
            )
        if not covered(store.shape, self._keys(kind)):
            raise BindingRefusal(
                Reason.BINDING_UNAVAILABLE,
                f"{kind.name} labels are being loaded: the allow rules now read label keys the cache did not keep; "
                "retry shortly",
                identity,
            )
        if keys is not None and not covered(store.shape, self._keys(kind, keys)):
            raise BindingRefusal(
                Reason.BINDING_UNAVAILABLE,
                f"the rules read {kind.name} label keys the cache does not keep (the tokens were reloaded "
                "meanwhile); retry",
                identity,
            )
        return store

    def _refuse_unsynced(self, kind: Kind, identity: Identity, name: str) -> None:
        if not self.reflectors[kind.name].synced:
            what = _describe(kind, identity.namespace, name)
            raise BindingRefusal(
                Reason.BINDING_UNAVAILABLE,
                f"{what} is not in the cache, and its watch is not synced: whether it exists is not known",
                identity,
            )

    # -- running ----------------------------------------------------------------------------
    def start(self) -> None:
        """Starts listing and watching (in the running event loop)."""
        if not self._started:
            self._started = True
            for name in self.reflectors:
                self._run(name)

    def _run(self, name: str) -> None:
        """(Re)starts one kind's reflector: a list, then its watch. A run cancelled here is
        waited for at close()."""
        running = self._tasks.pop(name, None)
        if running is not None and not running.done():
            running.cancel()
            self._retired.add(running)
            running.add_done_callback(self._retired.discard)
        self._tasks[name] = asyncio.ensure_future(self.reflectors[name].run())

    async def wait_synced(self) -> None:
        """Returns once every kind has been listed (for the demo, tests and benchmarks)."""
        for reflector in self.reflectors.values():
            await reflector.synced_event.wait()

    @property
    def synced(self) -> bool:
        return all(reflector.synced for reflector in self.reflectors.values())

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._retired]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = {}
        self._started = False
        await self.api.close()

    def stats(self) -> BindingStats:
        lookups = Counter(self.lookups)
        for kind in (SERVICE_ACCOUNT, POD):
            lookups[kind.name, "cache"] += self.fast
        lookups[NODE.name, "cache"] += self.fast_nodes
        return BindingStats(
            objects={name: store.count for name, store in self.stores.items()},
            synced={name: reflector.synced for name, reflector in self.reflectors.items()},
            lookups={(name, result): lookups[name, result] for name in self.reflectors for result in LOOKUP_RESULTS},
            restarts={name: reflector.restarts for name, reflector in self.reflectors.items()},
        )


def _describe(kind: Kind, namespace: str, name: str) -> str:
    label = "service account" if kind is SERVICE_ACCOUNT else kind.name
    return f"{label} {namespace}/{name}" if kind.namespaced else f"{label} {name}"
