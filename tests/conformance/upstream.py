"""The upstream the conformance suite's server scenarios expect, over stdio, for the guard to
wrap (manifest prefix ""): every `test_*` tool, resource, resource template and prompt of
@modelcontextprotocol/conformance's server scenarios, completion, and `json_schema_2020_12_tool`,
behaving as each scenario's description asks. Besides them, for the guard's own tests: a resource
under `test://private/` (and a template there); when CONFORMANCE_SECRET is set, a resource, a
template and a prompt that carry that secret in everything they list and return (completion values
too); and CONFORMANCE_DRIFT, appended to every resource's and prompt's description (a rug pull).

Run: python tests/conformance/upstream.py"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

# A 1x1 red PNG and a silent 8 kHz mono WAV of two samples.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRigAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQQAAAAAAAAA"
NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, description=description, input_schema=schema or NO_ARGS)


def _string_arg(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": description}},
        "required": [name],
        "additionalProperties": False,
    }


TOOLS = [
    _tool("test_simple_text", "Returns simple text"),
    _tool("test_image_content", "Returns a PNG image"),
    _tool("test_audio_content", "Returns a WAV clip"),
    _tool("test_embedded_resource", "Returns an embedded text resource"),
    _tool("test_multiple_content_types", "Returns text, an image and a resource"),
    _tool("test_tool_with_logging", "Sends three log messages while it runs"),
    _tool("test_error_handling", "Always returns an error result"),
    _tool("test_tool_with_progress", "Reports progress 0, 50, 100 of 100"),
    _tool("test_reconnection", "Returns text (the suite's SSE polling probe)"),
    _tool("test_sampling", "Asks the client to sample", _string_arg("prompt", "The prompt")),
    _tool("test_elicitation", "Asks the user for input", _string_arg("message", "The message")),
    _tool("test_elicitation_sep1034_defaults", "Elicitation with default values"),
    _tool("test_elicitation_sep1330_enums", "Elicitation with enum schemas"),
    _tool(
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features",
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                }
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
]


def _text(text: str, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


def _resource(uri: str, mime: str, text: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri=uri, mime_type=mime, text=text)
    )


async def _logging(ctx: ServerRequestContext[Any, Any]) -> types.CallToolResult:
    for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.session.send_log_message("info", text, related_request_id=ctx.request_id)
    return _text("Tool with logging executed")


async def _progress(ctx: ServerRequestContext[Any, Any]) -> types.CallToolResult:
    for step in (0, 50, 100):
        await ctx.session.report_progress(step, 100)
    return _text("Tool with progress executed")


async def _sampling(ctx: ServerRequestContext[Any, Any], prompt: str) -> types.CallToolResult:
    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))
    result = await ctx.session.create_message([message], max_tokens=100)
    text = result.content.text if isinstance(result.content, types.TextContent) else str(result.content)
    return _text(f"LLM response: {text}")


async def _elicit(ctx: ServerRequestContext[Any, Any], message: str, schema: dict[str, Any]) -> Any:
    result = await ctx.session.elicit(message, schema, related_request_id=ctx.request_id)
    return _text(f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}")


ELICIT_PERSON = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}
ELICIT_DEFAULTS = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
    },
}
ELICIT_ENUMS = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [{"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second"}],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second"},
                ]
            },
        },
    },
}


async def _dispatch(ctx: ServerRequestContext[Any, Any], name: str, args: dict[str, Any]) -> Any:
    if name in ("test_simple_text", "test_reconnection"):
        return _text("This is a simple text response for testing.")
    if name == "test_image_content":
        return types.CallToolResult(
            content=[types.ImageContent(type="image", data=PNG, mime_type="image/png")]
        )
    if name == "test_audio_content":
        return types.CallToolResult(
            content=[types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")]
        )
    if name == "test_embedded_resource":
        resource = _resource(
            "test://embedded-resource", "text/plain", "This is an embedded resource content."
        )
        return types.CallToolResult(content=[resource])
    if name == "test_multiple_content_types":
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text="Multiple content types test:"),
                types.ImageContent(type="image", data=PNG, mime_type="image/png"),
                _resource("test://mixed-content-resource", "application/json", '{"test":"data","value":123}'),
            ]
        )
    if name == "test_tool_with_logging":
        return await _logging(ctx)
    if name == "test_error_handling":
        return _text("This tool intentionally returns an error for testing", is_error=True)
    if name == "test_tool_with_progress":
        return await _progress(ctx)
    if name == "test_sampling":
        return await _sampling(ctx, str(args.get("prompt", "")))
    if name == "test_elicitation":
        return await _elicit(ctx, str(args.get("message", "")), ELICIT_PERSON)
    if name == "test_elicitation_sep1034_defaults":
        return await _elicit(ctx, "Please review and update the form fields with defaults", ELICIT_DEFAULTS)
    if name == "test_elicitation_sep1330_enums":
        return await _elicit(ctx, "Please pick from the enums", ELICIT_ENUMS)
    if name == "json_schema_2020_12_tool":
        return _text(f"received: {json.dumps(args, sort_keys=True)}")
    raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")


RESOURCES = [
    types.Resource(
        uri="test://static-text",
        name="static-text",
        description="A static text resource",
        mime_type="text/plain",
    ),
    types.Resource(
        uri="test://static-binary", name="static-binary", description="A static PNG", mime_type="image/png"
    ),
    types.Resource(uri="test://watched-resource", name="watched", description="A resource to subscribe to"),
    types.Resource(
        uri="test://private/payroll", name="payroll", description="Granted to no agent in the tests"
    ),
]
TEMPLATES = [
    types.ResourceTemplate(
        uri_template="test://template/{id}/data", name="template", description="Data by id"
    ),
    types.ResourceTemplate(
        uri_template="test://private/{name}", name="private", description="Private by name"
    ),
]
PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A prompt without arguments"),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two required arguments",
        arguments=[
            types.PromptArgument(name="arg1", description="First argument", required=True),
            types.PromptArgument(name="arg2", description="Second argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource",
        arguments=[types.PromptArgument(name="resourceUri", description="The URI to embed", required=True)],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
]


def _contents(uri: str, secret: str) -> list[types.TextResourceContents | types.BlobResourceContents]:
    if uri == "test://static-text":
        return [
            types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
            )
        ]
    if uri == "test://static-binary":
        return [types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)]
    if uri.startswith("test://template/") and uri.endswith("/data"):
        ident = uri[len("test://template/") : -len("/data")]
        return [
            types.TextResourceContents(
                uri=uri,
                mime_type="application/json",
                text=json.dumps({"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"}),
            )
        ]
    if uri == "test://watched-resource":
        return [types.TextResourceContents(uri=uri, mime_type="text/plain", text="watched")]
    if uri == "test://leaky" and secret:
        blob = base64.b64encode(f"key={secret}".encode()).decode()
        return [
            types.TextResourceContents(uri=uri, mime_type="text/plain", text=f"the key is {secret}"),
            types.BlobResourceContents(uri=uri, mime_type="application/octet-stream", blob=blob),
            types.TextResourceContents(uri="test://private/payroll", mime_type="text/plain", text="salaries"),
        ]
    if uri.startswith("test://private/"):
        return [types.TextResourceContents(uri=uri, mime_type="text/plain", text="salaries")]
    raise MCPError(-32002, f"Resource not found: {uri}")


def _messages(name: str, args: dict[str, str], secret: str = "") -> list[types.PromptMessage]:
    def user(content: Any) -> types.PromptMessage:
        return types.PromptMessage(role="user", content=content)

    if name == "test_simple_prompt":
        return [user(types.TextContent(type="text", text="This is a simple prompt for testing."))]
    if name == "test_prompt_with_arguments":
        text = f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"
        return [user(types.TextContent(type="text", text=text))]
    if name == "test_prompt_with_embedded_resource":
        uri = args.get("resourceUri", "")
        resource = types.TextResourceContents(
            uri=uri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            user(types.EmbeddedResource(type="resource", resource=resource)),
            user(types.TextContent(type="text", text="Please process the embedded resource above.")),
        ]
    if name == "test_leaky_prompt" and secret:
        blob = base64.b64encode(f"key={secret}".encode()).decode()
        embedded = [
            types.TextResourceContents(uri="test://leaky", mime_type="text/plain", text=f"key {secret}"),
            types.BlobResourceContents(uri="test://leaky", mime_type="application/octet-stream", blob=blob),
        ]
        return [
            user(types.TextContent(type="text", text=f"the key is {secret}")),
            *(user(types.EmbeddedResource(type="resource", resource=r)) for r in embedded),
        ]
    if name == "test_prompt_with_image":
        return [
            user(types.ImageContent(type="image", data=PNG, mime_type="image/png")),
            user(types.TextContent(type="text", text="Please analyze the image above.")),
        ]
    raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {name}")


def _note(journal: Path | None, method: str, params: Any) -> None:
    """One JSON line per resources, prompts or completion request that reached this upstream."""
    if journal is not None:
        dumped = params.model_dump(mode="json", by_alias=True, exclude_none=True) if params else {}
        with journal.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"method": method, "params": dumped}) + "\n")


def _leaky(secret: str) -> tuple[types.Resource, types.ResourceTemplate, types.Prompt]:
    """What the upstream lists with the secret in every text field the guard relays."""
    said = f"uses key {secret}"
    return (
        types.Resource(uri="test://leaky", name=f"leaky {secret}", title=said, description=said),
        types.ResourceTemplate(
            uri_template="test://leaky/{id}", name=f"leaky {secret}", title=said, description=said
        ),
        types.Prompt(
            name="test_leaky_prompt",
            title=said,
            description=said,
            arguments=[types.PromptArgument(name="key", description=said)],
        ),
    )


def _drifted(items: list[Any], drift: str) -> list[Any]:
    return (
        [i.model_copy(update={"description": (i.description or "") + drift}) for i in items]
        if drift
        else items
    )


def build_server(secret: str = "", journal: Path | None = None, drift: str = "") -> Server[Any]:
    leaky = _leaky(secret) if secret else None

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        result: types.CallToolResult = await _dispatch(ctx, params.name, params.arguments or {})
        return result

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        listed = RESOURCES + ([leaky[0]] if leaky else [])
        return types.ListResourcesResult(resources=_drifted(listed, drift))

    async def list_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=TEMPLATES + ([leaky[1]] if leaky else []))

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        _note(journal, "resources/read", params)
        return types.ReadResourceResult(contents=_contents(str(params.uri), secret))

    async def subscribe(
        ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        _note(journal, "resources/subscribe", params)
        await ctx.session.send_resource_updated(str(params.uri))  # at once, so a test need not wait
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
        listed = PROMPTS + ([leaky[2]] if leaky else [])
        return types.ListPromptsResult(prompts=_drifted(listed, drift))

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        _note(journal, "prompts/get", params)
        messages = _messages(params.name, dict(params.arguments or {}), secret)
        said = f"uses key {secret}" if secret and params.name == "test_leaky_prompt" else None
        return types.GetPromptResult(description=said, messages=messages)

    async def complete(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        _note(journal, "completion/complete", params)
        value = params.argument.value
        values = [v for v in ("low", "high", "paris", "park", value + "1") if v.startswith(value)]
        if secret and params.argument.name == "key":
            values = [f"{value}{secret}", "plain"]
        return types.CompleteResult(
            completion=types.Completion(values=values, total=len(values), has_more=False)
        )

    return Server(
        "conformance-upstream",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
    )


async def serve() -> None:
    journal = os.environ.get("MCP_GUARD_EXAMPLE_JOURNAL")
    secret, drift = os.environ.get("CONFORMANCE_SECRET", ""), os.environ.get("CONFORMANCE_DRIFT", "")
    server = build_server(secret, Path(journal) if journal else None, drift)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(serve)
