"""The pieces of ``teleconch play`` and ``recordings ls`` that need no proxy
(teleconch.client.recordings, recording_output): pacing by the recorded
times, ``--since``, and the event formats decoded a piece at a time.
Unit tests: a recorded sleep, byte buffers."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

import pytest

from teleconch import recording_format as fmt
from teleconch.client import recordings
from teleconch.client.errors import UsageError
from teleconch.client.keystore import KeyStore, Profile
from teleconch.client.recording_output import EventWriter
from teleconch.client.recordings import Pacer, parse_since


def test_playback_waits_the_recorded_gaps_divided_by_the_speed() -> None:
    """Gaps of 1 s and 4 s at speed 2 wait 0.5 s and 2 s; the first event
    and an event out of order wait nothing."""
    slept: list[float] = []
    pacer = Pacer(2.0, None, slept.append)
    for ms in (0, 1000, 5000, 4000, 5000):
        pacer.wait_for(ms)
    assert slept == [0.5, 2.0]


def test_skip_idle_caps_every_pause_before_the_speed() -> None:
    """With a 1 s cap a 10 s pause at speed 8 waits 1/8 s; a short gap is kept."""
    slept: list[float] = []
    pacer = Pacer(8.0, 1.0, slept.append)
    for ms in (0, 10_000, 10_400):
        pacer.wait_for(ms)
    assert slept == [1 / 8, 0.4 / 8]


def test_a_speed_of_zero_is_refused_with_what_to_give() -> None:
    with pytest.raises(UsageError, match="above 0"):
        Pacer(0, None)


def test_since_is_a_duration_ago_or_a_date() -> None:
    now = 1_800_000_000.0
    assert parse_since("2h", now) == now - 7200
    assert parse_since("2026-12-01", now) == datetime(2026, 12, 1).timestamp()
    assert parse_since("2026-12-01T09:30+00:00", now) == 1_796_117_400.0
    with pytest.raises(UsageError, match="neither a duration"):
        parse_since("yesterday", now)


def test_events_are_written_as_frames_arrive_in_any_pieces() -> None:
    """A recording fed a few bytes at a time gives asciicast and JSON lines
    and the text, with a character split between print events kept whole."""
    euro = "€".encode()
    records = (
        fmt.encode_record(
            "session.start", 0, cols=100, rows=30, login="root", node="web1"
        )
        + fmt.encode_record("print", 10, b"price " + euro[:1])
        + fmt.encode_record("print", 20, euro[1:] + b"5")
        + fmt.encode_record("session.end", 30, exit_code=0, reason="exit")
    )
    stream = fmt.encode_frame(0, records)
    outs = {f: io.BytesIO() for f in ("asciicast", "json", "text")}
    writers = {f: EventWriter(f, out) for f, out in outs.items()}
    reader = fmt.FrameReader()
    for at in range(0, len(stream), 7):
        for event in reader.feed(stream[at : at + 7]):
            for w in writers.values():
                w.write(event)
    reader.end()
    cast = [json.loads(line) for line in outs["asciicast"].getvalue().splitlines()]
    assert (cast[0]["width"], cast[0]["height"]) == (100, 30)
    assert "".join(e[2] for e in cast[1:]) == "price €5"
    kinds = [json.loads(x)["event"] for x in outs["json"].getvalue().splitlines()]
    assert kinds == ["session.start", "print", "print", "session.end"]
    assert outs["text"].getvalue().decode() == "price €5"


def test_a_stream_cut_inside_a_frame_is_an_error_at_its_end() -> None:
    frame = fmt.encode_frame(0, fmt.encode_record("print", 0, b"x"))
    reader = fmt.FrameReader()
    assert reader.feed(frame[:-1]) == []
    with pytest.raises(fmt.BadRecording, match="inside a frame"):
        reader.end()


def test_a_certificate_without_logins_is_told_it_cannot_take_the_ssh_door(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An auditor with no logins has only the no-login principal, which
    OpenSSH will not send as a user name: a clear refusal, not ssh's error."""
    profile = Profile("proxy", "proxy:3080", "proxy:3023", "c", "audrey")
    monkeypatch.setattr(
        recordings, "read_cert", lambda store, p: {"logins": ["-teleconch-nologin-x"]}
    )
    with pytest.raises(UsageError, match="no logins"):
        recordings._hop_login(KeyStore(tmp_path), profile)
    monkeypatch.setattr(
        recordings,
        "read_cert",
        lambda store, p: {"logins": ["-teleconch-nologin-x", "ops"]},
    )
    assert recordings._hop_login(KeyStore(tmp_path), profile) == "ops"
