"""The process log: info by default, bounded files, one line per event."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.logger import LogLevel, formatEvent

from teleconch import config as cfg
from teleconch.logs import LogSettings, format_event, make_observer


def _event(level: LogLevel, fmt: str, **fields: object) -> dict[str, object]:
    return {
        "log_level": level,
        "log_format": fmt,
        "log_namespace": "teleconch.test",
        "log_time": 1_700_000_000.0,
        **fields,
    }


def test_debug_events_are_dropped_before_formatting_at_info(tmp_path: Path) -> None:
    """Nobody asked for debug: such an event is never formatted nor written."""
    formatted: list[str] = []

    class Spy:
        def __format__(self, spec: str) -> str:
            formatted.append(spec)
            return "spy"

    path = tmp_path / "teleconch.log"
    observer = make_observer(LogSettings(output=str(path)))
    observer(_event(LogLevel.debug, "adjusting window {spy}", spy=Spy()))
    observer(_event(LogLevel.info, "proxy listening on {addr}", addr="127.0.0.1:3023"))
    observer.close()
    text = path.read_text()
    assert formatted == []
    assert "adjusting window" not in text
    assert text.count("\n") == 1 and "proxy listening on 127.0.0.1:3023" in text


def test_connection_chatter_is_debug(tmp_path: Path) -> None:
    """Factories starting and AMP connections coming and going are not info lines."""
    path = tmp_path / "teleconch.log"
    observer = make_observer(LogSettings(output=str(path)))
    observer(_event(LogLevel.info, "Starting factory {factory!r}", factory="f"))
    established = "{cls} connection established (HOST:{host} PEER:{peer})"
    observer(_event(LogLevel.info, established, cls="AMP", host="h", peer="p"))
    observer(_event(LogLevel.info, "connection lost"))
    observer.close()
    assert path.read_text() == ""
    debug = make_observer(LogSettings(severity="debug", output=str(path)))
    debug(_event(LogLevel.info, "Starting factory {factory!r}", factory="f"))
    debug.close()
    assert "Starting factory" in path.read_text()


def test_debug_severity_writes_debug_events(tmp_path: Path) -> None:
    """``teleconch.log.severity: debug`` (or --debug) lets them through."""
    path = tmp_path / "teleconch.log"
    observer = make_observer(LogSettings(severity="debug", output=str(path)))
    observer(_event(LogLevel.debug, "adjusting window by {n}", n=32768))
    observer.close()
    assert "adjusting window by 32768" in path.read_text()


def test_a_field_with_a_newline_or_controls_stays_on_one_escaped_line() -> None:
    """A user name cannot forge a second log line or hide text with U+202E."""
    line = format_event(
        _event(LogLevel.info, "audit user={user}", user="eve\n2026 forged\x00\u202e")
    )
    assert line is not None
    assert line.count("\n") == 1 and line.endswith("\n")
    assert "eve\\x0a2026 forged\\x00\\u202e" in line


def test_a_huge_event_is_capped() -> None:
    """One event cannot write a 60,000-character line."""
    line = format_event(_event(LogLevel.info, "user={user}", user="u" * 60_000))
    assert line is not None and len(line) < 8300


def test_the_log_file_rotates_at_its_size_keeping_a_bounded_count(
    tmp_path: Path,
) -> None:
    """max_size and max_backups bound the disk the log can take, whatever is logged."""
    path = tmp_path / "teleconch.log"
    observer = make_observer(
        LogSettings(output=str(path), max_size=10_000, max_backups=3)
    )
    for i in range(2000):
        observer(_event(LogLevel.info, "line {i} {pad}", i=i, pad="x" * 400))
    observer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "teleconch.log",
        "teleconch.log.1",
        "teleconch.log.2",
        "teleconch.log.3",
    ]
    assert all((tmp_path / f).stat().st_size < 11_000 for f in files)
    assert "line 1999" in path.read_text()


def test_log_settings_come_from_the_config_file() -> None:
    """teleconch.log: severity, output, max_size (with units) and max_backups."""
    s = cfg.parse(
        {
            "teleconch": {
                "log": {
                    "severity": "WARN",
                    "output": "/var/log/teleconch.log",
                    "max_size": "2MB",
                    "max_backups": 3,
                }
            }
        }
    )
    assert s.teleconch.log == LogSettings(
        severity="warn",
        output="/var/log/teleconch.log",
        max_size=2 * 1024 * 1024,
        max_backups=3,
    )
    assert cfg.parse({}).teleconch.log == LogSettings()


@pytest.mark.parametrize(
    ("log", "key"),
    [
        ({"severity": "chatty"}, "teleconch.log.severity"),
        ({"max_size": "lots"}, "teleconch.log.max_size"),
        ({"max_backups": -1}, "teleconch.log.max_backups"),
        ({"rotate": 1}, "teleconch.log.rotate"),
    ],
)
def test_a_bad_log_setting_names_its_key(log: dict[str, object], key: str) -> None:
    """Start-up stops naming the key, as for every other setting."""
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse({"teleconch": {"log": log}})
    assert key in str(e.value)


def test_twistd_teleproxy_logs_through_teleconch_observer(tmp_path: Path) -> None:
    """`twistd --logfile F teleproxy` writes F through our filter and rotation."""
    from twisted.scripts._twistd_unix import ServerOptions

    config = tmp_path / "teleconch.yaml"
    config.write_text(
        f"teleconch:\n  data_dir: {tmp_path / 'data'}\n"
        "  log: {max_size: 5000, max_backups: 1}\n"
    )
    log = tmp_path / "twistd.log"
    options = ServerOptions()
    options.parseOptions(
        ["--pidfile=", "--logfile", str(log), "teleproxy", "--config", str(config)]
    )
    assert callable(options["logger"])
    observer = options["logger"]()
    observer(_event(LogLevel.debug, "chatter"))
    for i in range(100):
        observer(_event(LogLevel.info, "event {i} {pad}", i=i, pad="y" * 200))
    observer.close()
    assert "chatter" not in log.read_text()
    assert sorted(p.name for p in tmp_path.glob("twistd.log*")) == [
        "twistd.log",
        "twistd.log.1",
    ]
    assert formatEvent(_event(LogLevel.info, "x")) == "x"
