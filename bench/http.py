#!/usr/bin/env python3
"""HTTP throughput of POST /v1/join against a minimal aiohttp endpoint, driven by wrk.

In one run, with the same load (wrk, one thread, the same connections, the same duration) and
the same server settings, it measures:
  minimal           bench/minimal_server.py: parse the JSON body, answer JSON (the baseline)
  join, valid       kubejoin serve, unique valid RS256 tokens (verification and a certificate)
  join, bad sig     kubejoin serve, a flood of tokens whose signature does not verify
  join, malformed   kubejoin serve, a flood of tokens that are not JWTs
  join, unknown kid kubejoin serve, a flood of tokens naming keys the issuer does not have
  join, no cert     kubejoin serve, unique valid tokens asking for a role the join token does not
                    grant: everything a join does but the public key and the certificate
  review, valid     POST /apis/authentication.k8s.io/v1/tokenreviews, unique valid tokens
  review, bad sig   the same, a flood of tokens whose signature does not verify
  join, valid, N workers  the valid case again with `kubejoin serve --workers N` (--workers 2)
and prints requests/s, latency percentiles, each ratio to the minimal endpoint, the N-worker
valid case's ratio to the one-process one, a review's ratio to a join minus the certificate, and
the log bytes written per request. Cases compared with each other run back to back.

    python bench/http.py [--duration 5] [--connections 32] [--tokens 30000] [--workers 2] [--uvloop] [--json]
                         [--only CASES]

--uvloop runs both servers on uvloop's event loop (pip install uvloop), to see whether it pays.

Needs wrk (apt-get install wrk). Everything listens on 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file's name shadows the standard library's http package when run as a script: take its
# directory off the import path before anything imports http.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from auth.devtools.issuer import IssuerKey, LocalIssuer, sign_token
from auth.devtools.loadtest import join_token_document, mint_tokens, public_keys

AUDIENCE = "example.teleport.sh"
REVIEW_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # token_review.audiences: not the join audience
ISSUER = "https://kubernetes.default.svc.cluster.local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def issuer_for(work: Path, token_name: str) -> tuple[IssuerKey, LocalIssuer]:
    """A fresh RS256 issuer, and a tokens.yaml in `work` with one join token (`token_name`) that
    trusts its keys and admits the service accounts mint_tokens makes."""
    key = IssuerKey.generate()
    issuer = LocalIssuer(ISSUER, [key])
    (work / "tokens.yaml").write_text(json.dumps(join_token_document(token_name, jwks=issuer.jwks_document().decode())))
    return key, issuer


def write_bodies(path: Path, tokens: list[str], role: str = "App") -> Path:
    keys = public_keys(16)
    with path.open("w") as handle:
        for i, token in enumerate(tokens):
            handle.write(
                json.dumps({"token_name": "bench", "id_token": token, "role": role, "public_key": keys[i % len(keys)]})
                + "\n"
            )
    return path


def write_reviews(path: Path, tokens: list[str]) -> Path:
    with path.open("w") as handle:
        for token in tokens:
            # the tokens are minted for joins: a review names their audience (token_review.audiences may not)
            spec = {"token": token, "audiences": [AUDIENCE]}
            review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
            handle.write(json.dumps(review) + "\n")
    return path


JOIN_PATH = "/v1/join"
REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
# (bodies, name, path); cases compared with each other run back to back: the machine's load drifts
CASES = (
    ("valid", "join, unique valid tokens", JOIN_PATH),
    ("no_certificate", "join minus the certificate", JOIN_PATH),
    ("review_valid", "review, unique valid tokens", REVIEW_PATH),
    ("bad_signature", "join, bad signature flood", JOIN_PATH),
    ("review_bad_signature", "review, bad signature flood", REVIEW_PATH),
    ("malformed", "join, malformed flood", JOIN_PATH),
    ("unknown_kid", "join, unknown kid flood", JOIN_PATH),
)


def run_wrk(port: int, bodies: Path, args: argparse.Namespace, path: str = JOIN_PATH) -> dict[str, Any]:
    command = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "-s",
        str(ROOT / "bench" / "post.lua"),
        f"http://127.0.0.1:{port}{path}",
        "--",
        str(bodies),
    ]
    output = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60, check=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(exposition: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(prefix))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=30000, help="unique valid tokens (more than are sent)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the extra valid case; 0: skip it")
    parser.add_argument("--uvloop", action="store_true", help="run both servers on uvloop")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--only", help=f"comma-separated cases besides the minimal one: {', '.join(c[0] for c in CASES)}"
    )
    args = parser.parse_args()
    # Both servers start through the same launcher, which installs uvloop first when asked.
    launcher = [
        sys.executable,
        "-P",
        "-c",
        "import sys, runpy; "
        + ("import uvloop; uvloop.install(); " if args.uvloop else "")
        + "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__') "
        "if sys.argv[0].endswith('.py') else runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)",
    ]
    if shutil.which("wrk") is None:
        print("bench/http.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="kubejoin-bench-") as scratch:
        work = Path(scratch)
        key, issuer = issuer_for(work, "bench")
        print(f"minting {args.tokens} unique RS256 tokens...", file=sys.stderr)
        valid = mint_tokens(key.private_pem(), ISSUER, AUDIENCE, "loadtest", args.tokens, args.tokens, lambda _: None)
        stranger = IssuerKey.generate("P-256")
        unknown = [
            sign_token(
                stranger,
                {"alg": "ES256", "kid": secrets.token_urlsafe(32)},
                issuer.claims("loadtest", "agent-1", audiences=[AUDIENCE]),
            )
            for _ in range(2000)
        ]
        bodies = {
            "valid": write_bodies(work / "valid.jsonl", valid),
            "bad_signature": write_bodies(work / "bad.jsonl", [t[:-8] + "AAAAAAAA" for t in valid[:2000]]),
            "malformed": write_bodies(
                work / "malformed.jsonl", [f"not.a.{secrets.token_urlsafe(600)}" for _ in range(2000)]
            ),
            "unknown_kid": write_bodies(work / "unknown.jsonl", unknown),
            "no_certificate": write_bodies(work / "no-cert.jsonl", valid, role="Db"),
            "review_valid": write_reviews(work / "review-valid.jsonl", valid),
            "review_bad_signature": write_reviews(
                work / "review-bad.jsonl", [t[:-8] + "AAAAAAAA" for t in valid[:2000]]
            ),
        }
        results: list[dict[str, Any]] = []

        port = free_port()
        process = subprocess.Popen(
            [*launcher, str(ROOT / "bench" / "minimal_server.py"), f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(port, process)
        try:
            results.append({"case": "minimal aiohttp endpoint", **run_wrk(port, bodies["valid"], args)})
        finally:
            process.terminate()
            process.wait(30)

        review = {
            "source": {"type": "static_jwks", "static_jwks": {"jwks": issuer.jwks_document().decode()}},
            "audiences": [REVIEW_AUDIENCE],
        }
        cases = [(case, name, path, 1) for case, name, path in CASES if not args.only or case in args.only.split(",")]
        if args.workers > 1 and not args.only:
            cases.append(("valid", f"join, valid, {args.workers} workers", JOIN_PATH, args.workers))
        for case, name, path, workers in cases:
            port = free_port()
            # every kubejoin case runs with the same config, the TokenReview endpoint included
            (work / "config.yaml").write_text(
                f"cluster_name: {AUDIENCE}\nlisten: 127.0.0.1:{port}\ntokens_file: tokens.yaml\n"
                f"token_review: {json.dumps(review)}\n"
            )
            command = [*launcher, "auth", "serve", "--config", "config.yaml", "--log-level", "WARNING"]
            if workers > 1:
                command += ["--workers", str(workers)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            log = work / "join.log"
            with log.open("wb") as stdout:
                process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL, cwd=work, env=env)
            try:
                wait_ready(f"http://127.0.0.1:{port}/readyz", process)
                row = {"case": name, **run_wrk(port, bodies[case], args, path)}
                exposition = scrape(port)
                row["certificates"] = int(metric(exposition, "kubejoin_certificates_issued_total{"))
                row["cache_hits"] = int(
                    metric(exposition, 'kubejoin_verified_token_cache_requests_total{result="hit"}')
                )
                row["reviews_ok"] = int(metric(exposition, 'kubejoin_token_reviews_total{reason="ok"'))
            finally:
                process.terminate()
                process.wait(60)
            row["log_bytes_per_request"] = round(log.stat().st_size / max(1, row["requests"]), 1)
            results.append(row)

    baseline = results[0]["rps"]
    for row in results:
        row["ratio_to_minimal"] = round(row["rps"] / baseline, 3)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    loop = "uvloop" if args.uvloop else "asyncio's default loop"
    print(
        f"wrk -t1 -c{args.connections} -d{args.duration}s, one server process each on {loop}, "
        f"Python {sys.version.split()[0]}"
    )
    print(
        f"{'case':30} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'x minimal':>9} "
        f"{'log B/req':>9}"
    )
    for row in results:
        print(
            f"{row['case']:30} {row['rps']:9.0f} {row['p50_ms']:8.2f} {row['p90_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{row['non_2xx']:8d} {row['ratio_to_minimal']:9.2f} {row.get('log_bytes_per_request', 0):9.1f}"
        )
    by_case = {row["case"]: row for row in results}
    valid_row = by_case.get("join, unique valid tokens")
    workers_row = next((r for r in results if r["case"].endswith("workers")), None)
    if workers_row is not None and valid_row is not None:
        print(f"{workers_row['case']}: {workers_row['rps'] / valid_row['rps']:.2f} x one process")
    if valid_row is not None:
        print(
            f"valid joins: {valid_row['certificates']} certificates issued, {valid_row['cache_hits']} cache hits "
            f"({len(valid)} unique tokens)"
        )
    for row in results:
        if ("valid tokens" in row["case"] or "certificate" in row["case"]) and row.get("cache_hits"):
            print(f"WARNING: {row['case']}: {row['cache_hits']} cache hits; raise --tokens to keep them unique")
    if "review, unique valid tokens" in by_case and "join minus the certificate" in by_case:
        review_row, bare_join = by_case["review, unique valid tokens"], by_case["join minus the certificate"]
        print(
            f"valid reviews: {review_row['reviews_ok']} authenticated, {review_row['cache_hits']} cache hits; "
            f"review / join minus the certificate: {review_row['rps'] / bare_join['rps']:.2f} (req/s ratio)"
        )
    return 0


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError("minimal server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("minimal server did not listen")


if __name__ == "__main__":
    sys.exit(main())
