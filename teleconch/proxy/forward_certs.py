"""The host certificates the recording proxy presents, one per node, cached.

In recording proxy mode the proxy is the SSH server a person's ``ssh``
reaches for a node, so it presents its own host key certified by the host CA
as that node (`SignForwardingHostCertificate`). A certificate lives an hour:
it is kept until REFRESH_BEFORE its end, people connecting at once to the
same node share one request to the auth service, and the cache is bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from teleconch.auth import protocol as api

__all__ = ["MAX_CACHED", "REFRESH_BEFORE", "ForwardingHostCerts", "SignsForwarding"]

#: A certificate is replaced this long before it expires (seconds).
REFRESH_BEFORE = 5 * 60
#: At most this many nodes' certificates are kept; the oldest go first.
MAX_CACHED = 4096


class SignsForwarding(Protocol):
    """What the cache asks (`teleconch.auth.agent.AuthAgent` is one)."""

    async def sign_forwarding_host_certificate(
        self, public_key: str, target: str
    ) -> api.ForwardingHostCertificate: ...


@attrs.frozen
class _Cached:
    cert: str
    valid_before: int


class ForwardingHostCerts:
    """Forwarding host certificates for the proxy's ``host_key``, by node name."""

    def __init__(
        self, clock: IReactorTime, agent: SignsForwarding, host_key: Ed25519PrivateKey
    ) -> None:
        self._clock, self._agent = clock, agent
        line = host_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        #: What the auth service certifies: our host key's public line.
        self.public_key = line.decode("ascii")
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._waiting: dict[str, list[Deferred[str]]] = {}

    def cached(self) -> int:
        """How many nodes' certificates are kept."""
        return len(self._cache)

    async def for_target(self, node_name: str) -> str:
        """The certificate line for ``node_name``; raises what the auth service
        said (NotFoundError for an unregistered node) or AuthUnavailable."""
        entry = self._cache.get(node_name)
        if entry is not None and self._clock.seconds() < (
            entry.valid_before - REFRESH_BEFORE
        ):
            return entry.cert
        waiters = self._waiting.get(node_name)
        if waiters is not None:  # a request for this node is under way: share it
            d: Deferred[str] = Deferred()
            waiters.append(d)
            return await d
        self._waiting[node_name] = waiters = []
        try:
            signed = await self._agent.sign_forwarding_host_certificate(
                self.public_key, node_name
            )
        except Exception:
            del self._waiting[node_name]
            failure = Failure()
            for w in waiters:
                w.errback(failure)
            raise
        del self._waiting[node_name]
        self._keep(node_name, _Cached(signed.cert, signed.valid_before))
        for w in waiters:
            w.callback(signed.cert)
        return signed.cert

    def _keep(self, node_name: str, entry: _Cached) -> None:
        self._cache.pop(node_name, None)
        self._cache[node_name] = entry
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
