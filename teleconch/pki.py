"""TLS identities for the Auth API (AMP over mutual TLS).

A caller of the Auth API is known by its TLS client certificate, issued by the
cluster's TLS CA: subject O is the role, CN the identity's name. Keys are ECDSA
P-256. File I/O here blocks; callers run it in a thread.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import pathlib
from collections.abc import Iterable, Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from teleconch.ca import (
    check_private_file,
    ensure_private_directory,
    write_private_file,
)

__all__ = [
    "AUTH_SERVER_NAME",
    "ROLES",
    "ROLE_ADMIN",
    "ROLE_AUTH",
    "ROLE_NODE",
    "ROLE_PROXY",
    "TLSAuthority",
    "TLSIdentity",
    "anonymous_client_options",
    "ca_pin",
    "generate_private_key_pem",
    "issued_by",
    "peer_identity",
    "public_key_pem",
    "self_signed_certificate",
]

ROLE_ADMIN, ROLE_PROXY, ROLE_NODE, ROLE_AUTH = "admin", "proxy", "node", "auth"
ROLES = frozenset({ROLE_ADMIN, ROLE_PROXY, ROLE_NODE, ROLE_AUTH})

#: DNS SAN on every auth server certificate. Clients verify this name whatever
#: address they dialled, so auth servers need no per-address certificates.
AUTH_SERVER_NAME = "teleconch-auth"

CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "tls-ca.crt"
CA_CERT_FILE, CA_KEY_FILE = "tls-ca.crt", "tls-ca.key"

CA_VALIDITY_DAYS = 3650
#: Clock skew tolerated between the auth server and its peers.
BACKDATE_SECONDS = 60


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_pem)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_ec_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an ECDSA private key")
    return key


def _spki_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_private_key_pem() -> bytes:
    """A new ECDSA P-256 key, PKCS8 PEM, unencrypted (it is stored 0600)."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(private_key_pem: bytes) -> bytes:
    """The public half, as a joining peer sends it to be certified."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ca_pin(cert_pem: bytes) -> str:
    """Teleport's CA pin: "sha256:" + hex SHA-256 of the SubjectPublicKeyInfo DER.

    A joining peer checks it before it trusts anything the auth server says.
    """
    spki = _spki_der(_load_cert(cert_pem).public_key())
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `ca_pem` signed `cert_pem` (signature and issuer name).

    Unparseable input is False too: this answers a trust question.
    """
    try:
        _load_cert(cert_pem).verify_directly_issued_by(_load_cert(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _identity_of(cert: x509.Certificate) -> tuple[str, str] | None:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(orgs) != 1 or len(cns) != 1:
        return None
    role, name = orgs[0].value, cns[0].value
    if not isinstance(role, str) or not isinstance(name, str):
        return None
    if role not in ROLES or not name:
        return None
    return role, name


def peer_identity(
    cert: crypto.X509 | x509.Certificate | None,
) -> tuple[str, str] | None:
    """(role, name) of a verified peer, or None for an anonymous one.

    Takes what ``transport.getPeerCertificate()`` returns. Only meaningful on
    a connection whose options verified the certificate against the cluster
    CA (`TLSIdentity.server_options`). A certificate without exactly one known
    role and one name is treated as anonymous.
    """
    if cert is None:
        return None
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    return _identity_of(cert)


def _san(
    dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> x509.SubjectAlternativeName | None:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    return x509.SubjectAlternativeName(names) if names else None


def self_signed_certificate(
    hostnames: Sequence[str], now: float, days: int = 365
) -> tuple[bytes, bytes]:
    """(cert_pem, key_pem) for the proxy's HTTPS listener when none is configured.

    `hostnames` may mix DNS names and IP addresses; the first is the CN.
    """
    if not hostnames:
        raise ValueError("a certificate needs at least one host name")
    dns: list[str] = []
    ips: list[str] = []
    for h in hostnames:
        try:
            ipaddress.ip_address(h)
        except ValueError:
            dns.append(h)
        else:
            ips.append(h)
    key_pem = generate_private_key_pem()
    key = _load_ec_key(key_pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0][:64])])
    san = _san(dns, ips)
    assert san is not None
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - BACKDATE_SECONDS))
        .not_valid_after(_utc(now + days * 86400))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(san, critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), key_pem


def _as_tuple(pems: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(pems)


def _check_key_matches(cert_pem: bytes, key_pem: bytes) -> None:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if _spki_der(key.public_key()) != _spki_der(_load_cert(cert_pem).public_key()):
        raise ValueError("the private key does not match the certificate")


@attrs.frozen
class TLSIdentity:
    """A certificate, its key and the CA certificates this peer trusts."""

    cert_pem: bytes
    key_pem: bytes = attrs.field(repr=False)
    ca_pems: tuple[bytes, ...] = attrs.field(converter=_as_tuple)

    def __attrs_post_init__(self) -> None:
        _check_key_matches(self.cert_pem, self.key_pem)
        if not self.ca_pems:
            raise ValueError("a TLS identity needs at least one CA certificate")

    def _identity(self) -> tuple[str, str]:
        identity = _identity_of(_load_cert(self.cert_pem))
        if identity is None:
            raise ValueError("the certificate names no teleconch role")
        return identity

    @property
    def role(self) -> str:
        return self._identity()[0]

    @property
    def name(self) -> str:
        return self._identity()[1]

    @property
    def not_after(self) -> float:
        return _load_cert(self.cert_pem).not_valid_after_utc.timestamp()

    def save(self, directory: pathlib.Path) -> None:
        """Write tls-ca.crt, tls.key, then tls.crt (whose presence means complete)."""
        ensure_private_directory(directory)
        write_private_file(directory / CA_FILE, b"".join(self.ca_pems))
        write_private_file(directory / KEY_FILE, self.key_pem)
        write_private_file(directory / CERT_FILE, self.cert_pem)

    @classmethod
    def load(cls, directory: pathlib.Path) -> TLSIdentity | None:
        """The identity saved in `directory`, or None if there is none yet."""
        try:
            cert_pem = (directory / CERT_FILE).read_bytes()
        except FileNotFoundError:
            return None
        try:
            key_pem = (directory / KEY_FILE).read_bytes()
            ca_bundle = (directory / CA_FILE).read_bytes()
        except FileNotFoundError as e:
            raise ValueError(
                f"{e.filename} is missing; delete {directory} and join the "
                "cluster again"
            ) from None
        ca_pems = tuple(
            _cert_pem(c) for c in x509.load_pem_x509_certificates(ca_bundle)
        )
        try:
            return cls(cert_pem, key_pem, ca_pems)
        except ValueError as e:
            raise ValueError(
                f"the TLS identity in {directory} is unusable ({e}); delete it "
                "and join the cluster again"
            ) from None

    def _private_certificate(self) -> ssl.PrivateCertificate:
        return ssl.PrivateCertificate.loadPEM(self.cert_pem + b"\n" + self.key_pem)

    def _ca_certificates(self) -> list[ssl.Certificate]:
        return [ssl.Certificate.loadPEM(p) for p in self.ca_pems]

    def server_options(self, require_client: bool = False) -> ssl.CertificateOptions:
        """Present our certificate; verify a client's against the CA, if it sends one.

        For the Auth API a client certificate is not required: anonymous
        callers may reach the join command only, and the AMP layer enforces
        that (proxy peering requires one: ``require_client``). A certificate
        from any other CA fails the handshake.
        """
        return self._options(require=require_client)

    def peer_options(self) -> ssl.CertificateOptions:
        """As a client of another proxy: present our certificate and verify the
        server's chain under our CAs, but no host name (a proxy's certificate
        names its host id, which the caller checks with `peer_identity`)."""
        return self._options(require=True)

    def _options(self, require: bool) -> ssl.CertificateOptions:
        private = self._private_certificate()
        return ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            verify=True,
            caCerts=[c.original for c in self._ca_certificates()],
            requireCertificate=require,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )

    def client_options(
        self, hostname: str = AUTH_SERVER_NAME
    ) -> IOpenSSLClientConnectionCreator:
        """Verify the server as `hostname` under our CAs; present our certificate."""
        return ssl.optionsForClientTLS(
            hostname,
            trustRoot=ssl.trustRootFromCertificates(self._ca_certificates()),
            clientCertificate=self._private_certificate(),
        )


def anonymous_client_options() -> IOpenSSLClientConnectionCreator:
    """TLS that does not verify the server, for a peer joining the cluster only.

    The joiner has no CA certificate yet, only a CA pin from its join token. It
    must, before sending anything but the join request, check the server's
    certificate against the CA it received (`issued_by`) and that CA against
    the pin (`ca_pin`); a man in the middle can pass neither check. The join
    token it sends is single-use and short-lived.
    """
    options: IOpenSSLClientConnectionCreator = ssl.CertificateOptions(
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2
    )
    return options


@attrs.frozen
class TLSAuthority:
    """The cluster's TLS CA: issues the certificates the Auth API knows callers by."""

    cert_pem: bytes
    key_pem: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        _check_key_matches(self.cert_pem, self.key_pem)

    @classmethod
    def generate(cls, cluster_name: str, now: float) -> TLSAuthority:
        """A new 10-year self-signed CA for `cluster_name`."""
        key_pem = generate_private_key_pem()
        key = _load_ec_key(key_pem)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
                x509.NameAttribute(NameOID.COMMON_NAME, cluster_name),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - BACKDATE_SECONDS))
            .not_valid_after(_utc(now + CA_VALIDITY_DAYS * 86400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(_cert_pem(cert), key_pem)

    @classmethod
    def load_or_create(
        cls, directory: pathlib.Path, cluster_name: str, now: float
    ) -> TLSAuthority:
        """The CA in `directory` (tls-ca.crt, tls-ca.key), made on first start.

        A key readable by others is refused (`teleconch.ca.CAKeyError`).
        """
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if not cert_path.exists() and not key_path.exists():
            authority = cls.generate(cluster_name, now)
            ensure_private_directory(directory)
            write_private_file(key_path, authority.key_pem)
            write_private_file(cert_path, authority.cert_pem)
            return authority
        try:
            check_private_file(key_path)
            return cls(cert_path.read_bytes(), key_path.read_bytes())
        except FileNotFoundError as e:
            raise ValueError(
                f"{e.filename} is missing: restore it from a backup"
            ) from None

    @property
    def pin(self) -> str:
        """What `teleconch-ctl tokens add` prints for joiners to check."""
        return ca_pin(self.cert_pem)

    def issue(
        self,
        public_key_pem: bytes,
        role: str,
        name: str,
        now: float,
        ttl: float,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> bytes:
        """A leaf certificate naming `role` (O) and `name` (CN), usable both ways."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if not name:
            raise ValueError("an identity needs a name")
        subject_key = serialization.load_pem_public_key(public_key_pem)
        if isinstance(subject_key, rsa.RSAPublicKey):
            if subject_key.key_size < 2048:
                raise ValueError("RSA keys must have at least 2048 bits")
        elif not isinstance(
            subject_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)
        ):
            raise ValueError("unsupported key type: use ECDSA P-256")
        ca_cert = _load_cert(self.cert_pem)
        ca_key = _load_ec_key(self.key_pem)
        not_after = min(_utc(now + ttl), ca_cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, role),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(subject_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - BACKDATE_SECONDS))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        san = _san(dns_names, ip_addresses)
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return _cert_pem(builder.sign(ca_key, hashes.SHA256()))

    def issue_identity(
        self,
        role: str,
        name: str,
        now: float,
        ttl: float,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> TLSIdentity:
        """Key and certificate together, for identities the auth server makes itself."""
        key_pem = generate_private_key_pem()
        cert_pem = self.issue(
            public_key_pem(key_pem), role, name, now, ttl, dns_names, ip_addresses
        )
        return TLSIdentity(cert_pem, key_pem, (self.cert_pem,))
