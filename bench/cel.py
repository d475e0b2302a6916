"""Compare the CEL libraries on PyPI for allow-rule expressions (issue 19).

Run: `python bench/cel.py` after `pip install -e '.[bench]'`. Prints, per library and expression,
the median compile time, the median evaluation time per call and what a missing map key does (a
refusal, a crash or a wrong answer); then what kubejoin's judge() costs a join, on the chosen library.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

# The script's own directory must not shadow the `cel` package of common-expression-language.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

JOIN = 'claims.sub.endsWith(":agent") && namespaceObject.labels["team"] == "payments"'
LABEL = 'pod.labels["tier"] == "prod"'
ACTIVATION: dict[str, Any] = {
    "claims": {"sub": "system:serviceaccount:pay:agent", "aud": ["kubejoin"]},
    "namespaceObject": {"name": "pay", "uid": "u1", "labels": {"team": "payments"}},
    "pod": {"name": "p", "uid": "u2", "labels": {"tier": "prod"}},
}
MISSING: dict[str, Any] = {
    "claims": ACTIVATION["claims"],
    "namespaceObject": {"name": "pay", "uid": "u1", "labels": {}},
    "pod": {"name": "p", "uid": "u2", "labels": {}},
}

# A library is (compile(text) -> program, run(program, activation) -> result).
Library = tuple[Callable[[str], Any], Callable[[Any, dict[str, Any]], Any]]


def rust_cel() -> Library:
    import cel  # common-expression-language: the Rust `cel` crate

    return cel.compile, lambda program, data: program.execute(data)


def celpy_lib() -> Library:
    import celpy  # cel-python: pure Python on lark
    from celpy.adapter import json_to_cel

    env = celpy.Environment()

    def compile_(text: str) -> Any:
        return env.program(env.compile(text))

    def run(program: Any, data: dict[str, Any]) -> Any:
        return program.evaluate({k: json_to_cel(v) for k, v in data.items()})

    return compile_, run


def cpp_cel() -> Library:
    from cel_expr_python import cel  # cel-expr-python: Google's cel-cpp

    t = cel.Type
    obj = t.Map(t.STRING, t.DYN)
    env = cel.NewEnv(variables={"claims": obj, "namespaceObject": obj, "pod": obj, "node": obj})
    return env.compile, lambda program, data: program.eval(data=data).value()


LIBRARIES: dict[str, Callable[[], Library]] = {
    "common-expression-language": rust_cel,
    "cel-python": celpy_lib,
    "cel-expr-python": cpp_cel,
}


def timed(fn: Callable[[], object], calls: int) -> float:
    """Median over 5 batches of µs per call."""
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        batches.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(batches)


def missing_key(compile_: Callable[[str], Any], run: Callable[[Any, dict[str, Any]], Any]) -> str:
    try:
        return f"returns {run(compile_(LABEL), MISSING)!r}"[:60]
    except Exception as error:  # what each library raises is the measurement
        return f"raises {type(error).__name__}"


def kubejoin_rows(calls: int) -> None:
    """judge() as a join calls it: a real token's claims, objects from the cache (read-only labels)."""
    from types import MappingProxyType

    from auth.service.rules import ObjectView, RuleConditions, compile_expression, judge

    claims = {
        **ACTIVATION["claims"],
        **{"iss": "https://kubernetes.default.svc", "exp": 2, "iat": 1, "nbf": 1, "jti": "j"},
        "kubernetes.io": {
            "namespace": "pay",
            "node": {"name": "n", "uid": "u"},
            "pod": {"name": "p", "uid": "u"},
            "serviceaccount": {"name": "agent", "uid": "u"},
        },
    }
    pod = ObjectView("p", "u2", MappingProxyType({"tier": "prod"}))
    namespace = ObjectView("pay", "u1", MappingProxyType({"team": "payments"}))
    # The worst an accepted expression can do: its one comprehension over the largest list a
    # 16 KiB token can carry (audiences, which the workload chooses when it asks for the token).
    wide = {"aud": [f"a{n:04d}" for n in range(2700)], "sub": claims["sub"]}
    worst = 'claims.aud.exists(a, (a + claims.sub).contains("zz") || a.endsWith(claims.sub))'
    cases = [
        ("join", claims, RuleConditions(expression=compile_expression(JOIN)), calls),
        (
            "labels only",
            claims,
            RuleConditions(pod_labels={"tier": "prod"}, namespace_labels={"team": "payments"}),
            calls,
        ),
        ("worst accepted, 2,700 audiences", wide, RuleConditions(expression=compile_expression(worst)), 20),
    ]
    for label, payload, conditions, n in cases:
        us = timed(partial(judge, conditions, payload, pod, namespace, None), n)
        print(f"| kubejoin judge() | {label} | | {us:.2f} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print("| library | expression | compile µs | eval µs/call | missing key |")
    print("|---|---|---:|---:|---|")
    for name, load in LIBRARIES.items():
        compile_, run = load()
        for label, text in (("join", JOIN), ("label", LABEL)):
            program = compile_(text)
            assert run(program, ACTIVATION), name
            compile_us = timed(partial(compile_, text), max(args.calls // 20, 10))
            eval_us = timed(partial(run, program, ACTIVATION), args.calls)
            print(f"| {name} | {label} | {compile_us:.1f} | {eval_us:.2f} | {missing_key(compile_, run)} |")
    kubejoin_rows(args.calls)


if __name__ == "__main__":
    main()
