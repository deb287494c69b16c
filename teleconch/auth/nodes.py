"""The cluster's members: nodes registered by an administrator or joined,
and the proxies that announce where people reach them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.store import Store
from teleconch.auth.types import Node, ProxyInfo
from teleconch.auth.validation import LABEL, NODE_NAME
from teleconch.config import parse_host_port
from teleconch.pki import ROLE_NODE


def clean_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    """A node's labels as strings, or BadParameter naming the bad one."""
    clean: dict[str, str] = {}
    for key, value in labels.items():
        for item in (str(key), str(value)):
            if not LABEL.fullmatch(item) or "*" in item:
                raise api.BadParameter(f"{item!r} is not a valid label key or value")
        clean[str(key)] = str(value)
    return clean


class Nodes:
    """Registering, listing and removing nodes."""

    def __init__(self, store: Store, clock: IReactorTime, log: AuditLog) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit

    def _now(self) -> float:
        return self._clock.seconds()

    async def upsert_node(
        self, name: str, addr: str, labels: Mapping[str, Any]
    ) -> Node:
        if not NODE_NAME.fullmatch(name):
            raise api.BadParameter(
                f"{name!r} is not a valid node name: letters, digits, '.', '-'"
            )
        try:
            parse_host_port(addr)
        except ValueError as e:
            raise api.BadParameter(f"--addr: {e}") from None
        clean = clean_labels(labels)
        for identity in await self.store.list_identities():
            if name == identity.name or name in identity.principals:
                raise api.AlreadyExistsError(
                    f"{name!r} is the name of the {identity.role} {identity.host_id} "
                    "that joined this cluster: give the node another name"
                )
        existing = await self.store.get_node(name)
        node = Node(
            id=existing.id if existing and existing.name == name else str(uuid.uuid4()),
            name=name,
            addr=addr,
            labels=clean,
            created=existing.created if existing else self._now(),
            cert_expires=existing.cert_expires if existing else 0.0,
        )
        await self.store.upsert_node(node)
        await self.audit("node.upsert", node=name, addr=addr, labels=clean)
        return node

    async def list_nodes(self) -> list[Node]:
        return await self.store.list_nodes()

    async def delete_node(self, name: str) -> None:
        node = await self.store.get_node(name)
        if node is None or not await self.store.delete_node(node.id):
            raise api.NotFoundError(f"no node {name!r}; see `teleconch-ctl nodes ls`")
        # A node that joined itself gives its name up with it, and can no
        # longer renew its certificate: it joins again with a new token.
        joined = [
            i
            for i in await self.store.list_identities()
            if i.host_id == node.id and i.role == ROLE_NODE
        ]
        for identity in joined:
            await self.store.delete_identity(identity.host_id)
        await self.audit("node.delete", node=node.name, id=node.id, joined=bool(joined))


class Proxies:
    """The proxies' announcements, and the address people reach the cluster at."""

    def __init__(
        self, store: Store, clock: IReactorTime, default_public_addr: str
    ) -> None:
        self.store = store
        self._clock = clock
        self._default_public_addr = default_public_addr

    async def heartbeat(self, name: str, public_addr: str, ssh_addr: str) -> None:
        await self.store.upsert_proxy(
            ProxyInfo(
                id=name,
                name=name,
                public_addr=public_addr,
                ssh_addr=ssh_addr,
                last_seen=self._clock.seconds(),
            )
        )

    async def public_addr(self) -> str:
        """The web address people and nodes reach the cluster at."""
        proxies = await self.store.list_proxies()
        if proxies:
            return max(proxies, key=lambda p: p.last_seen).public_addr
        return self._default_public_addr
