"""What counts as "ended with a protocol error", per protocol.

- SSH: the server sent a DISCONNECT (plaintext before keys; after keys the
  crafting client decodes it), or it closed the connection after the input.
  A few inputs may instead be answered as the RFCs say (UNIMPLEMENTED for an
  unknown message, USERAUTH_FAILURE for a bad login request).
- AMP: an error answer box (``_error`` with ``_error_code``) or a close;
  never a normal answer, never a hang.
- HTTP: a complete 4xx answer from the set below whose body is JSON of the
  form ``{"error": {"message": "..."}}``; never a 5xx, never a hang.
- Plain bytes to a TLS port: the server closes.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable

from tests.hostile.cases import (
    AMP,
    HTTP,
    PLAIN_TO_TLS,
    SSH,
    SSH_SECURE,
    UNIMPLEMENTED,
    Case,
    Outcome,
)

# The brief's set, with 401/403: a well-formed but wrong login is refused so,
# 408 (RFC 9110 15.5.9): a head not complete by the server's deadline, and
# 426 (RFC 9110 15.5.22): the terminal's URL asked for without an upgrade.
HTTP_ERRORS = frozenset(
    {400, 401, 403, 404, 405, 408, 411, 413, 414, 415, 417, 426, 431}
)


# --- SSH ---------------------------------------------------------------------


def ssh_packets(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """The server's version line and its plaintext packets, up to its NEWKEYS."""
    end = data.find(b"\n")
    if end < 0:
        return data, []
    version, pos, packets = data[:end].rstrip(b"\r"), end + 1, []
    while len(data) - pos >= 6:
        (length,) = struct.unpack(">L", data[pos : pos + 4])
        if not 5 <= length <= 35000 or len(data) - pos < 4 + length:
            break
        pad = data[pos + 4]
        packets.append((data[pos + 5], data[pos + 6 : pos + 4 + length - pad]))
        pos += 4 + length
        if packets[-1][0] == 21:  # NEWKEYS: what follows is encrypted
            break
    return version, packets


def disconnect_text(payload: bytes) -> str:
    try:
        code, size = struct.unpack(">LL", payload[:8])
        return f"{code} {payload[8 : 8 + size].decode(errors='replace')!r}"
    except struct.error:
        return f"(unparsable) {payload[:80]!r}"


def ssh_disconnect(data: bytes, unimplemented: bool = False) -> str | None:
    for number, payload in ssh_packets(data)[1]:
        if number == 1:
            return "DISCONNECT " + disconnect_text(payload)
        if number == 3 and unimplemented:
            return "UNIMPLEMENTED"
    return None


def done_for(case: Case) -> Callable[[bytes], str | None] | None:
    """For a raw case: what, in the server's bytes so far, ends it."""
    if case.proto == SSH:
        return functools.partial(
            ssh_disconnect, unimplemented=UNIMPLEMENTED in case.answers
        )
    return {AMP: amp_answer, HTTP: http_response}.get(case.proto)


# --- AMP ---------------------------------------------------------------------


def amp_boxes(data: bytes) -> list[dict[bytes, bytes]]:
    boxes: list[dict[bytes, bytes]]
    box: dict[bytes, bytes]
    boxes, box, pos = [], {}, 0
    while len(data) - pos >= 2:
        (klen,) = struct.unpack(">H", data[pos : pos + 2])
        if klen == 0:
            boxes.append(box)
            box, pos = {}, pos + 2
            continue
        if len(data) - pos < 4 + klen:
            break
        key = data[pos + 2 : pos + 2 + klen]
        (vlen,) = struct.unpack(">H", data[pos + 2 + klen : pos + 4 + klen])
        if len(data) - pos < 4 + klen + vlen:
            break
        box[key] = data[pos + 4 + klen : pos + 4 + klen + vlen]
        pos += 4 + klen + vlen
    return boxes


def amp_answer(data: bytes) -> str | None:
    for box in amp_boxes(data):
        if b"_error" in box:
            code = box.get(b"_error_code", b"?").decode(errors="replace")
            text = box.get(b"_error_description", b"").decode(errors="replace")
            return f"error box {code}: {text[:160]!r}"
        if b"_answer" in box:
            return f"ANSWER box with keys {sorted(k.decode(errors='replace') for k in box)}"
    return None


# --- HTTP --------------------------------------------------------------------


def _dechunk(data: bytes) -> bytes | None:
    body, pos = b"", 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(data[pos:eol].split(b";")[0], 16)
        except ValueError:
            return None
        if size == 0:
            return body
        if len(data) < eol + 2 + size + 2:
            return None
        body += data[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def http_parse(
    data: bytes, eof: bool = False
) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) of the first final response, or None if incomplete."""
    pos = 0
    while True:
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            return None
        lines = data[pos:head_end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            return (0, {}, data[pos:])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        rest = data[head_end + 4 :]
        if 100 <= status < 200:
            pos = head_end + 4
            continue
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _dechunk(rest)
        elif "content-length" in headers:
            size = int(headers["content-length"])
            body = rest[:size] if len(rest) >= size else None
        else:
            body = rest if eof else None
        if body is None:
            return (status, headers, rest) if eof else None
        return status, headers, body


def http_response(data: bytes) -> str | None:
    parsed = http_parse(data)
    if parsed is None:
        return None
    status, _, body = parsed
    return f"HTTP {status} {body[:120]!r}"


def json_error_message(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else None


# --- verdicts ----------------------------------------------------------------


def describe(case: Case, received: bytes) -> str:
    """What the server sent, in a line a person can read."""
    if not received:
        return "nothing"
    if case.proto == SSH:
        version, packets = ssh_packets(received)
        return f"{version[:60]!r} then packet types {[n for n, _ in packets]}"
    if case.proto == AMP:
        boxes = amp_boxes(received)
        if boxes:
            return f"{len(boxes)} AMP boxes, first keys {sorted(boxes[0])[:6]}"
    if case.proto == HTTP:
        head = received.split(b"\r\n\r\n")[0]
        return f"{len(received)} bytes: {head[:160]!r}"
    return f"{len(received)} bytes: {received[:80]!r}"


def verdict(case: Case, outcome: Outcome) -> str | None:
    """None when the case ended with a protocol error; else what went wrong."""
    ended, got = outcome.ended, describe(case, outcome.received)
    if ended == "timeout":
        if case.proto == SSH_SECURE:
            return f"not closed after {outcome.seconds:.1f}s{outcome.detail.partition(';')[2]}"
        return f"not closed after {outcome.seconds:.1f}s; the server sent {got}"
    if ended == "flood":
        return f"the server sent over 1 MiB without closing: {got}"
    if ended in ("connect-failed", "kex-failed"):
        return f"{ended}: {outcome.detail}"
    if case.proto in (SSH, SSH_SECURE, PLAIN_TO_TLS):
        return None
    if case.proto == AMP:
        if ended == "answered" and outcome.detail.startswith("ANSWER"):
            return f"answered as if valid: {outcome.detail}"
        return None
    assert case.proto == HTTP
    parsed = http_parse(outcome.received, eof=True)
    if parsed is None:
        return f"closed without a complete HTTP response; the server sent {got}"
    status, headers, body = parsed
    if status >= 500:
        return f"HTTP {status} (a server error); body {body[:120]!r}"
    if status not in HTTP_ERRORS:
        return f"HTTP {status}, not a 4xx protocol error; body {body[:120]!r}"
    if json_error_message(body) is None:
        kind = headers.get("content-type", "no content-type")
        return f"HTTP {status} without a JSON error body ({kind}): {body[:120]!r}"
    return None
