"""``teleconch join openssh``: an OpenSSH node joins the cluster by itself.

Run as root on the node, with a node token from ``teleconch-ctl tokens add
--type=node``: it makes the host key here (only the public key is sent),
gets a host certificate and the user CA through the proxy's web API, writes
them and an sshd drop-in, and checks sshd's config with ``sshd -t``.

The token never leaves the node: the request names it by its public name and
carries an HMAC, keyed by the token's hash, over the name, address, labels
and public key it asks for (``teleconch.auth.attest.join_proof``), so
whoever terminates TLS (the proxy's certificate is often self-signed, hence
``--insecure``) can relay or drop it but not change what it certifies.  The
answer is attested by the auth service and checked against the CA pin; the
pin is also checked up front, so a wrong one costs no token.  Run again (or
with ``--renew``), it renews the certificate with the node's own key, no
token.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.threads import deferToThread

from teleconch import config as cfg
from teleconch.auth.attest import (
    JOIN_PURPOSE,
    RENEW_PURPOSE,
    AttestationError,
    join_proof,
    renew_message,
    token_name,
    verify,
)
from teleconch.client.sshd_setup import (
    SSHD,
    FileChanges,
    NodeFiles,
    SshdFiles,
    check_sshd,
    install_dropin,
    reload_sshd,
)
from teleconch.client.webapi import WebAPIClient, WebAPIError
from teleconch.pki import ca_pin

DEFAULT_DIR = Path("/etc/teleconch")
DEFAULT_SSHD_CONFIG = Path("/etc/ssh/sshd_config")


class JoinError(Exception):
    """Something the operator must change; the text says what."""


@attrs.frozen
class Plan:
    proxy: cfg.HostPort
    files: NodeFiles
    sshd: SshdFiles
    name: str
    addr: str
    labels: dict[str, str]
    token: str | None = attrs.field(repr=False)
    pin: str | None
    #: --insecure-no-ca-pin: trust the first CA the proxy shows (loudly).
    no_pin: bool
    insecure: bool
    renew: bool
    restart: bool


@attrs.frozen
class Identity:
    """What an earlier join left in --dir."""

    key: ed25519.Ed25519PrivateKey
    cert: str
    cluster_ca: bytes


def _labels(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (x.strip() for x in (text or "").split(",")):
        if not item:
            continue
        if "=" not in item:
            raise JoinError(f"--labels: {item!r} is not key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def plan(args: argparse.Namespace) -> Plan:
    """The command line, checked, with the defaults filled in (before the reactor)."""
    if os.geteuid() != 0 and (args.dir is None or args.sshd_config is None):
        raise JoinError(
            f"teleconch join openssh writes {DEFAULT_DIR} and {DEFAULT_SSHD_CONFIG}: "
            "run it as root (sudo), or give --dir and --sshd-config for files you "
            "may write"
        )
    host = socket.gethostname()
    try:
        addr = str(cfg.parse_host_port(args.addr or host, 22))
        proxy = cfg.parse_host_port(args.proxy, cfg.PROXY_WEB_PORT)
    except ValueError as e:
        raise JoinError(str(e)) from None
    if args.ca_pin and args.insecure_no_ca_pin:
        raise JoinError("give --ca-pin or --insecure-no-ca-pin, not both")
    if args.token and not args.ca_pin and not args.insecure_no_ca_pin:
        raise JoinError(
            "give --ca-pin, the cluster's CA pin printed with the token by "
            "`teleconch-ctl tokens add --type=node`: without it the node would trust "
            "whichever cluster answers, and its users"
        )
    return Plan(
        proxy=proxy,
        files=NodeFiles(Path(args.dir or DEFAULT_DIR).absolute()),
        sshd=SshdFiles(Path(args.sshd_config or DEFAULT_SSHD_CONFIG).absolute()),
        name=args.name or host.split(".")[0],
        addr=addr,
        labels=_labels(args.labels),
        token=args.token,
        pin=args.ca_pin,
        no_pin=args.insecure_no_ca_pin,
        insecure=args.insecure,
        renew=args.renew,
        restart=args.restart_sshd,
    )


def load_identity(files: NodeFiles) -> Identity | None:
    """The node's key, certificate and pinned CA, or None if it never joined."""
    if not files.key.exists() or not files.cert.exists():
        return None
    try:
        key = serialization.load_ssh_private_key(files.key.read_bytes(), None)
        cert = files.cert.read_text().strip()
        cluster_ca = files.cluster_ca.read_bytes()
    except (OSError, ValueError) as e:
        raise JoinError(
            f"the node's identity in {files.directory} is unusable ({e}): move it "
            "away and join again with a new token"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise JoinError(
            f"{files.key} is not an ed25519 key: move it away and join again"
        )
    return Identity(key, cert, cluster_ca)


def _public_line(key: ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        .decode()
    )


def _check_payload(payload: dict[str, Any], key: ed25519.Ed25519PrivateKey) -> None:
    """The certificate is a host certificate for our key; the CA lines are lines."""
    try:
        cert = serialization.load_ssh_public_identity(
            str(payload["host_cert"]).encode()
        )
        ours = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        theirs = cert.public_key()  # type: ignore[union-attr]
        matches = (
            isinstance(cert, serialization.SSHCertificate)
            and cert.type == serialization.SSHCertificateType.HOST
            and isinstance(theirs, ed25519.Ed25519PublicKey)
            and theirs.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            == ours
        )
        lines = payload["user_ca"]
        lines_ok = (
            isinstance(lines, list)
            and bool(lines)
            and all(isinstance(x, str) and "\n" not in x for x in lines)
        )
    except (KeyError, ValueError, AttributeError, TypeError):
        matches = lines_ok = False
    if not matches or not lines_ok:
        raise JoinError(
            "the auth service's answer holds no host certificate for this node's key"
        )


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr)


def _pinned(cas: list[bytes], pin: str | None, where: str) -> bytes:
    if not cas:
        raise JoinError(f"{where} named no cluster CA: is it a teleconch proxy?")
    if pin is None:
        try:
            shown = ca_pin(cas[0])
        except ValueError:
            shown = "(unreadable)"
        _warn(
            f"--insecure-no-ca-pin: trusting whatever cluster answers at {where} "
            f"(CA pin {shown}). Whoever is on the path can give this node its own "
            "user CA, and log in to it as root. Use the --ca-pin that "
            "`teleconch-ctl tokens add --type=node` prints"
        )
        return cas[0]
    for ca in cas:
        if ca_pin(ca) == pin:
            return ca
    raise JoinError(
        f"the cluster at {where} has CA pin {ca_pin(cas[0])}, not {pin}: check --ca-pin "
        "and --proxy. Nothing was written and the token was not used."
    )


def _write_identity(
    files: NodeFiles,
    changes: FileChanges,
    key: ed25519.Ed25519PrivateKey,
) -> None:
    files.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    changes.write(files.key, private, 0o600)
    changes.write(files.public, (_public_line(key) + "\n").encode(), 0o644)


def _write_credentials(
    files: NodeFiles, changes: FileChanges, payload: dict[str, Any], ca: bytes
) -> None:
    changes.write(
        files.cert, (str(payload["host_cert"]).strip() + "\n").encode(), 0o644
    )
    user_ca = "".join(f"{line}\n" for line in payload["user_ca"])
    changes.write(files.user_ca, user_ca.encode(), 0o644)
    changes.write(files.cluster_ca, ca, 0o644)


def _configure(plan: Plan, changes: FileChanges) -> tuple[bool, str]:
    """The drop-in (and its Include) written and sshd -t run; put back on failure."""
    try:
        install_dropin(plan.sshd, plan.files, changes)
    except OSError as e:
        changes.rollback()
        return False, str(e)
    ok, said = check_sshd(plan.sshd.main)
    if not ok:
        changes.rollback()
    return ok, said


def _sshd_failed(plan: Plan, said: str, after: str) -> JoinError:
    return JoinError(
        f"`{SSHD} -t -f {plan.sshd.main}` refused the configuration:\n{said}\n"
        f"The drop-in was removed and {plan.sshd.main} restored. {after}"
    )


async def run_join(reactor: Any, args: argparse.Namespace, store: Any = None) -> int:
    """``teleconch join openssh``; the exit status."""
    try:
        return await _run(reactor, plan(args))
    except (JoinError, WebAPIError, AttestationError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1


async def _run(reactor: Any, plan: Plan) -> int:
    if plan.insecure:
        _warn(
            "--insecure: the proxy's TLS certificate is not checked; the token does "
            "not travel and the answer is checked against the CA pin"
        )
    client = WebAPIClient(reactor, plan.proxy, insecure=plan.insecure)
    existing = await deferToThread(load_identity, plan.files)
    if existing is not None:
        if not plan.token:
            return await _renew(reactor, plan, client, existing)
        print(
            f"This node already joined (its identity is in {plan.files.directory}): "
            "renewing its certificate; the token is not used."
        )
        try:
            return await _renew(reactor, plan, client, existing)
        except WebAPIError as e:
            if e.status != 404:
                raise
        print(
            "The cluster no longer knows this node (removed with `teleconch-ctl nodes "
            "rm`?): joining it again with the token, under a new host key."
        )
    if plan.renew:
        raise JoinError(
            f"no node identity in {plan.files.directory} to renew: join first with "
            "--token (from `teleconch-ctl tokens add --type=node`)"
        )
    if not plan.token:
        raise JoinError(
            "give --token (from `teleconch-ctl tokens add --type=node`) to join, or "
            "--dir where an earlier join left the node's identity"
        )
    return await _join(plan, client, plan.token)


async def _join(plan: Plan, client: WebAPIClient, token: str) -> int:
    where = str(plan.proxy)
    if plan.pin is None and not plan.no_pin:
        raise JoinError("give --ca-pin (from `teleconch-ctl tokens add --type=node`)")
    cas = [str(c).encode() for c in (await client.host_ca()).get("tls_ca_certs", [])]
    ca = _pinned(cas, plan.pin, where)
    key = ed25519.Ed25519PrivateKey.generate()
    credentials, sshd = FileChanges(), FileChanges()
    # The key and sshd's config first: a config sshd refuses costs no token.
    await deferToThread(_write_identity, plan.files, credentials, key)
    ok, said = await deferToThread(_configure, plan, sshd)
    if not ok:
        await deferToThread(credentials.rollback)
        raise _sshd_failed(
            plan, said, "The token was not used: fix sshd_config and run again."
        )
    public = _public_line(key)
    proof = join_proof(
        token, name=plan.name, addr=plan.addr, labels=plan.labels, public_key=public
    )
    try:
        document = await client.host_credentials(
            token_name(token), proof, plan.name, plan.addr, plan.labels, public
        )
        payload = verify(document, JOIN_PURPOSE, proof, ca_pin(ca))
        _check_payload(payload, key)
    except BaseException:
        await deferToThread(sshd.rollback)
        await deferToThread(credentials.rollback)
        raise
    await deferToThread(_write_credentials, plan.files, credentials, payload, ca)
    credentials.commit()
    ok, said = await deferToThread(_configure, plan, sshd)
    if not ok:
        raise _sshd_failed(
            plan,
            said,
            f"The node is registered and its credentials are in {plan.files.directory}: "
            "fix sshd_config and run the same command again (it renews, no token).",
        )
    sshd.commit()
    print(
        f"Node {payload['node_name']!r} joined cluster {payload['cluster_name']!r} "
        f"(id {payload['node_id']})."
    )
    return await _finish(plan, payload)


async def _renew(
    reactor: Any, plan: Plan, client: WebAPIClient, identity: Identity
) -> int:
    pinned = ca_pin(identity.cluster_ca)
    if plan.pin is not None and plan.pin != pinned:
        raise JoinError(
            f"this node joined the cluster with CA pin {pinned}, not {plan.pin}: check "
            f"--ca-pin, or move {plan.files.directory} away and join again"
        )
    timestamp = int(reactor.seconds())
    signature = base64.b64encode(
        identity.key.sign(renew_message(identity.cert, timestamp))
    ).decode()
    document = await client.host_renew(identity.cert, timestamp, signature)
    payload = verify(document, RENEW_PURPOSE, signature, pinned)
    _check_payload(payload, identity.key)
    credentials, sshd = FileChanges(), FileChanges()
    await deferToThread(
        _write_credentials, plan.files, credentials, payload, identity.cluster_ca
    )
    credentials.commit()
    ok, said = await deferToThread(_configure, plan, sshd)
    if not ok:
        raise _sshd_failed(
            plan,
            said,
            f"The renewed certificate is in {plan.files.directory}: fix sshd_config "
            "and run again.",
        )
    sshd.commit()
    print(f"Renewed the host certificate of node {payload['node_name']!r}.")
    return await _finish(plan, payload)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


async def _finish(plan: Plan, payload: dict[str, Any]) -> int:
    f = plan.files
    print(
        f"  host key:          {f.key}\n"
        f"  host certificate:  {f.cert}\n"
        f"    principals:      {', '.join(payload['principals'])}\n"
        f"    expires:         {_when(float(payload['expires']))}\n"
        f"  user CA:           {f.user_ca}\n"
        f"  sshd drop-in:      {plan.sshd.dropin} (checked with sshd -t)"
    )
    code = 0
    if plan.restart:
        ok, said = await deferToThread(reload_sshd)
        if ok:
            print(f"Reloaded sshd ({said}).")
        else:
            _warn(f"could not reload sshd: {said}; reload it yourself")
            code = 1
    else:
        print("sshd uses them once reloaded: systemctl reload ssh (or --restart-sshd).")
    print(
        "Renew the certificate before it expires, e.g. with this cron line:\n"
        f"  {cron_line(plan)}"
    )
    return code


def cron_line(plan: Plan) -> str:
    """A daily renewal at a time of this node's own, so nodes do not all
    renew in the same minute."""
    f = plan.files
    extra = "" if f.directory == DEFAULT_DIR else f" --dir {f.directory}"
    if plan.sshd.main != DEFAULT_SSHD_CONFIG:
        extra += f" --sshd-config {plan.sshd.main}"
    insecure = " --insecure" if plan.insecure else ""
    minute, hour = secrets.randbelow(60), secrets.randbelow(24)
    return (
        f"{minute} {hour} * * * root teleconch join openssh --renew --proxy "
        f"{plan.proxy}{extra}{insecure} --restart-sshd"
    )


def add_parser(sub: Any) -> Any:
    """``join openssh`` in the ``teleconch`` command line; returns the kinds'
    subparsers (``join session``: `teleconch.client.sessions`)."""
    join = sub.add_parser(
        "join", help="join a live session, or make this machine a node of a cluster"
    )
    kinds = join.add_subparsers(dest="join_kind", required=True, metavar="KIND")
    p = kinds.add_parser(
        "openssh",
        help="join this host's OpenSSH sshd (run as root); run again to renew",
    )
    p.add_argument(
        "--proxy", required=True, help="the proxy's web address, HOST[:PORT]"
    )
    p.add_argument(
        "--token", help="a node token from `teleconch-ctl tokens add --type=node`"
    )
    p.add_argument(
        "--ca-pin", help="the cluster's CA pin (sha256:...), as printed with the token"
    )
    p.add_argument(
        "--insecure-no-ca-pin",
        action="store_true",
        help="join without --ca-pin, trusting whichever cluster answers (unsafe: "
        "whoever is on the path could log in to this node as root)",
    )
    p.add_argument("--name", help="the node's name (default: the short hostname)")
    p.add_argument("--labels", help="key=value,... e.g. env=prod,role=web")
    p.add_argument(
        "--addr", help="where the proxy reaches sshd, HOST:PORT (default: HOSTNAME:22)"
    )
    p.add_argument(
        "--sshd-config",
        help=f"sshd's main config (default {DEFAULT_SSHD_CONFIG}); the drop-in goes "
        "in sshd_config.d next to it",
    )
    p.add_argument(
        "--dir", help=f"where the host key and certificates go (default {DEFAULT_DIR})"
    )
    p.add_argument(
        "--renew",
        action="store_true",
        help="renew the host certificate with the node's own key (no token)",
    )
    p.add_argument("--restart-sshd", action="store_true", help="reload sshd afterwards")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do not check the proxy's TLS certificate",
    )
    p.set_defaults(run=run_join)
    return kinds
