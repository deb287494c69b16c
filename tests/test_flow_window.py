"""Window adjusts batched in one place, and nothing logged on the data path (conch.flow).

Every flow-controlled channel gives consumed bytes back through
`FlowControlledChannel.open_window`, which sends a WINDOW_ADJUST only when
OpenSSH's ``channel_check_window`` would (more than three packets outstanding,
or less than half the window left).  The splice rig of `tests.test_splice`
drives a `FlowControlledConnection` packet by packet on a fake transport: no
sockets, no reactor.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.conch.ssh import common, connection
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher

from teleconch.conch.flow import (
    DEFAULT_MAX_PACKET,
    DEFAULT_WINDOW,
    FlowControlledConnection,
    adjust_due,
)
from teleconch.conch.session import SessionChannel
from teleconch.logs import LogSettings, make_observer
from teleconch.proxy.websession_ssh import WebShell
from tests.test_splice import CLIENT_ID, MAX_PACKET, FakeSSHTransport, Rig, payload

MB = 1 << 20


def _upload(rig: Rig, data: bytes, packet: int) -> None:
    sent = 0
    while sent < len(data):
        n = rig.client.send(data[sent : sent + packet])
        assert n, "the client's window stayed shut: the splice stalled it"
        sent += n


@pytest.mark.parametrize("packet", [MAX_PACKET, 16 * 1024, 4 * 1024, 1024])
def test_a_megabyte_upload_through_a_splice_sends_a_few_dozen_adjusts(
    packet: int,
) -> None:
    """Issue 11: an adjust per chunk cost ~11% of an upload's reactor time.

    Whatever the client's packet size, 1 MiB through a splice with OpenSSH's
    2 MiB window is given back in ~96 KiB steps: about ten adjusts, not one
    per packet (1,024 for 1 KiB packets), and every byte arrives.
    """
    rig = Rig().open()
    data = payload(MB)
    _upload(rig, data, packet)
    assert rig.tcp.value() == data
    adjusts = rig.client.adjusts
    assert 5 <= len(adjusts) <= 24, adjusts
    assert len(adjusts) == rig.chan.adjusts_sent
    # Nothing is lost: what was not given back yet is still counted.
    assert sum(adjusts) + rig.chan.unadjusted == MB
    assert min(adjusts) >= 3 * MAX_PACKET


def test_a_slow_node_still_throttles_the_upload_with_batched_adjusts() -> None:
    """While the node's transport has us paused, consumed bytes are not given
    back; on drain they go in one adjust and the client's window is whole."""
    rig = Rig().open()
    data = payload(3 * DEFAULT_WINDOW)
    sent = rig.client.send(data[:300_000])
    rig.node_full()
    taken = rig.chan.unadjusted  # the node took these before it filled up
    before = len(rig.client.adjusts)
    while True:
        n = rig.client.send(data[sent:])
        if not n:
            break
        sent += n
    # Only what the node took goes back (once, as the window shuts); then none.
    assert sum(rig.client.adjusts[before:]) == taken
    assert rig.client.send_window == 0
    before = len(rig.client.adjusts)
    assert len(rig.tcp.value()) == sent  # at most one window held: in the node's
    rig.node_drained()
    assert len(rig.client.adjusts) == before + 1
    assert rig.client.send_window == DEFAULT_WINDOW


def test_bytes_consumed_one_at_a_time_never_stall_the_peer() -> None:
    """Batching must not strand consumed bytes: with the window at zero, even
    one consumed byte is given back (less than half left), so the peer can go on."""
    rig = Rig().open()
    chan = rig.chan
    assert not adjust_due(DEFAULT_WINDOW, DEFAULT_WINDOW - 100, MAX_PACKET, 100)
    assert adjust_due(DEFAULT_WINDOW, 0, MAX_PACKET, 1)
    assert not adjust_due(DEFAULT_WINDOW, 0, MAX_PACKET, 0)
    rig.node_full()
    data = payload(DEFAULT_WINDOW)
    assert rig.client.send(data) == DEFAULT_WINDOW and rig.client.send_window == 0
    before = len(rig.client.adjusts)
    chan._unreopened = 0  # the node took none of it...
    chan.open_window(1)  # ...but one byte left: it goes back at once
    rig.client.poll()
    assert rig.client.adjusts[before:] == [1] and rig.client.send_window == 1


def _web_shell() -> tuple[WebShell, SessionChannel, FakeSSHTransport]:
    """A web terminal's shell on a real session channel and flow connection."""
    transport = FakeSSHTransport(avatar=None)
    conn = FlowControlledConnection()
    conn.transport = transport  # type: ignore[assignment]
    channel = SessionChannel(window=128 * 1024, auto_window=False, conn=conn)
    conn.openChannel(channel)
    (kind, body) = transport.packets[-1]
    assert kind == connection.MSG_CHANNEL_OPEN
    local_id = struct.unpack(">L", common.getNS(body)[1][:4])[0]
    conn.ssh_CHANNEL_OPEN_CONFIRMATION(
        struct.pack(">4L", local_id, CLIENT_ID, DEFAULT_WINDOW, DEFAULT_MAX_PACKET)
    )

    class Events:
        def shell_ended(self, status: Any) -> None:
            pass

    shell = WebShell(conn, channel, Events())  # type: ignore[arg-type]
    return shell, channel, transport


def test_the_web_terminals_acks_go_through_the_same_batched_window() -> None:
    """A browser acks xterm.js's writes in small pieces; the node's window is
    re-opened in OpenSSH-sized steps through the channel, not once per ack."""
    shell, channel, transport = _web_shell()
    data = b"x" * 1024
    adjusts = 0
    for _ in range(512):  # 512 KiB of output, four windows' worth
        conn = channel.conn
        assert conn is not None
        conn.ssh_CHANNEL_DATA(struct.pack(">2L", channel.id, len(data)) + data)
        shell.consumed(len(data))
    adjusts = sum(
        1 for k, _ in transport.packets if k == connection.MSG_CHANNEL_WINDOW_ADJUST
    )
    assert adjusts == channel.adjusts_sent
    assert 4 <= adjusts <= 12, adjusts
    assert channel.localWindowLeft > 0


def test_the_data_path_emits_no_log_event_and_our_observer_formats_none(
    tmp_path: Path,
) -> None:
    """Issue 11: Conch's adjustWindow emitted a debug event per call, which
    twistd's observer formatted (~8% of an upload).  Through a splice, 1 MiB
    each way emits nothing to the global log publisher, and the process's
    observer (as twistd is given it, at the default info) writes nothing."""
    events: list[LogEvent] = []
    watch = cast(ILogObserver, events.append)
    path = tmp_path / "teleconch.log"
    process_log = make_observer(LogSettings(output=str(path)))
    rig = Rig().open()
    globalLogPublisher.addObserver(watch)
    globalLogPublisher.addObserver(process_log)
    try:
        up, down = payload(MB, seed=5), payload(MB, seed=6)
        sent_up = sent_down = 0
        while sent_up < MB or sent_down < MB:
            sent_up += rig.client.send(up[sent_up : sent_up + 200_000])
            sent_down += rig.node_sends(down[sent_down : sent_down + 200_000])
            rig.client.consume()
    finally:
        globalLogPublisher.removeObserver(watch)
        globalLogPublisher.removeObserver(process_log)
        process_log.close()
    assert rig.tcp.value() == up and bytes(rig.client.received) == down
    assert rig.client.adjusts, "the transfer re-opened the client's window"
    assert [e.get("log_format") for e in events] == []
    assert path.read_text() == ""


def test_a_stock_channels_automatic_adjust_emits_no_debug_event() -> None:
    """Channels left to Conch's automatic re-open (stock ``ssh_CHANNEL_DATA``)
    get our adjustWindow too: no debug event on them either."""
    events: list[LogEvent] = []
    watch = cast(ILogObserver, events.append)
    rig = Rig()
    rig.client.open(kind=b"session")
    rig.client.poll()
    assert rig.client.server_id is not None
    globalLogPublisher.addObserver(watch)
    try:
        for _ in range(3000):  # 3 MB: more than a window, so adjusts go out
            rig.client._send(connection.MSG_CHANNEL_DATA, common.NS(b"y" * 1000))
    finally:
        globalLogPublisher.removeObserver(watch)
    assert rig.client.adjusts
    assert [e for e in events if e["log_level"] is LogLevel.debug] == []
