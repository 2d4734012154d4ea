"""The authorization server's signing keys: its metadata discovered from the issuer (OpenID
Connect discovery, else RFC 8414), its JWKS fetched and cached for its `Cache-Control` lifetime (at
most an hour), fetched again at most once per 30 s for a key id it does not know. What cannot be
fetched is never a key: the cached keys go on working, a token needing another is refused.
Imports no mcp, guard or transports; the network only through httpx2."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from mcp_guard.config import OAuthConfig, check_https
from mcp_guard.wire import StrictJSONError, parse_strict

MAX_DOCUMENT_BYTES = 256 * 1024
"""A metadata document or a JWKS larger than this is refused (no provider needs more)."""
MAX_KEYS = 64
FETCH_TIMEOUT = 5.0
MAX_LIFETIME = 3600.0
DEFAULT_LIFETIME = 300.0
"""Seconds a JWKS is kept when the response says nothing of caching."""
MIN_REFETCH = 30.0
"""Seconds between two fetches of the JWKS for a key id it did not hold (or after a failure)."""
MIN_RSA_BITS = 2048
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_STORE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)

# Which keys fit an algorithm: (kty, crv or None). RSA-to-HMAC confusion cannot happen here: no
# HS* algorithm is ever accepted, and a key only verifies the algorithm family it belongs to.
FITS: Mapping[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


class KeysUnavailable(Exception):
    """The issuer's metadata or keys could not be fetched, or were not acceptable."""


def lifetime(cache_control: str | None) -> float:
    """Seconds to keep a JWKS by its Cache-Control: max-age, within [MIN_REFETCH, MAX_LIFETIME]."""
    if not cache_control:
        return DEFAULT_LIFETIME
    if _NO_STORE.search(cache_control):
        return MIN_REFETCH
    found = _MAX_AGE.search(cache_control)
    seconds = float(found.group(1)) if found else DEFAULT_LIFETIME
    return min(max(seconds, MIN_REFETCH), MAX_LIFETIME)


def discovery_urls(issuer: str) -> list[str]:
    """Where the issuer's metadata may be: OpenID Connect discovery (appended to the issuer), then
    RFC 8414 (inserted before the issuer's path)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        f"{origin}{path}/.well-known/openid-configuration",
        f"{origin}/.well-known/oauth-authorization-server{path}",
    ]


@dataclass(frozen=True, slots=True)
class Key:
    """One usable verification key of the JWKS: its id, type, curve and the JWK as published."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    jwk: Mapping[str, Any]
    _made: dict[str, PyJWK] = field(default_factory=dict, compare=False, repr=False)

    def fits(self, alg: str) -> bool:
        kty, curves = FITS.get(alg, ("", None))
        return self.kty == kty and (curves is None or self.crv in curves) and self.alg in (None, alg)

    def verifier(self, alg: str) -> PyJWK:
        """The key as PyJWT verifies with it, bound to `alg` (made once per algorithm); PyJWKError
        if it is unusable."""
        made = self._made.get(alg)
        if made is None:
            made = self._made[alg] = PyJWK(dict(self.jwk), algorithm=alg)
        return made


def parse_jwks(document: Any, log: Callable[[str], None]) -> dict[str | None, Key]:
    """The signing keys of a JWKS by `kid`. Skipped (and logged): keys not for signatures,
    symmetric keys, keys carrying private parts, RSA keys under 2048 bits, types no accepted
    algorithm uses, and every key of a `kid` that is published twice."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable("the JWKS is not an object with a `keys` list")
    keys: dict[str | None, Key] = {}
    twice: set[str | None] = set()
    for index, jwk in enumerate(document["keys"][:MAX_KEYS]):
        problem = _unusable(jwk)
        if problem is not None:
            log(f"oauth: JWKS key {index} skipped: {problem}")
            continue
        kid = jwk.get("kid")
        if kid in keys or kid in twice:
            twice.add(kid)
            keys.pop(kid, None)
            log(f"oauth: JWKS key id {str(kid)[:64]!r} is published twice; neither is used")
            continue
        keys[kid] = Key(kid, jwk["kty"], jwk.get("crv"), jwk.get("alg"), jwk)
    return keys


def _unusable(jwk: Any) -> str | None:
    if not isinstance(jwk, dict):
        return "not an object"
    kid, kty, use = jwk.get("kid"), jwk.get("kty"), jwk.get("use", "sig")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256):
        return "its kid is not a short string"
    if use != "sig":
        return "not a signature key"
    if kty not in ("RSA", "EC", "OKP"):
        return f"key type {str(kty)[:16]!r} is not accepted (symmetric keys never are)"
    if any(part in jwk for part in ("d", "p", "q", "dp", "dq", "qi", "k")):
        return "it carries private key material"
    alg = jwk.get("alg")
    if alg is not None and alg not in FITS:
        return f"its algorithm {str(alg)[:16]!r} is not accepted"
    fits = [name for name in FITS if Key(kid, kty, jwk.get("crv"), alg, jwk).fits(name)]
    if not fits:
        return "no accepted algorithm uses it"
    try:
        loaded = PyJWK(jwk, algorithm=fits[0]).key
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        return f"it cannot be read ({type(exc).__name__})"
    if kty == "RSA" and getattr(loaded, "key_size", 0) < MIN_RSA_BITS:
        return f"RSA keys under {MIN_RSA_BITS} bits are refused"
    return None


class IssuerKeys:
    """The issuer's keys, fetched when first needed and cached (see the module docstring). One
    fetch at a time; the callers that wait for it share its result."""

    def __init__(
        self,
        oauth: OAuthConfig,
        log: Callable[[str], None],
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.oauth = oauth
        self.log = log
        self.transport = transport
        self.clock = clock
        self.keys: dict[str | None, Key] = {}
        self.expires = 0.0
        self.attempted: float | None = None  # when the JWKS was last fetched, or tried
        self.jwks_uri = oauth.jwks_uri
        self._lock = anyio.Lock()

    async def find(self, kid: str | None, alg: str) -> Key | None:
        """The key `kid` (a kid-less token: the one key that fits `alg`), fetching the JWKS when
        the cache has expired or, at most once per MIN_REFETCH, when it lacks that key."""
        cached = self._pick(kid, alg)
        if cached is not None and (self.clock() < self.expires or self._lock.locked()):
            return cached  # fresh, or stale while a refresh is under way: no request waits for it
        async with self._lock:
            if self._may_fetch(kid, alg):
                await self._refresh()
        return self._pick(kid, alg)

    def _may_fetch(self, kid: str | None, alg: str) -> bool:
        now = self.clock()
        if self.attempted is not None and now - self.attempted < MIN_REFETCH:
            return False  # fetched (or tried) a moment ago: for a known key, a failure is not news
        return now >= self.expires or self._pick(kid, alg) is None

    def _pick(self, kid: str | None, alg: str) -> Key | None:
        if kid is not None:
            key = self.keys.get(kid)
            return key if key is not None and key.fits(alg) else None
        fitting = [key for key in self.keys.values() if key.fits(alg)]
        return fitting[0] if len(fitting) == 1 else None

    async def _refresh(self) -> None:
        self.attempted = self.clock()
        try:
            async with httpx2.AsyncClient(
                transport=self.transport, timeout=FETCH_TIMEOUT, follow_redirects=False
            ) as client:
                if self.jwks_uri is None:
                    self.jwks_uri = await self._discover(client)
                document, cache_control = await _fetch(client, self.jwks_uri)
        except KeysUnavailable as exc:
            if self.oauth.jwks_uri is None:
                self.jwks_uri = None  # discover again next time: the keys may have moved
            self.log(f"oauth: cannot fetch the issuer's keys (the cached ones stay in use): {exc}")
            return
        try:
            keys = parse_jwks(document, self.log)
        except KeysUnavailable as exc:
            self.log(f"oauth: the issuer's JWKS is refused (the cached keys stay in use): {exc}")
            return
        self.keys, self.expires = keys, self.clock() + lifetime(cache_control)

    async def _discover(self, client: httpx2.AsyncClient) -> str:
        """The JWKS URL from the issuer's metadata, whose `issuer` must be ours exactly (a document
        that names another issuer is someone else's: RFC 8414 section 3.3)."""
        problems = []
        for url in discovery_urls(self.oauth.issuer):
            try:
                metadata, _ = await _fetch(client, url)
            except KeysUnavailable as exc:
                problems.append(str(exc))
                continue
            if not isinstance(metadata, dict) or metadata.get("issuer") != self.oauth.issuer:
                found = metadata.get("issuer") if isinstance(metadata, dict) else None
                msg = f"{url}: the metadata names issuer {str(found)[:200]!r}, not {self.oauth.issuer!r}"
                raise KeysUnavailable(msg)
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                msg = f"{url}: the metadata has no jwks_uri"
                raise KeysUnavailable(msg)
            try:
                check_https(jwks_uri)
            except ValueError as exc:
                raise KeysUnavailable(f"{url}: jwks_uri {exc}") from None
            if urlsplit(jwks_uri).scheme == "http" and urlsplit(self.oauth.issuer).scheme != "http":
                msg = f"{url}: an https issuer's jwks_uri must be https too"
                raise KeysUnavailable(msg)
            return jwks_uri
        raise KeysUnavailable("; ".join(problems))


async def _fetch(client: httpx2.AsyncClient, url: str) -> tuple[Any, str | None]:
    """One JSON document (strictly parsed, at most MAX_DOCUMENT_BYTES) and its Cache-Control."""
    try:
        async with client.stream(
            "GET", url, headers={"Accept": "application/json", "Accept-Encoding": "identity"}
        ) as response:
            if response.status_code != 200:
                msg = f"{url}: HTTP {response.status_code}"
                raise KeysUnavailable(msg)
            if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
                msg = f"{url}: a compressed document is refused"
                raise KeysUnavailable(msg)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    msg = f"{url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes"
                    raise KeysUnavailable(msg)
            cache_control = response.headers.get("cache-control")
    except httpx2.HTTPError as exc:
        msg = f"{url}: {type(exc).__name__}"
        raise KeysUnavailable(msg) from None
    try:
        return parse_strict(bytes(body), MAX_DOCUMENT_BYTES), cache_control
    except StrictJSONError as exc:
        msg = f"{url}: not JSON ({exc})"
        raise KeysUnavailable(msg) from None
