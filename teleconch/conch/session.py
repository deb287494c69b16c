"""A client's ``session`` channel to a node: pty, exec or shell, exit status.

`SessionChannel` is a `FlowControlledChannel`: with ``auto_window=False`` the
node's output only re-opens the window when the consumer calls
``open_window(n)`` after forwarding ``n`` bytes, and ``on_writable`` says when
our own output is queued behind the node's window (pause the source) and when
it has drained.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import attrs
from twisted.conch.ssh import connection
from twisted.conch.ssh.common import NS
from twisted.internet.defer import Deferred

from teleconch.conch.flow import (
    DEFAULT_MAX_PACKET,
    DEFAULT_WINDOW,
    FlowControlledChannel,
)
from teleconch.conch.wire import take_string

__all__ = ["CommandResult", "ExitStatus", "SessionChannel"]

_UINT32 = struct.Struct(">L")
_SIZE = struct.Struct(">4L")


@attrs.frozen
class ExitStatus:
    """How the remote command ended: a `code`, or a `signal` (or neither if
    the node never said)."""

    code: int | None = None
    signal: str | None = None
    core_dumped: bool = False
    message: str = ""


@attrs.frozen
class CommandResult:
    stdout: bytes
    stderr: bytes
    status: ExitStatus


class SessionChannel(FlowControlledChannel):
    """One ``session`` channel opened by the client.

    Output goes to ``on_data`` / ``on_stderr`` if given, else it is collected
    (`stdout`, `stderr`). `opened` fires when the node confirms the channel,
    `exit` with the `ExitStatus` once the channel has closed.
    """

    name = b"session"

    def __init__(
        self,
        *,
        on_data: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        on_eof: Callable[[], None] | None = None,
        on_writable: Callable[[bool], None] | None = None,
        auto_window: bool = True,
        window: int = DEFAULT_WINDOW,
        max_packet: int = DEFAULT_MAX_PACKET,
        conn: connection.SSHConnection | None = None,
    ) -> None:
        super().__init__(window=window, max_packet=max_packet, conn=conn)
        self.on_data, self.on_stderr, self.on_eof = on_data, on_stderr, on_eof
        self.on_writable = on_writable
        self.auto_window = auto_window
        self.opened: Deferred[None] = Deferred()
        self.exit: Deferred[ExitStatus] = Deferred()
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._status = ExitStatus()

    def stdout(self) -> bytes:
        """Output collected so far (when there is no ``on_data``)."""
        return b"".join(self._stdout)

    def stderr(self) -> bytes:
        return b"".join(self._stderr)

    # -- requests ---------------------------------------------------------

    def _request(self, name: bytes, data: bytes) -> Deferred[Any]:
        assert self.conn is not None
        d: Deferred[Any] = self.conn.sendRequest(self, name, data, wantReply=True)
        return d

    async def request_pty(
        self, term: str, cols: int, rows: int, modes: bytes = b"\x00"
    ) -> None:
        """Ask for a pseudo-terminal (RFC 4254 6.2); raises if refused."""
        size = _SIZE.pack(cols, rows, 0, 0)
        await self._request(b"pty-req", NS(term.encode()) + size + NS(modes))

    async def set_env(self, name: str, value: str) -> None:
        await self._request(b"env", NS(name.encode()) + NS(value.encode()))

    async def exec(self, command: str | bytes) -> None:
        """Start `command`; raises if the node refuses."""
        raw = command.encode() if isinstance(command, str) else command
        await self._request(b"exec", NS(raw))

    async def shell(self) -> None:
        await self._request(b"shell", b"")

    def window_change(self, cols: int, rows: int) -> None:
        """Tell the node the terminal's new size (no reply)."""
        assert self.conn is not None
        self.conn.sendRequest(self, b"window-change", _SIZE.pack(cols, rows, 0, 0))

    # -- from the node ------------------------------------------------------

    def channelOpen(self, specificData: bytes) -> None:
        super().channelOpen(specificData)
        self.opened.callback(None)

    def openFailed(self, reason: Any) -> None:
        self.opened.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
        else:
            self._stdout.append(data)
        if self.auto_window:
            self.open_window(len(data))

    def extReceived(self, dataType: int, data: bytes) -> None:
        if dataType == connection.EXTENDED_DATA_STDERR:
            if self.on_stderr is not None:
                self.on_stderr(data)
            else:
                self._stderr.append(data)
        if self.auto_window or dataType != connection.EXTENDED_DATA_STDERR:
            self.open_window(len(data))

    def eofReceived(self) -> None:
        if self.on_eof is not None:
            self.on_eof()

    def request_exit_status(self, data: bytes) -> int:
        self._status = ExitStatus(code=_UINT32.unpack(data[:4])[0])
        return 1

    def request_exit_signal(self, data: bytes) -> int:
        name, rest = take_string(data)
        core = bool(rest[:1] and rest[0])
        message = take_string(rest[1:])[0].decode("utf-8", "replace") if rest else ""
        self._status = ExitStatus(
            signal=name.decode("ascii", "replace"), core_dumped=core, message=message
        )
        return 1

    def closed(self) -> None:
        if not self.exit.called:
            self.exit.callback(self._status)

    def stopWriting(self) -> None:
        if self.on_writable is not None:
            self.on_writable(False)

    def startWriting(self) -> None:
        if self.on_writable is not None:
            self.on_writable(True)
