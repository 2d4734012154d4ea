"""`serve --log-format json`: every record one JSON line, scrubbed and escaped first, uvicorn's too;
in this process for the records, and once as the real command."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mcp_guard.logs import use_format
from mcp_guard.secrets import LOGGER
from tests.helpers import Deployment, guard_env


@pytest.fixture
def json_logs() -> Iterator[None]:
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}  # fmt: skip
    use_format("json")
    try:
        yield
    finally:
        use_format("text")
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate


def test_each_record_is_one_json_line_scrubbed_and_escaped(
    json_logs: None, capsys: pytest.CaptureFixture[str]
):
    LOGGER.warning("upstream 'x': line one\nforged line \x1b[31mred\u202e Bearer abcdefghijklmnop")
    logging.getLogger("uvicorn.error").error("uvicorn says\r\nAuthorization: Bearer zyxwvutsrqponm")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"ts", "level", "logger", "message"}
    assert (first["level"], first["logger"]) == ("warning", "mcp_guard")
    assert first["message"] == "upstream 'x': line one\\nforged line \\x1b[31mred\\u202e [REDACTED]"
    assert first["ts"].endswith("Z")
    assert (second["level"], second["logger"]) == ("error", "uvicorn.error")
    assert second["message"] == "uvicorn says\\r\\nAuthorization: [REDACTED]"
    assert all(line.isascii() for line in lines)


def test_text_stays_the_default(capsys: pytest.CaptureFixture[str]):
    LOGGER.warning("plain")
    assert capsys.readouterr().err == "mcp-guard: plain\n"


def test_the_serve_command_writes_json_lines(deployment: Deployment):
    deployment.with_billing()
    deployment.add("broken", {"server": "broken", "upstream": {"command": "/nonexistent/mcp-upstream"},
                              "tools": {"x": {"allow": []}}})  # fmt: skip
    deployment.write()
    done = subprocess.run(
        [sys.executable, "-m", "mcp_guard", "--config", str(deployment.config_path), "serve",
         "--log-format", "json", "--agent", "support-bot"],
        input=b"", capture_output=True, env=guard_env(), cwd=deployment.root, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert records
    assert any("broken" in r["message"] for r in records), records
