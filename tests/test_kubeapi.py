"""The fake API server earns trust: kubectl (a real client) lists and watches through it, and its
answers have the API server's shapes (metadata-only, 410 on a too-old watch, 401 without token)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from auth.devtools.kubeapi import write_kubeconfig
from tests.kube import BEARER, FakeCluster, start_cluster

assert shutil.which("kubectl"), "these tests need kubectl (installed on the development machines and CI)"


@pytest.fixture
async def cluster(tmp_path: Path, aiohttp_server: Callable[..., Any]) -> FakeCluster:
    cluster = await start_cluster(tmp_path, aiohttp_server)
    cluster.api.add_pod("default", "web-1", service_account="web")
    cluster.api.add_pod("kube-system", "coredns-1", service_account="coredns")
    write_kubeconfig(tmp_path / "kubeconfig", cluster.url, cluster.tls.ca_file, BEARER)
    return cluster


async def kubectl(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(tmp_path / "kubeconfig"), *args, stdout=-1, stderr=-1
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_kubectl_gets_pods(tmp_path: Path, cluster: FakeCluster) -> None:
    code, out, err = await kubectl(tmp_path, "get", "pods", "-A")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:2] == ["NAMESPACE", "NAME"]
    assert [row[:2] for row in rows[1:]] == [["default", "web-1"], ["kube-system", "coredns-1"]]
    code, out, err = await kubectl(tmp_path, "get", "pod", "web-1", "-n", "default", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["metadata"]["uid"] == cluster.api.uid("pods", "default", "web-1")


@pytest.mark.slow
async def test_kubectl_watches_pods(tmp_path: Path, cluster: FakeCluster) -> None:
    process = await asyncio.create_subprocess_exec(
        "kubectl",
        "--kubeconfig",
        str(tmp_path / "kubeconfig"),
        *("get", "pods", "-A", "--watch", "--output-watch-events"),
        stdout=-1,
        stderr=-1,
    )
    assert process.stdout is not None
    seen: list[list[str]] = []

    async def read_until(wanted: list[str]) -> None:
        assert process.stdout is not None
        while wanted not in [row[:3] for row in seen]:
            line = await process.stdout.readline()
            assert line, "kubectl ended"
            seen.append(line.decode().split())

    try:
        async with asyncio.timeout(30):
            await read_until(["ADDED", "kube-system", "coredns-1"])  # the list, as events
            cluster.api.add_pod("default", "web-2", service_account="web")
            await read_until(["ADDED", "default", "web-2"])
            cluster.api.delete("pods", "default", "web-1")
            await read_until(["DELETED", "default", "web-1"])
    finally:
        process.kill()
        await process.wait()
    assert seen[0][:3] == ["EVENT", "NAMESPACE", "NAME"]
    assert cluster.api.requests["watch", "pods"] == 1


async def test_shapes_the_api_server_answers(cluster: FakeCluster) -> None:
    headers = {"Authorization": f"Bearer {BEARER}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def get(path: str, accept: str = "application/json") -> tuple[int, Any]:
            ssl = __import__("ssl").create_default_context(cafile=str(cluster.tls.ca_file))
            async with session.get(cluster.url + path, headers={"Accept": accept}, ssl=ssl) as response:
                text = await response.text()
                return response.status, [
                    json.loads(line) for line in text.splitlines()
                ] if "watch" in path else json.loads(text)

        status, listed = await get(
            "/api/v1/pods?limit=1", "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        )
        assert (status, listed["kind"], len(listed["items"])) == (200, "PartialObjectMetadataList", 1)
        assert set(listed["items"][0]) == {"kind", "apiVersion", "metadata"}
        assert listed["metadata"]["continue"]
        status, full = await get("/api/v1/namespaces/default/pods")
        assert (status, full["kind"], full["items"][0]["spec"]["serviceAccountName"]) == (200, "PodList", "web")
        status, missing = await get("/api/v1/namespaces/default/pods/nope")
        assert (status, missing["kind"], missing["reason"]) == (404, "Status", "NotFound")
        cluster.api.compact()
        status, events = await get("/api/v1/pods?watch=1&resourceVersion=1&timeoutSeconds=1")
        assert status == 200 and events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
        async with session.get(cluster.url + "/api/v1/pods", headers={"Authorization": "Bearer wrong"}, ssl=False) as r:
            assert r.status == 401
