"""The one place that converts between the SDK's MCP types and the guard's: upstream tools into
the policy's ToolDef (resources, templates and prompts into SurfaceDef), offers into what an agent
is shown, upstream results into what is relayed (secrets scrubbed, `_meta` dropped, resources the
agent may not read withheld), refusals into results. Imports no ledger and no transport."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import mcp_types as types

from mcp_guard.policy.engine import canonical
from mcp_guard.policy.offers import Offer, ToolDef
from mcp_guard.policy.prompts import PromptOffer, completions_allowed
from mcp_guard.policy.resources import SurfaceDef, SurfaceKind
from mcp_guard.policy.schemas import clean_text
from mcp_guard.secrets import Scrubber
from mcp_guard.upstream.surfaces import Listed


def tool_def(tool: types.Tool) -> ToolDef:
    """An upstream tool in the policy's terms; the digest covers everything that is relayed.
    It is the one definition digest, pins included (SPEC: SHA-256 of the RFC 8785 canonical JSON).
    `canonical` (sorted keys, no whitespace, UTF-8) equals RFC 8785 for the JSON the SDK produces:
    strings, integers, booleans and nulls; only floats could serialise differently."""
    annotations = tool.annotations.model_dump(mode="json", exclude_none=True) if tool.annotations else None
    found = ToolDef(
        name=tool.name,
        input_schema=tool.input_schema,
        digest="",
        title=tool.title,
        description=tool.description,
        output_schema=tool.output_schema,
        annotations=annotations,
    )
    return replace(found, digest=hashlib.sha256(canonical(found.definition).encode()).hexdigest())


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


def surface_def(kind: SurfaceKind, item: Any) -> SurfaceDef:
    """An upstream resource, template or prompt in the policy's terms; the digest covers every
    field but `_meta` (the one definition digest, pins included)."""
    definition = item.model_dump(mode="json", by_alias=True, exclude_none=True)
    definition.pop("_meta", None)
    ident = {"resource": "uri", "template": "uriTemplate", "prompt": "name"}[kind]
    digest = hashlib.sha256(canonical(definition).encode()).hexdigest()
    return SurfaceDef(kind, str(definition.get(ident, "")), definition, digest)


def surface_defs(listed: Listed) -> tuple[SurfaceDef, ...]:
    return (
        *(surface_def("resource", r) for r in listed.resources),
        *(surface_def("template", t) for t in listed.templates),
        *(surface_def("prompt", p) for p in listed.prompts),
    )


def _cleaned(definition: Mapping[str, Any], scrubber: Scrubber) -> dict[str, Any]:
    data = scrubber.json(dict(definition))
    for key in ("description", "title"):
        if isinstance(data.get(key), str):
            data[key] = scrubber.text(clean_text(data[key]) or "") or None
    return {k: v for k, v in data.items() if v is not None}


def advertise_resource(d: SurfaceDef, scrubber: Scrubber) -> types.Resource | None:
    """A resource as listed; None when its URI holds a secret (it could not be read back)."""
    data = _cleaned(d.definition, scrubber)
    return types.Resource.model_validate(data) if data.get("uri") == d.id else None


def advertise_template(d: SurfaceDef, scrubber: Scrubber) -> types.ResourceTemplate | None:
    data = _cleaned(d.definition, scrubber)
    return types.ResourceTemplate.model_validate(data) if data.get("uriTemplate") == d.id else None


def advertise_prompt(offer: PromptOffer, scrubber: Scrubber) -> types.Prompt:
    """A prompt as one agent is shown it: advertised name, the grant's text, arguments scrubbed."""
    data = _cleaned(offer.prompt.definition, scrubber)
    arguments = [_cleaned(a, scrubber) for a in data.get("arguments") or [] if isinstance(a, dict)]
    return types.Prompt(
        name=offer.name,
        title=scrubber.text(offer.title) if offer.title else None,
        description=scrubber.text(offer.description) if offer.description else None,
        arguments=[types.PromptArgument.model_validate(a) for a in arguments] or None,
        icons=[types.Icon.model_validate(i) for i in data.get("icons") or []] or None,
    )


def relay_read(
    result: types.ReadResourceResult, uri: str, may_read: Callable[[str], bool], scrubber: Scrubber
) -> types.ReadResourceResult:
    """A read's contents, scrubbed (blobs as bytes); contents of another URI only if readable."""
    kept = [c for c in result.contents if str(c.uri) == uri or may_read(str(c.uri))]
    texts = iter(scrubber.texts([c.text for c in kept if isinstance(c, types.TextResourceContents)]) or ())
    out: list[types.TextResourceContents | types.BlobResourceContents] = []
    for item in kept:
        data = item.model_dump(by_alias=True, mode="json", exclude_none=True)
        data.pop("_meta", None)
        text, blob = data.pop("text", None), data.pop("blob", None)
        data = scrubber.json(data)
        data["uri"] = str(item.uri)
        if isinstance(item, types.TextResourceContents):
            data["text"] = next(texts, None) or scrubber.text(text or "")
        else:
            data["blob"] = scrubber.binary(blob or "")
        out.append(type(item).model_validate(data))
    return types.ReadResourceResult(contents=out)


def relay_prompt(
    result: types.GetPromptResult, may_read: Callable[[str], bool], scrubber: Scrubber
) -> types.GetPromptResult:
    """A prompt's messages, scrubbed; an embedded resource or a resource link the agent may not
    read becomes the text `[withheld: URI]`."""
    messages = []
    for message in result.messages:
        block: Any = message.content
        if isinstance(block, types.EmbeddedResource | types.ResourceLink):
            uri = str(block.resource.uri if isinstance(block, types.EmbeddedResource) else block.uri)
            if not may_read(uri):
                shown = scrubber.text(json.dumps(uri, ensure_ascii=True)[1:-1][:256])
                block = types.TextContent(type="text", text=f"[withheld: {shown}]")
        text = block.text if isinstance(block, types.TextContent) else None
        block = _block(block, scrubber, scrubber.text(text) if text is not None else None)
        messages.append(types.PromptMessage(role=message.role, content=block))
    description = scrubber.text(clean_text(result.description) or "") or None if result.description else None
    return types.GetPromptResult(description=description, messages=messages)


def relay_completion(
    result: types.CompleteResult, offer: PromptOffer | None, argument: str, scrubber: Scrubber
) -> types.CompleteResult:
    """Completion values, scrubbed, without those the grant's limit on the argument would refuse
    (then the upstream's total no longer counts what is shown, and is dropped)."""
    values = [scrubber.text(v) for v in result.completion.values[:100]]
    allowed = completions_allowed(offer, argument, values)
    filtered = len(allowed) != len(values)
    completion = types.Completion(
        values=allowed,
        total=None if filtered else result.completion.total,
        has_more=result.completion.has_more,
    )
    return types.CompleteResult(completion=completion)
