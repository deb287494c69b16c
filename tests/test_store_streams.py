"""The store suite, byte streams: what recordings rely on, on every backend.

A stream is appended to in order and read by range; a retried upload is
harmless, a gap or a different rewrite is refused, so a proxy that restarts
can resume where the store says the stream ends.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from teleconch.auth.store import (
    AlreadyExists,
    NotFound,
    Store,
    StreamConflict,
    StreamGap,
)
from teleconch.auth.types import StreamInfo
from tests.store_backends import NOW, backend, store

__all__ = ["backend", "store"]  # the fixtures, used by name

#: Three chunks: 0-4, 5-7, 8-15.
CHUNKS = (b"hello", b", w", b"orld! :)")
DATA = b"".join(CHUNKS)


async def _filled(store: Store, stream_id: str = "s") -> None:
    await store.create_stream(stream_id, {"session": stream_id}, NOW)
    offset = 0
    for chunk in CHUNKS:
        offset = await store.append_chunk(stream_id, offset, chunk)


@pytest_twisted.ensureDeferred
async def test_appends_in_order_grow_the_stream(store: Store) -> None:
    """Each append returns the new size; the info says size and meta."""
    await store.create_stream("s", {"session": "s"}, NOW)
    assert await store.stream_size("s") == 0
    assert await store.append_chunk("s", 0, b"hello") == 5
    assert await store.append_chunk("s", 5, b", w") == 8
    assert await store.stream_size("s") == 8
    assert await store.get_stream("s") == StreamInfo("s", {"session": "s"}, NOW, 8)
    assert await store.get_stream("missing") is None


@pytest_twisted.ensureDeferred
async def test_a_stream_id_is_created_once(store: Store) -> None:
    """A second create with the same id is refused and leaves the first alone."""
    await _filled(store)
    with pytest.raises(AlreadyExists):
        await store.create_stream("s", {}, NOW + 1)
    assert await store.read_range("s", 0, 100) == DATA


@pytest_twisted.ensureDeferred
async def test_a_retried_append_of_stored_bytes_is_a_no_op(store: Store) -> None:
    """The same bytes at the same offset again (an upload retried after a
    lost reply) change nothing, for any chunk and any part of one."""
    await _filled(store)
    assert await store.append_chunk("s", 5, b", w") == len(DATA)
    assert await store.append_chunk("s", 0, b"hello") == len(DATA)
    assert await store.append_chunk("s", 3, b"lo, wo") == len(DATA)
    assert await store.append_chunk("s", len(DATA), b"") == len(DATA)
    assert await store.read_range("s", 0, 100) == DATA


@pytest_twisted.ensureDeferred
async def test_a_resumed_upload_overlapping_the_end_adds_only_the_new_bytes(
    store: Store,
) -> None:
    """A proxy that restarts and resends from an earlier offset, with more
    than it had sent, gets the new tail stored once."""
    await _filled(store)
    size = await store.append_chunk("s", 8, b"orld! :) and more")
    assert size == len(DATA) + len(b" and more")
    assert await store.read_range("s", 0, 100) == DATA + b" and more"


@pytest_twisted.ensureDeferred
async def test_an_append_past_the_end_is_refused_and_says_where_to_resume(
    store: Store,
) -> None:
    """A gap is never stored; the error carries the size to resume from."""
    await _filled(store)
    with pytest.raises(StreamGap) as info:
        await store.append_chunk("s", len(DATA) + 1, b"x")
    assert info.value.size == len(DATA)
    assert await store.stream_size("s") == len(DATA)
    with pytest.raises(ValueError, match="negative"):
        await store.append_chunk("s", -1, b"x")


@pytest_twisted.ensureDeferred
async def test_rewriting_stored_bytes_with_others_is_refused(store: Store) -> None:
    """Different bytes over stored ones are refused, whether they lie inside
    the stream or run past its end; nothing of them is stored."""
    await _filled(store)
    with pytest.raises(StreamConflict):
        await store.append_chunk("s", 0, b"HELLO")
    with pytest.raises(StreamConflict):
        await store.append_chunk("s", 14, b"!! and more")
    assert await store.read_range("s", 0, 100) == DATA


@pytest_twisted.ensureDeferred
async def test_racing_appends_at_one_offset_store_one_of_them(store: Store) -> None:
    """Two different chunks sent for the same offset at once: one is stored,
    the other refused, and the identical retry of the winner is accepted."""
    await store.create_stream("s", {}, NOW)
    results = await defer.DeferredList(
        [
            defer.Deferred.fromCoroutine(store.append_chunk("s", 0, data))
            for data in (b"first", b"other", b"first")
        ],
        consumeErrors=True,
    )
    won = [ok for ok, _ in results]
    assert won in ([True, False, True], [False, True, False])
    stored = await store.read_range("s", 0, 100)
    assert stored == (b"first" if won[0] else b"other")


@pytest_twisted.ensureDeferred
async def test_read_range_joins_chunks_across_their_boundaries(
    store: Store,
) -> None:
    """Every range of the stream reads exactly those bytes, wherever it
    starts and ends among the chunks."""
    await _filled(store)
    for start in range(len(DATA) + 2):
        for length in range(len(DATA) + 2 - start):
            got = await store.read_range("s", start, length)
            assert got == DATA[start : start + length], (start, length)


@pytest_twisted.ensureDeferred
async def test_read_range_past_the_end_is_short_or_empty(store: Store) -> None:
    """A range running past the end gets what there is; one starting past
    it, or on an empty stream, gets nothing; a negative one is an error."""
    await _filled(store)
    assert await store.read_range("s", 10, 1000) == DATA[10:]
    assert await store.read_range("s", len(DATA), 10) == b""
    assert await store.read_range("s", 1000, 10) == b""
    await store.create_stream("empty", {}, NOW)
    assert await store.read_range("empty", 0, 10) == b""
    with pytest.raises(ValueError, match="negative"):
        await store.read_range("s", -1, 10)
    with pytest.raises(ValueError, match="negative"):
        await store.read_range("s", 0, -1)


@pytest_twisted.ensureDeferred
async def test_a_complete_stream_takes_no_new_bytes(store: Store) -> None:
    """After complete, new bytes are refused, a retry of stored ones is still
    a no-op, and completing again is harmless."""
    await _filled(store)
    assert await store.complete_stream("s") == len(DATA)
    with pytest.raises(StreamConflict):
        await store.append_chunk("s", len(DATA), b"more")
    assert await store.append_chunk("s", 8, b"orld! :)") == len(DATA)
    assert await store.complete_stream("s") == len(DATA)
    info = await store.get_stream("s")
    assert info is not None and info.complete and info.size == len(DATA)


@pytest_twisted.ensureDeferred
async def test_an_unknown_stream_is_not_found(store: Store) -> None:
    """Every stream call on an id never created raises NotFound, except
    get_stream (None) and delete_stream (False)."""
    with pytest.raises(NotFound):
        await store.stream_size("ghost")
    with pytest.raises(NotFound):
        await store.append_chunk("ghost", 0, b"x")
    with pytest.raises(NotFound):
        await store.read_range("ghost", 0, 1)
    with pytest.raises(NotFound):
        await store.complete_stream("ghost")
    assert await store.get_stream("ghost") is None
    assert await store.delete_stream("ghost") is False


@pytest_twisted.ensureDeferred
async def test_delete_stream_removes_it_and_its_chunks(store: Store) -> None:
    """A deleted stream is gone; one made again with its id starts empty;
    other streams are untouched."""
    await _filled(store, "s")
    await _filled(store, "t")
    assert await store.delete_stream("s") is True
    assert await store.delete_stream("s") is False
    assert await store.get_stream("s") is None
    with pytest.raises(NotFound):
        await store.read_range("s", 0, 1)
    await store.create_stream("s", {}, NOW)
    assert await store.read_range("s", 0, 100) == b""
    assert await store.append_chunk("s", 0, b"new") == 3
    assert await store.read_range("t", 0, 100) == DATA


@pytest_twisted.ensureDeferred
async def test_list_streams_filters_by_time_and_completeness(store: Store) -> None:
    """Oldest first; since inclusive, until exclusive; ``complete`` picks
    finished or unfinished; the limit keeps the newest."""
    for i, sid in enumerate(["a", "b", "c", "d"]):
        await store.create_stream(sid, {"n": i}, NOW + i)
    await store.complete_stream("b")
    await store.complete_stream("c")

    async def ids(**kw: object) -> list[str]:
        return [s.stream_id for s in await store.list_streams(**kw)]  # type: ignore[arg-type]

    assert await ids() == ["a", "b", "c", "d"]
    assert await ids(since=NOW + 1, until=NOW + 3) == ["b", "c"]
    assert await ids(complete=True) == ["b", "c"]
    assert await ids(complete=False) == ["a", "d"]
    assert await ids(limit=2) == ["c", "d"]
    assert await ids(limit=0) == []
    (first,) = await store.list_streams(until=NOW + 1)
    assert first == StreamInfo("a", {"n": 0}, NOW, 0, False)
