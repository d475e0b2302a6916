#!/usr/bin/env python3
"""What an allow rule costs a join (issue 19), as the join service runs it: allow.decide() with
the binding's objects() on a real watch-cache store, and the claims decoded from a real token
(verifier.jose.verified_claims) only when an expression runs. Cases, one token each:

  account only        `service_account: ns:name` (every join before issue 19)
  pod label           the same and `pod_labels: {tier: prod}`
  labels, 3 kinds     pod, namespace and node labels
  expression          the contract's example over claims and namespace labels (its claims, iss and
                      sub, come from the verified identity)
  expression, all claims  the same reading kubernetes.io too: the payload is decoded again

Each figure: µs per decide(), median of 5 batches; the table gives the median of --runs runs, and
each case's excess over "account only" (the goal: an expression adds at most 10 µs to a join).

    python bench/rules.py [--calls 20000] [--runs 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import statistics
from typing import Any

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.allow import claims_reader, decide
from auth.service.tokens import parse_allow_rules
from bench.cel import timed
from verifier import Identity, StaticKeySource, Verifier, parse_jwks
from verifier.k8s.api import NAMESPACE, NODE, POD, ObjectMeta
from verifier.k8s.binding import LiveBinding
from verifier.labels import WantedKeys

NS, ACCOUNT, POD_NAME, NODE_NAME = "payments", "agent", "agent-7c9d8", "node-a"
EXPRESSION = 'claims.sub.endsWith(":agent") && namespaceObject.labels["team"] == "payments"'
CASES: dict[str, dict[str, Any]] = {
    "account only": {},
    "pod label": {"pod_labels": {"tier": "prod"}},
    "labels, 3 kinds": {
        "pod_labels": {"tier": "prod"},
        "namespace_labels": {"team": "payments"},
        "node_labels": {"node-restriction.kubernetes.io/pool": "agents"},
    },
    "expression": {"expression": EXPRESSION},
    "expression, all claims": {"expression": EXPRESSION + ' && claims["kubernetes.io"].namespace == "payments"'},
}


def setup() -> tuple[str, Identity, LiveBinding]:
    """A real token, its identity as the verifier gives it, and a binding whose stores hold its
    objects with their labels, as a synced watch leaves them."""
    issuer = LocalIssuer("https://kubernetes.default.svc", [IssuerKey.generate("P-256")])
    token = issuer.mint(NS, ACCOUNT, pod=POD_NAME, node=NODE_NAME, audiences=["kubejoin"])
    source = StaticKeySource(parse_jwks(issuer.jwks_document()), label="bench", issuer=issuer.issuer)
    identity = asyncio.run(Verifier(source, ["kubejoin"]).verify(token))
    assert identity.node is not None
    wanted = WantedKeys(
        pod=frozenset({"tier"}),
        namespace=frozenset({"team"}),
        node=frozenset({"node-restriction.kubernetes.io/pool"}),
    )
    binding = LiveBinding(None, leeway=0, wanted=wanted)  # type: ignore[arg-type]  # no API: memory only
    objects = (
        (POD, NS, identity.pod.name, identity.pod.uid, {"tier": "prod", "app": "agent"}),
        (NAMESPACE, "", NS, "namespace-uid", {"team": "payments"}),
        (NODE, "", identity.node.name, identity.node.uid, {"node-restriction.kubernetes.io/pool": "agents"}),
    )
    for kind, namespace, name, uid, values in objects:
        store = binding.stores[kind.name]
        assert store.shape is not None
        store.put(ObjectMeta(namespace, name, uid, None, store.shape.pack(values)))
        binding.reflectors[kind.name].synced = True
    return token, identity, binding


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    token, identity, binding = setup()
    results: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):
        for name, conditions in CASES.items():
            rules = parse_allow_rules([{"service_account": f"{NS}:{ACCOUNT}", **conditions}], "bench")

            def run(rules: Any = rules) -> object:
                verdict = decide(
                    rules,
                    identity.namespace,
                    identity.service_account.name,
                    claims=claims_reader(rules, identity, token),
                    objects=lambda kinds, keys: binding.objects(identity, kinds, keys),
                )
                assert verdict is None, verdict  # every case allows: the path of a successful join
                return verdict

            results[name].append(timed(run, args.calls))
    base = statistics.median(results["account only"])
    print(f"decide() per join, µs: median of {args.runs} runs, each a median of 5 batches of {args.calls}")
    print("| rule | µs/join | runs | added to a join |")
    print("|---|---:|---|---:|")
    for name, runs in results.items():
        median = statistics.median(runs)
        print(f"| {name} | {median:.2f} | {' '.join(f'{r:.2f}' for r in runs)} | {median - base:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
