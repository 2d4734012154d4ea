"""The real `mcp-guard serve` command in front of the hostile upstream, which leaks its secret in
every shape it can: what reaches the client over stdio, and what the ledger file on disk holds."""

from __future__ import annotations

import base64
import json

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from mcp_guard.secrets import REDACTED
from tests.helpers import (
    HOSTILE_SECRET,
    TIMEOUT,
    Deployment,
    assert_no_secret,
    dumped,
    ledger_bytes,
    stdio_guard,
)
from tests.upstreams.hostile import LEAK_TAIL

LEAKS = [{"shape": "base64", "prefix": "K"}, {"shape": "split3", "prefix": "KEY="}, {"shape": "structured"}]


async def test_a_secret_in_annotations_base64_binary_and_split_blocks_never_reaches_a_stdio_client(
    deployment: Deployment,
) -> None:
    deployment.with_hostile()
    async with stdio_guard(deployment, "qa-bot") as session:
        with anyio.fail_after(TIMEOUT):
            listed = await session.list_tools()
            results = [await session.call_tool("hostile__leak", leak) for leak in LEAKS]
            image = await session.call_tool("hostile__leak", {"shape": "image", "prefix": "KE"})
            with pytest.raises(MCPError) as refused:
                await session.call_tool(f"hostile__leak{HOSTILE_SECRET}", {})
    assert refused.value.error.code == types.INVALID_PARAMS
    assert_no_secret(
        json.dumps([t.model_dump(mode="json", by_alias=True) for t in listed.tools]), HOSTILE_SECRET
    )
    for result in [*results, image]:
        assert result.is_error is False
        assert_no_secret(dumped(result), HOSTILE_SECRET)
    (block,) = image.content
    assert isinstance(block, types.ImageContent)
    assert base64.b64decode(block.data, validate=True) == b"KE" + REDACTED.encode() + LEAK_TAIL
    assert [e["tool"] for e in deployment.journal("hostile")] == ["leak"] * 4
    rows = deployment.ledger()
    assert rows[-1]["tool"] == f"hostile__leak{REDACTED}"
    assert_no_secret(ledger_bytes(deployment.ledger_path).decode("latin-1"), HOSTILE_SECRET)
