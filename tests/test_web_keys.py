"""The proxy's in-memory keys for web sessions stay bounded."""

from __future__ import annotations

from twisted.internet.task import Clock

from teleconch.web.keys import PRUNE_AT, SessionKey, WebSessionKeys, new_private_key


def _key(valid_before: float) -> SessionKey:
    return SessionKey(new_private_key(), "cert", valid_before)


def test_the_keys_stay_bounded_dropping_the_expired_then_the_oldest() -> None:
    """Live sessions alone never grow the cache past PRUNE_AT: the expired go
    first, then the oldest (it is re-signed if its session comes back)."""
    clock = Clock()
    keys = WebSessionKeys(clock)
    key = _key(3600)
    expired = _key(10)
    keys.put("expired", expired)
    for i in range(PRUNE_AT - 1):
        keys.put(f"s{i}", key)
    clock.advance(60)
    keys.put("new", key)
    assert keys.count() == PRUNE_AT and keys.get("expired") is None
    keys.put("newer", key)
    assert keys.count() == PRUNE_AT
    assert keys.get("s0") is None  # the oldest went
    assert keys.get("s1") is key and keys.get("newer") is key
