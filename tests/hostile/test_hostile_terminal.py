"""Hostile frames on the web terminal's socket, against a live cluster.

Interop: the cluster runs in this process with a real OpenSSH sshd as the
node; each case opens its own WSS socket (from its own loopback address)
with a real web session's cookie, and writes frames no browser would: a
frame before the token, bytes first, over-long and fragmented messages,
invalid UTF-8, unmasked frames, lying acks, absurd sizes, a ping flood.

Each must end with the server's close frame carrying the expected code
(4001 log in again, 4400 malformed, 4429 too many pings, Autobahn's
1002/1007/1009; a malformed close frame may simply be dropped),
within the budget; no traceback is logged; neither the cookie nor the
bearer appears in any log line; and a real terminal works afterwards.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import pytest_twisted

from tests.harness import current_code
from tests.hostile.logwatch import LogWatch
from tests.hostile.probe import source_address
from tests.hostile.wsframes import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    TEXT,
    frame,
    run_socket,
    text,
    upgrade_request,
)
from tests.test_web_terminal import Node, a_node
from tests.webclient import log_in

pytestmark = pytest.mark.interop

PARAMS = {"server_id": "web1", "login": "root", "term": {"w": 80, "h": 24}}
BUDGET = 8.0
MIB = 1 << 20


def cases(token: bytes) -> list[tuple[str, list[bytes], set[int | None]]]:
    big = b"x" * (64 * 1024)
    return [
        ("text-before-token", [frame(TEXT, b"hello")], {4001}),
        (
            "resize-before-token",
            [text({"type": "resize", "cols": 80, "rows": 24})],
            {4001},
        ),
        ("binary-first-frame", [frame(BINARY, token)], {4001}),
        ("unknown-token", [text({"token": "t" * 43})], {4001}),
        ("token-invalid-utf8", [frame(TEXT, b'{"token": "\xff\xfe"}')], {1007}),
        ("frame-over-1mib", [token, frame(BINARY, b"y" * (MIB + 1))], {1009}),
        (
            "fragments-over-1mib",
            [token, frame(BINARY, big, fin=False)]
            + [frame(CONTINUATION, big, fin=False)] * 17,
            {1009},
        ),
        ("text-invalid-utf8", [token, frame(TEXT, b'{"type": "\xc3\x28"}')], {1007}),
        ("control-not-json", [token, frame(TEXT, b"resize 80x24")], {4400}),
        ("ack-negative", [token, text({"type": "ack", "bytes": -5})], {4400}),
        ("ack-huge", [token, text({"type": "ack", "bytes": 10**15})], {4400}),
        ("ack-more-than-sent", [token, text({"type": "ack", "bytes": 1})], {4400}),
        ("resize-0x0", [token, text({"type": "resize", "cols": 0, "rows": 0})], {4400}),
        (
            "resize-100000",
            [token, text({"type": "resize", "cols": 100000, "rows": 100000})],
            {4400},
        ),
        ("unmasked-frame", [frame(TEXT, token[6:], mask=False)], {1002}),
        ("reserved-bits", [frame(TEXT, b"{}", rsv=0b100)], {1002}),
        ("close-code-999", [frame(CLOSE, struct.pack(">H", 999))], {1002, None}),
        ("ping-flood", [token] + [frame(PING, b"p" * 125)] * 3000, {4429}),
    ]


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_every_hostile_terminal_frame_ends_in_a_clean_close_and_service_goes_on(
    tmp_path: Path,
) -> None:
    # The web terminal tests' world: one sign-up, so the cluster's shifted
    # clock stays within the certificates' 60 s of back-dating for sshd.
    async with a_node(tmp_path) as node:
        await barrage(node)


async def barrage(node: Node) -> None:
    c = node.cluster
    host, port = c.web_addr.host, c.web_addr.port
    alice = node.alice
    secrets = await log_in(
        c.web_addr, alice.name, alice.password, current_code(alice.totp_secret, c.clock)
    )
    token = text({"token": secrets.bearer})
    head = upgrade_request(host, port, secrets.cookie, PARAMS)
    problems: list[str] = []
    with LogWatch() as watch:
        for i, (cid, frames, codes) in enumerate(cases(token)):
            seen = await run_socket(
                host, port, head, frames, BUDGET, source_address(20000 + i)
            )
            code = seen.close_code()
            if seen.status != 101 or code not in codes or not seen.lost:
                problems.append(
                    f"{cid}: HTTP {seen.status}, close {code} (expected {sorted(codes, key=str)}), "
                    f"closed by the server: {seen.lost}; texts {seen.texts()[:3]}"
                )
        after = await run_socket(
            host, port, head, [token, frame(BINARY, b"echo $((6*7)); exit 3\n")],
            15.0, source_address(20999),
        )  # fmt: skip
    exits = [t for t in after.texts() if t.get("type") == "exit"]
    output = b"".join(p for op, p in after.frames if op == BINARY)
    if not (exits and exits[0]["status"] == 3 and b"42" in output):
        problems.append(
            f"a real terminal after the barrage: {after.texts()} {output[-200:]!r}"
        )
    for record in watch.records:
        if record.bad:
            problems.append(f"log: {record.summary()}")
        if secrets.bearer in record.text or secrets.cookie in record.text:
            problems.append(f"a secret in the log: {record.summary()}")
    assert not problems, "\n".join(problems)
