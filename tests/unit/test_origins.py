"""The Host and Origin checks of the HTTP listener as tables: parsed and compared by scheme, host
and port exactly, so no look-alike passes a prefix match."""

from __future__ import annotations

import pytest

from mcp_guard.transports.origins import LOOPBACK_HOSTS, LOOPBACK_ORIGINS, Allowed

CONFIGURED_ORIGINS = ("https://console.example", "http://tools.example:8080")
ALLOWED, BAD = Allowed.of(
    [*LOOPBACK_HOSTS, "guard.example:*", "exact.example:8765", "bare.example"],
    [*LOOPBACK_ORIGINS, *CONFIGURED_ORIGINS],
)


def test_every_default_and_configured_pattern_parses() -> None:
    assert BAD == []


@pytest.mark.parametrize(
    "origin",
    [
        None,  # not a browser
        "http://localhost:6274",
        "http://127.0.0.1:8765",
        "http://[::1]:8765",
        "http://[0:0:0:0:0:0:0:1]:8765",  # the same address, written out
        "http://localhost",  # any port includes the default one
        "http://LOCALHOST:6274",  # host names are case-insensitive
        "HTTP://localhost:6274",
        "https://console.example",
        "https://console.example:443",  # the default port, written out
        "http://tools.example:8080",
    ],
)
def test_a_loopback_or_configured_origin_is_accepted(origin: str | None) -> None:
    assert ALLOWED.origin_ok(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:1@evil.com",  # userinfo: the host is evil.com
        "http://localhost@evil.com",
        "http://evil.com@localhost:1",  # userinfo, even in front of an allowed host
        "http://localhost.evil.com",
        "http://localhost.evil.com:6274",
        "http://127.0.0.1:8765.evil.com",
        "http://127.0.0.1.evil.com:8765",
        "http://localhost.:6274",  # trailing dot: another name to a browser
        "http://[::2]:8765",
        "http://[::1",
        "http://[zz::1]:8765",
        "https://localhost:6274",  # loopback is allowed over http only
        "ws://localhost:6274",
        "file://localhost",
        "null",
        "",
        "localhost:6274",
        "http://localhost:6274/",
        "http://localhost:6274/path",
        "http://localhost:6274?q",
        "http://localhost:6274#f",
        "http://localhost:99999",
        "http://localhost:*",
        "http://localhost:",
        "http://local%68ost:6274",
        "http://localhost :6274",
        "http://localhost:6274\r\nX: y",
        "http://evil.example",
        "https://console.example:8443",  # wrong port
        "http://console.example",  # wrong scheme
        "https://console.example.evil.com",
        "http://tools.example",  # wrong port: 80 is not 8080
        "http://tools.example:80801",
    ],
)
def test_a_look_alike_origin_is_refused(origin: str) -> None:
    assert not ALLOWED.origin_ok(origin)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8765", True),
        ("localhost:8765", True),
        ("[::1]:8765", True),
        ("guard.example:443", True),
        ("GUARD.example:443", True),
        ("exact.example:8765", True),
        ("bare.example", True),
        (None, False),
        ("", False),
        ("localhost:1@evil.com", False),
        ("localhost.evil.com:8765", False),
        ("127.0.0.1:8765.evil.com", False),
        ("localhost.:8765", False),
        ("exact.example:8766", False),
        ("exact.example", False),
        ("bare.example:80", False),
        ("evil.example", False),
        ("evil.example:80", False),
        ("localhost:8765/x", False),
    ],
)
def test_a_host_must_be_one_we_answer_to_exactly(host: str | None, ok: bool) -> None:
    assert ALLOWED.host_ok(host) is ok


def test_a_pattern_that_cannot_be_parsed_allows_nothing_and_is_reported() -> None:
    allowed, bad = Allowed.of(["local host:*"], ["localhost", "http://x:*/path", "ftp://files.example"])
    assert bad == ["local host:*", "localhost", "http://x:*/path", "ftp://files.example"]
    assert allowed.hosts == ()
    assert allowed.origins == ()
    assert not allowed.host_ok("localhost:1")
