"""Call journal for the example upstreams: one JSON line per tools/call, written before the tool runs.

Tests read it to prove what reached an upstream (or that nothing did). A server run as a process
finds its journal in the environment; one built in-process is handed its path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mcp.types as types
from mcp.server import ServerRequestContext

JOURNAL_ENV = "MCP_GUARD_EXAMPLE_JOURNAL"
"""Environment variable naming the journal file; unset or empty means no journal."""


def journal_path() -> Path | None:
    """The journal file named by the environment, or None when journaling is off."""
    value = os.environ.get(JOURNAL_ENV, "")
    return Path(value) if value else None


def _as_received(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> tuple[str, Any, Any]:
    """Name, arguments and `_meta` as they arrived on the wire (falling back to the parsed params)."""
    raw = ctx.params
    if isinstance(raw, Mapping):
        name = raw.get("name", params.name)
        arguments = raw.get("arguments", {})
        meta = raw.get("_meta")
        return name, ({} if arguments is None else arguments), meta
    dumped = params.model_dump(by_alias=True, mode="json", exclude_none=True)
    return params.name, params.arguments or {}, dumped.get("_meta")


def record_call(
    path: Path | None, server: str, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> None:
    """Append one line for this tools/call to the journal at `path` (None: no journal).

    Synchronous on purpose: the line is written and flushed before the tool runs, so a
    tool that crashes or hangs has still been recorded.
    """
    if path is None:
        return
    name, arguments, meta = _as_received(ctx, params)
    entry = {"server": server, "tool": name, "arguments": arguments, "meta": meta}
    line = json.dumps(entry, default=repr, ensure_ascii=False) + "\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All entries of a journal file, oldest first; an absent file is an empty journal."""
    journal = Path(path)
    if not journal.exists():
        return []
    entries: list[dict[str, Any]] = []
    for line in journal.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entries.append(json.loads(line))
    return entries
