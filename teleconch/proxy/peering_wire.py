"""Proxy peering's wire: small, bounded frames between two proxies.

A frame is a 4-byte big-endian length N (1..MAX_FRAME), then N bytes: a
type byte and its payload.  ``OUTPUT`` (holder -> joiner) and ``INPUT``
(joiner -> holder) carry terminal bytes, at most MAX_DATA a frame; a
``CONTROL`` frame is one JSON object with a ``type``, at most MAX_CONTROL
bytes.  AMP was the alternative (it is there already), but its 64 KiB
values and request/response shape fit a byte stream badly.

Joiner -> holder: ``join {session_id, party}``, ``resize {cols, rows}``,
``leave {reason}``.  Holder -> joiner: ``attached {session}``,
``session_started {session}``, ``party_joined {party}``, ``party_left
{party, reason}``, ``input_blocked {blocked}``, ``ended {code, signal,
reason}``, ``dropped {reason}``, ``refused {message}``.

Everything here is pure: `decode` raises `BadFrame`, whose text goes to the
log of the proxy that received it (the connection is then closed).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from zope.interface import implementer

from teleconch.auth.types import ActiveSession, BadParameter, Party
from teleconch.conch.session import ExitStatus
from teleconch.proxy.sessions import Ending
from teleconch.text import escape

log = Logger()

CONTROL, OUTPUT, INPUT = 0x01, 0x02, 0x03
#: The largest frame either side accepts (type byte and payload).
MAX_FRAME = 64 * 1024
#: Terminal bytes per frame; more are cut into several frames.
MAX_DATA = 32 * 1024
MAX_CONTROL = 16 * 1024
#: Bounds on what a peer may say of a party.
MAX_ID = 128
MAX_NAME = 255
MAX_ADDR = 262
MAX_REASON = 500
MAX_TERMINAL = 10_000
JOIN_MODES = ("observer", "peer")


class BadFrame(ValueError):
    """A frame the protocol does not allow; ``str()`` says why, for the log."""


# --- the messages --------------------------------------------------------


@attrs.frozen
class Join:
    session_id: str
    party: Party


@attrs.frozen
class Resize:
    cols: int
    rows: int


@attrs.frozen
class Leave:
    reason: str


@attrs.frozen
class Attached:
    session: ActiveSession


@attrs.frozen
class Started:
    session: ActiveSession


@attrs.frozen
class PartyJoined:
    party: Party


@attrs.frozen
class PartyLeft:
    party: Party
    reason: str


@attrs.frozen
class InputBlocked:
    blocked: bool


@attrs.frozen
class Ended:
    ending: Ending


@attrs.frozen
class Dropped:
    reason: str


@attrs.frozen
class Refused:
    message: str


Message = (
    Join
    | Resize
    | Leave
    | Attached
    | Started
    | PartyJoined
    | PartyLeft
    | InputBlocked
    | Ended
    | Dropped
    | Refused
)
#: What each side may be sent.
TO_HOLDER: frozenset[type] = frozenset({Join, Resize, Leave})
TO_JOINER: frozenset[type] = frozenset(
    {Attached, Started, PartyJoined, PartyLeft, InputBlocked, Ended, Dropped, Refused}
)

_NAMES: dict[type, str] = {
    Join: "join",
    Resize: "resize",
    Leave: "leave",
    Attached: "attached",
    Started: "session_started",
    PartyJoined: "party_joined",
    PartyLeft: "party_left",
    InputBlocked: "input_blocked",
    Ended: "ended",
    Dropped: "dropped",
    Refused: "refused",
}
_KINDS = {name: kind for kind, name in _NAMES.items()}


# --- encoding ------------------------------------------------------------


def frame(kind: int, payload: bytes) -> bytes:
    if len(payload) + 1 > MAX_FRAME:
        raise ValueError(f"a frame of {len(payload) + 1} bytes is over {MAX_FRAME}")
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def data_frames(kind: int, data: bytes) -> Iterator[bytes]:
    """``data`` as OUTPUT or INPUT frames of at most MAX_DATA bytes each."""
    for i in range(0, len(data), MAX_DATA):
        yield frame(kind, data[i : i + MAX_DATA])


def _fields(message: Message) -> dict[str, Any]:
    if isinstance(message, Join):
        return {"session_id": message.session_id, "party": message.party.to_json()}
    if isinstance(message, Attached | Started):
        return {"session": message.session.to_json()}
    if isinstance(message, PartyJoined):
        return {"party": message.party.to_json()}
    if isinstance(message, PartyLeft):
        return {"party": message.party.to_json(), "reason": message.reason}
    if isinstance(message, Ended):
        status = message.ending.status
        return {
            "code": status.code if status else None,
            "signal": status.signal if status else None,
            "reason": message.ending.reason,
        }
    return attrs.asdict(message)


def control_frame(message: Message) -> bytes:
    body = {"type": _NAMES[type(message)], **_fields(message)}
    return frame(CONTROL, json.dumps(body, separators=(",", ":")).encode())


# --- decoding ------------------------------------------------------------


def _text(data: Mapping[str, Any], key: str, limit: int, empty: bool = False) -> str:
    value = data.get(key)
    if not isinstance(value, str) or len(value) > limit or not (value or empty):
        raise BadFrame(f"{key!r} must be a string of at most {limit} characters")
    return value


def _size(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if type(value) is not int or not 0 < value <= MAX_TERMINAL:
        raise BadFrame(f"{key!r} must be a whole number from 1 to {MAX_TERMINAL}")
    return value


def _party(value: Any) -> Party:
    if not isinstance(value, Mapping):
        raise BadFrame("'party' must be an object")
    _text(value, "id", MAX_ID)
    _text(value, "user", MAX_NAME)
    _text(value, "remote_addr", MAX_ADDR, empty=True)
    _text(value, "mode", 16)
    try:
        return Party.from_json(value)
    except (KeyError, TypeError, ValueError) as e:
        raise BadFrame(f"'party' is malformed: {e}") from None


def _session(value: Any) -> ActiveSession:
    if not isinstance(value, Mapping):
        raise BadFrame("'session' must be an object")
    try:
        return ActiveSession.from_json(value)
    except BadParameter as e:
        raise BadFrame(str(e)) from None


def _message(kind: type, data: Mapping[str, Any]) -> Message:
    if kind is Join:
        return Join(_text(data, "session_id", MAX_ID), _party(data.get("party")))
    if kind is Resize:
        return Resize(_size(data, "cols"), _size(data, "rows"))
    if kind is Attached:
        return Attached(_session(data.get("session")))
    if kind is Started:
        return Started(_session(data.get("session")))
    if kind is PartyJoined:
        return PartyJoined(_party(data.get("party")))
    if kind is PartyLeft:
        return PartyLeft(_party(data.get("party")), _text(data, "reason", MAX_REASON))
    if kind is InputBlocked:
        blocked = data.get("blocked")
        if not isinstance(blocked, bool):
            raise BadFrame("'blocked' must be true or false")
        return InputBlocked(blocked)
    if kind is Ended:
        code, signal = data.get("code"), data.get("signal")
        if code is not None and type(code) is not int:
            raise BadFrame("'code' must be a whole number or null")
        if signal is not None and not isinstance(signal, str):
            raise BadFrame("'signal' must be a string or null")
        status = ExitStatus(code=code, signal=signal)
        return Ended(Ending(status, _text(data, "reason", MAX_REASON, empty=True)))
    if kind is Leave:
        return Leave(_text(data, "reason", MAX_REASON, empty=True))
    if kind is Dropped:
        return Dropped(_text(data, "reason", MAX_REASON, empty=True))
    return Refused(_text(data, "message", MAX_REASON))


def decode_control(payload: bytes, allowed: frozenset[type]) -> Message:
    """The control message in ``payload``, if it is one this side may be sent."""
    if len(payload) > MAX_CONTROL:
        raise BadFrame(f"a control frame is at most {MAX_CONTROL} bytes")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadFrame("a control frame is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise BadFrame("a control frame is a JSON object")
    kind = _KINDS.get(data.get("type"))  # type: ignore[arg-type]
    if kind is None or kind not in allowed:
        raise BadFrame(f"unexpected control message {str(data.get('type'))[:40]!r}")
    return _message(kind, data)


def split(body: bytes) -> tuple[int, bytes]:
    """A received frame's (type, payload); the length prefix is already off."""
    if not body:
        raise BadFrame("an empty frame")
    return body[0], body[1:]


# --- the protocol both ends share -----------------------------------------


@implementer(IPushProducer)
class WriteBackPressure:
    """Registered on a peer connection's transport: ``paused`` while its send
    buffer is full (the other proxy, or the network, is behind)."""

    def __init__(self, on_resume: Callable[[], None]) -> None:
        self.paused = False
        self._on_resume = on_resume

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self._on_resume()

    def stopProducing(self) -> None:
        self.paused = True


class FrameProtocol(Int32StringReceiver):
    """Frames in and out; a frame this side may not be sent closes the
    connection (only it), logged.  Subclasses say what they may be sent and
    handle it (`message_received`, `data_received`).

    Reading is paused with ``pauseProducing`` (the transport stops reading
    and no buffered frame is handled) and resumed with ``resumeProducing``.
    """

    MAX_LENGTH = MAX_FRAME
    #: The control messages this side may be sent, and its data frames' type.
    allowed: frozenset[type] = frozenset()
    data_kind = 0

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.broken = False
        self.backpressure = WriteBackPressure(self.writable_again)
        self.transport.registerProducer(self.backpressure, True)  # type: ignore[attr-defined]

    @property
    def write_paused(self) -> bool:
        return self.backpressure.paused

    def writable_again(self) -> None:
        """The transport's send buffer has room again."""

    def stringReceived(self, string: bytes) -> None:
        if self.broken:
            return
        try:
            kind, payload = split(string)
            if kind == CONTROL:
                self.message_received(decode_control(payload, self.allowed))
            elif kind == self.data_kind:
                self.data_received(payload)
            else:
                raise BadFrame(f"unexpected frame type {kind}")
        except BadFrame as e:
            self.malformed(str(e))

    def lengthLimitExceeded(self, length: int) -> None:
        self.malformed(f"a frame of {length} bytes is over the {MAX_FRAME} limit")

    def malformed(self, why: str) -> None:
        """Log ``why`` and close this connection at once."""
        self.broken = True
        self.log_refusal(f"{why}; closing the connection")
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def log_refusal(self, why: str) -> None:
        log.warn(
            "proxy peering with {peer}: {why}", peer=self.peer_text(), why=escape(why)
        )

    def peer_text(self) -> str:
        address = self.transport.getPeer() if self.transport else None
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    def message_received(self, message: Message) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close after what is queued (TLS waits for no producer to close)."""
        if self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.transport.loseConnection()

    def send(self, message: Message) -> None:
        if self.transport is not None and not self.broken:
            self.transport.write(control_frame(message))

    def send_data(self, data: bytes) -> None:
        if self.transport is not None and not self.broken and data:
            kind = INPUT if self.data_kind == OUTPUT else OUTPUT
            self.transport.writeSequence(list(data_frames(kind, data)))
