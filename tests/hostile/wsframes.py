"""A raw WebSocket client for the terminal's hostile cases: it writes frames
exactly as given (unmasked, reserved bits, invalid UTF-8, over-long), which
no well-behaved client library will, and reads what the server sends back."""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any

import attrs
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from teleconch.pki import anonymous_client_options

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text(message: Any) -> bytes:
    return frame(TEXT, json.dumps(message).encode())


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The server's (unmasked) frames in ``data``, as far as they are complete."""
    frames, pos = [], 0
    while len(data) - pos >= 2:
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            if len(data) - pos < 2:
                break
            (n,) = struct.unpack(">H", data[pos : pos + 2])
            pos += 2
        elif n == 127:
            if len(data) - pos < 8:
                break
            (n,) = struct.unpack(">Q", data[pos : pos + 8])
            pos += 8
        if len(data) - pos < n:
            break
        frames.append((opcode, data[pos : pos + n]))
        pos += n
    return frames


@attrs.define
class Seen:
    """What the server sent on one socket, and how it ended."""

    status: int = 0
    frames: list[tuple[int, bytes]] = attrs.field(factory=list)
    lost: bool = False

    def close_code(self) -> int | None:
        for opcode, payload in self.frames:
            if opcode == CLOSE:
                return (
                    struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                )
        return None

    def texts(self) -> list[dict[str, Any]]:
        out = []
        for opcode, payload in self.frames:
            if opcode == TEXT:
                try:
                    out.append(json.loads(payload))
                except ValueError:
                    out.append({"unparsable": payload[:80].decode(errors="replace")})
        return out


class RawSocket(Protocol):
    """Sends the upgrade, then (after the 101) ``frames``; records the rest."""

    def __init__(
        self, head: bytes, frames: list[bytes], done: defer.Deferred[Seen]
    ) -> None:
        self._head, self._frames, self._done = head, frames, done
        self._buf = b""
        self._upgraded = False
        self.seen = Seen()

    def connectionMade(self) -> None:
        self.transport.write(self._head)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        if not self._upgraded:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.seen.status = int(self._buf.split(b" ", 2)[1])
            self._buf = self._buf[end + 4 :]
            self._upgraded = True
            if self.seen.status != 101:
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            for f in self._frames:
                self.transport.write(f)  # type: ignore[union-attr]
        self.seen.frames = parse_frames(self._buf)
        if self.seen.close_code() is not None:
            # Answer the close as a client does; the server then drops us.
            self.transport.write(frame(CLOSE, b"\x03\xe8"))  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.seen.lost = True
        if not self._done.called:
            self._done.callback(self.seen)


def upgrade_request(host: str, port: int, cookie: str, params: dict[str, Any]) -> bytes:
    from urllib.parse import quote

    key = base64.b64encode(os.urandom(16))
    path = "/v1/webapi/sites/test.example/connect?params=" + quote(json.dumps(params))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {key.decode()}",
        f"Origin: https://{host}:{port}",
        f"Cookie: __Host-session={cookie}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def run_socket(
    host: str, port: int, head: bytes, frames: list[bytes], budget: float, source: str
) -> Seen:
    """One socket: upgrade, the frames, and whatever the server does within ``budget``."""
    done: defer.Deferred[Seen] = defer.Deferred()
    proto = RawSocket(head, frames, done)
    endpoint = wrapClientTLS(
        anonymous_client_options(),
        TCP4ClientEndpoint(reactor, host, port, timeout=5, bindAddress=(source, 0)),
    )
    factory = Factory.forProtocol(lambda: proto)
    await endpoint.connect(factory)
    timer = reactor.callLater(budget, proto.transport.abortConnection)  # type: ignore[union-attr]
    seen = await done
    if timer.active():
        timer.cancel()
    else:
        seen.lost = False  # we gave up: the server had not closed it
    return seen
