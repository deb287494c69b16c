"""Clients for the joining interop tests: a session's owner on the real web
terminal socket (Autobahn over TLS, as a browser would speak it), and a
program on a pseudo-terminal (``teleconch join`` runs ``ssh -t``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from tests.harness import BIN, Cluster
from tests.webclient import Secrets

#: How long a wait for what a test expects may take before it fails.
PATIENCE = 30.0


async def until(
    check: Callable[[], bool], what: str, patience: float = PATIENCE
) -> None:
    """Wait for ``check()``; fail saying ``what`` did not happen."""
    for _ in range(int(patience / 0.05)):
        if check():
            return
        await deferLater(reactor, 0.05)
    raise AssertionError(f"{what} did not happen")


class _Terminal(WebSocketClientProtocol):
    owner: OwnerSocket

    def onOpen(self) -> None:
        self.owner.protocol = self
        self.sendMessage(json.dumps({"token": self.owner.bearer}).encode(), False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.owner.output += payload
            self.sendMessage(
                json.dumps({"type": "ack", "bytes": len(payload)}).encode()
            )
        else:
            self.owner.messages.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.owner.closed = (code, reason)


class _Factory(WebSocketClientFactory):
    protocol = _Terminal
    owner: OwnerSocket

    def buildProtocol(self, addr: Any) -> Any:
        protocol: Any = super().buildProtocol(addr)
        protocol.owner = self.owner
        return protocol


class OwnerSocket:
    """One web terminal socket: it opens (or, with ``sid``, joins) a session."""

    def __init__(self, cluster: Cluster, secrets: Secrets, params: dict[str, Any]):
        self.bearer = secrets.bearer
        self.output = b""
        self.messages: list[dict[str, Any]] = []
        self.closed: tuple[int | None, str | None] | None = None
        self.protocol: _Terminal | None = None
        proxy = cluster.service.proxy
        assert proxy is not None
        addr = cluster.web_addr
        url = (
            f"wss://{addr.host}:{addr.port}/v1/webapi/sites/"
            f"{cluster.settings.auth.cluster_name}/connect?params="
            + quote(json.dumps(params))
        )
        public = str(proxy.public_addr)
        factory = _Factory(
            url,
            origin=f"https://{public}",
            headers={"Cookie": f"__Host-session={secrets.cookie}"},
        )
        factory.owner = self
        connectWS(factory, CertificateOptions())

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def session_id(self) -> str:
        [session] = self.of_type("session")
        return str(session["id"])

    def type(self, text: bytes) -> None:
        assert self.protocol is not None
        self.protocol.sendMessage(text, isBinary=True)

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.sendClose(1000)


class PtyProgram(ProcessProtocol):
    """A program on a pseudo-terminal: what it shows, keys typed to it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.output = b""
        self.code: int | None = None
        self.done: Deferred[int] = Deferred()
        executable = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
        full_env = {**os.environ, "TERM": "xterm", **env}
        reactor.spawnProcess(
            self, executable, [executable, *argv[1:]], env=full_env, usePTY=True
        )

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def type(self, keys: bytes) -> None:
        assert self.transport is not None
        self.transport.write(keys)

    def processEnded(self, reason: Failure) -> None:
        self.code = getattr(reason.value, "exitCode", None)
        self.done.callback(self.code if self.code is not None else -1)

    def kill(self) -> None:
        if self.code is None and self.transport is not None:
            self.transport.signalProcess("KILL")
