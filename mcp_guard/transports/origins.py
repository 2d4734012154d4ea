"""Which Host and Origin headers the HTTP listener accepts (DNS-rebinding protection). Each header
and each allowed pattern is parsed into scheme, host and port and compared exactly, never by
prefix: `http://localhost:1@evil.com` and `http://127.0.0.1:8765.evil.com` are not loopback.
Pure; imports nothing from mcp_guard."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

ANY_PORT = -1
DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")

# An authority as a browser serialises it: a bracketed IPv6 address or a plain name, then an
# optional port. No userinfo, path, query, fragment, whitespace or percent-escapes.
_AUTHORITY = r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}|\*))?"
_HOST = re.compile(rf"{_AUTHORITY}\Z")
_ORIGIN = re.compile(rf"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://{_AUTHORITY}\Z")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed Host or Origin: scheme (None for a Host), host, port (None: not given)."""

    scheme: str | None
    host: str  # lowercase; an IPv6 address in brackets, compressed
    port: int | None  # ANY_PORT only in a pattern (`:*`)

    def effective_port(self) -> int | None:
        if self.port is None and self.scheme is not None:
            return DEFAULT_PORTS[self.scheme]
        return self.port


def parse(text: str, *, origin: bool, pattern: bool = False) -> Address | None:
    """An Origin (`scheme://host[:port]`) or Host (`host[:port]`) header, or a pattern for one
    (`:*` for any port); None when it is anything else."""
    found = (_ORIGIN if origin else _HOST).match(text)
    if found is None:
        return None
    scheme = found.group("scheme").lower() if origin else None
    if scheme is not None and scheme not in DEFAULT_PORTS:
        return None
    host = found.group("host").lower()
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    port_text = found.group("port")
    if port_text == "*" and not pattern:
        return None
    port = None if port_text is None else ANY_PORT if port_text == "*" else int(port_text)
    if port is not None and port > 65535:
        return None
    return Address(scheme, host, port)


def matches(address: Address, allowed: Address) -> bool:
    if (address.scheme, address.host) != (allowed.scheme, allowed.host):
        return False
    return allowed.port == ANY_PORT or address.effective_port() == allowed.effective_port()


@dataclass(frozen=True, slots=True)
class Allowed:
    """The Hosts and Origins a listener accepts, parsed once."""

    hosts: tuple[Address, ...]
    origins: tuple[Address, ...]

    @classmethod
    def of(cls, hosts: Iterable[str], origins: Iterable[str]) -> tuple[Allowed, list[str]]:
        """The patterns, and those that cannot be parsed (they allow nothing)."""
        bad: list[str] = []

        def each(texts: Iterable[str], origin: bool) -> tuple[Address, ...]:
            out = []
            for text in texts:
                parsed = parse(text, origin=origin, pattern=True)
                if parsed is None:
                    bad.append(text)
                else:
                    out.append(parsed)
            return tuple(out)

        return cls(each(hosts, False), each(origins, True)), bad

    def host_ok(self, header: str | None) -> bool:
        """A request must name a Host we answer to."""
        address = parse(header, origin=False) if header else None
        return address is not None and any(matches(address, a) for a in self.hosts)

    def origin_ok(self, header: str | None) -> bool:
        """No Origin (not a browser) is fine; any Origin given must be one we allow. `null`, a
        path, userinfo or another scheme never is."""
        if header is None:
            return True
        address = parse(header, origin=True)
        return address is not None and any(matches(address, a) for a in self.origins)
