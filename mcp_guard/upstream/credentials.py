"""The guard's own short-lived credential toward an HTTP upstream: an OAuth client credentials
token (RFC 6749 section 4.4, with an RFC 8707 resource indicator) fetched from the token endpoint,
renewed before it expires and once after the upstream answers 401. Every token is handed to
`on_secret` as soon as it is fetched, so the guard scrubs it like the client secret. The agent's
credential never comes near: this is the only Authorization an upstream request carries. Knows
nothing of agents or policy."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, Callable, Generator
from urllib.parse import quote

import anyio
import httpx2

from mcp_guard.manifest import ClientCredentials
from mcp_guard.wire import StrictJSONError, parse_strict

FETCH_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_LIFETIME = 300.0
"""Seconds a token is taken to live when the token endpoint says nothing (no `expires_in`)."""
RENEW_BEFORE = 60.0
"""A token is renewed this long before it expires (or at 80% of a shorter life)."""


_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750: what may follow "Bearer "


class TokenUnavailable(httpx2.TransportError):
    """The token endpoint did not give a token: the upstream request is not sent. An HTTP error,
    so the session treats it like an upstream it cannot reach."""


class ClientCredentialsAuth(httpx2.Auth):
    """httpx2 auth for one upstream client: a bearer token from the client credentials grant."""

    requires_request_body = True  # a request refused with 401 is sent again, body and all

    def __init__(
        self,
        settings: ClientCredentials,
        on_secret: Callable[[str], None],
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.on_secret = on_secret
        self.transport = transport
        self.clock = clock
        self.token: str | None = None
        self.renew_at = 0.0
        self.fetched = 0  # tokens fetched so far (for the operator's log and for tests)
        self._lock = anyio.Lock()

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        msg = "client credentials are fetched asynchronously only"
        raise RuntimeError(msg)

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        token = await self.current()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # Revoked, or the upstream's clock disagrees: one fresh token, one more try.
            await response.aread()
            token = await self.current(stale=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    async def current(self, stale: str | None = None) -> str:
        """The token in use; a new one when it is due for renewal, or when it is `stale`."""
        async with self._lock:
            if self.token is None or self.token == stale or self.clock() >= self.renew_at:
                self.token, lifetime = await self._fetch()
                self.fetched += 1
                self.renew_at = self.clock() + max(min(lifetime - RENEW_BEFORE, 0.8 * lifetime), 1.0)
            return self.token

    async def _fetch(self) -> tuple[str, float]:
        cc = self.settings
        secret = cc.client_secret.get_secret_value()
        form = {"grant_type": "client_credentials"}
        if cc.scope:
            form["scope"] = cc.scope
        if cc.resource:
            form["resource"] = cc.resource
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        auth: tuple[str, str] | None = None
        if cc.auth_method == "client_secret_basic":  # RFC 6749 2.3.1: each part form-encoded
            auth = (quote(cc.client_id, safe=""), quote(secret, safe=""))
        else:
            form |= {"client_id": cc.client_id, "client_secret": secret}
        try:
            async with (
                httpx2.AsyncClient(
                    transport=self.transport, timeout=FETCH_TIMEOUT, follow_redirects=False
                ) as client,
                client.stream("POST", cc.token_url, data=form, headers=headers, auth=auth) as response,
            ):
                if response.headers.get("content-encoding", "identity").strip().lower() not in (
                    "",
                    "identity",
                ):
                    msg = f"{cc.token_url}: a compressed token response is refused"
                    raise TokenUnavailable(msg)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        msg = f"{cc.token_url}: the token response is too large"
                        raise TokenUnavailable(msg)
                status = response.status_code
        except TokenUnavailable:
            raise
        except httpx2.HTTPError as exc:
            msg = f"{cc.token_url}: cannot fetch a token ({type(exc).__name__})"
            raise TokenUnavailable(msg) from None
        return self._read(status, bytes(body))

    def _read(self, status: int, body: bytes) -> tuple[str, float]:
        url = self.settings.token_url
        try:
            answer = parse_strict(body, MAX_RESPONSE_BYTES)
        except StrictJSONError:
            answer = None
        if status != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            shown = f" ({str(error)[:64]})" if isinstance(error, str) else ""
            msg = f"{url}: the token endpoint answered HTTP {status}{shown}"
            raise TokenUnavailable(msg)
        token, kind, expires = answer.get("access_token"), answer.get("token_type"), answer.get("expires_in")
        if not isinstance(token, str) or len(token) > 16 * 1024 or not _B64TOKEN.match(token):
            msg = f"{url}: the token endpoint's answer has no usable access_token"
            raise TokenUnavailable(msg)
        self.on_secret(token)  # scrubbed from here on, before it is used or anything can echo it
        if not isinstance(kind, str) or kind.lower() != "bearer":
            msg = f"{url}: the token is not a Bearer token ({str(kind)[:20]!r})"
            raise TokenUnavailable(msg)
        if isinstance(expires, bool) or not isinstance(expires, int | float) or not 0 < expires < 1e9:
            expires = DEFAULT_LIFETIME
        return token, float(expires)
