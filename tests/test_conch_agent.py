"""The ssh-agent client, against a real OpenSSH ssh-agent and ssh-add.

The tests that start ssh-agent (and ssh-keygen, ssh-add) or dial a UNIX
socket are marked interop; the message framing and parsing tests below them
are unit tests, in memory.
"""

from __future__ import annotations

import base64
import os
import pathlib
import select
import shutil
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from twisted.internet import reactor, task
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.testing import StringTransport

from teleconch.conch.agent import (
    SSH_AGENT_RSA_SHA2_256,
    SSH_AGENT_RSA_SHA2_512,
    AgentClient,
    AgentError,
    AgentIdentity,
    AgentPrivateKey,
    _AgentProtocol,
    add_identity_message,
    certificate_blob,
    check_success,
    connect_agent,
    frame,
    lifetime_constraint,
    parse_identities_answer,
    parse_sign_response,
    public_key_blob,
    remove_identity_message,
    request_identities_message,
    sign_request_message,
    split_frames,
)

SSH_AGENT = "/usr/bin/ssh-agent"
SSH_ADD = "/usr/bin/ssh-add"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
ED_CERT = "ssh-ed25519-cert-v01@openssh.com"


def s(data: bytes) -> bytes:
    return struct.pack("!L", len(data)) + data


def read_strings(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = struct.unpack("!L", data[:4])
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


def keygen(*args: str | pathlib.Path) -> None:
    subprocess.run([SSH_KEYGEN, *map(str, args)], check=True, capture_output=True)


# -- fixtures ----------------------------------------------------------------


@pytest.fixture
def agent_sock(tmp_path: pathlib.Path) -> Iterator[str]:
    """A fresh ssh-agent in the foreground; its socket path."""
    directory = tmp_path
    if len(str(tmp_path)) > 80:  # sun_path is ~108 bytes
        directory = pathlib.Path(tempfile.mkdtemp(prefix="agent-", dir="/tmp"))
    sock = directory / "agent.sock"
    proc = subprocess.Popen(
        [SSH_AGENT, "-D", "-a", str(sock)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        # ssh-agent -D prints "SSH_AUTH_SOCK=<path>; export SSH_AUTH_SOCK;"
        # once its socket listens: wait for that line (or its exit), 5 s at most.
        readable, _, _ = select.select([proc.stdout], [], [], 5)
        line = proc.stdout.readline() if readable else b""
        if not line.startswith(b"SSH_AUTH_SOCK="):
            raise RuntimeError(f"ssh-agent did not start: {line!r}")
        yield str(sock)
    finally:
        proc.stdout.close()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if directory != tmp_path:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def ca_key(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "ca"
    keygen("-q", "-t", "ed25519", "-N", "", "-C", "ca", "-f", path)
    return path


def sign_cert(ca: pathlib.Path, pub: pathlib.Path) -> bytes:
    """A real user certificate for ``pub`` from ssh-keygen; its blob."""
    keygen("-q", "-s", ca, "-I", "alice", "-n", "alice", "-V", "-5m:+1h", pub)
    cert = pub.with_name(pub.name.removesuffix(".pub") + "-cert.pub")
    return certificate_blob(cert.read_text())


@pytest.fixture
def user(tmp_path: pathlib.Path, ca_key: pathlib.Path) -> tuple[AgentPrivateKey, bytes]:
    """An ssh-keygen ed25519 user key and its certificate blob."""
    path = tmp_path / "id_ed25519"
    keygen("-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", path)
    key = serialization.load_ssh_private_key(path.read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key, sign_cert(ca_key, path.with_suffix(".pub"))


@pytest_twisted.async_yield_fixture
async def client(agent_sock: str) -> AsyncIterator[AgentClient]:
    c = await connect_agent(cast(IReactorUNIX, reactor), agent_sock)
    yield c
    c.close()
    await c.wait_closed()


def ssh_add_list(sock: str) -> list[list[str]]:
    """``ssh-add -L`` as (type, base64) pairs; [] when the agent is empty."""
    env = {**os.environ, "SSH_AUTH_SOCK": sock}
    out = subprocess.run([SSH_ADD, "-L"], capture_output=True, text=True, env=env)
    if out.returncode == 1 and "no identities" in out.stdout:
        return []
    assert out.returncode == 0, out.stderr
    return [line.split()[:2] for line in out.stdout.splitlines()]


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


# -- against the real agent --------------------------------------------------


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_add_key_and_certificate(
    client: AgentClient, agent_sock: str, user: tuple[AgentPrivateKey, bytes]
) -> None:
    """A key added with its certificate is two identities, the key then the
    certificate, under its comment, as the client and ssh-add -L list them."""
    key, cert = user
    await client.add_key(key, "alice@teleconch", certificate=cert)

    key_blob = public_key_blob(key)
    assert ssh_add_list(agent_sock) == [
        ["ssh-ed25519", b64(key_blob)],
        [ED_CERT, b64(cert)],
    ]
    identities = await client.list_identities()
    assert identities == [
        AgentIdentity(key_blob, "alice@teleconch"),
        AgentIdentity(cert, "alice@teleconch"),
    ]
    assert [i.key_type for i in identities] == ["ssh-ed25519", ED_CERT]


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_lifetime_expires(
    client: AgentClient, user: tuple[AgentPrivateKey, bytes]
) -> None:
    """A key and certificate added with a 1-second lifetime are dropped by the
    agent itself; polled on the reactor for at most 5 s (the agent keeps its
    own clock, so this waits out that second)."""
    key, cert = user
    await client.add_key(key, "short", certificate=cert, lifetime=1)
    assert len(await client.list_identities()) == 2
    deadline = reactor.seconds() + 5
    while await client.list_identities():
        assert reactor.seconds() < deadline, "the keys outlived their lifetime"
        await task.deferLater(reactor, 0.2)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_removing_the_certificate_leaves_the_key_and_a_second_removal_is_refused(
    client: AgentClient, agent_sock: str, user: tuple[AgentPrivateKey, bytes]
) -> None:
    """Removing the certificate leaves the key; removing the key empties the
    agent (as ssh-add -L sees it too); removing it again is refused."""
    key, cert = user
    key_blob = public_key_blob(key)
    await client.add_key(key, "alice", certificate=cert)

    await client.remove(cert)
    assert [i.blob for i in await client.list_identities()] == [key_blob]
    assert ssh_add_list(agent_sock) == [["ssh-ed25519", b64(key_blob)]]

    await client.remove(key_blob)
    assert await client.list_identities() == []
    assert ssh_add_list(agent_sock) == []

    with pytest.raises(AgentError, match="refused to remove"):
        await client.remove(key_blob)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_sign_verifies(
    client: AgentClient, user: tuple[AgentPrivateKey, bytes]
) -> None:
    """The agent signs with the key and with its certificate; both signatures
    verify with the ed25519 public key."""
    key, cert = user
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    await client.add_key(key, "alice", certificate=cert)
    for blob in (public_key_blob(key), cert):
        algorithm, signature = read_strings(await client.sign(blob, b"challenge"))
        assert algorithm == b"ssh-ed25519"
        key.public_key().verify(signature, b"challenge")


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_sign_unknown_key_fails(
    client: AgentClient, user: tuple[AgentPrivateKey, bytes]
) -> None:
    """Asking to sign with a key the agent does not hold is an AgentError."""
    key, _ = user
    with pytest.raises(AgentError, match="refused to sign"):
        await client.sign(public_key_blob(key), b"data")


def _ecdsa_p256() -> AgentPrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ecdsa_p384() -> AgentPrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _ecdsa_p521() -> AgentPrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


def _rsa() -> AgentPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.interop
@pytest.mark.parametrize("make", [_ecdsa_p256, _ecdsa_p384, _ecdsa_p521, _rsa])
@pytest_twisted.ensureDeferred
async def test_other_key_types(
    make: object, client: AgentClient, tmp_path: pathlib.Path, ca_key: pathlib.Path
) -> None:
    """ECDSA and RSA keys, plain and certified, add and sign."""
    assert callable(make)
    key = make()
    pub = tmp_path / "id.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    cert = sign_cert(ca_key, pub)
    await client.add_key(key, "other", certificate=cert)
    key_blob = public_key_blob(key)
    assert [i.blob for i in await client.list_identities()] == [key_blob, cert]

    if isinstance(key, rsa.RSAPrivateKey):
        for flags, name, hash_ in [
            (SSH_AGENT_RSA_SHA2_256, b"rsa-sha2-256", hashes.SHA256()),
            (SSH_AGENT_RSA_SHA2_512, b"rsa-sha2-512", hashes.SHA512()),
        ]:
            algorithm, sig = read_strings(await client.sign(cert, b"data", flags))
            assert algorithm == name
            key.public_key().verify(sig, b"data", padding.PKCS1v15(), hash_)
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        algorithm, sig = read_strings(await client.sign(key_blob, b"data"))
        assert algorithm == read_strings(key_blob)[0]
        r, s_ = (int.from_bytes(x, "big") for x in read_strings(sig))
        by_size = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}
        key.public_key().verify(
            encode_dss_signature(r, s_),
            b"data",
            ec.ECDSA(by_size[key.curve.key_size]),
        )
    await client.remove(cert)
    await client.remove(key_blob)
    assert await client.list_identities() == []


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_missing_socket(tmp_path: pathlib.Path) -> None:
    """No agent at the path, or SSH_AUTH_SOCK unset: an AgentError that says which."""
    path = str(tmp_path / "nope.sock")
    with pytest.raises(
        AgentError, match=f"no agent at SSH_AUTH_SOCK={path}: is ssh-agent"
    ):
        await connect_agent(cast(IReactorUNIX, reactor), path)
    with pytest.raises(AgentError, match="SSH_AUTH_SOCK is not set"):
        await connect_agent(cast(IReactorUNIX, reactor), "")


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_closed_client_fails(agent_sock: str) -> None:
    """A request on a closed client fails with 'closed'; closing twice is fine."""
    c = await connect_agent(cast(IReactorUNIX, reactor), agent_sock)
    c.close()
    await c.wait_closed()
    with pytest.raises(AgentError, match="closed"):
        await c.list_identities()
    c.close()  # idempotent


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_mismatched_certificate_refused_locally(
    client: AgentClient, user: tuple[AgentPrivateKey, bytes]
) -> None:
    """A certificate for another key is refused before anything is sent to the agent."""
    _, cert = user
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(AgentError, match="different key"):
        await client.add_key(other, "x", certificate=cert)
    assert await client.list_identities() == []


# -- pure framing ------------------------------------------------------------


def test_frame_and_split() -> None:
    """Messages are framed with a 4-byte length; split_frames keeps a partial
    frame for later and refuses a length of 0 or one past the limit."""
    assert frame(b"\x0b") == b"\x00\x00\x00\x01\x0b"
    with pytest.raises(ValueError):
        frame(b"")
    data = frame(b"\x06") + frame(b"\x0c" + b"\x00" * 4) + b"\x00\x00\x00\x05\x0e"
    messages, rest = split_frames(data)
    assert messages == [b"\x06", b"\x0c\x00\x00\x00\x00"]
    assert rest == b"\x00\x00\x00\x05\x0e"
    assert split_frames(b"\x00\x00") == ([], b"\x00\x00")
    with pytest.raises(AgentError, match="bad frame length 0"):
        split_frames(b"\x00\x00\x00\x00")
    with pytest.raises(AgentError, match="bad frame length"):
        split_frames(b"\x7f\x00\x00\x00")


def test_simple_requests() -> None:
    """The list, remove and sign requests and the lifetime constraint are the
    protocol's bytes; a lifetime of 0 is refused."""
    assert request_identities_message() == b"\x0b"
    assert remove_identity_message(b"blob") == b"\x12" + s(b"blob")
    assert sign_request_message(b"k", b"d", 4) == b"\x0d" + s(b"k") + s(b"d") + (
        b"\x00\x00\x00\x04"
    )
    assert lifetime_constraint(3600) == b"\x01\x00\x00\x0e\x10"
    with pytest.raises(ValueError):
        lifetime_constraint(0)


def test_add_ed25519_message() -> None:
    """An ed25519 key is added as type, point, seed+point and comment; with a
    certificate and a lifetime, as the certificate form plus the constraint."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    point = key.public_key().public_bytes_raw()
    seed = bytes(range(32))
    assert public_key_blob(key) == s(b"ssh-ed25519") + s(point)
    assert add_identity_message(key, "me") == (
        b"\x11" + s(b"ssh-ed25519") + s(point) + s(seed + point) + s(b"me")
    )
    cert = s(ED_CERT.encode()) + s(b"nonce") + s(point) + b"rest-of-cert"
    assert add_identity_message(key, "me", cert, lifetime=60) == (
        b"\x19"
        + s(ED_CERT.encode())
        + s(cert)
        + s(point)
        + s(seed + point)
        + s(b"me")
        + b"\x01\x00\x00\x00\x3c"
    )


def test_add_rsa_message_mpints() -> None:
    """An RSA key is added as n, e, d, iqmp, p, q, each an mpint (a leading zero
    keeps a top-bit-set n positive), then the comment."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = key.private_numbers()
    fields = read_strings(add_identity_message(key, "c")[1:])
    assert fields[0] == b"ssh-rsa"
    assert [int.from_bytes(f, "big") for f in fields[1:7]] == [
        n.public_numbers.n,
        n.public_numbers.e,
        n.d,
        n.iqmp,
        n.p,
        n.q,
    ]
    assert fields[1][0] == 0  # n's top bit is set, so a leading zero keeps it positive
    assert fields[7] == b"c"


def test_certificate_checks() -> None:
    """A certificate that is not a blob, or is for another key type, is refused."""
    key = ed25519.Ed25519PrivateKey.generate()
    point = key.public_key().public_bytes_raw()
    with pytest.raises(AgentError, match="not an OpenSSH certificate blob"):
        add_identity_message(key, "x", b"ssh-ed25519-cert-v01@openssh.com AAAA")
    rsa_cert = s(b"ssh-rsa-cert-v01@openssh.com") + s(b"n") + s(point)
    with pytest.raises(AgentError, match="cannot go with a ssh-ed25519 key"):
        add_identity_message(key, "x", rsa_cert)


def test_certificate_blob() -> None:
    """certificate_blob takes a -cert.pub line (str or bytes) to its blob, and
    refuses a plain key, bad base64 and a blob of another type."""
    blob = s(ED_CERT.encode()) + s(b"nonce")
    line = f"{ED_CERT} {b64(blob)} alice@example"
    assert certificate_blob(line) == blob
    assert certificate_blob(line.encode() + b"\n") == blob
    with pytest.raises(ValueError, match="not an OpenSSH certificate"):
        certificate_blob("ssh-ed25519 AAAA")
    with pytest.raises(ValueError, match="corrupt"):
        certificate_blob(f"{ED_CERT} !!!!")
    with pytest.raises(ValueError, match="holds ssh-ed25519"):
        certificate_blob(f"{ED_CERT} {b64(s(b'ssh-ed25519'))}")


def test_agent_replies_parse_into_identities_signatures_and_refusals() -> None:
    """The identities answer parses into blobs and comments (key type from the
    blob), a truncated one is refused; sign and success replies, and refusals,
    become a signature or an AgentError."""
    answer = b"\x0c\x00\x00\x00\x02" + s(b"\x00\x00\x00\x01a") + s(b"one")
    answer += s(b"junk") + s("☃".encode())
    assert parse_identities_answer(answer) == [
        AgentIdentity(b"\x00\x00\x00\x01a", "one"),
        AgentIdentity(b"junk", "☃"),
    ]
    assert parse_identities_answer(answer)[0].key_type == "a"
    assert parse_identities_answer(answer)[1].key_type == ""
    with pytest.raises(AgentError, match="truncated"):
        parse_identities_answer(answer[:-1])
    with pytest.raises(AgentError, match="refused to list"):
        parse_identities_answer(b"\x05")
    assert parse_sign_response(b"\x0e" + s(b"sig")) == b"sig"
    with pytest.raises(AgentError, match="refused to sign"):
        parse_sign_response(b"\x05")
    with pytest.raises(AgentError, match="unexpected agent reply type 6"):
        parse_sign_response(b"\x06")
    check_success(b"\x06", "no")
    with pytest.raises(AgentError, match=r"^no$"):
        check_success(b"\x05", "no")
    with pytest.raises(AgentError, match="empty"):
        check_success(b"", "no")


def test_protocol_pipelines_and_fails_pending() -> None:
    """Requests are pipelined and answered in order, across split reads; those
    still pending when the connection is lost fail with 'closed the connection'."""
    proto = _AgentProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    first, second, third = (proto.request(b"\x0b") for _ in range(3))
    assert transport.value() == frame(b"\x0b") * 3
    results: list[object] = []
    for d in (first, second, third):
        d.addBoth(results.append)
    reply = frame(b"\x06") + frame(b"\x05")
    proto.dataReceived(reply[:3])
    assert results == []
    proto.dataReceived(reply[3:])
    assert results == [b"\x06", b"\x05"]
    proto.connectionLost()
    assert "closed the connection" in str(results[2].value)  # type: ignore[attr-defined]


def test_protocol_drops_unrequested_reply() -> None:
    """A reply nobody asked for drops the connection."""
    proto = _AgentProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(frame(b"\x06"))
    assert transport.disconnecting
