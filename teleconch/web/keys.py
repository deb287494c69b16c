"""The proxy's keys for web sessions: one per session, in this proxy's memory only.

A web session reaches nodes with a user certificate.  Its private key is made
here and never leaves this process (not to the browser, not to the auth
service, not to disk); the auth service signs its public key, at web login
for the proxy the person logged in at (`CreateWebSession`), and on first use
for any other proxy of the cluster (`SignWebSessionKey`).  A proxy that
restarts simply asks again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.interfaces import IReactorTime

from teleconch.ca import public_key_line

#: Keys of sessions past their end are dropped once this many are held.
PRUNE_AT = 10_000

#: How long before its end a certificate is no longer handed out: a terminal
#: opened with it would be cut off at once.
MARGIN = 30.0


@attrs.frozen
class SessionKey:
    """A private key and the user certificate the auth service signed for it."""

    private_key: ed25519.Ed25519PrivateKey = attrs.field(repr=False)
    certificate: str
    valid_before: float

    @property
    def public_key(self) -> str:
        return public_key_line(self.private_key.public_key())


def new_private_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


Signer = Callable[[str], Awaitable[tuple[str, float]]]
"""Signs a public key line: ``(certificate, valid_before)``."""


class WebSessionKeys:
    """Session id -> `SessionKey`, for the sessions this proxy has served."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._keys: dict[str, SessionKey] = {}
        self._watchers: dict[str, list[Callable[[], None]]] = {}

    def put(self, session_id: str, key: SessionKey) -> None:
        """Keep ``key``; past PRUNE_AT keys, the expired go, then the oldest (a
        dropped key costs its session one more signature, nothing else)."""
        if len(self._keys) >= PRUNE_AT:
            now = self._clock.seconds()
            live = [
                (k, v) for k, v in self._keys.items() if v.valid_before - MARGIN > now
            ]
            self._keys = dict(live[-(PRUNE_AT - 1) :])  # the newest, room for one
        self._keys[session_id] = key

    def count(self) -> int:
        """Keys held (not ``__len__``: an empty cache must not be falsy)."""
        return len(self._keys)

    def get(self, session_id: str) -> SessionKey | None:
        """The session's key, unless its certificate is (nearly) past its end."""
        key = self._keys.get(session_id)
        if key is None or key.valid_before - MARGIN <= self._clock.seconds():
            self._keys.pop(session_id, None)
            return None
        return key

    def forget(self, session_id: str) -> None:
        """The session has ended here (a logout): drop its key, and tell
        whoever watches it (its terminals, which end at once)."""
        self._keys.pop(session_id, None)
        for watcher in self._watchers.pop(session_id, []):
            watcher()

    def watch(self, session_id: str, ended: Callable[[], None]) -> Callable[[], None]:
        """Call ``ended`` when the session is forgotten; returns the un-watch."""
        watchers = self._watchers.setdefault(session_id, [])
        watchers.append(ended)

        def unwatch() -> None:
            found = self._watchers.get(session_id, [])
            if ended in found:
                found.remove(ended)
            if not found:
                self._watchers.pop(session_id, None)

        return unwatch

    async def key_for(self, session_id: str, sign: Signer) -> SessionKey:
        """The session's key, made and signed (by ``sign``) if this proxy has none."""
        found = self.get(session_id)
        if found is not None:
            return found
        private_key = new_private_key()
        certificate, valid_before = await sign(
            public_key_line(private_key.public_key())
        )
        key = SessionKey(private_key, certificate, valid_before)
        self.put(session_id, key)
        return key
