"""`kubejoin demo`: the whole story in one process on loopback, in a few seconds.

A local cluster API server (HTTPS, its own CA, bearer token required, as kube-apiserver does: the
issuer's keys, and pods, service accounts and nodes to watch), the join service with a fresh CA,
the seed guide's join token and live binding, an allowed pod that joins and the certificate it
gets, a pod of another service account that is refused, a label rule that refuses a canary pod
until it is labelled as `kubectl label` does it, the allowed pod deleted and its token refused at
once (no TokenReview), TokenReviews answered offline as kube-apiserver would answer them (the
deleted pod's token among them), a second cluster registered at run time whose pod joins and,
once deleted, is refused from its watch cache, and the metrics.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..agent.client import JoinRefused, join_once
from ..service.config import load_config
from ..service.server import SERVICE, create_app
from .devtls import LoopbackTLS, make_loopback_tls
from .issuer import IssuerKey, LocalIssuer
from .kubeapi import FakeKubeAPI, write_kubeconfig

CLUSTER_NAME = "example.teleport.sh"
TOKEN_YAML = """\
kind: token
version: v2
metadata:
  name: kubernetes-token
  expires: "2050-01-01T00:00:00Z"
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    type: in_cluster
    allow:
      - service_account: "teleport-agent:teleport-app-service"
---
kind: token
version: v2
metadata:
  name: eu-west-1-token
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    cluster: eu-west-1   # a registered cluster: its keys and its live binding
    allow:
      - service_account: "teleport-agent:teleport-app-service"
"""
LABEL_TOKEN_YAML = """\
kind: token
version: v2
metadata:
  name: prod-pods-token
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    type: in_cluster
    allow:
      - service_account: "teleport-agent:teleport-app-service"
        pod_labels: {tier: prod}   # judged from the watch cache: no request per join
        expression: 'claims.sub.startsWith("system:serviceaccount:teleport-agent:")'
"""
REMOTE_ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/DEMO"


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _start(app: web.Application, **site: Any) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = _loopback_socket()
    await web.SockSite(runner, sock, **site).start()
    host, port = sock.getsockname()[:2]
    return runner, f"{'https' if site.get('ssl_context') else 'http'}://{host}:{port}"


_EKU_NAMES = {ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth", ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth"}


REVIEW_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


async def _review(reviews: list[tuple[str, str, str]], kubejoin: str, indent: Callable[[str], None]) -> None:
    """Posts TokenReviews (what, token, audience) as Vault's Kubernetes auth would."""
    indent(f"POST {kubejoin}{REVIEW_PATH}")
    async with aiohttp.ClientSession() as session:
        for what, token, audience in reviews:
            spec = {"token": token, "audiences": [audience]}
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
            async with session.post(kubejoin + REVIEW_PATH, json=body) as response:
                answer = await response.json()
            status = answer["status"]
            indent(f"{what}: HTTP {response.status}, authenticated: {str(status['authenticated']).lower()}")
            if status["authenticated"]:
                user = status["user"]
                indent(f"  username {user['username']}, groups {', '.join(user['groups'])}")
                pod = user["extra"]["authentication.kubernetes.io/pod-name"][0]
                indent(f"  pod {pod}, audiences {status['audiences']}")
            else:
                indent(f"  error: {status['error']}")


def _describe_certificate(pem: str) -> list[str]:
    certificate = x509.load_pem_x509_certificate(pem.encode())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return [
        f"subject:   {certificate.subject.rfc4514_string()}",
        f"issuer:    {certificate.issuer.rfc4514_string()}",
        f"SAN URI:   {', '.join(san.get_values_for_type(x509.UniformResourceIdentifier))}",
        f"key usage: {', '.join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)}",
        f"valid:     {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        f" to {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
    ]


def _asked(api: FakeKubeAPI) -> int:
    """The requests a join could have caused (GETs, lists, TokenReviews). Watches are left out:
    on a loaded machine a watch may end and be re-opened while a join is refused, which is the
    cache staying current, not a request of the join's."""
    return sum(count for (verb, _), count in api.requests.items() if verb != "watch")


async def _label_rule(
    app: web.Application,
    kubejoin: str,
    cluster: FakeKubeAPI,
    pod: str,
    api_server: str,
    tls: LoopbackTLS,
    work: Path,
    *,
    say: Callable[[str], None],
    indent: Callable[[str], None],
) -> int:
    """prod-pods-token's label rule refuses a canary pod and says why; the pod is labelled as
    `kubectl label` does it (a PATCH to the API server); the watch brings the label and the same
    token joins, with no request to the API server for either join."""
    say(f"A label rule: prod-pods-token wants tier=prod; teleport-agent/{pod} is tier=canary")
    token = cluster.mint("teleport-agent", pod, audiences=[CLUSTER_NAME], lifetime=600)
    before = _asked(cluster)

    async def attempt(out: str) -> bool:
        try:
            joined = await join_once(
                kubejoin, token_name="prod-pods-token", sa_token=token, role="App", out_dir=str(work / out)
            )
        except JoinRefused as refused:
            indent(f"HTTP {refused.status} {refused.code}: {refused.message}")
            return False
        indent(f"joined as {joined.response['identity']['username']}, host_id {joined.host_id}")
        return True

    if await attempt("canary-refused"):
        return 1
    indent(f"kubectl label pod -n teleport-agent {pod} tier=prod --overwrite")
    binding = app[SERVICE].binding
    assert binding is not None
    watch = binding.reflectors["pod"]
    watch.changed.clear()  # set again by the next event: the label's MODIFIED
    path = f"/api/v1/namespaces/teleport-agent/pods/{pod}"
    patch = {"metadata": {"labels": {"tier": "prod"}}}
    headers = {"Authorization": f"Bearer {(work / 'sa-token').read_text()}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.patch(
            api_server + path,
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
            ssl=ssl.create_default_context(cafile=str(tls.ca_file)),
        ) as response,
    ):
        indent(f"PATCH {path}: HTTP {response.status}")
    async with asyncio.timeout(10):
        await watch.changed.wait()
    if not await attempt("canary-joined"):
        return 1
    indent(f"requests to the API server for both joins (the PATCH aside): {_asked(cluster) - before - 1}")
    return 0


async def _second_cluster(
    app: web.Application,
    kubejoin: str,
    work: Path,
    tls: LoopbackTLS,
    runners: list[web.AppRunner],
    *,
    say: Callable[[str], None],
    indent: Callable[[str], None],
) -> int:
    """Registers a second cluster at run time (a file in clusters_dir, then a reload as at SIGHUP);
    its pod joins; deleted, it is refused from that cluster's watch cache."""
    say("A second cluster is registered at run time: a file in clusters_dir, then SIGHUP")
    issuer = LocalIssuer(REMOTE_ISSUER, [IssuerKey.generate("P-256")])
    own_token = issuer.mint("kube-system", "kubejoin-reader", audiences=["https://kubernetes.default.svc"])
    remote = FakeKubeAPI(issuer, token=own_token)
    pod_name = "teleport-app-service-58f7c-eu1"
    remote.add_pod("teleport-agent", pod_name, service_account="teleport-app-service", node="ip-10-0-1-7")
    runner, api_server = await _start(remote.app(), ssl_context=tls.server_context())
    runners.insert(0, runner)  # stopped after kubejoin, whose watches it serves
    write_kubeconfig(work / "eu-west-1.kubeconfig", api_server, tls.ca_file, own_token)
    entry = (
        f"name: eu-west-1\nissuer: {REMOTE_ISSUER}\nkeys: {{type: api_server}}\n"
        "kubeconfig: ../eu-west-1.kubeconfig\nbinding: {mode: watch}\n"
    )
    (work / "clusters.d" / "eu-west-1.yaml").write_text(entry)
    indent(f"clusters.d/eu-west-1.yaml:\n{entry}")
    service = app[SERVICE]
    await service.reload()  # what SIGHUP does (the file is also picked up within a second)
    registered = service.clusters.get("eu-west-1")
    assert registered is not None and registered.binding is not None
    async with asyncio.timeout(10):
        await registered.binding.wait_synced()
    indent(f"registered: {', '.join(sorted(service.clusters.clusters))}; API server {api_server}")
    token = remote.mint("teleport-agent", pod_name, audiences=[CLUSTER_NAME], lifetime=600)
    joined = await join_once(
        kubejoin, token_name="eu-west-1-token", sa_token=token, role="App", out_dir=str(work / "eu-agent")
    )
    indent(f"eu-west-1 pod {pod_name} joined as {joined.response['identity']['username']}")
    before = _asked(remote)
    remote.delete("pods", "teleport-agent", pod_name)
    watch = registered.binding.reflectors["pod"]
    async with asyncio.timeout(10):
        while registered.binding.stores["pod"].count:  # the DELETED event is on its way
            watch.changed.clear()
            if not registered.binding.stores["pod"].count:
                break
            await watch.changed.wait()
    try:
        await join_once(
            kubejoin, token_name="eu-west-1-token", sa_token=token, role="App", out_dir=str(work / "eu-again")
        )
        indent("unexpectedly joined")
        return 1
    except JoinRefused as refused:
        indent(f"deleted, then: HTTP {refused.status} {refused.code}: {refused.message}")
    indent(f"requests to eu-west-1's API server for this refusal: {_asked(remote) - before}")
    return 0


async def run_demo(say: Callable[[str], None] = print) -> int:
    step = 0

    def heading(title: str) -> None:
        nonlocal step
        step += 1
        say(f"\n== {step}. {title}")

    def indent(text: str) -> None:
        say(textwrap.indent(text.rstrip("\n"), "   "))

    with tempfile.TemporaryDirectory(prefix="kubejoin-demo-") as scratch:
        work = Path(scratch)
        runners: list[web.AppRunner] = []
        try:
            (work / "clusters.d").mkdir()
            heading("The join tokens (Teleport's format, as in the seed guide, and one naming a cluster)")
            (work / "tokens.yaml").write_text(TOKEN_YAML + "---\n" + LABEL_TOKEN_YAML)
            indent(TOKEN_YAML + "---\n" + LABEL_TOKEN_YAML)

            heading("The cluster's API server (a local stand-in for kube-apiserver, HTTPS, bearer token required)")
            tls = make_loopback_tls(work)
            issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])
            own_token = issuer.mint("kubejoin", "kubejoin", audiences=["https://kubernetes.default.svc"])
            cluster = FakeKubeAPI(issuer, token=own_token)
            pod_name = "teleport-app-service-6d4b9c7f5-x2x9k"
            cluster.add_pod("teleport-agent", pod_name, service_account="teleport-app-service", node="node-1")
            cluster.add_pod("teleport-agent", "debug-shell", service_account="debug-shell", node="node-1")
            canary = "teleport-app-service-canary"
            cluster.add_pod(
                "teleport-agent",
                canary,
                service_account="teleport-app-service",
                node="node-1",
                labels={"tier": "canary"},
            )
            cluster.add_pod("payments", "api-7c9d8", service_account="api", node="node-1")
            (work / "sa-token").write_text(own_token)
            runner, api_server = await _start(cluster.app(), ssl_context=tls.server_context())
            runners.append(runner)
            indent(f"API server {api_server}, issuer {issuer.issuer}\nsigning key kid {issuer.signing_key.kid}")
            indent(
                f"pods: teleport-agent/{pod_name}, teleport-agent/debug-shell, teleport-agent/{canary} (tier=canary)"
            )

            heading("kubejoin starts: fresh CA, keys read offline, pods watched (binding.mode: watch)")
            document = {
                "cluster_name": CLUSTER_NAME,
                "listen": "127.0.0.1:0",
                "tokens_file": "tokens.yaml",
                "in_cluster": {
                    "api_server": api_server,
                    "ca_file": str(tls.ca_file),
                    "token_file": str(work / "sa-token"),
                },
                "binding": {"mode": "watch"},
                "token_review": {"source": {"type": "in_cluster"}, "audiences": [REVIEW_AUDIENCE]},
                "clusters_dir": "clusters.d",
            }
            # a file, as in production: clusters are re-read from it at SIGHUP
            (work / "kubejoin.yaml").write_text(json.dumps(document, indent=2))
            config = load_config(str(work / "kubejoin.yaml"))
            audit = io.StringIO()
            app = create_app(config, audit=audit)
            runner, kubejoin = await _start(app)
            runners.append(runner)
            binding = app[SERVICE].binding
            assert binding is not None
            async with asyncio.timeout(10):
                await binding.wait_synced()
            held = binding.stats().objects
            indent(f"join endpoint {kubejoin}/v1/join; CA written to {work.name}/ca.pem")
            indent(f"watching {held['pod']} pods, {held['serviceaccount']} service accounts, {held['node']} nodes")

            heading("An allowed pod joins: teleport-agent/teleport-app-service")
            pod_token = work / "allowed.jwt"
            pod_token.write_text(cluster.mint("teleport-agent", pod_name, audiences=[CLUSTER_NAME], lifetime=600))
            joined = await join_once(
                kubejoin,
                token_name="kubernetes-token",
                sa_token=pod_token.read_text(),
                role="App",
                out_dir=str(work / "agent"),
            )
            indent(f"joined as {joined.response['identity']['username']}, host_id {joined.host_id}")
            indent("\n".join(_describe_certificate(joined.response["certificate"])))
            key_mode = (work / "agent" / "key.pem").stat().st_mode & 0o777
            indent(f"files: agent/key.pem (mode {key_mode:o}), agent/cert.pem, agent/ca.pem")

            heading("A pod of another service account is refused: teleport-agent/debug-shell")
            try:
                await join_once(
                    kubejoin,
                    token_name="kubernetes-token",
                    role="App",
                    out_dir=str(work / "intruder"),
                    sa_token=cluster.mint("teleport-agent", "debug-shell", audiences=[CLUSTER_NAME]),
                )
                say("   unexpectedly joined")
                return 1
            except JoinRefused as refused:
                indent(f"HTTP {refused.status} {refused.code}: {refused.message}")

            if await _label_rule(app, kubejoin, cluster, canary, api_server, tls, work, say=heading, indent=indent):
                return 1

            heading("The allowed pod is deleted; its token (still unexpired) is refused at once")
            requests_before = _asked(cluster)
            pod_uid = cluster.uid("pods", "teleport-agent", pod_name)
            cluster.delete("pods", "teleport-agent", pod_name)
            watch = binding.reflectors["pod"]
            async with asyncio.timeout(10):
                while True:  # the DELETED event is on its way over the watch
                    watch.changed.clear()
                    if pod_uid not in binding.stores["pod"]:
                        break
                    await watch.changed.wait()
            indent(f"kubectl delete pod -n teleport-agent {pod_name}: the watch saw DELETED")
            try:
                await join_once(
                    kubejoin,
                    token_name="kubernetes-token",
                    sa_token=pod_token.read_text(),
                    role="App",
                    out_dir=str(work / "again"),
                )
                say("   unexpectedly joined")
                return 1
            except JoinRefused as refused:
                indent(f"HTTP {refused.status} {refused.code}: {refused.message}")
            asked = _asked(cluster) - requests_before
            indent(f"requests to the API server for this refusal: {asked} (no TokenReview, no GET)")

            heading("Another program reviews tokens here instead of at the API server (TokenReview)")
            reviews = [
                ("payments/api-7c9d8's token", cluster.mint("payments", "api-7c9d8", audiences=["vault"]), "vault"),
                ("the deleted pod's token", pod_token.read_text(), CLUSTER_NAME),
            ]
            await _review(reviews, kubejoin, indent)

            if await _second_cluster(app, kubejoin, work, tls, runners, say=heading, indent=indent) != 0:
                return 1

            heading("The log (one JSON line per join attempt and per review)")
            indent(audit.getvalue())

            heading("The metrics so far")
            async with aiohttp.ClientSession() as session, session.get(kubejoin + "/metrics") as response:
                exposition = await response.text()
            wanted = (
                "kubejoin_join_attempts_total{",
                "kubejoin_certificates_issued_total{",
                "kubejoin_jwks_fetches_total{",
                "kubejoin_jwks_keys{",
                "kubejoin_binding_objects{",
                "kubejoin_binding_lookups_total{",
                "kubejoin_token_reviews_total{",
            )
            indent("\n".join(line for line in exposition.splitlines() if line.startswith(wanted)))
            say("\nDone. In a cluster: see docs/kubernetes.md.")
            return 0
        finally:
            for each in reversed(runners):
                await each.cleanup()
