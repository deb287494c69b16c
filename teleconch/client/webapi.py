"""A client of the proxy's JSON web API over HTTPS (what ``teleconch login`` uses)."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    ResponseDone,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleconch.config import HostPort
from teleconch.pki import anonymous_client_options


class WebAPIError(Exception):
    """The proxy answered with an error, or could not be reached or trusted."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@implementer(IPolicyForHTTPS)
class _Insecure:
    """--insecure: encrypt, but believe any certificate."""

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        return anonymous_client_options()


def _untrusted(error: BaseException) -> bool:
    reasons = getattr(error, "reasons", None) or [error]
    for reason in reasons:
        value = getattr(reason, "value", reason)
        if isinstance(value, SSL.Error) or "certificate verify failed" in str(value):
            return True
    return False


MAX_RESPONSE = 1024 * 1024


class _Body(Protocol):
    """Collects a response body, refusing one larger than any answer we expect."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_RESPONSE:
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        if self._size > MAX_RESPONSE:
            self._done.errback(WebAPIError("the proxy's answer is too large"))
        elif reason.check(ResponseDone):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)


def _read_body(response: Any) -> Deferred[bytes]:
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Body(done))
    return done


class WebAPIClient:
    def __init__(self, reactor: Any, proxy: HostPort, insecure: bool = False) -> None:
        self.proxy = proxy
        policy = _Insecure() if insecure else BrowserLikePolicyForHTTPS()
        self._agent = Agent(reactor, contextFactory=policy, connectTimeout=15)

    async def _request(self, method: bytes, path: str, body: Any = None) -> Any:
        url = f"https://{self.proxy}{path}".encode()
        headers = Headers({b"accept": [b"application/json"]})
        producer = None
        if body is not None:
            headers.addRawHeader(b"content-type", b"application/json")
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
        try:
            response = await self._agent.request(method, url, headers, producer)
            data = await _read_body(response)
        except Exception as e:
            if _untrusted(e):
                raise WebAPIError(
                    f"the TLS certificate of {self.proxy} is not trusted (a self-signed "
                    "certificate?). If you trust this proxy, run again with --insecure; "
                    "better, give the proxy a certificate from a trusted CA "
                    "(proxy_service.https_cert_file)"
                ) from None
            raise WebAPIError(f"cannot reach the proxy at {self.proxy}: {e}") from None
        try:
            payload = json.loads(data)
        except ValueError:
            raise WebAPIError(
                f"{self.proxy} answered HTTP {response.code} without JSON: is it a "
                "teleconch proxy's web address (port 3080)?",
                response.code,
            ) from None
        if response.code >= 400:
            message = (
                (payload.get("error") or {}).get("message")
                if isinstance(payload, dict)
                else None
            )
            raise WebAPIError(message or f"HTTP {response.code}", response.code)
        return payload

    async def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(b"GET", "/v1/webapi/ping")
        return result

    async def ssh_certs(
        self, user: str, password: str, otp_token: str, pub_key: str, ttl: int
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            b"POST",
            "/v1/webapi/ssh/certs",
            {
                "user": user,
                "password": password,
                "otp_token": otp_token,
                "pub_key": pub_key,
                "ttl": ttl,
            },
        )
        return result

    async def get_invite(self, token: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            b"GET", f"/v1/webapi/users/invite/{token}"
        )
        return result

    async def complete_invite(
        self, token: str, password: str, otp_token: str
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            b"POST",
            "/v1/webapi/users/invite",
            {"token": token, "password": password, "otp_token": otp_token},
        )
        return result

    async def host_ca(self) -> dict[str, Any]:
        """The cluster's TLS CA certificates, to check a CA pin against."""
        result: dict[str, Any] = await self._request(b"GET", "/v1/webapi/host/ca")
        return result

    async def host_credentials(
        self,
        token_name: str,
        proof: str,
        node_name: str,
        addr: str,
        labels: dict[str, str],
        public_key: str,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            b"POST",
            "/v1/webapi/host/credentials",
            {
                "token_name": token_name,
                "proof": proof,
                "node_name": node_name,
                "addr": addr,
                "labels": labels,
                "public_key": public_key,
            },
        )
        return result

    async def host_renew(
        self, cert: str, timestamp: int, signature: str
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            b"POST",
            "/v1/webapi/host/renew",
            {"cert": cert, "timestamp": timestamp, "signature": signature},
        )
        return result
