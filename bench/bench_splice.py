"""Queue N node reads behind a closed SSH window, then drain it: stock vs ours.

Stock ``SSHChannel.write`` appends with ``buf += data`` (quadratic in the
bytes queued); `FlowControlledChannel` keeps a deque of chunks. Run:
``python bench/bench_splice.py [reads]``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.conch.ssh.channel import SSHChannel

from teleconch.conch.flow import FlowControlledChannel

READ = 65536
PACKET = 32768


class _Conn:
    """Just enough of an SSHConnection: counts what would go on the wire."""

    def __init__(self) -> None:
        self.sent = 0
        self.channelsToRemoteChannel: dict[Any, int] = {}

    def sendData(self, channel: Any, data: bytes) -> None:
        self.sent += len(data)

    def sendEOF(self, channel: Any) -> None:
        pass

    def sendClose(self, channel: Any) -> None:
        pass


def run(channel: SSHChannel, conn: _Conn, reads: int) -> float:
    chunk = b"x" * READ
    start = time.perf_counter()
    for _ in range(reads):
        channel.write(chunk)
    while conn.sent < reads * READ:
        channel.addWindowBytes(16 * PACKET)
    return time.perf_counter() - start


def main(reads: int) -> None:
    for label, make in (
        ("stock SSHChannel", lambda c: SSHChannel(remoteMaxPacket=PACKET, conn=c)),
        (
            "FlowControlledChannel",
            lambda c: FlowControlledChannel(remoteMaxPacket=PACKET, conn=c),
        ),
    ):
        conn = _Conn()
        channel = make(conn)
        conn.channelsToRemoteChannel[channel] = 0
        seconds = run(channel, conn, reads)
        mb = reads * READ / 1e6
        print(f"{label:>22}: {mb:.0f} MB queued+drained in {seconds:.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
