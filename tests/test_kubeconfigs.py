"""The files a registered cluster's kubeconfig names (auth/service/kubeconfigs.py): those that
kubernetes_asyncio reads for the current context, and no others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import pytest

from auth.service.kubeconfigs import NamedFile, named_files

HTTPS: Final = {"server": "https://api.eu.example:6443"}
HTTP: Final = {"server": "http://api.eu.example"}


def kubeconfig(cluster: dict[str, Any], user: dict[str, Any], **top: Any) -> bytes:
    return json.dumps(
        {
            "clusters": [{"name": "eu", "cluster": cluster}],
            # admin is in no context: its token file is never read, so never named
            "users": [{"name": "reader", "user": user}, {"name": "admin", "user": {"tokenFile": "/admin-token"}}],
            "contexts": [{"name": "ctx", "context": {"cluster": "eu", "user": "reader"}}],
            "current-context": "ctx",
        }
        | top
    ).encode()


CA: Final = "clusters[eu].cluster.certificate-authority"
TOKEN: Final = "users[reader].user.tokenFile"
CASES: Final = [
    ("ca-relative", kubeconfig(HTTPS | {"certificate-authority": "ca.crt"}, {}), [(CA, "ca.crt")]),
    ("ca-absolute", kubeconfig(HTTPS | {"certificate-authority": "/etc/ca.crt"}, {}), [(CA, "/etc/ca.crt")]),
    ("ca-inline-wins", kubeconfig(HTTPS | {"certificate-authority": "ca", "certificate-authority-data": "x"}, {}), []),
    (
        "client-certificate",
        kubeconfig(HTTPS, {"client-certificate": "c.crt", "client-key": "c.key"}),
        [("users[reader].user.client-certificate", "c.crt"), ("users[reader].user.client-key", "c.key")],
    ),
    ("token-file", kubeconfig(HTTPS, {"tokenFile": "token"}), [(TOKEN, "token")]),
    ("token-inline-wins", kubeconfig(HTTPS, {"tokenFile": "token", "token": "t"}), []),
    # plain http: the client reads no TLS files, but still the token file
    ("http-no-tls", kubeconfig(HTTP | {"certificate-authority": "c"}, {"tokenFile": "t"}), [(TOKEN, "t")]),
    ("no-current-context", kubeconfig(HTTPS | {"certificate-authority": "ca"}, {}, **{"current-context": "x"}), []),
    ("not-yaml", b"{[", []),
    ("not-a-mapping", b"kubeconfig one", []),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_named_files_are_the_current_contexts(tmp_path: Path, data: bytes, expected: list[tuple[str, str]]) -> None:
    wanted = [NamedFile(key, str(tmp_path / name)) for key, name in expected]  # relative to the kubeconfig
    assert named_files(str(tmp_path / "eu.kubeconfig"), data) == wanted
