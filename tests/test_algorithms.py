"""Operator-chosen SSH algorithms: ``proxy_service.ciphers``, ``kex_algos``,
``mac_algos`` (teleconch.algorithms), checked at start-up and applied to the
proxy's SSH listener.

Unit tests parse configs and build transports from the proxy's factory
(no sockets); the interop test reaches a proxy configured with one cipher
with the real OpenSSH client (``ssh -J``, ``ssh -c``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.internet.task import Clock

from teleconch import config as cfg
from teleconch.algorithms import SSHAlgorithms
from teleconch.conch.transport import CIPHERS, ETM_MACS
from teleconch.proxy.ssh import ProxyPolicy, make_factory


def _proxy(**keys_: Any) -> cfg.ProxySettings:
    return cfg.parse({"proxy_service": keys_}, "<test>").proxy


def test_unset_lists_keep_the_transports_defaults_with_weak_ones_off() -> None:
    """No setting: the listener offers what it always did (no CBC, no SHA-1,
    encrypt-then-MAC only), so upgrading changes nothing."""
    assert _proxy().algorithms == SSHAlgorithms()
    transport = _factory(SSHAlgorithms()).buildProtocol(None)
    assert transport.supportedCiphers == CIPHERS
    assert transport.supportedMACs == ETM_MACS
    assert b"diffie-hellman-group1-sha1" not in transport.supportedKeyExchanges


def test_chosen_lists_are_read_in_order_without_repeats() -> None:
    """The order given is the order offered (the client picks its first match)."""
    algorithms = _proxy(
        ciphers=["aes256-gcm@openssh.com", "aes128-ctr", "aes256-gcm@openssh.com"],
        kex_algos=["curve25519-sha256"],
        mac_algos=["hmac-sha2-512-etm@openssh.com"],
    ).algorithms
    assert algorithms.ciphers == (b"aes256-gcm@openssh.com", b"aes128-ctr")
    assert algorithms.kex_algos == (b"curve25519-sha256",)
    assert algorithms.mac_algos == (b"hmac-sha2-512-etm@openssh.com",)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("ciphers", ["aes256-gcm@openssh.com", "3des-cbc"], "'3des-cbc'"),
        ("kex_algos", ["diffie-hellman-group1-sha1"], "'diffie-hellman-group1-sha1'"),
        ("mac_algos", ["hmac-md5"], "'hmac-md5'"),
        ("ciphers", "aes256-gcm@openssh.com", "a non-empty list"),
        ("ciphers", [], "a non-empty list"),
    ],
)
def test_an_unsupported_name_stops_start_up_naming_it_and_what_is_supported(
    key: str, value: Any, named: str
) -> None:
    """A typo or a weak algorithm is refused when the config is read (start-up),
    with the key, the name, and the supported list: never silently ignored."""
    with pytest.raises(cfg.ConfigError) as raised:
        _proxy(**{key: value})
    message = str(raised.value)
    assert message.startswith(f"proxy_service.{key}: ")
    assert named in message and "supported: " in message
    if key == "ciphers":
        assert "chacha20-poly1305@openssh.com" in message


def _factory(algorithms: SSHAlgorithms) -> Any:
    class _Router:
        pass

    host_key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    factory = make_factory(
        _Router(),  # type: ignore[arg-type]
        ProxyPolicy(None, Clock(), lambda: "proxy:3080"),  # type: ignore[arg-type]
        host_key,
        None,
        Clock(),
        algorithms=algorithms,
    )
    factory.startFactory()  # as a listening port does: host keys, moduli
    return factory


def test_the_proxys_ssh_listener_offers_only_the_chosen_algorithms() -> None:
    """Every transport the proxy's factory builds carries the chosen lists,
    which is what its KEXINIT offers."""
    chosen = SSHAlgorithms(
        ciphers=(b"aes256-gcm@openssh.com",),
        kex_algos=(b"curve25519-sha256",),
        mac_algos=(b"hmac-sha2-256-etm@openssh.com",),
    )
    transport = _factory(chosen).buildProtocol(None)
    assert transport.supportedCiphers == [b"aes256-gcm@openssh.com"]
    assert transport.supportedKeyExchanges == [b"curve25519-sha256"]
    assert transport.supportedMACs == [b"hmac-sha2-256-etm@openssh.com"]


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_a_proxy_with_one_cipher_negotiates_it_and_refuses_others(
    tmp_path: Path,
) -> None:
    """Interop (real ssh, sshd): ``ciphers: [aes256-gcm@openssh.com]`` on the
    proxy; ``ssh -J`` gets through and ``-vv`` shows that cipher on the proxy
    hop; ``ssh -c chacha20-poly1305@openssh.com`` to it fails with "no
    matching cipher"."""
    from tests.test_proxy import make_world

    raw = {"proxy_service": {"ciphers": ["aes256-gcm@openssh.com"]}}
    async with make_world(tmp_path, raw) as world:
        jump = f"root@127.0.0.1:{world.proxy_port}"
        r = await world.ssh(
            "-vv", "-J", jump, "root@web1.test.example", "echo", "jumped"
        )
        assert r.code == 0, r.err
        assert r.out == "jumped\n"
        # The jump hop's client logs its choice as "cipher: ... MAC: ..."
        assert re.search(
            r"debug1: kex: server->client cipher: aes256-gcm@openssh.com", r.err
        )
        r = await world.ssh(
            "-c", "chacha20-poly1305@openssh.com", "-p", str(world.proxy_port),
            "root@127.0.0.1", "true",
        )  # fmt: skip
        assert r.code != 0
        assert "no matching cipher" in r.err, r.err
