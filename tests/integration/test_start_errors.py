"""Why an upstream could not start, in words an operator can act on: the missing file, the exit
status, the HTTP status and URL, the address that cannot be reached, the one that never answered.
Real processes, a real local HTTP server and a real closed port, through the pool."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.manifest import Manifest
from mcp_guard.upstream.pool import open_pool
from tests.helpers import free_port


class _Refusing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(401, "Unauthorized")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mcp"
    finally:
        server.shutdown()
        server.server_close()


def _manifest(server: str, upstream: dict[str, Any], tmp_path: Path) -> Manifest:
    body = {"server": server, "upstream": upstream, "tools": {}}
    return Manifest.model_validate(body).model_copy(update={"source": tmp_path / f"{server}.yaml"})


async def test_each_failure_to_start_says_what_went_wrong(tmp_path: Path, refusing_url: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}/mcp"
    manifests = (
        _manifest("missing", {"command": str(tmp_path / "no-such-server")}, tmp_path),
        _manifest("exits", {"command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]}, tmp_path),
        _manifest(
            "silent", {"command": sys.executable, "args": ["-c", "import time; time.sleep(30)"]}, tmp_path
        ),
        _manifest("refuses", {"url": refusing_url}, tmp_path),
        _manifest("closed", {"url": closed}, tmp_path),
    )
    said: list[str] = []
    async with open_pool(manifests, said.append, wait=1.5) as pool:
        assert pool.catalog is not None
    first = {
        m.server: next(line for line in said if line.startswith(f"upstream {m.server!r}")) for m in manifests
    }
    assert "No such file or directory" in first["missing"]
    assert first["exits"].endswith("could not be started: it exited with status 3")
    assert first["silent"].endswith("could not be started: it did not answer in time")
    assert first["refuses"].endswith(f"could not be started: {refusing_url} answered HTTP 401 Unauthorized")
    assert f"could not be started: cannot reach {closed}: " in first["closed"]
