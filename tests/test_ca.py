"""The SSH CA, checked against the real ``ssh-keygen``.

The tests that run ssh-keygen (to make a key, or to read a certificate back)
are marked interop; the refusals of bad input and of a CA file others can
read are unit tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from teleconch.ca import (
    STANDARD_USER_EXTENSIONS,
    BadPublicKey,
    CAKeyError,
    SSHCertificateAuthority,
    fingerprint,
    parse_public_key,
    public_key_line,
)

SSH_KEYGEN = "/usr/bin/ssh-keygen"
VALID_AFTER = 1_700_000_000  # 2023-11-14T22:13:20Z
VALID_BEFORE = 1_700_003_600  # 2023-11-14T23:13:20Z


def keygen(*args: str | pathlib.Path) -> str:
    """Run ssh-keygen in UTC (it prints validity in local time)."""
    env = {**os.environ, "TZ": "UTC"}
    return subprocess.run(
        [SSH_KEYGEN, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout


@pytest.fixture
def ca(tmp_path: pathlib.Path) -> SSHCertificateAuthority:
    return SSHCertificateAuthority.load_or_create(tmp_path / "ca" / "user_ca", "test")


@pytest.fixture
def user_key(tmp_path: pathlib.Path) -> pathlib.Path:
    """A key made by ssh-keygen itself, as a user would."""
    path = tmp_path / "id_ed25519"
    keygen("-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", path)
    return path


def write_cert(tmp_path: pathlib.Path, line: str) -> pathlib.Path:
    path = tmp_path / "id-cert.pub"
    path.write_text(line + "\n")
    return path


@pytest.mark.interop
def test_user_certificate_reads_back_in_ssh_keygen(
    ca: SSHCertificateAuthority, user_key: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """ssh-keygen -L shows every field we signed, and our CA's fingerprint."""
    key = parse_public_key(user_key.with_suffix(".pub").read_text())
    roles = json.dumps(["access", "editor"]).encode()
    extensions = {**STANDARD_USER_EXTENSIONS, "teleconch-roles": roles}
    line = ca.sign_user_certificate(
        key, "alice", ["alice", "root"], VALID_AFTER, VALID_BEFORE, extensions, 42
    )
    assert line.startswith("ssh-ed25519-cert-v01@openssh.com AAAA")

    out = keygen("-L", "-f", write_cert(tmp_path, line))
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in out
    assert 'Key ID: "alice"' in out
    assert "Serial: 42" in out
    assert "Valid: from 2023-11-14T22:13:20 to 2023-11-14T23:13:20" in out
    principals = re.search(r"Principals:\s*\n((?:\s{16}\S+\n)+)", out)
    assert principals is not None
    assert principals.group(1).split() == ["alice", "root"]
    for name in STANDARD_USER_EXTENSIONS:
        assert re.search(rf"^\s+{re.escape(name)}$", out, re.M)
    # OpenSSH shows an unknown extension's value as hex of its wrapped string.
    wrapped = len(roles).to_bytes(4, "big") + roles
    assert f"teleconch-roles UNKNOWN OPTION: {wrapped.hex()}" in out
    assert f"Signing CA: ED25519 {fingerprint(ca.public_key)} " in out
    assert f"Public key: ED25519-CERT {fingerprint(key)}" in out


@pytest.mark.interop
def test_user_certificate_serial_is_random_when_not_given(
    ca: SSHCertificateAuthority, tmp_path: pathlib.Path
) -> None:
    """Two certificates without an explicit serial get different serials."""
    key = Ed25519PrivateKey.generate().public_key()
    serials = set()
    for _ in range(2):
        line = ca.sign_user_certificate(
            key, "k", ["u"], VALID_AFTER, VALID_BEFORE, STANDARD_USER_EXTENSIONS
        )
        out = keygen("-L", "-f", write_cert(tmp_path, line))
        match = re.search(r"Serial: (\d+)", out)
        assert match is not None
        serials.add(int(match.group(1)))
    assert len(serials) == 2


@pytest.mark.interop
def test_host_certificate_reads_back_in_ssh_keygen(
    ca: SSHCertificateAuthority, tmp_path: pathlib.Path
) -> None:
    """A host certificate is typed host, names the host and has no extensions."""
    key = Ed25519PrivateKey.generate().public_key()
    line = ca.sign_host_certificate(
        key, "node-1", ["node-1.example.com", "10.0.0.5"], VALID_AFTER, VALID_BEFORE
    )
    out = keygen("-L", "-f", write_cert(tmp_path, line))
    assert "ssh-ed25519-cert-v01@openssh.com host certificate" in out
    assert 'Key ID: "node-1"' in out
    assert "node-1.example.com" in out
    assert "10.0.0.5" in out
    assert "Extensions: (none)" in out
    assert f"Signing CA: ED25519 {fingerprint(ca.public_key)} " in out


@pytest.mark.interop
def test_certificate_for_ecdsa_and_rsa_keys(
    ca: SSHCertificateAuthority, tmp_path: pathlib.Path
) -> None:
    """Keys of every accepted type can be certified."""
    for key_type, label in (("ecdsa", "ECDSA-CERT"), ("rsa", "RSA-CERT")):
        path = tmp_path / f"id_{key_type}"
        keygen("-q", "-t", key_type, "-N", "", "-f", path)
        key = parse_public_key(path.with_suffix(".pub").read_bytes())
        line = ca.sign_user_certificate(
            key, "k", ["u"], VALID_AFTER, VALID_BEFORE, STANDARD_USER_EXTENSIONS
        )
        out = keygen("-L", "-f", write_cert(tmp_path, line))
        assert f"Public key: {label} {fingerprint(key)}" in out


def test_certificate_without_principals_is_refused(
    ca: SSHCertificateAuthority,
) -> None:
    """An empty principal list would mean "anyone" to OpenSSH."""
    key = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ValueError, match="principal"):
        ca.sign_user_certificate(key, "k", [], VALID_AFTER, VALID_BEFORE, {})


@pytest.mark.interop
def test_fingerprint_matches_ssh_keygen(user_key: pathlib.Path) -> None:
    """fingerprint() prints what ssh-keygen -l prints."""
    pub = user_key.with_suffix(".pub")
    out = keygen("-l", "-f", pub)
    assert out.split()[1] == fingerprint(parse_public_key(pub.read_text()))


@pytest.mark.interop
def test_public_key_line_has_no_comment(user_key: pathlib.Path) -> None:
    """public_key_line() is the key type and body only."""
    text = user_key.with_suffix(".pub").read_text()
    assert text.split()[2] == "alice@laptop"
    assert public_key_line(parse_public_key(text)) == " ".join(text.split()[:2])


@pytest.mark.interop
def test_ca_file_is_private_and_reloads_as_same_key(tmp_path: pathlib.Path) -> None:
    """The CA is made once, 0600 in a 0700 directory, and reloaded thereafter."""
    path = tmp_path / "secrets" / "host_ca"
    first = SSHCertificateAuthority.load_or_create(path, "host CA")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = SSHCertificateAuthority.load_or_create(path, "host CA")
    assert again.public_key_line() == first.public_key_line()
    # ssh-keygen reads the file as an OpenSSH private key.
    assert keygen("-y", "-f", path).strip() == first.public_key_line()
    assert [p.name for p in path.parent.iterdir()] == ["host_ca"]


def test_ca_file_readable_by_others_is_refused(tmp_path: pathlib.Path) -> None:
    """A 0644 CA key is refused with advice, not silently fixed."""
    path = tmp_path / "user_ca"
    SSHCertificateAuthority.load_or_create(path, "user CA")
    path.chmod(0o644)
    with pytest.raises(CAKeyError, match=r"readable by other users.*chmod 600"):
        SSHCertificateAuthority.load_or_create(path, "user CA")


@pytest.mark.interop
def test_user_key_from_ssh_keygen_parses(user_key: pathlib.Path) -> None:
    """A line straight from ssh-keygen -t ed25519 parses, as str or bytes."""
    pub = user_key.with_suffix(".pub")
    assert isinstance(parse_public_key(pub.read_text()), Ed25519PublicKey)
    assert isinstance(parse_public_key(pub.read_bytes()), Ed25519PublicKey)


@pytest.mark.interop
def test_certificate_line_is_refused(
    ca: SSHCertificateAuthority, user_key: pathlib.Path
) -> None:
    """A certificate is not a key to certify; the message says which file to send."""
    key = parse_public_key(user_key.with_suffix(".pub").read_text())
    line = ca.sign_user_certificate(key, "k", ["u"], VALID_AFTER, VALID_BEFORE, {})
    with pytest.raises(BadPublicKey, match="certificate, not a public key"):
        parse_public_key(line)


@pytest.mark.interop
def test_dsa_key_is_refused(tmp_path: pathlib.Path) -> None:
    """DSA keys are refused with advice to make an ed25519 key."""
    path = tmp_path / "id_dsa"
    keygen("-q", "-t", "dsa", "-N", "", "-f", path)
    with pytest.raises(BadPublicKey, match=r"DSA.*ssh-keygen -t ed25519"):
        parse_public_key(path.with_suffix(".pub").read_text())


@pytest.mark.interop
def test_short_rsa_key_is_refused(tmp_path: pathlib.Path) -> None:
    """A 1024-bit RSA key is refused, naming its size and the minimum."""
    path = tmp_path / "id_rsa"
    keygen("-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", path)
    with pytest.raises(BadPublicKey, match=r"1024 bits.*at least 2048"):
        parse_public_key(path.with_suffix(".pub").read_text())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "No public key"),
        ("hello world", "not an OpenSSH public key"),
        ("ssh-ed25519 AAAA!!!notbase64", "not an OpenSSH public key"),
        ("ssh-ed25519", "not an OpenSSH public key"),
        (b"\xff\xfe", "not text"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "private key"),
        ("sk-ssh-ed25519@openssh.com AAAA", "Security-key"),
    ],
)
def test_garbage_is_refused(text: str | bytes, message: str) -> None:
    """Anything that is not one supported key line gets a message saying so."""
    with pytest.raises(BadPublicKey, match=message):
        parse_public_key(text)


@pytest.mark.interop
def test_two_keys_are_refused(user_key: pathlib.Path) -> None:
    """Exactly one key per request."""
    line = user_key.with_suffix(".pub").read_text().strip()
    with pytest.raises(BadPublicKey, match="exactly one"):
        parse_public_key(line + "\n" + line)
