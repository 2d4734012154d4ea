"""A header-injecting pass-through proxy for the conformance run, and only for it.

The conformance suite (server mode) connects with a bare URL and has no option to send an
`Authorization` header, while the guard refuses every request without one (and refuses
credentials in the URL, as MCP requires). So the suite talks to this proxy, which adds
`Authorization: Bearer $MCP_GUARD_CONFORMANCE_KEY` to each request and relays everything else
byte for byte both ways, streaming, including the Host and Origin headers the suite chose (so
the guard's DNS-rebinding checks see what the suite sent). The guard itself is unchanged.

Run: MCP_GUARD_CONFORMANCE_KEY=... python tests/conformance/auth_proxy.py PORT UPSTREAM_URL"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import httpx2
import uvicorn

KEY_ENV = "MCP_GUARD_CONFORMANCE_KEY"
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"authorization",
}


class Proxy:
    def __init__(self, upstream: str, key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.key = key
        self.client = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=None))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await self.client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        headers.append((b"authorization", f"Bearer {self.key}".encode()))
        query = f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        request = self.client.build_request(
            scope["method"], self.upstream + scope["path"] + query, headers=headers, content=body
        )
        response = await self.client.send(request, stream=True)
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async with anyio.create_task_group() as tg:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(until_disconnect)
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            await response.aclose()


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    app = Proxy(upstream, os.environ[KEY_ENV])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
