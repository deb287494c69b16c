"""Addresses as operators write them, and as Twisted's endpoints want them."""

from __future__ import annotations

import ipaddress
import re

import attrs


@attrs.frozen
class HostPort:
    """A ``host:port`` address as operators write it."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_host_port(text: str, default_port: int | None = None) -> HostPort:
    """Read ``host:port``, ``[v6]:port``, or a bare host when a default port is given."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", text)
    if m:
        host, port_text = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text:
        host, port_text = text, None
    else:
        raise ValueError(f"{text!r} is not host:port (write IPv6 as [addr]:port)")
    if not host:
        raise ValueError(f"{text!r} has no host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port; write host:port")
        return HostPort(host, default_port)
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return HostPort(host, port)


def listen_endpoint(text: str) -> str:
    """Turn a listen address into a Twisted server endpoint string.

    ``0.0.0.0:3025`` and ``[::]:3025`` are what operators write; an endpoint
    string (``tcp:3025:interface=127.0.0.1``, ``unix:/run/x.sock``) is taken
    as it is, for those who know Twisted.
    """
    if re.match(r"^(tcp6?|unix|systemd):", text):
        return text
    hp = parse_host_port(text)
    try:
        is_v6 = ipaddress.ip_address(hp.host).version == 6
    except ValueError:
        is_v6 = False
    if is_v6:
        return f"tcp6:{hp.port}:interface={hp.host.replace(':', chr(92) + ':')}"
    return f"tcp:{hp.port}:interface={hp.host}"


def local_dial_addr(listen_addr: str) -> HostPort:
    """Where a client on this machine reaches what listens on ``listen_addr``."""
    m = re.match(r"^tcp6?:(\d+)(?::interface=(.*))?$", listen_addr)
    if m:
        hp = HostPort((m.group(2) or "").replace("\\:", ":"), int(m.group(1)))
    else:
        hp = parse_host_port(listen_addr)
    if hp.host in ("", "0.0.0.0"):
        return HostPort("127.0.0.1", hp.port)
    if hp.host == "::":
        return HostPort("::1", hp.port)
    return hp


def host_of(addr: str) -> str:
    """The host part of an advertised address (``host:port``, ``[v6]:port``
    or a bare host); an address that cannot be read is returned as it is,
    for the caller's own checks to refuse."""
    try:
        return parse_host_port(addr, 0).host
    except ValueError:
        return addr.strip()
