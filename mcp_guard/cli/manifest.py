"""Tool owners' manifest helpers: the manifest format as a JSON Schema, a starter manifest
rendered from a live upstream (`manifest init`), and manifests checked against their live
upstreams (`check --live`). Starts upstreams through upstream.py; serves nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import mcp_types as types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel

from mcp_guard import manifest as manifest_module
from mcp_guard.cli.surfaces import render_surfaces, surface_problems
from mcp_guard.config import GuardConfig
from mcp_guard.errors import UpstreamUnavailable
from mcp_guard.guard import pins
from mcp_guard.guard.convert import surface_defs, tool_def
from mcp_guard.guard.surfaces import wanted
from mcp_guard.loading import format_duration, parse_duration
from mcp_guard.manifest import Manifest, Upstream
from mcp_guard.policy.engine import Policy
from mcp_guard.policy.schemas import KEYWORDS_BY_TYPE, clean_text, type_keyword, types_of
from mcp_guard.secrets import Scrubber
from mcp_guard.upstream.pool import START_TIMEOUT, open_pool
from mcp_guard.upstream.surfaces import Listed

_INTERNAL = ("source", "injected")
_DURATION_SCHEMA = {"type": "string", "pattern": r"^[0-9]+(s|m|h|d)$"}

# -- the JSON Schema ------------------------------------------------------------------------------


def manifest_schema() -> dict[str, Any]:
    """The manifest format as JSON Schema, from the models, as a person writes it: durations are
    strings (`30s`), a tool takes one grant or a list, and the internal fields are left out."""
    schema = Manifest.model_json_schema()
    for key in _INTERNAL:
        schema["properties"].pop(key, None)
    defs = schema["$defs"]
    # Every model of the manifest module in the schema, so a new one's durations are not missed.
    models = [m for m in vars(manifest_module).values() if isinstance(m, type) and m.__name__ in defs]
    for model in models:
        if not issubclass(model, BaseModel):
            continue
        props = defs[model.__name__]["properties"]
        for name in _duration_fields(model):
            default = props[name].get("default")
            props[name] = {"title": props[name].get("title", name), **_DURATION_SCHEMA}
            if isinstance(default, int | float):
                props[name]["default"] = format_duration(default)
    grants = {"type": "array", "items": {"$ref": "#/$defs/Grant"}, "minItems": 1}
    schema["properties"]["tools"]["additionalProperties"] = {"anyOf": [{"$ref": "#/$defs/Grant"}, grants]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/mcp-guard/mcp-guard/docs/manifest.schema.json",
        "title": "mcp-guard tool manifest (tool_manifests/<server>.yaml)",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def _duration_fields(model: type[BaseModel]) -> list[str]:
    return [
        name
        for name, info in model.model_fields.items()
        if any(getattr(m, "func", None) is parse_duration for m in info.metadata)
    ]


def render_schema() -> str:
    return json.dumps(manifest_schema(), indent=2, ensure_ascii=False) + "\n"


# -- manifest init --------------------------------------------------------------------------------

_RUNNERS = {"python", "python3", "node", "npx", "uvx", "uv", "pipx", "bunx", "bun", "deno", "docker"}
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}


def server_name(command: str | None, args: Sequence[str], url: str | None) -> str:
    """A name valid for `server` (^[a-z0-9][a-z0-9-]{0,31}$) derived from the command or URL."""
    if url is not None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        label = host.split(".")[0]
        if not label or label == "localhost" or label.isdigit() or host.replace(".", "").isdigit():
            segments = [s for s in parts.path.split("/") if s and s not in ("mcp", "sse")]
            label = segments[-1] if segments else ""
        raw = label
    else:
        assert command is not None
        raw = Path(command).name
        if raw in _RUNNERS or re.match(r"^python3(\.\d+)?$", raw):
            rest = list(args)
            if "-m" in rest and rest.index("-m") + 1 < len(rest):
                raw = rest[rest.index("-m") + 1].split(".")[-1]
            else:
                picks = [a for a in rest if not a.startswith("-") and a not in ("run", "exec", "x")]
                raw = Path(picks[0]).stem if picks else raw
        raw = raw.split("/")[-1]
    name = re.sub(r"[^a-z0-9]+", "-", raw.lower())
    for affix in ("mcp-server-", "server-", "mcp-"):
        name = name.removeprefix(affix) if name != affix.strip("-") else name
    name = re.sub(r"-(mcp|server|mcp-server)$", "", name)
    name = name.strip("-")[:32].strip("-")
    return name or "upstream"


def _key(name: str) -> str:
    return name if _PLAIN_KEY.match(name) and name.lower() not in _YAML_WORDS else json.dumps(name)


def _scalar(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _comment(text: str | None, limit: int = 200) -> str:
    """One line of upstream text, safe inside a YAML comment and on a terminal."""
    cleaned = clean_text(text) or ""
    lines = cleaned.splitlines()
    return " ".join(lines[0].split())[:limit] if lines else ""


def _type_of(prop: Any) -> str:
    if not isinstance(prop, Mapping):
        return "any"
    kind = prop.get("type")
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    options = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(options, list):
        return " | ".join(_type_of(o) for o in options)
    if "enum" in prop:
        return "enum"
    return "any"


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*) +\S")


def header_variables(server: str, headers: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """For each header: (the value a starter manifest writes, the variable it names). A value is
    never written, only a `${VARIABLE}` named `<SERVER>_<HEADER>` (as `env: {API_KEY:
    "${API_KEY}"}` names a variable after its key); an Authorization header keeps its scheme
    (`Bearer ${<SERVER>_TOKEN}`)."""
    prefix = re.sub(r"[^A-Z0-9]+", "_", server.upper()).strip("_") or "UPSTREAM"
    prefix = prefix if prefix[0].isalpha() else f"UPSTREAM_{prefix}"
    out: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()
    for key, value in headers.items():
        scheme = _SCHEME.match(value) if key.lower() == "authorization" else None
        base = (
            f"{prefix}_TOKEN" if scheme else f"{prefix}_{re.sub(r'[^A-Z0-9]+', '_', key.upper()).strip('_')}"
        )
        variable, n = base, 1
        while variable in taken:
            n += 1
            variable = f"{base}_{n}"
        taken.add(variable)
        out[key] = (f"{scheme.group(1)} ${{{variable}}}" if scheme else f"${{{variable}}}", variable)
    return out


def render_manifest(upstream: Upstream, tools: Sequence[types.Tool], name: str) -> str:
    """A commented starter manifest: every tool listed with its description and arguments as
    comments, granted to nobody."""
    origin = upstream.url or " ".join([upstream.command or "", *upstream.args])
    out = [
        f"# Starter manifest for {_comment(origin)}",
        "# written by `mcp-guard manifest init` from its live tool list. Every tool is granted to",
        "# nobody (allow: []): add agent names or role:NAME, and limits under `arguments`.",
        f"server: {name}",
        "upstream:",
    ]
    if upstream.url is not None:
        out.append(f"  url: {_scalar(upstream.url)}")
        if upstream.headers:
            out.append("  headers:                  # set these variables where the guard runs")
            placeholders = header_variables(name, upstream.headers)
            out += [f"    {_key(k)}: {_scalar(v)}" for k, (v, _) in placeholders.items()]
    else:
        assert upstream.command is not None
        out.append(f"  command: {_scalar(upstream.command)}")
        if upstream.args:
            out.append(f"  args: [{', '.join(_scalar(a) for a in upstream.args)}]")
        out.append('  # env: {API_KEY: "${API_KEY}"}   # the upstream gets only the variables listed here')
    out.append(f"  timeout: {format_duration(upstream.timeout)}")
    if not tools:
        out.append("tools: {}                    # the upstream lists no tools")
    else:
        out.append("tools:")
    for tool in tools:
        out.append(f"  {_key(tool.name)}:")
        if description := _comment(tool.description):
            out.append(f"    # {description}")
        if tool.annotations is not None:
            hints = tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
            shown = ", ".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in sorted(hints.items()))
            out.append(f"    # annotations (the upstream's own claims): {_comment(shown)}")
        schema = tool.input_schema if isinstance(tool.input_schema, Mapping) else {}
        props = schema.get("properties")
        required = set(schema.get("required") or [])
        if isinstance(props, Mapping) and props:
            out.append("    # arguments:")
            for arg, prop in props.items():
                flag = "required" if arg in required else "optional"
                out.append(f"    #   {_comment(str(arg), 64)}: {_comment(_type_of(prop), 64)}, {flag}")
        else:
            out.append("    # arguments: none")
        out.append("    allow: []")
    return "\n".join(out) + "\n"


async def _list_tools(upstream: Upstream, name: str) -> tuple[tuple[types.Tool, ...], Listed]:
    manifest = Manifest(server=name, upstream=upstream, tools={}, source=Path.cwd() / f"{name}.yaml")
    failures: list[str] = []

    errlog = Scrubber(()).log  # the upstream's stderr, shown as it comes (credentials redacted)
    async with open_pool((manifest,), failures.append, wait=START_TIMEOUT, errlog=errlog) as pool:
        up = pool.upstreams[name]
        alive, tools, listed = up.alive, up.tools, up.surfaces
    if not alive:
        reason = failures[-1] if failures else f"upstream {name!r} did not answer in time"
        raise UpstreamUnavailable(reason)
    return tools, listed


def init_manifest(upstream: Upstream, inherit_env: Mapping[str, str] | None = None) -> str:
    """Start the upstream, list its tools and render the starter manifest. A command runs with
    `inherit_env` (the caller's environment, as from a shell); the manifest lists none of it."""
    name = server_name(upstream.command, upstream.args, upstream.url)
    started = upstream
    if upstream.command is not None and inherit_env:
        started = upstream.model_copy(update={"env": {**inherit_env, **upstream.env}})
    tools, listed = anyio.run(_list_tools, started, name)
    return render_manifest(upstream, tools, name) + render_surfaces(listed)


# -- check --live ---------------------------------------------------------------------------------


def _types(prop: Mapping[str, Any]) -> frozenset[str] | None:
    """The JSON types the upstream property allows (integer within number), or None for any."""
    if "type" in prop:
        return types_of(prop["type"])
    options = prop.get("anyOf") or prop.get("oneOf")
    if not isinstance(options, list):
        return None
    found: frozenset[str] = frozenset()
    for option in options:
        sub = _types(option) if isinstance(option, Mapping) else None
        if sub is None:
            return None
        found |= sub
    return found


def check_limit(prop: Any, limit: Any, *, typed: bool = True) -> list[tuple[str, str]]:
    """(keyword, reason) for each part of a grant's limit that the upstream property's own schema
    contradicts (enum or const values it rejects, keywords for a type it does not accept), and for
    a limit that narrows the types the upstream accepts without saying so (the SDK types a
    `Decimal` as number or string; the guard lets only a number through a `maximum`). An approval's
    `when` is not typed (`typed=False`): a value of another type asks for approval."""
    if not isinstance(prop, Mapping) or not isinstance(limit, Mapping):
        return []
    out: list[tuple[str, str]] = []
    validator: Draft202012Validator | None = None
    try:
        Draft202012Validator.check_schema(dict(prop))
        validator = Draft202012Validator(dict(prop))
    except SchemaError:
        pass
    if validator is not None:
        enum = limit.get("enum")
        values = [("enum", v) for v in enum] if isinstance(enum, list) else []
        if "const" in limit:
            values.append(("const", limit["const"]))
        for keyword, value in values:
            error = next(iter(validator.iter_errors(value)), None)
            if error is not None:
                out.append((keyword, f"{value!r} is not valid for the upstream's schema: {error.message}"))
    upstream = _types(prop)
    said = (
        " or ".join(sorted(upstream - {"integer"} if "number" in upstream else upstream)) if upstream else ""
    )
    kinds = frozenset(k for k, keywords in KEYWORDS_BY_TYPE.items() if not keywords.isdisjoint(limit))
    if upstream is not None:
        for keyword in limit:
            kind = next((k for k in kinds if keyword in KEYWORDS_BY_TYPE[k]), None)
            if kind is not None and not (types_of(kind) or frozenset()) & upstream:
                out.append((keyword, f"applies to {kind}s but the upstream's argument is {said}"))
        wanted = types_of(limit.get("type"))
        if "type" in limit and not (wanted or frozenset()) & upstream:
            out.append(("type", f"{limit['type']!r} contradicts the upstream's type {said}"))
    narrowed = types_of(list(kinds)) or frozenset()
    if (
        typed
        and kinds
        and "type" not in limit
        and (upstream is None or (upstream & narrowed and upstream - narrowed))
    ):
        only = type_keyword(narrowed)
        others = "any type" if upstream is None else " or ".join(sorted(upstream - narrowed))
        msg = (
            f"the upstream's argument also accepts {others}; the guard lets only {only} through here "
            f"(write type: {only} in the limit to say so)"
        )
        out.append(("type", msg))
    return out


def live_problems(
    policy: Policy, manifests: Sequence[Manifest], tools: Mapping[str, Sequence[types.Tool]]
) -> list[str]:
    """Every `file:path: reason` where the manifests do not fit the upstreams' live tools."""
    catalog = {server: tuple(tool_def(t) for t in live) for server, live in tools.items()}
    out = policy.problems(catalog)
    for m in manifests:
        live = {t.name: t for t in catalog.get(m.server, ())}
        for name, grants in m.tools.items():
            if name not in live:
                continue
            props = live[name].input_schema.get("properties")
            if not isinstance(props, Mapping):
                continue
            for i, grant in enumerate(grants):
                places = [("arguments", grant.arguments, True)]
                if grant.approval is not None and grant.approval.when:
                    places.append(("approval.when", grant.approval.when, False))
                for where, limits, typed in places:
                    for arg, limit in limits.items():
                        if arg not in props:
                            continue
                        for keyword, reason in check_limit(props[arg], limit, typed=typed):
                            out.append(f"{m.source}:tools.{name}[{i}].{where}.{arg}.{keyword}: {reason}")
    return out


async def _check_live(config: GuardConfig, manifests: tuple[Manifest, ...]) -> list[str]:
    policy = Policy(config, manifests)
    scrubber = Scrubber(policy.secrets)
    logs: list[str] = []

    async with open_pool(
        manifests,
        logs.append,
        wait=START_TIMEOUT,
        max_result_bytes=config.limits.max_result_bytes,
        errlog=scrubber.log,
    ) as pool:
        down = {name for name, up in pool.upstreams.items() if not up.alive}
        tools = {name: up.tools for name, up in pool.upstreams.items() if up.alive}
        listed = {name: up.surfaces for name, up in pool.upstreams.items() if up.alive}
    out: list[str] = []
    for m in manifests:
        if m.server in down:
            said = [line for line in logs if line.startswith(f"upstream {m.server!r}")]
            reason = said[-1] if said else f"upstream {m.server!r} did not answer in time"
            out.append(f"{m.source}:upstream: {reason}")
    out += live_problems(policy, manifests, tools) + surface_problems(manifests, listed)
    out += await pin_problems(config, manifests, tools, logs.append, wanted(policy, listed))
    return [scrubber.record(line) for line in out]


async def pin_problems(
    config: GuardConfig,
    manifests: Sequence[Manifest],
    tools: Mapping[str, Sequence[types.Tool]],
    log: Callable[[str], None],
    listed: Mapping[str, Listed] | None = None,
) -> list[str]:
    """Pins that no longer match: against the lock files, or (without a lock) the first-use pins
    in the ledger; of tools, and of the resources, templates and prompts `listed`. Reads only."""
    catalog: dict[str, tuple[Any, ...]] = {s: tuple(tool_def(t) for t in live) for s, live in tools.items()}
    for server, found in (listed or {}).items():
        catalog[server] = catalog.get(server, ()) + surface_defs(found)
    by_server = {m.server: m for m in manifests}
    pinned, locks = await pins.peek(config.ledger, by_server, catalog, log)
    out = []
    for w in pinned.withheld:
        manifest = by_server[w.server]
        where = pins.lock_path(manifest) if locks.get(w.server) is not None else manifest.source
        out.append(f"{where}:{w.tool}: {w.warning.removeprefix('warning: ')}")
    return out


def check_live(config: GuardConfig, manifests: tuple[Manifest, ...]) -> list[str]:
    """Start every upstream and return the problems, one `file:path: reason` each."""
    return anyio.run(_check_live, config, manifests)
