"""Which SSH algorithms the proxy offers: ``proxy_service.ciphers``, ``kex_algos``,
``mac_algos`` (Teleport's keys, lists of OpenSSH names).

Each list is checked against what our transport implements
(`teleconch.conch.transport`): a name it does not support stops start-up with
a message naming it and listing what is supported.  Unset, a list keeps the
transport's own choice, which leaves the weak ones off (no CBC, no SHA-1, no
encrypt-and-MAC MACs on the server).  The order given is the order offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from teleconch.conch.server import SecureServerTransport
from teleconch.conch.transport import CIPHERS, MACS

__all__ = ["SUPPORTED", "SSHAlgorithms", "parse_algorithm_list"]

#: Config key -> (transport attribute, every name the transport implements).
SUPPORTED: dict[str, tuple[str, tuple[bytes, ...]]] = {
    "ciphers": ("supportedCiphers", tuple(CIPHERS)),
    "kex_algos": (
        "supportedKeyExchanges",
        tuple(SecureServerTransport.supportedKeyExchanges),
    ),
    "mac_algos": ("supportedMACs", tuple(MACS)),
}


@attrs.frozen
class SSHAlgorithms:
    """What an SSH transport offers; None keeps the transport's default."""

    ciphers: tuple[bytes, ...] | None = None
    kex_algos: tuple[bytes, ...] | None = None
    mac_algos: tuple[bytes, ...] | None = None

    def apply(self, transport: Any) -> None:
        """Set the chosen lists on one transport (before it sends KEXINIT)."""
        for key, (attribute, _) in SUPPORTED.items():
            chosen = getattr(self, key)
            if chosen is not None:
                setattr(transport, attribute, list(chosen))


def parse_algorithm_list(key: str, value: Any) -> tuple[bytes, ...]:
    """``value`` (a list of OpenSSH names) for ``key``, checked against the
    transport; ValueError naming what is wrong and what is supported."""
    supported = SUPPORTED[key][1]
    listing = ", ".join(n.decode() for n in supported)
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(
            f"expected a non-empty list of algorithm names (supported: {listing})"
        )
    names: list[bytes] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(
                f"{item!r} is not an algorithm name (supported: {listing})"
            )
        name = item.strip().encode("ascii", "replace")
        if name not in supported:
            raise ValueError(
                f"{item.strip()!r} is not supported by teleconch's SSH transport "
                f"(supported: {listing})"
            )
        if name not in names:
            names.append(name)
    return tuple(names)
