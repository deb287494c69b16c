"""The config file: defaults, strictness, and the address forms operators write."""

from __future__ import annotations

from pathlib import Path

import pytest

from teleconch import config as cfg


def test_no_config_is_the_all_in_one_on_teleports_ports() -> None:
    """With nothing configured, auth and proxy run together on 3025/3023/3080."""
    s = cfg.load(None)
    assert s.auth.enabled and s.proxy.enabled
    assert cfg.listen_endpoint(s.auth.listen_addr) == "tcp:3025:interface=0.0.0.0"
    assert cfg.listen_endpoint(s.proxy.listen_addr) == "tcp:3023:interface=0.0.0.0"
    assert cfg.listen_endpoint(s.proxy.web_listen_addr) == "tcp:3080:interface=0.0.0.0"
    assert s.data_dir == Path(cfg.DEFAULT_DATA_DIR)
    assert s.auth.session_recording == "node"


def test_unknown_key_names_the_key_and_suggests_the_right_one(tmp_path: Path) -> None:
    """A typo stops start-up with the full key name and a suggestion."""
    path = tmp_path / "t.yaml"
    path.write_text("proxy_service:\n  listen_adr: 0.0.0.0:3023\n")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    assert "proxy_service.listen_adr" in str(e.value)
    assert "did you mean 'listen_addr'" in str(e.value)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (
            {"auth_service": {"session_recording": "sometimes"}},
            "auth_service.session_recording",
        ),
        ({"auth_service": {"enabled": "maybe"}}, "auth_service.enabled"),
        ({"auth_service": {"listen_addr": "nowhere"}}, "auth_service.listen_addr"),
        ({"auth_service": {"listen_addr": "0.0.0.0:99999"}}, "out of range"),
        ({"auth_service": {"cluster_name": "bad name!"}}, "auth_service.cluster_name"),
        ({"teleconch": {"ca_pin": "md5:abc"}}, "teleconch.ca_pin"),
        ({"proxy_service": {"https_cert_file": "/x.crt"}}, "go together"),
        ({"auth_service": {"enabled": False}}, "teleconch.auth_servers"),
        (
            {"auth_service": {"enabled": False}, "proxy_service": {"enabled": False}},
            "no service",
        ),
        ({"bogus": {}}, "unknown key 'bogus'"),
        (
            {"proxy_service": {"max_web_connections_per_address": 0}},
            "proxy_service.max_web_connections_per_address",
        ),
        ({"auth_service": {"node_cert_ttl": "soon"}}, "auth_service.node_cert_ttl"),
        ({"auth_service": {"node_cert_ttl": "10m"}}, "between 1h and 366d"),
        (
            {"auth_service": {"recordings_retention": "soon"}},
            "auth_service.recordings_retention",
        ),
        ({"auth_service": {"recordings_retention": "30m"}}, "shorter than 1h"),
        ({"proxy_service": {"login_grace_time": "soon"}}, "login_grace_time"),
        ({"proxy_service": {"login_grace_time": 0}}, "above 0"),
        ({"proxy_service": {"max_startups": 0}}, "proxy_service.max_startups"),
        ({"proxy_service": {"max_startups": "many"}}, "proxy_service.max_startups"),
        (
            {"proxy_service": {"max_channels_per_connection": -1}},
            "proxy_service.max_channels_per_connection",
        ),
        (
            {"proxy_service": {"max_startups": 5, "max_startups_per_source": 6}},
            "max_startups_per_source cannot be above max_startups",
        ),
        ({"teleconch": {"storage": "sqlite"}}, "teleconch.storage: expected a mapping"),
        ({"teleconch": {"storage": {"type": "mysql"}}}, "teleconch.storage.type"),
        (
            {"teleconch": {"storage": {"path": "/x.db", "pth": 1}}},
            "unknown key 'teleconch.storage.pth'; did you mean 'path'?",
        ),
        ({"teleconch": {"storage": {"path": ""}}}, "teleconch.storage.path"),
    ],
)
def test_bad_values_name_the_key(doc: dict, needle: str) -> None:
    """Each bad value is reported with the key it belongs to."""
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse(doc)
    assert needle in str(e.value)


def test_ssh_limits_have_defaults_and_read_durations() -> None:
    """The proxy's SSH limits: OpenSSH-like defaults; the grace time as a duration."""
    p = cfg.parse({}).proxy
    assert (p.login_grace_time, p.max_startups, p.max_startups_per_source) == (
        30,
        100,
        10,
    )
    assert p.max_channels_per_connection == 64
    p = cfg.parse(
        {"proxy_service": {"login_grace_time": "1m30s", "max_startups": 20,
                           "max_startups_per_source": 3, "max_channels_per_connection": 8}}
    ).proxy  # fmt: skip
    assert (p.login_grace_time, p.max_startups, p.max_startups_per_source) == (
        90,
        20,
        3,
    )
    assert p.max_channels_per_connection == 8
    assert (
        cfg.parse({"proxy_service": {"login_grace_time": 45}}).proxy.login_grace_time
        == 45
    )


def test_invalid_yaml_is_reported_with_the_file(tmp_path: Path) -> None:
    """Broken YAML names the file."""
    path = tmp_path / "t.yaml"
    path.write_text("teleconch: [\n")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    assert str(path) in str(e.value) and "not valid YAML" in str(e.value)


def test_auth_token_may_be_a_file(tmp_path: Path) -> None:
    """As in Teleport, auth_token may name a file holding the token."""
    token = tmp_path / "token"
    token.write_text("abc123\n")
    s = cfg.parse(
        {
            "teleconch": {"auth_token": str(token), "auth_servers": ["auth.example"]},
            "auth_service": {"enabled": False},
        }
    )
    assert s.teleconch.auth_token == "abc123"
    assert s.teleconch.auth_servers == (cfg.HostPort("auth.example", 3025),)


def test_example_config_file_is_valid() -> None:
    """The annotated etc/teleconch.yaml loads as it is shipped."""
    example = Path(__file__).parent.parent / "etc" / "teleconch.yaml"
    s = cfg.load(example)
    assert s.auth.cluster_name


def test_recordings_are_kept_forever_unless_a_retention_is_set() -> None:
    """``recordings_retention`` takes durations (days too) or ``forever``."""
    assert cfg.parse({}).auth.recordings_retention is None
    doc = {"auth_service": {"recordings_retention": "90d"}}
    assert cfg.parse(doc).auth.recordings_retention == 90 * 86400
    doc = {"auth_service": {"recordings_retention": "forever"}}
    assert cfg.parse(doc).auth.recordings_retention is None


def test_node_cert_ttl_is_30_days_unless_set() -> None:
    """Joined nodes' host certificates last 30 days; the key takes durations."""
    assert cfg.parse({}).auth.node_cert_ttl == 30 * 86400
    doc = {"auth_service": {"node_cert_ttl": "720h"}}
    assert cfg.parse(doc).auth.node_cert_ttl == 30 * 86400
    assert (
        cfg.parse({"auth_service": {"node_cert_ttl": "2d"}}).auth.node_cert_ttl
        == 2 * 86400
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3025", cfg.HostPort("127.0.0.1", 3025)),
        ("[::1]:3025", cfg.HostPort("::1", 3025)),
        ("auth.example", cfg.HostPort("auth.example", 3025)),
    ],
)
def test_host_port_forms(text: str, expected: cfg.HostPort) -> None:
    """host:port, [v6]:port and a bare host with the default port."""
    assert cfg.parse_host_port(text, 3025) == expected


def test_listen_addresses_become_endpoint_strings() -> None:
    """Operators' addresses map to endpoint strings; endpoint strings pass through."""
    assert cfg.listen_endpoint("[::]:3023") == "tcp6:3023:interface=\\:\\:"
    assert (
        cfg.listen_endpoint("tcp:0:interface=127.0.0.1") == "tcp:0:interface=127.0.0.1"
    )
    assert cfg.local_dial_addr("0.0.0.0:3025") == cfg.HostPort("127.0.0.1", 3025)
    assert cfg.local_dial_addr("tcp:4000:interface=10.0.0.1") == cfg.HostPort(
        "10.0.0.1", 4000
    )


def test_the_recording_proxy_mode_and_its_host_key_check_are_read() -> None:
    """``session_recording: proxy`` and ``proxy_checks_host_keys`` reach the
    auth settings (defaults: node, yes); an unknown mode is refused."""
    s = cfg.parse(
        {
            "auth_service": {
                "session_recording": "proxy",
                "proxy_checks_host_keys": False,
            }
        }
    )
    assert (s.auth.session_recording, s.auth.proxy_checks_host_keys) == ("proxy", False)
    default = cfg.parse({})
    assert (default.auth.session_recording, default.auth.proxy_checks_host_keys) == (
        "node",
        True,
    )
    with pytest.raises(cfg.ConfigError):
        cfg.parse({"auth_service": {"session_recording": "recorded"}})


def test_storage_is_sqlite_in_the_data_dir_unless_set() -> None:
    """No ``teleconch.storage``: SQLite at its default place; ``path`` moves it."""
    assert cfg.parse({}).teleconch.storage == cfg.StorageSettings("sqlite", None)
    s = cfg.parse({"teleconch": {"storage": {"type": "sqlite", "path": "/db/t.db"}}})
    assert s.teleconch.storage == cfg.StorageSettings("sqlite", Path("/db/t.db"))


def test_postgresql_storage_takes_a_conn_string() -> None:
    """``type: postgresql`` keeps its conn_string (Teleport's key), and no
    SQLite path: the auth service opens PostgreSQL, not a file."""
    url = "postgresql://tc@db.example:5432/teleconch?sslmode=verify-full"
    doc = {"teleconch": {"storage": {"type": "postgresql", "conn_string": url}}}
    s = cfg.parse(doc).teleconch.storage
    assert s == cfg.StorageSettings("postgresql", conn_string=url)
    assert s.path is None


@pytest.mark.parametrize(
    ("storage", "needle"),
    [
        (
            {"type": "postgresql"},
            "teleconch.storage.conn_string: type postgresql needs",
        ),
        ({"type": "postgresql", "conn_string": ""}, "non-empty postgresql:// URI"),
        (
            {"type": "postgresql", "conn_string": "mysql://u:hunter2@h/db"},
            "is not a postgresql:// URI; expected a URI like 'postgresql://",
        ),
        (
            {"type": "postgresql", "conn_string": "postgresql://u:hunter2@/db"},
            "names no host",
        ),
        (
            {"type": "postgresql", "conn_string": "postgresql://u:hunter2@h:99999/d"},
            "is not a valid conn_string",
        ),
        (
            {"type": "postgresql", "conn_string": "postgresql://h/d", "path": "/x"},
            "unknown key 'teleconch.storage.path'",
        ),
        ({"type": "sqlite", "conn_string": "postgresql://h/d"}, "conn_string"),
    ],
)
def test_a_bad_conn_string_is_refused_without_its_password(
    storage: dict, needle: str
) -> None:
    """A missing or malformed conn_string is a ConfigError naming the key and
    showing the form expected, and the password in it never reaches the
    message (it goes to logs and terminals)."""
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse({"teleconch": {"storage": storage}})
    assert needle in str(e.value)
    assert "hunter2" not in str(e.value)


def test_the_settings_repr_hides_the_password() -> None:
    """StorageSettings' repr (which a debug log may print) shows the
    conn_string with its password, in the URI or a query, as ``***``."""
    url = "postgresql://tc:hunter2@db:5432/t?password=hunter3&sslmode=require"
    shown = repr(cfg.StorageSettings("postgresql", conn_string=url))
    assert "hunter2" not in shown and "hunter3" not in shown
    assert "postgresql://tc:***@db:5432/t?password=***&sslmode=require" in shown


def test_the_peer_listener_is_3021_but_loopback_in_the_all_in_one() -> None:
    """Proxy peering listens on 0.0.0.0:3021 once there is a config, and is
    advertised as the public host there; with no config at all (one proxy,
    nobody to peer with) it stays on 127.0.0.1, any port."""
    alone = cfg.load(None)
    assert alone.proxy.peer_listen_addr == "127.0.0.1:0"
    assert alone.proxy.peer_public_addr == cfg.HostPort("127.0.0.1", 0)
    s = cfg.parse({"proxy_service": {"public_addr": "gw1.example:443"}})
    assert cfg.listen_endpoint(s.proxy.peer_listen_addr) == "tcp:3021:interface=0.0.0.0"
    assert s.proxy.peer_public_addr == cfg.HostPort("gw1.example", 0)
    s = cfg.parse({"proxy_service": {"peer_listen_addr": "10.1.2.3:3021"}})
    assert s.proxy.peer_public_addr == cfg.HostPort("10.1.2.3", 0)
    s = cfg.parse(
        {
            "proxy_service": {
                "peer_listen_addr": "[::]:3021",
                "peer_public_addr": "peer.gw1.internal:3021",
            }
        }
    )
    assert s.proxy.peer_public_addr == cfg.HostPort("peer.gw1.internal", 3021)
