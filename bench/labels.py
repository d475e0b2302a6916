#!/usr/bin/env python3
"""Memory of pod labels in the live binding's real store (issue 19): 100,000 pods with 10 labels
each, listed in pages of 500 as PartialObjectMetadataList JSON, each page decoded as
KubeAPI.list_page decodes it (verifier.k8s.api.ObjectMeta.decode with the kind's LabelShape) and
folded into a Store snapshot, then swapped in (Store.replace), as a relist does. Three stores:
  no labels     no rule reads pod labels: uids only (what the binding held before issue 19)
  wanted keys   rules name 2 keys (tier, team; --wanted to choose others)
  every label   a rule reads pod labels as a whole (ALL_KEYS)
Bytes are tracemalloc's count of what the store holds once the pages are gone (the sharing table
and interned strings included); tracked objects are those the cyclic collector would walk. The
time is that of decoding and folding every page, without tracemalloc.

    python bench/labels.py [--pods 100000] [--wanted tier,team] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import gc
import json
import random
import time
import tracemalloc
import uuid
from typing import Final

from verifier.jose import load_strict_json
from verifier.k8s.api import LIST_PAGE, ObjectMeta
from verifier.k8s.watch import Store
from verifier.labels import ALL_KEYS, LabelKeys, shape_for

WANTED: Final = ("tier", "team")
# Ten labels of a typical workload: key -> number of distinct values in the cluster.
LABELS: Final = {
    "app.kubernetes.io/name": 50,
    "app.kubernetes.io/instance": 500,
    "app.kubernetes.io/version": 20,
    "app.kubernetes.io/component": 5,
    "app.kubernetes.io/part-of": 10,
    "app.kubernetes.io/managed-by": 3,
    "pod-template-hash": 5000,
    "security.istio.io/tlsMode": 2,
    "tier": 3,
    "team": 20,
}


def list_pages(pods: int, seed: int = 19) -> list[bytes]:
    """The pods as the API server's metadata-only list answers them, LIST_PAGE to a page."""
    chosen = random.Random(seed)
    pages = []
    for start in range(0, pods, LIST_PAGE):
        items = [
            {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {
                    "name": f"app-{index}",
                    "namespace": f"team-{index % 100}",
                    "uid": str(uuid.UUID(int=chosen.getrandbits(128), version=4)),
                    "resourceVersion": str(index + 1),
                    "creationTimestamp": "2026-12-05T10:00:00Z",
                    "labels": {
                        key: f"{key.rpartition('/')[2][:6]}-{chosen.randrange(n):05d}" for key, n in LABELS.items()
                    },
                },
            }
            for index in range(start, min(start + LIST_PAGE, pods))
        ]
        document = {"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "1"}, "items": items}
        pages.append(json.dumps(document).encode())
    return pages


def build(pages: list[bytes], keys: LabelKeys) -> Store:
    """A store filled as a relist fills it."""
    shape = shape_for(keys)
    store = Store(shape=shape)
    snapshot = store.snapshot(shape)
    for page in pages:
        document = load_strict_json(page)
        assert isinstance(document, dict)
        for item in document["items"]:
            snapshot.add(ObjectMeta.decode(item, shape))
    store.replace(snapshot)
    return store


def measure(pods: int, wanted: tuple[str, ...]) -> dict[str, dict[str, float]]:
    pages = list_pages(pods)
    variants: dict[str, LabelKeys] = {
        "no labels": frozenset(),
        "wanted keys": frozenset(wanted),
        "every label": ALL_KEYS,
    }
    report: dict[str, dict[str, float]] = {}
    for name, keys in variants.items():
        gc.collect()
        began = time.perf_counter()
        store = build(pages, keys)
        seconds = time.perf_counter() - began
        assert store.count == pods
        del store
        gc.collect()
        tracked_before = len(gc.get_objects())
        tracemalloc.start()
        store = build(pages, keys)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        tracked = len(gc.get_objects()) - tracked_before
        report[name] = {
            "mb": round(held / 1e6, 2),
            "labelled": len(store.labels),
            "tracked": tracked,
            "seconds": round(seconds, 3),
        }
        del store
    base = report["no labels"]
    for row in report.values():
        row["extra_mb"] = round(row["mb"] - base["mb"], 2)
        row["extra_bytes_per_pod"] = round((row["mb"] - base["mb"]) * 1e6 / pods, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--wanted", default=",".join(WANTED), help="the label keys rules name, comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wanted = tuple(args.wanted.split(","))
    report = measure(args.pods, wanted)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.pods:,} pods x {len(LABELS)} labels, rules naming {len(wanted)} keys ({', '.join(wanted)})")
    print(f"{'store':<13}{'MB':>8}{'extra MB':>10}{'extra B/pod':>13}{'labelled':>10}{'tracked':>9}{'fill s':>8}")
    for name, row in report.items():
        print(
            f"{name:<13}{row['mb']:>8.2f}{row['extra_mb']:>10.2f}{row['extra_bytes_per_pod']:>13.1f}"
            f"{row['labelled']:>10,.0f}{row['tracked']:>9,.0f}{row['seconds']:>8.2f}"
        )


if __name__ == "__main__":
    main()
