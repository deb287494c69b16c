"""OpenSSH nodes that join themselves (``teleconch join openssh``) and renew.

A node trades a single-use node token for a host certificate of its own key
(made on the node; only the public key travels), the user CA and a place in
the node list.  The token itself never travels: the node sends its public
name and an HMAC keyed by the token's hash over exactly what it asks for
(``teleconch.auth.attest.join_proof``), so a request relayed by whoever
terminated the proxy's TLS certifies only the node's own key, name and
address.  From then on it renews the certificate with that key alone:
it signs its current certificate and the time, and the auth service checks
that the certificate is its own, still valid, and the node's.  Both answers
are attested (``teleconch.auth.attest``) so the node trusts them through a
proxy whose web certificate is not the cluster's.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from teleconch.auth import protocol as api
from teleconch.auth.attest import (
    JOIN_PURPOSE,
    RENEW_PURPOSE,
    Attested,
    attest,
    join_request,
    proof_matches,
    proof_of,
    renew_message,
)
from teleconch.auth.joining import Claims
from teleconch.auth.login import iso_utc
from teleconch.auth.nodes import clean_labels
from teleconch.auth.store import AlreadyExists
from teleconch.auth.types import JoinedIdentity, Node, Token
from teleconch.auth.validation import (
    NODE_NAME_RULE,
    is_host,
    is_loopback,
    is_node_name,
)
from teleconch.ca import BadPublicKey, fingerprint, parse_public_key
from teleconch.config import parse_host_port
from teleconch.pki import ROLE_NODE
from teleconch.text import printable

if TYPE_CHECKING:
    from teleconch.auth.server import AuthServer

#: How far a renewing node's clock may be from ours.
RENEW_CLOCK_SKEW = 300

HOW_TO_JOIN = "create a node token with `teleconch-ctl tokens add --type=node`"


class _Refusal(Exception):
    def __init__(self, reason: str, error: api.AuthAPIError) -> None:
        super().__init__(str(error))
        self.reason = reason
        self.error = error


def _refuse(
    reason: str, message: str, kind: type[api.AuthAPIError] = api.AccessDenied
) -> NoReturn:
    raise _Refusal(reason, kind(message))


def _check_name(name: str, claims: Claims) -> None:
    if not is_node_name(name):
        _refuse(
            "invalid name",
            f"{printable(name, 80)!r} is not a valid node name: use {NODE_NAME_RULE} "
            "(--name)",
            api.BadParameter,
        )
    for host in (name, f"{name}.{claims.cluster_name}"):
        if claims.reserved_for_node(host):
            _refuse(
                f"name {host!r} is reserved",
                f"{host!r} is reserved (the auth service's name, the cluster's name, "
                "its proxies' addresses, localhost and teleconch-* names): choose "
                "another --name",
            )
        peer = claims.taken_by_identity(host)
        if peer is not None:
            then = (
                "on that node, `teleconch join openssh --renew` renews its "
                "certificate (no token); to give the name to another machine, "
                f"`teleconch-ctl nodes rm {peer.name}` first, or choose another --name"
                if peer.role == ROLE_NODE
                else "choose another --name"
            )
            _refuse(
                f"name {host!r} is taken by {peer.role} {peer.host_id}",
                f"a {peer.role} named {peer.name!r} has already joined this cluster "
                f"and holds {host!r}: {then}",
            )
        node = claims.taken_by_node(host)
        if node is not None:
            _refuse(
                f"name {host!r} is registered node {node.name}",
                f"a node named {node.name!r} is already registered: remove it first "
                f"(`teleconch-ctl nodes rm {node.name}`), or choose another --name",
            )


def _check_address(addr: str, host: str, claims: Claims) -> str | None:
    """The addr's host as a principal; refused if it is another's.

    A loopback address is allowed (a node on the proxy's own machine) but
    never a principal; so is a host that is no DNS name or IP address.
    """
    for other in claims.nodes:
        if addr == other.addr:
            _refuse(
                f"addr {addr!r} is registered node {other.name}",
                f"the node {other.name!r} is registered at {addr!r}: remove it first "
                f"(`teleconch-ctl nodes rm {other.name}`), or give this one its own "
                "--addr",
            )
    if is_loopback(host) or not is_host(host):
        return None
    if claims.reserved_for_node(host):
        _refuse(
            f"addr {host!r} is reserved",
            f"{host!r} is reserved (the cluster's name, its proxies' addresses, the "
            "auth service's name and teleconch-* names): give the node's own --addr",
        )
    node = claims.taken_by_node(host)
    if node is not None:
        _refuse(
            f"addr {host!r} is registered node {node.name}",
            f"{host!r} belongs to the registered node {node.name!r}: a node cannot "
            f"take another's name or address; remove it first (`teleconch-ctl nodes "
            f"rm {node.name}`), or give this one its own --addr",
        )
    peer = claims.taken_by_identity(host)
    if peer is not None:
        _refuse(
            f"addr {host!r} is taken by {peer.role} {peer.host_id}",
            f"a {peer.role} named {peer.name!r} has already joined this cluster and "
            f"holds {host!r}: give this node its own --addr",
        )
    return host


async def join_node(
    server: AuthServer,
    *,
    token_name: str,
    proof: str,
    name: str,
    addr: str,
    labels: Mapping[str, Any],
    public_key: str,
    client_addr: str,
) -> Attested:
    """Register a node with a node token; its host certificate and the user CA."""
    try:
        return await _join(
            server, token_name, proof, name, addr, labels, public_key, client_addr
        )
    except _Refusal as e:
        await server.audit(
            "node.join",
            success=False,
            node=name,
            addr=addr,
            client_addr=client_addr,
            reason=e.reason,
        )
        raise e.error from None


async def _proven_token(
    server: AuthServer, token_name: str, proof: str, request: Mapping[str, Any]
) -> Token | None:
    """The live node token named ``token_name`` the proof was made with, if any."""
    now = server._now()
    found = None
    for token in await server.store.list_tokens():
        if token.name != token_name or token.kind != ROLE_NODE or token.expires <= now:
            continue
        try:
            expected = proof_of(token.token_hash, request)
        except ValueError:
            continue
        if proof_matches(expected, proof):
            found = token
    return found


async def _join(
    server: AuthServer,
    token_name: str,
    proof: str,
    name: str,
    addr: str,
    labels: Mapping[str, Any],
    public_key: str,
    client_addr: str,
) -> Attested:
    store = server.store
    try:
        request = join_request(name, addr, labels, public_key)
        found = await _proven_token(server, token_name, proof, request)
    except (TypeError, ValueError):
        found = None
    if found is None:
        _refuse(
            "unknown token or wrong type",
            "the join token is invalid, expired or already used, or the request "
            f"was changed on the way: {HOW_TO_JOIN}",
        )
    claims = await server.registrar.claims()
    _check_name(name, claims)
    try:
        host = parse_host_port(addr).host
    except ValueError as e:
        _refuse("invalid addr", f"--addr: {e}", api.BadParameter)
    extra = _check_address(addr, host, claims)
    try:
        clean = clean_labels(labels)
    except api.BadParameter as e:
        _refuse("invalid labels", f"--labels: {e}", api.BadParameter)
    try:
        key = parse_public_key(public_key)
    except BadPublicKey as e:
        _refuse("bad host key", f"host key: {e}", api.BadParameter)
    if not isinstance(key, Ed25519PublicKey):
        _refuse(
            "host key not ed25519", "the host key must be ed25519", api.BadParameter
        )
    if await store.consume_token(found.token_hash, server._now()) is None:
        _refuse(
            "token used or expired meanwhile",
            f"the join token has expired: {HOW_TO_JOIN}",
        )
    now = server._now()
    node_id = str(uuid.uuid4())
    principals = [name, f"{name}.{server.cluster_name}"]
    if extra is not None and extra not in principals:
        principals.append(extra)
    try:
        await store.add_identity(
            JoinedIdentity(node_id, ROLE_NODE, name, principals, now)
        )
    except AlreadyExists:
        _refuse(
            "name taken meanwhile",
            f"another node joined as {name!r} at the same moment: {HOW_TO_JOIN} and "
            "choose another --name",
        )
    try:
        cert, expires = server.sign_node_certificate(
            key, f"{node_id}.{server.cluster_name}", principals
        )
        await store.upsert_node(
            Node(
                id=node_id,
                name=name,
                addr=addr,
                labels=clean,
                created=now,
                cert_expires=expires,
            )
        )
    except BaseException:
        # The name must not stay taken by a node that got nothing.
        await store.delete_identity(node_id)
        await server.audit(
            "node.join",
            success=False,
            node=name,
            addr=addr,
            client_addr=client_addr,
            reason="signing failed",
        )
        raise
    await server.audit(
        "node.join",
        node=name,
        id=node_id,
        addr=addr,
        labels=clean,
        principals=principals,
        key=fingerprint(key),
        expires=expires,
        client_addr=client_addr,
    )
    payload = _payload(server, node_id, name, cert, expires, principals)
    return _attested(server, JOIN_PURPOSE, payload, proof)


def _payload(
    server: AuthServer,
    node_id: str,
    name: str,
    cert: str,
    expires: int,
    principals: list[str],
) -> dict[str, Any]:
    return {
        "cluster_name": server.cluster_name,
        "node_id": node_id,
        "node_name": name,
        "host_cert": cert,
        "principals": principals,
        "expires": expires,
        "user_ca": list(server.export_ca("user")),
    }


def _attested(
    server: AuthServer, purpose: str, payload: dict[str, Any], binding: str
) -> Attested:
    if server.tls_identity is None:
        raise api.BadParameter("this auth service has no identity to sign answers with")
    return Attested.from_json(attest(server.tls_identity, purpose, payload, binding))


async def renew_node(
    server: AuthServer,
    *,
    cert: str,
    timestamp: int,
    signature: str,
    client_addr: str,
) -> Attested:
    """A fresh host certificate for a joined node's own key, proven by its signature."""
    #: What the refusal's audit may name: the node, once the certificate says.
    seen: dict[str, str] = {}
    try:
        return await _renew(server, cert, timestamp, signature, client_addr, seen)
    except _Refusal as e:
        await server.audit(
            "node.renew",
            success=False,
            client_addr=client_addr,
            reason=e.reason,
            **seen,
        )
        raise e.error from None


def _read_cert(server: AuthServer, line: str) -> serialization.SSHCertificate:
    unreadable = (
        "unreadable certificate",
        "the node's host certificate is unreadable: join again with a new token",
    )
    try:
        parsed = serialization.load_ssh_public_identity(line.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        _refuse(*unreadable, api.BadParameter)
    if not isinstance(parsed, serialization.SSHCertificate):
        _refuse(*unreadable, api.BadParameter)
    ca = server.host_ca_public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signer = parsed.signature_key()
    try:
        parsed.verify_cert_signature()
        ours = (
            isinstance(signer, Ed25519PublicKey)
            and signer.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            == ca
        )
    except (InvalidSignature, ValueError, TypeError):
        ours = False
    if not ours or parsed.type != serialization.SSHCertificateType.HOST:
        _refuse(
            "not signed by the host CA",
            "that is not a host certificate from this cluster's host CA: join with "
            "a node token",
        )
    return parsed


async def _renew(
    server: AuthServer,
    line: str,
    timestamp: int,
    signature: str,
    client_addr: str,
    seen: dict[str, str],
) -> Attested:
    cert = _read_cert(server, line)
    key_id = cert.key_id.decode("utf-8", "replace")
    suffix = f".{server.cluster_name}"
    node_id = key_id[: -len(suffix)] if key_id.endswith(suffix) else ""
    seen["id"] = printable(node_id or key_id, 80)
    identity = next(
        (
            i
            for i in await server.store.list_identities()
            if i.host_id == node_id and i.role == ROLE_NODE
        ),
        None,
    )
    node = await server.store.get_node(node_id) if identity else None
    if identity is None or node is None or node.id != node_id:
        _refuse(
            "not a joined node",
            "this node is not registered as one that joined itself (was it removed "
            f"with `teleconch-ctl nodes rm`?): join again with a token; {HOW_TO_JOIN}",
            api.NotFoundError,
        )
    seen["node"] = node.name
    principals = [p.decode("utf-8", "replace") for p in cert.valid_principals]
    if principals != list(identity.principals):
        _refuse(
            "principals do not match",
            "the certificate does not match this node's registration: join again "
            f"with a token; {HOW_TO_JOIN}",
        )
    now = server._now()
    if not cert.valid_after <= now < cert.valid_before:
        _refuse(
            "certificate expired",
            f"the node's host certificate expired at {iso_utc(cert.valid_before)}: only a "
            "valid one can be renewed. Join again: `teleconch-ctl nodes rm "
            f"{node.name}`, then `teleconch-ctl tokens add --type=node` and run the "
            "command it prints",
        )
    if abs(now - timestamp) > RENEW_CLOCK_SKEW:
        _refuse(
            "stale timestamp",
            f"the renewal is dated {int(timestamp - now):+d}s from the auth service's "
            "clock (at most 5 minutes either way): set the node's clock right (NTP) "
            "and run again",
        )
    key = cert.public_key()
    try:
        raw = base64.b64decode(signature, validate=True)
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidSignature
        key.verify(raw, renew_message(line, timestamp))
    except (InvalidSignature, binascii.Error, ValueError):
        _refuse(
            "bad signature",
            "the renewal is not signed by the certified host key: run it on the node, "
            "with its own key",
        )
    new_cert, expires = server.sign_node_certificate(key, key_id, principals)
    await server.store.upsert_node(attrs.evolve(node, cert_expires=expires))
    await server.audit(
        "node.renew",
        node=node.name,
        id=node.id,
        key=fingerprint(key),
        previous_expires=cert.valid_before,
        expires=expires,
        client_addr=client_addr,
    )
    payload = _payload(server, node.id, node.name, new_cert, expires, principals)
    return _attested(server, RENEW_PURPOSE, payload, signature)
