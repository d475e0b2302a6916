#!/usr/bin/env python3
"""Thundering herd: N distinct pods join over T seconds against a kubejoin that has just started
and has never fetched its issuer's keys.

Starts `kubejoin issuer serve` (the cluster's issuer, plain HTTP on loopback) and `kubejoin serve`
with an `oidc` join token for it, then at once `kubejoin loadtest` at N/T joins per second with N
distinct pods. Reports the load test's summary, the number of key set fetches kubejoin made
(kubejoin_jwks_fetches_total) and kubejoin's resident memory afterwards.

    python bench/herd.py [--pods 10000] [--seconds 10] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from auth.devtools.loadtest import join_token_document, mint_tokens

AUDIENCE = "example.teleport.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}")
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def sample(exposition: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(prefix))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="kubejoin serve --workers N")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kubejoin = [sys.executable, "-m", "auth"]
    with tempfile.TemporaryDirectory(prefix="kubejoin-herd-") as scratch:
        work = Path(scratch)
        issuer_port, port = free_port(), free_port()
        issuer_url = f"http://127.0.0.1:{issuer_port}"
        key = work / "issuer-key.pem"
        (work / "tokens.yaml").write_text(json.dumps(join_token_document("herd", oidc_issuer=issuer_url)))
        (work / "config.yaml").write_text(
            f"cluster_name: {AUDIENCE}\nlisten: 127.0.0.1:{port}\ntokens_file: tokens.yaml\n"
        )
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        issuer = subprocess.Popen(
            [
                *kubejoin,
                "issuer",
                "serve",
                "--key-file",
                str(key),
                "--issuer",
                issuer_url,
                "--listen",
                f"127.0.0.1:{issuer_port}",
            ],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server: subprocess.Popen[bytes] | None = None
        try:
            wait_for(issuer_url + "/.well-known/openid-configuration", issuer)
            # Mint first (RSA signing is slow), then start kubejoin cold and load it at once.
            tokens = mint_tokens(
                key.read_bytes(), issuer_url, AUDIENCE, "loadtest", args.pods, args.pods, lambda _: None
            )
            (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
            loadtest = [
                *kubejoin,
                "loadtest",
                "--server",
                f"http://127.0.0.1:{port}",
                "--token-name",
                "herd",
                "--tokens-file",
                str(work / "tokens.txt"),
                "--rate",
                str(args.pods / args.seconds),
                "--duration",
                f"{args.seconds}s",
                "--pods",
                str(args.pods),
                "--json",
            ]
            server = subprocess.Popen(
                [
                    *kubejoin,
                    "serve",
                    "--config",
                    "config.yaml",
                    "--log-level",
                    "WARNING",
                    "--workers",
                    str(args.workers),
                ],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(f"http://127.0.0.1:{port}/healthz", server)
            before = sample(get(f"http://127.0.0.1:{port}/metrics"), "kubejoin_jwks_fetches_total{")
            result = subprocess.run(
                loadtest,
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=args.seconds * 20 + 120,
                check=False,
            )
            summary: dict[str, Any] = json.loads(result.stdout)
            exposition = get(f"http://127.0.0.1:{port}/metrics")
            summary["jwks_fetches_before_load"] = before
            summary["jwks_fetches"] = sample(exposition, "kubejoin_jwks_fetches_total{")
            summary["kubejoin_rss_mb"] = round(sample(exposition, "process_resident_memory_bytes") / 1e6, 1)
            summary["certificates"] = sample(exposition, "kubejoin_certificates_issued_total{")
        finally:
            for process in (server, issuer):
                if process is not None:
                    process.terminate()
                    process.wait(30)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        latency = summary["latency_ms"]
        print(
            f"{args.pods} pods over {args.seconds:g} s against a cold kubejoin ({args.workers} workers): "
            f"{summary['requests']} joins, "
            f"{summary['achieved_rate']}/s; statuses {summary['by_status']}"
        )
        print("latency ms " + " ".join(f"{k} {v}" for k, v in latency.items()))
        print(
            f"key set fetches: {summary['jwks_fetches']:g} (before the load: {summary['jwks_fetches_before_load']:g}); "
            f"certificates {summary['certificates']:g}; kubejoin RSS {summary['kubejoin_rss_mb']} MB; "
            f"generator p99 lag {summary['generator_lag_ms_p99']} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
