"""A tool as one agent is offered it: the upstream's definition (ToolDef) compiled with the grant
that applies (Offer): limits merged into the advertised schema, the arguments the guard sets
removed from it, the text the grant overrides, and the validators a call is checked with. Compiled
once per policy, tool and grant; the engine decides with it. Pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp_guard.manifest import Grant, Manifest
from mcp_guard.policy.arguments import Compiled, compile_schema
from mcp_guard.policy.flows import blocked_sentence
from mcp_guard.policy.schemas import DIALECT, clean_text, merge_limits, one_dialect, typed_limit


@dataclass(frozen=True, slots=True)
class ToolDef:
    """An upstream tool definition, in our terms; `digest` identifies its exact content."""

    name: str
    input_schema: Mapping[str, Any]
    digest: str
    title: str | None = None
    description: str | None = None
    output_schema: Mapping[str, Any] | None = None
    annotations: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Offer:
    """A tool as one agent sees it: advertised name, merged schema, and compiled checks."""

    name: str
    server: str
    tool: ToolDef
    grant: Grant
    input_schema: Mapping[str, Any]  # as advertised: limits merged, `set` arguments removed
    description: str | None
    declared: frozenset[str]
    upstream_validator: Compiled = field(repr=False)
    limits_validator: Compiled = field(repr=False)
    merged_validator: Compiled = field(repr=False)  # the advertised schema: passing it passes both
    when_validator: Compiled | None = field(repr=False, default=None)  # the grant's approval.when
    title: str | None = None
    sensitive: frozenset[str] = frozenset()  # of every grant of the tool: recorded only as a digest

    @property
    def fixed(self) -> Mapping[str, Any]:
        """The arguments the guard sends itself (the grant's `set`)."""
        return self.grant.set_


def _without(schema: dict[str, Any], names: Collection[str]) -> dict[str, Any]:
    """The schema as advertised: the arguments the guard sets are not the agent's to send."""
    if not names:
        return schema
    out = dict(schema)
    out["properties"] = {k: v for k, v in schema.get("properties", {}).items() if k not in names}
    required = [r for r in schema.get("required", []) if r not in names]
    if required:
        out["required"] = required
    else:
        out.pop("required", None)
    return out


def _described(description: str | None, grant: Grant) -> str | None:
    """The upstream's description (or the grant's own), with one sentence added for a tool its
    marks block."""
    if grant.description is not None:
        description = clean_text(grant.description)
    if grant.blocked_after is None:
        return description
    sentence = blocked_sentence(grant.blocked_after)
    return f"{description.rstrip()} {sentence}" if description else sentence


def _rejects(upstream: Mapping[str, Any], name: str, value: Any) -> bool:
    """Whether the upstream's own schema for argument `name` refuses `value` (a `set` value)."""
    prop = (upstream.get("properties") or {}).get(name, True)
    try:
        return not compile_schema(prop if isinstance(prop, dict | bool) else True).validator.is_valid(value)
    except Exception:
        return True


def declared_arguments(schema: Mapping[str, Any]) -> frozenset[str]:
    props = schema.get("properties")
    return frozenset(props) if isinstance(props, Mapping) else frozenset()


def compile_offer(manifest: Manifest, tool: ToolDef, grant: Grant) -> Offer | None:
    declared = declared_arguments(tool.input_schema)
    if any(arg not in declared for arg in grant.arguments):
        return None  # the grant limits an argument the upstream does not have: fail closed
    # The upstream's schema is read under the guard's one dialect, and each limit fixes the type it
    # speaks of, so no upstream keyword can weaken a limit. `when` stays as written: a value of
    # another type matching it asks for approval, the safe side.
    upstream = one_dialect(tool.input_schema)
    try:
        limits = {name: typed_limit(limit) for name, limit in grant.arguments.items()}
    except ValueError:
        return None  # a limit that lets nothing through (also refused when the manifest loads)
    if any(name not in declared for name in (*grant.required, *grant.set_)):
        return None  # required or set names an argument the upstream does not have: fail closed
    merged = merge_limits(upstream, limits)
    if grant.required:
        merged["required"] = sorted({*merged.get("required", []), *grant.required})
    if "$schema" in tool.input_schema:  # the advertised schema names the dialect it is checked under
        merged = {"$schema": DIALECT, **merged}
    when = grant.approval.when if grant.approval else None
    try:
        upstream_validator = compile_schema(upstream)
        limits_validator = compile_schema({"type": "object", "properties": limits})
        merged_validator = compile_schema(merged)
        when_validator = compile_schema({"type": "object", "properties": dict(when)}) if when else None
    except Exception:
        return None  # an upstream schema that will not compile is not offered
    if any(_rejects(upstream, name, value) for name, value in grant.set_.items()):
        return None  # a value the upstream would refuse: every call would fail, so none is offered
    return Offer(
        name=manifest.name_prefix + tool.name,
        server=manifest.server,
        tool=tool,
        grant=grant,
        input_schema=_without(merged, grant.set_),
        description=_described(clean_text(tool.description), grant),
        title=clean_text(grant.title) if grant.title is not None else tool.title,
        sensitive=frozenset().union(*(g.sensitive for g in manifest.grants_for(tool.name, tool.annotations))),
        declared=declared,
        upstream_validator=upstream_validator,
        limits_validator=limits_validator,
        merged_validator=merged_validator,
        when_validator=when_validator,
    )


def default_escapes(schema: Mapping[str, Any], grant: Grant) -> list[str]:
    """The `const`/`enum` limits on an argument a call may leave out, whose upstream default lies
    outside them: the upstream applies its default, which the limit would have refused."""
    props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
    always = {*(schema.get("required") or ()), *grant.required, *grant.set_}
    out = []
    for arg, limit in grant.arguments.items():
        prop = props.get(arg) if isinstance(props, Mapping) else None
        if (
            arg in always
            or not isinstance(limit, Mapping)
            or not isinstance(prop, Mapping)
            or "default" not in prop
        ):
            continue
        default = prop["default"]
        allowed = [limit["const"]] if "const" in limit else limit.get("enum")
        if isinstance(allowed, list) and default not in allowed:
            msg = (
                f"the upstream's default {default!r} applies when {arg} is left out, and this limit "
                f"would refuse it; add {arg} to required, or set it"
            )
            out.append(f"arguments.{arg}: {msg}")
    return out
