"""The recording format (teleconch.recording_format): frames, events, exports.

Unit tests, no I/O.
"""

from __future__ import annotations

import json

import pytest

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY


def _stream() -> bytes:
    start = fmt.encode_record("session.start", 0, cols=80, rows=24, login="root",
                              node="web1", time=1_700_000_000.0)  # fmt: skip
    one = fmt.encode_record("print", 10, "caf\u00e9 ".encode()[:4], offset=0)
    two = fmt.encode_record("print", 20, "caf\u00e9 ".encode()[4:], offset=4)
    resize = fmt.encode_record("resize", 30, cols=100, rows=30)
    end = fmt.encode_record("session.end", 40, exit_code=0, reason="exit")
    return fmt.encode_frame(0, start + one) + fmt.encode_frame(20, two + resize + end)


def test_a_stream_read_in_pieces_of_any_size_gives_every_event_once() -> None:
    data = _stream()
    for size in (1, 7, 64, len(data)):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        events = list(fmt.decode_stream(pieces))
        assert [e.kind for e in events] == [
            "session.start", "print", "print", "resize", "session.end"
        ]  # fmt: skip
        assert b"".join(fmt.text(events)) == "caf\u00e9 ".encode()


def test_asciicast_keeps_a_character_split_between_two_print_events_whole() -> None:
    lines = list(fmt.asciicast(fmt.decode_stream([_stream()])))
    header = json.loads(lines[0])
    assert (header["version"], header["width"], header["height"]) == (2, 80, 24)
    assert [json.loads(x) for x in lines[1:]] == [
        [0.01, "o", "caf"], [0.02, "o", "\u00e9 "], [0.03, "r", "100x30"]
    ]  # fmt: skip


def test_a_stream_cut_inside_a_frame_is_refused() -> None:
    with pytest.raises(fmt.BadRecording, match="inside a frame"):
        list(fmt.decode_stream([_stream()[:-3]]))


def test_a_frame_claiming_more_than_one_amp_value_is_refused() -> None:
    with pytest.raises(fmt.BadRecording, match="larger"):
        fmt.frame_length(fmt.HEADER.pack(fmt.MAX_FRAME, 0))


def test_proxies_upload_recordings_and_only_admins_read_or_remove_them() -> None:
    """The roles each recording command declares (enforced by the API's one check)."""
    for upload in (api.StartRecording, api.AppendRecording, api.CompleteRecording):
        assert upload.roles == {ROLE_PROXY}
    for admin in (api.ListRecordings, api.ReadRecording, api.DeleteRecording):
        assert admin.roles == {ROLE_ADMIN}
    assert api.GetClusterSettings.roles == {ROLE_ADMIN, ROLE_PROXY}
