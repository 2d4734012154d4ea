"""The one place that converts between the SDK's MCP types and the guard's: upstream tools into
the policy's ToolDef, offers into the tools an agent is shown, upstream results into what is relayed
(secrets scrubbed, `_meta` dropped), refusals into results. Imports no ledger and no transport."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import mcp_types as types

from mcp_guard.policy.engine import canonical
from mcp_guard.policy.offers import Offer, ToolDef
from mcp_guard.policy.schemas import clean_text
from mcp_guard.secrets import Scrubber


def tool_def(tool: types.Tool) -> ToolDef:
    """An upstream tool in the policy's terms; the digest covers everything that is relayed.
    It is the one definition digest, pins included (SPEC: SHA-256 of the RFC 8785 canonical JSON).
    `canonical` (sorted keys, no whitespace, UTF-8) equals RFC 8785 for the JSON the SDK produces:
    strings, integers, booleans and nulls; only floats could serialise differently."""
    annotations = tool.annotations.model_dump(mode="json", exclude_none=True) if tool.annotations else None
    content = {
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "outputSchema": tool.output_schema,
        "annotations": annotations,
    }
    return ToolDef(
        name=tool.name,
        input_schema=tool.input_schema,
        digest=hashlib.sha256(canonical(content).encode()).hexdigest(),
        title=tool.title,
        description=tool.description,
        output_schema=tool.output_schema,
        annotations=annotations,
    )


def advertise(offer: Offer, scrubber: Scrubber) -> types.Tool:
    """A tool exactly as one agent is shown it: limits merged, text cleaned, secrets scrubbed from
    everything relayed (the name is checked by `offered`: it cannot be scrubbed and stay callable)."""
    tool = offer.tool

    def text(value: str | None) -> str | None:
        return scrubber.text(clean_text(value) or "") or None if value else None

    annotations = None
    if tool.annotations:
        scrubbed = scrubber.json(dict(tool.annotations))
        if isinstance(scrubbed.get("title"), str):
            scrubbed["title"] = text(scrubbed["title"])
        annotations = types.ToolAnnotations.model_validate(scrubbed)
    return types.Tool(
        name=offer.name,
        title=text(offer.title),
        description=text(offer.description),
        input_schema=scrubber.json(dict(offer.input_schema)),
        output_schema=scrubber.json(tool.output_schema) if tool.output_schema else None,
        annotations=annotations,
    )


def offered(offers: Mapping[str, Offer], scrubber: Scrubber, log: Callable[[str], None]) -> dict[str, Offer]:
    """The offers whose advertised name holds no injected secret. A name cannot be scrubbed and
    stay callable, so such a tool is not offered at all (listed nowhere, its calls unknown_tool)."""
    kept = {name: offer for name, offer in offers.items() if not scrubber.finds(name)}
    if len(kept) < len(offers):
        log(f"warning: {len(offers) - len(kept)} tool(s) not offered: the advertised name holds a secret")
    return kept


def relay(result: types.CallToolResult, scrubber: Scrubber) -> types.CallToolResult:
    """The upstream's result with known secrets scrubbed and every _meta dropped. The text
    blocks are scrubbed as one text, so a secret split across blocks is caught too."""
    texts = [b.text for b in result.content if isinstance(b, types.TextContent)]
    scrubbed = iter(scrubber.texts(texts) or ())
    blocks = [
        _block(b, scrubber, next(scrubbed, None) if isinstance(b, types.TextContent) else None)
        for b in result.content
    ]
    structured = result.structured_content
    if structured is not None:
        structured = scrubber.json(structured)
    return types.CallToolResult(content=blocks, structured_content=structured, is_error=result.is_error)


def _block(block: Any, scrubber: Scrubber, text: str | None) -> Any:
    """One content block; `text` is a text block's text as scrubbed with its neighbours
    (None: nothing to scrub). Binary content (base64 `data`, a resource's `blob`) is scrubbed
    as bytes and stays valid base64; every other string as text."""
    if isinstance(block, types.TextContent) and block.meta is None and text is None:
        return block  # the common case: a plain text block with nothing to scrub
    data = block.model_dump(by_alias=True, mode="json", exclude_none=True)
    data.pop("_meta", None)
    binary = data.pop("data", None) if isinstance(block, types.ImageContent | types.AudioContent) else None
    resource = data.get("resource")
    blob = resource.pop("blob", None) if isinstance(resource, dict) else None
    data = scrubber.json(data)
    if text is not None:
        data["text"] = text
    if isinstance(binary, str):
        data["data"] = scrubber.binary(binary)
    if isinstance(blob, str):
        data["resource"]["blob"] = scrubber.binary(blob)
    return type(block).model_validate(data)


def refusal(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)
