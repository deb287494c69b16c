"""The private Twisted names teleconch relies on, in one place.

setup.cfg pins Twisted below its next major release because `teleconch.conch`
overrides or reads private Conch attributes. An upgrade that renames one must
fail here, loudly, not in a handshake. The private ``twisted.web`` names the
web head relies on are pinned by
``tests/test_web_head.py::test_the_private_twisted_names_we_rely_on_still_exist``.
"""

from __future__ import annotations

import inspect

from twisted.conch.ssh import _kex
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.transport import (
    SSHClientTransport,
    SSHServerTransport,
    SSHTransportBase,
)
from twisted.internet.testing import StringTransport

from tests.test_web_head import test_the_private_twisted_names_we_rely_on_still_exist

__all__ = ["test_the_private_twisted_names_we_rely_on_still_exist"]


def test_the_private_transport_methods_we_override_or_call_still_exist() -> None:
    """conch/transport.py, guard.py and hostcert.py override or call these."""
    for name in (
        "_allowedKeyExchangeMessageType",  # transport: strict KEX holds back others
        "_newKeys",  # transport, guard: keys switched
        "_keySetup",  # guard; hostcert's ECDH reply finishes with it
        "_unsupportedVersionReceived",  # transport's version-line reader
        "_generateECSharedSecret",  # hostcert: ECDH with a certified host key
        "_encodeECPublicKey",
    ):
        assert callable(getattr(SSHTransportBase, name)), name
    assert inspect.signature(SSHTransportBase._keySetup).parameters.keys() == {
        "self",
        "sharedSecret",
        "exchangeHash",
    }
    # hostcert's CertificateClientTransport replaces the client's ECDH reply.
    assert callable(SSHClientTransport._ssh_KEX_ECDH_REPLY)
    assert "_ssh_KEX_ECDH_REPLY" in inspect.getsource(
        SSHClientTransport.ssh_KEX_DH_GEX_GROUP
    )


def test_the_private_transport_state_we_read_still_exists() -> None:
    """transport.py's sendPacket and NEWKEYS handling read these."""
    assert SSHTransportBase._keyExchangeState == SSHTransportBase._KEY_EXCHANGE_NONE
    assert SSHTransportBase._blockedByKeyExchange is None
    assert hasattr(SSHTransportBase, "_KEY_EXCHANGE_REQUESTED")
    assert hasattr(SSHTransportBase, "_log")
    client = SSHClientTransport()
    client.makeConnection(StringTransport())
    assert client._gotNewKeys == 0  # cleared on a re-key by ModernTransportMixin
    server = SSHServerTransport()
    assert server.isClient is False


def test_the_private_connection_and_kex_helpers_we_use_still_exist() -> None:
    """guard.py chains ``_cbChannelRequest``; guard.py and hostcert.py ask
    ``_kex`` what kind of key exchange was negotiated."""
    assert callable(SSHConnection._cbChannelRequest)
    assert _kex.isEllipticCurve(b"curve25519-sha256")
    assert not _kex.isFixedGroup(b"curve25519-sha256")
    assert _kex.isPQHybrid(b"mlkem768x25519-sha256")
    assert _kex.getHashProcessor(b"curve25519-sha256")().name == "sha256"
