"""The live-session registry: sessions any proxy lists, each owned by the
proxy that registered it, audited at start and end, and dropped once its
proxy stops reporting it.

Unit tests: an AuthServer on a MemoryStore and a ``task.Clock`` (the
``Cluster`` of test_auth_server_clock); the last one goes through the real
Auth API protocol in memory.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from teleconch.auth import protocol as api
from teleconch.auth.api import AuthAPIFactory
from teleconch.auth.live import STALE_AFTER, STALE_REASON
from teleconch.auth.server import Identity
from teleconch.auth.types import ActiveSession, AuditEvent, Party
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY, TLSAuthority
from tests.amp_memory import Conn, cert_for
from tests.test_auth_server_clock import Cluster, run

PROXY_A = Identity(ROLE_PROXY, "proxy-a")
PROXY_B = Identity(ROLE_PROXY, "proxy-b")


def _session(cluster: Cluster, id: str = "s-1", **kw: Any) -> ActiveSession:
    fields: dict[str, Any] = {
        "id": id,
        "user": "alice",
        "node": "web1",
        "node_id": "n-1",
        "node_addr": "10.0.0.5:22",
        "login": "alice",
        "proxy": "proxy-a",
        "created": cluster.now(),
        "last_active": cluster.now(),
        "cols": 120,
        "rows": 40,
        "parties": (Party("p-1", "alice", "10.0.0.7:50000"),),
    }
    fields.update(kw)
    return ActiveSession(**fields)


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def upsert(cluster: Cluster, caller: Identity, session: ActiveSession) -> None:
    run(cluster.server.upsert_active_session(caller=caller, session=session))


def end(
    cluster: Cluster, caller: Identity, id: str, code: int | None = 0, reason: str = ""
) -> None:
    run(
        cluster.server.end_active_session(
            caller=caller, id=id, exit_code=code, reason=reason or "exited"
        )
    )


def listed(cluster: Cluster) -> list[ActiveSession]:
    return run(cluster.server.list_active_sessions())


def events(cluster: Cluster, event: str) -> list[AuditEvent]:
    return run(cluster.server.search_events(None, None, [event], None, 1000))


def test_a_registered_session_is_listed_and_its_first_registration_audited(
    cluster: Cluster,
) -> None:
    """Registered, then re-registered with a new size and a second party: the
    list shows the latest record; ``session.start`` is written once, with
    the caller's name as the proxy."""
    first = _session(cluster)
    upsert(cluster, PROXY_A, first)
    cluster.clock.advance(10)
    later = attrs.evolve(
        first,
        cols=80,
        rows=24,
        last_active=cluster.now(),
        parties=(*first.parties, Party("p-2", "bob", "10.0.0.8:1", "observer")),
    )
    upsert(cluster, PROXY_A, later)
    assert listed(cluster) == [later]
    (start,) = events(cluster, "session.start")
    assert start.user == "alice"
    assert start.fields == {
        "session_id": "s-1",
        "node": "web1",
        "node_id": "n-1",
        "node_addr": "10.0.0.5:22",
        "login": "alice",
        "size": "120:40",
        "proxy": "proxy-a",
        "kind": "web",
    }


def test_the_proxy_of_a_session_is_the_caller_whatever_the_record_says(
    cluster: Cluster,
) -> None:
    """A record naming another proxy is stored as the caller's."""
    upsert(cluster, PROXY_B, _session(cluster, proxy="proxy-a"))
    assert [s.proxy for s in listed(cluster)] == ["proxy-b"]


def test_sessions_of_every_proxy_are_listed_oldest_first(cluster: Cluster) -> None:
    """Two proxies' sessions, in the order they started."""
    upsert(cluster, PROXY_B, _session(cluster, "s-b"))
    cluster.clock.advance(1)
    upsert(cluster, PROXY_A, _session(cluster, "s-a"))
    assert [(s.id, s.proxy) for s in listed(cluster)] == [
        ("s-b", "proxy-b"),
        ("s-a", "proxy-a"),
    ]


def test_a_session_ends_with_its_exit_status_and_duration(cluster: Cluster) -> None:
    """EndActiveSession removes it and writes ``session.end`` with the exit
    code, the reason and the time since it was created; ending it again is
    NotFoundError."""
    upsert(cluster, PROXY_A, _session(cluster))
    cluster.clock.advance(75)
    end(cluster, PROXY_A, "s-1", 3, "the shell exited")
    assert listed(cluster) == []
    (ended,) = events(cluster, "session.end")
    assert ended.user == "alice"
    assert ended.fields == {
        "session_id": "s-1",
        "node": "web1",
        "login": "alice",
        "proxy": "proxy-a",
        "exit_code": 3,
        "duration": 75.0,
        "reason": "the shell exited",
    }
    with pytest.raises(api.NotFoundError, match="ended already"):
        end(cluster, PROXY_A, "s-1")


def test_a_proxy_cannot_update_or_end_another_proxys_session(
    cluster: Cluster,
) -> None:
    """Proxy B's update and end of proxy A's session are AccessDenied and
    audited; the session stays as A registered it."""
    mine = _session(cluster)
    upsert(cluster, PROXY_A, mine)
    with pytest.raises(api.AccessDenied, match="held by another proxy"):
        upsert(cluster, PROXY_B, attrs.evolve(mine, cols=1, rows=1))
    with pytest.raises(api.AccessDenied):
        end(cluster, PROXY_B, "s-1")
    assert listed(cluster) == [mine]
    denied = events(cluster, "auth.api.denied")
    assert [(e.user, e.fields["command"]) for e in denied] == [
        ("proxy-b", "UpsertActiveSession"),
        ("proxy-b", "EndActiveSession"),
    ]
    assert events(cluster, "session.end") == []


def test_a_session_unheard_of_for_three_heartbeats_drops_out_once(
    cluster: Cluster,
) -> None:
    """Heartbeats keep a session listed; one not heard of for 3 x
    SESSION_HEARTBEAT is dropped at the next listing, with one
    ``session.end`` saying its proxy stopped reporting it."""
    assert STALE_AFTER == 3 * api.SESSION_HEARTBEAT
    kept, lost = _session(cluster, "kept"), _session(cluster, "lost")
    upsert(cluster, PROXY_A, kept)
    upsert(cluster, PROXY_B, lost)
    for _ in range(4):
        cluster.clock.advance(api.SESSION_HEARTBEAT)
        upsert(cluster, PROXY_A, kept)
        if cluster.now() - lost.created < STALE_AFTER:
            assert {s.id for s in listed(cluster)} == {"kept", "lost"}
    assert [s.id for s in listed(cluster)] == ["kept"]
    assert [s.id for s in listed(cluster)] == ["kept"]
    (ended,) = events(cluster, "session.end")
    assert (ended.fields["session_id"], ended.fields["reason"]) == (
        "lost",
        STALE_REASON,
    )
    assert ended.fields["exit_code"] is None
    with pytest.raises(api.NotFoundError):
        end(cluster, PROXY_B, "lost")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": ""}, "session id"),
        ({"id": "x" * 129}, "session id"),
        ({"login": ""}, "user, node and login"),
        ({"cols": 0}, "out of range"),
        ({"rows": 100_000}, "out of range"),
        ({"proxy_addr": "no-port"}, "proxy_addr"),
        ({"proxy_addr": "h:0"}, "proxy_addr"),
        ({"proxy_addr": "h" * 300 + ":3021"}, "proxy_addr"),
    ],
)
def test_a_malformed_registration_is_refused(
    cluster: Cluster, change: dict[str, Any], message: str
) -> None:
    """An empty or overlong id, a missing login, an absurd terminal size, a
    peer address that is not host:port."""
    with pytest.raises(api.BadParameter, match=message):
        upsert(cluster, PROXY_A, _session(cluster, **change))
    assert listed(cluster) == []


def test_live_sessions_through_the_auth_api(cluster: Cluster) -> None:
    """Over AMP the caller's certificate names the proxy; an admin may list
    but not register."""
    tls = TLSAuthority.generate("test.example", 0.0)
    factory = AuthAPIFactory(cluster.server, Clock())
    factory.doStart()
    proxy = Conn(factory, cert=cert_for(tls, ROLE_PROXY, "proxy-z"))
    admin = Conn(factory, cert=cert_for(tls, ROLE_ADMIN, "admin"))
    proxy.call(api.UpsertActiveSession, session=_session(cluster, proxy="someone-else"))
    admin.call(api.UpsertActiveSession, tag=b"2", session=_session(cluster, "s-2"))
    admin.call(api.ListActiveSessions, tag=b"3")
    [registered] = proxy.answers()
    assert b"_error" not in registered
    refused, answer = admin.answers()
    assert refused[b"_error_code"] == b"ACCESS_DENIED"
    sessions = api.ListActiveSessions.decode_response(
        api.ListActiveSessions.parseResponse(answer, admin.proto)
    ).sessions
    assert [(s.id, s.proxy) for s in sessions] == [("s-1", "proxy-z")]
    factory.doStop()
