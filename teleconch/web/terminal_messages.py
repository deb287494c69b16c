"""What travels on the web terminal's socket, and what the upgrade asks for.

The browser opens ``wss://<proxy>/v1/webapi/sites/<cluster>/connect?params=<JSON>``
with ``params`` = ``{"server_id": NODE, "login": LOGIN, "term": {"w": COLS,
"h": ROWS}}`` (Teleport's shape), or, to join a live session,
``{"sid": SESSION_ID, "mode": "observer"|"peer", "term": {...}}``.  Its
first frame is the text ``{"token": "<bearer>"}``.  After that, terminal
bytes are binary frames both ways, and control messages are JSON text frames with a ``type``:

- browser -> proxy: ``resize`` ``{cols, rows}``; ``ack`` ``{bytes}``: how many
  output bytes xterm.js has processed since the last ack (flow control);
- proxy -> browser: ``session`` (the session's id, node, login, size and
  the party's ``mode``), ``party`` ``{action: joined|left, user, mode,
  message}`` (someone joined or left), ``exit`` ``{status, signal,
  message}``, ``error`` ``{message}``.

Everything here is pure: parsing raises `BadMessage`, whose text is for the
person at the browser (it goes into an ``error`` frame and the close reason).
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from teleconch.auth.types import Party
from teleconch.conch.session import ExitStatus
from teleconch.proxy.session_protocols import joined_line, left_line

#: A terminal's columns and rows are each 1..MAX_TERMINAL_SIZE.
MAX_TERMINAL_SIZE = 1000
#: The longest node name or login accepted (the router checks the rest).
MAX_NAME = 255
#: The longest control frame (a JSON text message) and bearer token.
MAX_CONTROL_FRAME = 4096
MAX_TOKEN = 1024

# Close codes: 1000 when the shell ended, private-use codes (4000-4999) for
# the rest, shaped after the HTTP status that would say the same.
CLOSE_NORMAL = 1000
CLOSE_FLOOD = (
    4429  # too many pings (HTTP 429; Autobahn lets apps send only 1000 or 4xxx)
)
CLOSE_LOGIN = 4001  # no valid token: log in again
CLOSE_DENIED = 4003  # routing or RBAC refused the node or login
CLOSE_GONE = 4410  # dropped from a joined session: it fell too far behind
CLOSE_MALFORMED = 4400  # a frame the protocol does not allow
CLOSE_TOKEN_LATE = 4408  # no first frame within FIRST_FRAME_SECONDS
CLOSE_INTERNAL = 4500
CLOSE_NODE = 4502  # the node could not be reached, or refused us
CLOSE_UNAVAILABLE = 4503  # the auth service could not be asked

#: The longest close reason the protocol carries (RFC 6455 5.5: 125 - code).
MAX_CLOSE_REASON = 123


class BadMessage(ValueError):
    """A request or frame the protocol does not allow; ``str()`` says why."""


@attrs.frozen
class TermRequest:
    """What the upgrade's ``params`` ask for: a login on a node, at a size."""

    server_id: str
    login: str
    cols: int
    rows: int
    #: Join this live session instead of opening one (Teleport's ``sid``) ...
    session_id: str = ""
    #: ... as ``observer`` or ``peer``; a new session's party is its owner.
    mode: str = "owner"


@attrs.frozen
class Resize:
    cols: int
    rows: int


@attrs.frozen
class Ack:
    bytes: int


def _name(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BadMessage(f"params.{key} must be a non-empty string")
    if len(value) > MAX_NAME or not value.isprintable():
        raise BadMessage(f"params.{key} is too long or holds control characters")
    return value


def _size(value: Any, what: str) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 1 <= value <= MAX_TERMINAL_SIZE
    ):
        raise BadMessage(f"{what} must be a whole number from 1 to {MAX_TERMINAL_SIZE}")
    return value


def _object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadMessage(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadMessage(f"{what} must be a JSON object")
    return data


def parse_params(raw: str | None) -> TermRequest:
    """The upgrade's ``params`` query argument, checked."""
    if raw is None:
        raise BadMessage(
            'the URL needs params={"server_id": ..., "login": ..., "term": {"w": ..., "h": ...}}'
        )
    if len(raw) > MAX_CONTROL_FRAME:
        raise BadMessage("params is too long")
    data = _object(raw, "params")
    term = data.get("term")
    if not isinstance(term, dict):
        raise BadMessage('params.term must be {"w": COLUMNS, "h": ROWS}')
    cols = _size(term.get("w"), "params.term.w")
    rows = _size(term.get("h"), "params.term.h")
    if data.get("sid"):
        mode = data.get("mode", "observer")
        if mode not in ("observer", "peer"):
            raise BadMessage('params.mode must be "observer" or "peer"')
        return TermRequest("", "", cols, rows, _name(data, "sid"), mode)
    return TermRequest(
        server_id=_name(data, "server_id"),
        login=_name(data, "login"),
        cols=cols,
        rows=rows,
    )


def parse_token(payload: bytes, is_binary: bool) -> str:
    """The first frame: the text ``{"token": "<bearer>"}``."""
    if is_binary:
        raise BadMessage('the first message must be the text {"token": ...}, not bytes')
    if len(payload) > MAX_TOKEN + 64:
        raise BadMessage("the first message is too long for a login token")
    data = _object(payload, "the first message")
    token = data.get("token")
    if set(data) != {"token"} or not isinstance(token, str) or not token:
        raise BadMessage('the first message must be {"token": "<your session token>"}')
    return token


def parse_control(payload: bytes) -> Resize | Ack:
    """A control frame from the browser: ``resize`` or ``ack``."""
    if len(payload) > MAX_CONTROL_FRAME:
        raise BadMessage("a control message is too long")
    data = _object(payload, "a control message")
    kind = data.get("type")
    if kind == "resize":
        return Resize(_size(data.get("cols"), "cols"), _size(data.get("rows"), "rows"))
    if kind == "ack":
        n = data.get("bytes")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise BadMessage("ack.bytes must be a whole number of bytes")
        return Ack(n)
    raise BadMessage(f"unknown control message type {kind!r} (expected resize or ack)")


def session_message(
    session_id: str, node: str, login: str, cols: int, rows: int, mode: str = "owner"
) -> dict[str, Any]:
    return {
        "type": "session",
        "id": session_id,
        "node": node,
        "login": login,
        "cols": cols,
        "rows": rows,
        "mode": mode,
    }


def exit_message(status: ExitStatus | None, message: str) -> dict[str, Any]:
    return {
        "type": "exit",
        "status": status.code if status is not None else None,
        "signal": status.signal if status is not None else None,
        "message": message,
    }


def party_message(action: str, party: Party, reason: str = "") -> dict[str, Any]:
    """Someone joined or left the session (``action``: joined | left)."""
    text = joined_line(party) if action == "joined" else left_line(party, reason)
    return {
        "type": "party",
        "action": action,
        "user": party.user,
        "mode": party.mode,
        "message": text,
    }


def error_message(message: str) -> dict[str, Any]:
    return {"type": "error", "message": message}


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame carries, on a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= MAX_CLOSE_REASON:
        return text
    return raw[: MAX_CLOSE_REASON - 3].decode("utf-8", "ignore") + "..."
