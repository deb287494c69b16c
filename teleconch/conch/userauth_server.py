"""``ssh-userauth`` for a Conch server that takes only trusted user certificates.

Conch's ``Key`` cannot read ``*-cert-v01@openssh.com`` blobs, so its
``publickey`` method refuses every certificate. `CertificateUserAuthServer`
replaces Conch's userauth service with one that accepts certificates from the
cluster's user CA (checked by `teleconch.conch.certs`) and nothing else, and
hands the realm `CertificateCredentials`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

import attrs
from twisted.conch import error
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import (
    DISCONNECT_SERVICE_NOT_AVAILABLE,
    SSHServerTransport,
)
from twisted.conch.ssh.userauth import (
    MSG_USERAUTH_BANNER,
    MSG_USERAUTH_PK_OK,
    MSG_USERAUTH_REQUEST,
    SSHUserAuthServer,
)
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from teleconch.conch.certs import (
    SHA1_RSA_CERT,
    USER_CERT_ALGORITHMS,
    Certificate,
    CertificateError,
    CertificateRefused,
    check_user_certificate,
    parse_certificate,
)
from teleconch.conch.guard import PARSE_ERRORS, disconnect_malformed
from teleconch.conch.wire import SERVER_SIG_ALGS, take_string, verify_ssh_signature

__all__ = [
    "CertificateChecker",
    "CertificateCredentials",
    "CertificatePolicy",
    "CertificateServerTransport",
    "CertificateUserAuthServer",
    "ICertificateCredentials",
]

_log = Logger()


# -- cred --------------------------------------------------------------------


class ICertificateCredentials(ICredentials):
    """A login already proven by a verified, trusted user certificate."""

    username = Attribute("The login name (str), one of the certificate's principals.")
    certificate = Attribute("The verified `Certificate`.")
    client_address = Attribute("The client's IP address (str), or None.")


@implementer(ICertificateCredentials)
@attrs.frozen
class CertificateCredentials:
    """A login `CertificateUserAuthServer` verified, as it reaches the realm.

    The portal is called as ``portal.login(creds, creds, IConchUser)``: the
    checker turns it into the usual bytes avatar ID (the username), and the
    realm gets this object as ``mind``, with the certificate (roles in
    extensions, key id for the audit log) and the client address.
    """

    username: str
    certificate: Certificate
    client_address: str | None


@implementer(ICredentialsChecker)
class CertificateChecker:
    """Accepts `CertificateCredentials` that `CertificateUserAuthServer` verified.

    Verification needs the session ID, the client address and the async CA
    lookup, which only the userauth service has, so it happens there; the
    checker only re-checks the principal as a cheap second line.
    """

    credentialInterfaces = (ICertificateCredentials,)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        if (
            isinstance(credentials, CertificateCredentials)
            and credentials.username in credentials.certificate.principals
        ):
            return defer.succeed(credentials.username.encode("utf-8"))
        return defer.fail(UnauthorizedLogin("not a verified certificate login"))


# -- the userauth service ----------------------------------------------------


class CertificatePolicy(Protocol):
    """What `CertificateUserAuthServer` needs from the proxy (``factory.certificate_policy``)."""

    @property
    def refusal_message(self) -> str:
        """Banner for anything but a certificate: what to run to get one."""

    async def trusted_user_cas(self) -> Sequence[str]:
        """The user CA public key lines to trust now (the proxy caches them)."""

    def on_refused(
        self,
        username: str,
        reason: str,
        client_address: str | None,
        login: str | None = None,
    ) -> None:
        """Audit one refused attempt: ``username`` is the certificate's user when
        a certificate was read (else the SSH user name), ``login`` the login asked."""


class _Refused(UnauthorizedLogin):
    """A refusal that has been audited and explained already."""


_PortalResult = tuple[type[IConchUser], IConchUser, Any]


class CertificateUserAuthServer(SSHUserAuthServer):
    """``ssh-userauth`` that accepts only trusted OpenSSH user certificates.

    Conch builds services from ``factory.services`` without arguments, so the
    policy comes from ``transport.factory.certificate_policy`` and the clock
    (for validity) from Conch's own ``clock`` attribute.

    OpenSSH offers a plain key before its certificate, so plain keys are
    refused without a banner (it would print on every good login) and are
    audited only if the connection ends unauthenticated. The explanation
    comes with a refused certificate, password or keyboard-interactive
    request instead.
    """

    interfaceToMethod = {ICertificateCredentials: b"publickey"}
    #: Also list keyboard-interactive (it always fails): once its keys are
    #: refused, OpenSSH then tries it, and that is when the person sees our
    #: banner. With only publickey listed, OpenSSH never shows it.
    explain_with_keyboard_interactive = True

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.supportedAuthentications = [b"publickey"]
        if self.explain_with_keyboard_interactive:
            self.supportedAuthentications.append(b"keyboard-interactive")
        self._banners: set[str] = set()
        # Once a certificate's refusal is explained, the generic hint (run
        # `teleconch login`) is not added to later refusals of this connection.
        self._certificate_explained = False
        self._plain_keys: list[str] = []
        # Checks are async: run requests one at a time, so a pipelined request
        # cannot change user/nextService under one still being checked.
        self._one_at_a_time = DeferredLock()
        self._stopped = False

    def serviceStopped(self) -> None:
        self._stopped = True
        super().serviceStopped()
        if self._plain_keys and not hasattr(self._t, "avatar"):
            name = (self.user or b"").decode("utf-8", "backslashreplace")
            keys = ", ".join(self._plain_keys)
            self._audit(name, f"plain public keys refused: {keys}")
            self._plain_keys = []

    @property
    def _t(self) -> Any:
        """The SSHServerTransport (typed loosely: Conch types it as the base)."""
        assert self.transport is not None
        return self.transport

    @property
    def _gone(self) -> bool:
        """Stopped, or the transport is closing: our DISCONNECT (a protocol
        error, the grace time) or the peer's is final, so no login may
        complete and nothing more is sent."""
        if self._stopped or getattr(self._t, "disconnectSent", False):
            return True
        return bool(getattr(self._t.transport, "disconnecting", False))

    @property
    def policy(self) -> CertificatePolicy:
        policy = getattr(self._t.factory, "certificate_policy", None)
        if policy is None:
            raise RuntimeError("the SSH factory has no certificate_policy")
        return policy

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Deferred[Any]:
        def handle() -> Deferred[Any] | None:
            if self._gone:
                return None  # authenticated already, or the connection is going
            next_service = getNS(packet, 2)[1]
            # Conch looks the service up only after a successful login.
            if (
                next_service == self.name
                or next_service not in self._t.factory.services
            ):
                self._t.sendDisconnect(
                    DISCONNECT_SERVICE_NOT_AVAILABLE,
                    b"no such service: " + next_service[:64],
                )
                return None
            return SSHUserAuthServer.ssh_USERAUTH_REQUEST(self, packet)

        d = self._one_at_a_time.run(handle)
        d.addErrback(self._request_failed)
        return d

    def _request_failed(self, reason: Failure) -> None:
        if reason.check(*PARSE_ERRORS):
            disconnect_malformed(self._t, "USERAUTH_REQUEST", reason.value or reason)
        else:
            _log.failure("userauth request failed", reason)

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> Deferred[_PortalResult]:
        if kind == b"publickey":
            d = Deferred.fromCoroutine(self._publickey(user, data))
            return d.addErrback(self._silent_when_gone)
        if kind == b"none":
            return defer.fail(error.ConchError("none"))
        name = user.decode("utf-8", "backslashreplace")
        method = kind.decode("ascii", "backslashreplace")
        try:
            self._refuse(name, f"{method} authentication refused", None)
        except _Refused:
            return defer.fail()

    def _silent_when_gone(self, reason: Failure) -> Failure:
        """A refusal that comes after the DISCONNECT is audited but not answered."""
        if self._gone and not reason.check(error.IgnoreAuthentication):
            return Failure(error.IgnoreAuthentication())
        return reason

    # -- helpers --

    def _client_address(self) -> str | None:
        host = getattr(self._t.transport.getPeer(), "host", None)
        return host if isinstance(host, str) else None

    def _banner(self, problem: str | None, relogin_helps: bool = True) -> None:
        """Explain a refusal; each line is shown at most once per connection."""
        lines = (
            [f"teleconch: your certificate was refused: {problem}."] if problem else []
        )
        if relogin_helps and not (self._certificate_explained and not problem):
            lines.append(self.policy.refusal_message.rstrip("\n"))
        if problem:
            self._certificate_explained = True
        lines = [line for line in lines if line and line not in self._banners]
        if lines and not self._gone:
            self._banners.update(lines)
            text = "\n".join(lines) + "\n"
            self._t.sendPacket(MSG_USERAUTH_BANNER, NS(text.encode()) + NS(b""))

    def _audit(self, username: str, reason: str, login: str | None = None) -> None:
        try:
            self.policy.on_refused(
                username, reason, self._client_address(), login=login or username
            )
        except Exception:
            _log.failure("audit hook failed for {user}", user=username)

    def _refuse(
        self,
        username: str,
        reason: str,
        problem: str | None,
        relogin_helps: bool = True,
        cert: Certificate | None = None,
    ) -> NoReturn:
        """Audit (under the certificate's user, if one was read), explain (one
        banner per distinct text), and fail the request."""
        self._audit(cert.key_id if cert else username, reason, login=username)
        self._banner(problem, relogin_helps)
        raise _Refused(reason)

    async def _publickey(self, user: bytes, data: bytes) -> _PortalResult:
        name = user.decode("utf-8", "backslashreplace")
        try:
            has_sig = data[0]
            algorithm, rest = take_string(data[1:])
            blob, rest = take_string(rest)
            signature, rest = take_string(rest) if has_sig else (b"", rest)
            username = user.decode("utf-8")
        except (IndexError, ValueError):
            self._refuse(name, "malformed publickey request", None)
        alg = algorithm.decode("ascii", "backslashreplace")
        if rest:
            self._refuse(name, "trailing data in publickey request", None)
        if algorithm == SHA1_RSA_CERT:
            self._refuse(
                name,
                "RSA certificate offered with SHA-1 signatures (ssh-rsa-cert-v01)",
                "your SSH client only offered SHA-1 (ssh-rsa) signatures; "
                "upgrade it, or use an ed25519 key",
            )
        if algorithm not in USER_CERT_ALGORITHMS:
            digest = base64.b64encode(hashlib.sha256(blob).digest()).rstrip(b"=")
            self._plain_keys.append(f"{alg} SHA256:{digest.decode()}")
            raise _Refused(f"plain public key ({alg}) refused")
        blob_type, sig_alg = USER_CERT_ALGORITHMS[algorithm]
        try:
            cert = parse_certificate(blob)
        except CertificateError as e:
            self._refuse(name, f"bad certificate: {e}", "it could not be read")
        if cert.key_type.encode() != blob_type:
            self._refuse(name, f"algorithm {alg} does not match {cert.key_type}", None)
        try:
            trusted = await self.policy.trusted_user_cas()
        except Exception as e:
            _log.failure("cannot fetch the trusted user CAs")
            self._refuse(
                name,
                f"could not fetch trusted user CAs: {e!r}",
                "the proxy could not check it just now; try again in a minute",
            )
        try:
            check_user_certificate(
                cert, trusted, self.clock.seconds(), username, self._client_address()
            )
        except CertificateRefused as e:
            trusted_cert = cert if e.issuer_trusted else None
            self._refuse(name, e.reason, e.user_message, e.relogin_helps, trusted_cert)
        if self._gone:  # went while the CA lookup ran (the grace time, say)
            raise error.IgnoreAuthentication()
        assert self.nextService is not None
        if not has_sig:
            self._t.sendPacket(MSG_USERAUTH_PK_OK, NS(algorithm) + NS(blob))
            raise error.IgnoreAuthentication()
        signed = b"".join(
            [
                NS(self._t.sessionID),
                bytes((MSG_USERAUTH_REQUEST,)),
                NS(user),
                NS(self.nextService),
                NS(b"publickey"),
                bytes((has_sig,)),
                NS(algorithm),
                NS(blob),
            ]
        )
        if not verify_ssh_signature(cert.public_key, sig_alg, signature, signed):
            self._refuse(
                name, f"bad {alg} signature ({cert.describe()})", None, cert=cert
            )
        creds = CertificateCredentials(username, cert, self._client_address())
        result: _PortalResult = await self.portal.login(creds, creds, IConchUser)
        if self._gone:  # gone while the realm worked: nobody will log out
            result[2]()
            raise error.IgnoreAuthentication()
        return result


class CertificateServerTransport(SSHServerTransport):
    """Advertises the user signature algorithms we verify in ``server-sig-algs``.

    Conch reuses ``supportedPublicKeys`` (our host key algorithms) for that
    list, so with an ed25519 host key OpenSSH never sends rsa-sha2 user
    signatures (twisted#12107). KEXINIT keeps offering only our host keys.
    """

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        sig_algs = b",".join(SERVER_SIG_ALGS)
        fixed = [
            (name, sig_algs if name == b"server-sig-algs" else value)
            for name, value in extensions
        ]
        super().sendExtInfo(fixed)
