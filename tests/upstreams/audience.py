"""An HTTP upstream that accepts only access tokens issued for itself: a Streamable HTTP MCP server
behind a check of the bearer token (signature from the issuer's JWKS, `iss`, `aud` = its own
resource URI, the `billing:write` scope). Every Authorization header it receives, accepted or
not, goes to the journal, so a test can prove which credentials reached it (never an agent's).
It refuses the first token it is ever sent, valid or not (as if it had been revoked), so that a
test sees the guard fetch a new one and send the request again.

Run: python -m tests.upstreams.audience PORT ISSUER JOURNAL  (prints "READY <url>")"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import jwt
import mcp_types as types
import uvicorn
from mcp.server import Server, ServerRequestContext
from starlette.types import Receive, Scope, Send

SCOPE = "billing:write"


def build_server() -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"note": {"type": "string"}}, "additionalProperties": False}
        return types.ListToolsResult(
            tools=[types.Tool(name="whoami", description="Say hello", input_schema=schema)]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        note = (params.arguments or {}).get("note", "")
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"hello {note}")])

    return Server("audience", on_list_tools=list_tools, on_call_tool=call_tool)


class Checked:
    """The MCP app behind the token check."""

    def __init__(self, app: Any, resource: str, issuer: str, journal: Path) -> None:
        self.app, self.resource, self.issuer, self.journal = app, resource, issuer, journal
        with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=10) as answer:
            jwks_uri = json.load(answer)["jwks_uri"]
        self.keys = jwt.PyJWKClient(jwks_uri)
        self.first: str | None = None  # the first token sent: refused whenever it comes

    def check(self, authorization: str) -> str | None:
        if not authorization.startswith("Bearer "):
            return "no bearer token"
        token = authorization.removeprefix("Bearer ")
        if self.first is None:
            self.first = token
        if token == self.first:
            return "the first token is refused"
        try:
            key = self.keys.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key, algorithms=["RS256"], audience=self.resource, issuer=self.issuer)
        except jwt.PyJWTError as exc:
            return type(exc).__name__
        return None if SCOPE in str(claims.get("scope", "")).split() else "no scope"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        authorization = headers.get("authorization", "")
        problem = await anyio.to_thread.run_sync(self.check, authorization)
        with self.journal.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"authorization": authorization, "refused": problem}) + "\n")
        if problem is not None:
            await send(
                {"type": "http.response.start", "status": 401, "headers": [(b"www-authenticate", b"Bearer")]}
            )
            await send({"type": "http.response.body", "body": problem.encode()})
            return
        await self.app(scope, receive, send)


def main() -> None:
    port, issuer, journal = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    resource = f"http://127.0.0.1:{port}/mcp"
    app = build_server().streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True
    )
    config = uvicorn.Config(
        Checked(app, resource, issuer, journal), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    print(f"READY {resource}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
