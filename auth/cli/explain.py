"""`kubejoin tokens explain TOKENS_FILE --sa-token FILE [--kubeconfig F] [--role R] [--json]`:
for one ServiceAccount token, which kubernetes join tokens accept it, with which roles, and why each
refusing rule refuses (the same lines a refused join gets). Exit 0 when some join token accepts it,
1 when none does, 2 when a file, the token or the cluster cannot be read.

The token's signature is NOT checked (that needs the cluster's keys: `kubejoin verify` does it);
its claims are read with the verifier's strict JSON and claims decoders. Only kubernetes join
tokens are listed: the names of other join methods' tokens are their secrets."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, Final, NamedTuple

from verifier.claims import INCOMPLETE, Claims, decode_claims
from verifier.errors import Reason, VerificationError
from verifier.jose import parse_compact
from verifier.k8s.api import ApiError
from verifier.labels import LabelKind, ObjectView, WantedKeys

from ..service.allow import decide, reads
from ..service.files import ConfigError
from ..service.tokens import ROLES, JoinToken, load_tokens
from .cluster_objects import Found, Wanted, read_objects
from .common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, emit_json, say
from .verify import read_token

NOT_CHECKED: Final = (
    "the token's signature, issuer, audience and lifetime are NOT checked here, only its claims read; "
    "`kubejoin verify` checks them"
)
NO_CLUSTER: Final = "give --kubeconfig"
_KINDS: Final[tuple[LabelKind, ...]] = ("pod", "namespace", "node")


class Account(NamedTuple):
    """Who the token says it is (unverified)."""

    namespace: str
    name: str
    pod: str | None
    pod_uid: str | None
    node: str | None
    node_uid: str | None


Views = tuple[ObjectView | None, ObjectView | None, ObjectView | None]


class Verdict(NamedTuple):
    token: str
    accepts: bool
    roles: tuple[str, ...]
    why: list[str]  # the refusal: rule lines, or why the token as a whole refuses


def add_parser(actions: argparse._SubParsersAction[Any]) -> None:
    explain = actions.add_parser(
        "explain",
        help="which join tokens and roles accept a ServiceAccount token, and why each other rule refuses it",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    explain.add_argument("file", metavar="TOKENS_FILE")
    explain.add_argument("--sa-token", required=True, metavar="FILE", help="the ServiceAccount token (a JWT)")
    explain.add_argument("--kubeconfig", metavar="FILE", help="read the labels of the token's pod, namespace, node")
    explain.add_argument("--role", type=_role, help="accept only join tokens granting this role")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.set_defaults(handler=run)


def _role(text: str) -> str:
    role = ROLES.get(text.lower())
    if role is None:
        raise argparse.ArgumentTypeError(f"unknown role {text!r}; expected one of {', '.join(ROLES.values())}")
    return role


class _Unreadable(Exception):
    """A file, the token or the cluster cannot be read: said in one line, exit 2."""


def run(args: argparse.Namespace) -> int:
    try:
        tokens = _tokens(args.file)
        payload, account = _read_account(args.sa_token)
        matching = (
            r for t in tokens if t.kubernetes for r in t.kubernetes.allow if r.matches(account.namespace, account.name)
        )
        kinds = reads(matching)
        found = _read_cluster(args.kubeconfig, account, kinds) if args.kubeconfig and kinds else {}
    except _Unreadable as exc:
        say(f"kubejoin tokens explain: {exc}")
        return EXIT_USAGE
    views: Views = (_view(found, "pod"), _view(found, "namespace"), _view(found, "node"))
    verdicts = [_judge(t, account, payload, views, args) for t in tokens]
    notes = [f.note for f in found.values() if f.note]
    if args.json:
        emit_json(_json(account, verdicts, notes, cluster_read=bool(found)))
    else:
        _print(account, verdicts, notes, read=bool(found), kinds=kinds, kubeconfig=args.kubeconfig)
    return EXIT_OK if any(v.accepts for v in verdicts) else EXIT_REFUSED


def _tokens(path: str) -> list[JoinToken]:
    """The file's kubernetes join tokens: the others have no rules, and their names are secrets."""
    try:
        return [t for t in load_tokens(path).values() if t.kubernetes is not None]
    except ConfigError as exc:
        raise _Unreadable(str(exc)) from None


def _read_account(path: str) -> tuple[dict[str, Any], Account]:
    try:
        payload = _payload(path)
        return payload, _account(decode_claims(payload))
    except OSError as exc:
        raise _Unreadable(f"cannot read {path}: {exc.strerror or exc}") from None
    except VerificationError as exc:
        raise _Unreadable(f"{path}: not a ServiceAccount token ({exc.code}: {exc.message})") from None


def _read_cluster(kubeconfig: str, account: Account, kinds: frozenset[LabelKind]) -> dict[LabelKind, Found]:
    try:
        with open(kubeconfig, "rb"):
            pass  # the client library would log its own complaint before raising: ours is one line
    except OSError as exc:
        raise _Unreadable(f"cannot read {kubeconfig}: {exc.strerror or exc}") from None
    try:
        return asyncio.run(read_objects(kubeconfig, _wanted(account, kinds)))
    except ApiError as exc:
        raise _Unreadable(f"cannot read the cluster: {exc}") from None


def _view(found: dict[LabelKind, Found], kind: LabelKind) -> ObjectView | None:
    return found[kind].view if kind in found else None


def _payload(path: str) -> dict[str, Any]:
    """The token's payload as the verifier reads it (strict JSON, header checks), unverified."""
    parsed = parse_compact(read_token(path))
    claims: dict[str, Any] = parsed.claims
    return claims


def _account(claims: Claims) -> Account:
    kube = claims.kubernetes
    account = kube.service_account if kube is not None else None
    if kube is None or kube.namespace is None or account is None or account == INCOMPLETE:
        raise VerificationError(
            Reason.NOT_POD_BOUND,
            "no kubernetes.io claim naming a namespace and service account (not a projected token)",
        )
    pod = kube.pod if kube.pod != INCOMPLETE else None
    node = kube.node if kube.node != INCOMPLETE else None
    return Account(
        kube.namespace,
        account.name,
        pod.name if pod else None,
        pod.uid if pod else None,
        node.name if node else None,
        node.uid if node else None,
    )


def _wanted(account: Account, kinds: frozenset[LabelKind]) -> list[Wanted]:
    """The objects to read: of the kinds the rules read, those the token names."""
    named: dict[LabelKind, Wanted | None] = {
        "pod": Wanted("pod", account.namespace, account.pod, account.pod_uid) if account.pod else None,
        "namespace": Wanted("namespace", "", account.namespace, None),
        "node": Wanted("node", "", account.node, account.node_uid) if account.node else None,
    }
    return [item for kind in _KINDS if kind in kinds and (item := named[kind]) is not None]


def _judge(
    token: JoinToken, account: Account, payload: dict[str, Any], views: Views, args: argparse.Namespace
) -> Verdict:
    assert token.kubernetes is not None  # only kubernetes tokens are judged
    if token.expires is not None and time.time() >= token.expires:
        return Verdict(token.name, False, token.roles, [f"the join token expired at {_rfc3339(token.expires)}"])

    def objects(kinds: frozenset[LabelKind], keys: WantedKeys) -> Views:
        return views

    refusal = decide(
        token.kubernetes.allow,
        account.namespace,
        account.name,
        lambda: payload,
        objects,
        unknown=None if args.kubeconfig else NO_CLUSTER,
    )
    if refusal is not None:
        return Verdict(token.name, False, token.roles, refusal)
    if args.role is not None and args.role not in token.roles:
        granted = ", ".join(token.roles)
        return Verdict(token.name, False, token.roles, [f"allows the account but grants {granted}, not {args.role}"])
    return Verdict(token.name, True, token.roles, [])


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _json(account: Account, verdicts: list[Verdict], notes: list[str], *, cluster_read: bool) -> dict[str, Any]:
    return {
        "signature_checked": False,
        "note": NOT_CHECKED,
        "service_account": f"{account.namespace}:{account.name}",
        "pod": account.pod,
        "node": account.node,
        "cluster_read": cluster_read,
        "cluster_notes": notes,
        "tokens": [{"name": v.token, "accepts": v.accepts, "roles": list(v.roles), "refusal": v.why} for v in verdicts],
    }


def _print(
    account: Account,
    verdicts: list[Verdict],
    notes: list[str],
    *,
    read: bool,
    kinds: frozenset[LabelKind],
    kubeconfig: str | None,
) -> None:
    out = [f"NOTE: {NOT_CHECKED}."]
    named = ", ".join(f"{what} {value}" for what, value in (("pod", account.pod), ("node", account.node)) if value)
    out.append(f"service account {account.namespace}:{account.name}" + (f" ({named})" if named else ""))
    if read:
        out.append(f"labels read from the cluster of {kubeconfig}")
    elif kinds and kubeconfig is None:
        out.append(f"labels not read: {NO_CLUSTER}")
    out += notes
    if not verdicts:
        out.append("no kubernetes join token in the file")
    for verdict in verdicts:
        roles = ", ".join(verdict.roles)
        if verdict.accepts:
            out.append(f"join token {verdict.token}: accepts, with roles {roles}")
        else:
            out.append(f"join token {verdict.token}: refuses")
            out += [f"  {line}" for line in verdict.why]
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()
