"""Who may get which prompt, with which arguments, and complete which argument. One function,
`prompt_offers`, decides what an agent may get (the grant chosen by identity alone, the first in
file order, as for tools); `prompts/list` is its result, `prompts/get` looks the advertised name up
in it, and completion is offered only for those prompts and the templates the agent is shown.
Arguments are checked as a tool call's are: declared names only, the upstream's required ones,
then the grant's limits (JSON Schema on the string values). Pure."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp_guard.manifest import Manifest, PromptGrant
from mcp_guard.policy.arguments import Compiled, Violation, check_schema, check_strict, compile_schema
from mcp_guard.policy.engine import Agent, Decision, escape_name
from mcp_guard.policy.reasons import Reason
from mcp_guard.policy.resources import SurfaceDef, Surfaces
from mcp_guard.policy.schemas import clean_text, typed_limit
from mcp_guard.policy.targets import Target

_EXPRESSION = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class PromptOffer:
    """A prompt as one agent is offered it: its advertised name, the grant that applies, and the
    compiled check of its arguments."""

    name: str
    server: str
    prompt: SurfaceDef
    grant: PromptGrant
    declared: frozenset[str]
    required: frozenset[str]
    limits: Compiled = field(repr=False)

    @property
    def description(self) -> str | None:
        said = self.grant.description or self.prompt.definition.get("description")
        return clean_text(said) if isinstance(said, str) else None

    @property
    def title(self) -> str | None:
        said = self.grant.title or self.prompt.definition.get("title")
        return clean_text(said) if isinstance(said, str) else None


def _arguments(prompt: SurfaceDef) -> tuple[frozenset[str], frozenset[str]]:
    """The prompt's declared and required argument names."""
    found = prompt.definition.get("arguments") or []
    args = [a for a in found if isinstance(a, Mapping) and isinstance(a.get("name"), str)]
    return frozenset(a["name"] for a in args), frozenset(a["name"] for a in args if a.get("required"))


def compile_prompt(manifest: Manifest, prompt: SurfaceDef, grant: PromptGrant) -> PromptOffer | None:
    declared, required = _arguments(prompt)
    if any(arg not in declared for arg in grant.arguments):
        return None  # a limit on an argument the upstream does not have: fail closed
    try:
        limits = {name: typed_limit(limit) for name, limit in grant.arguments.items()}
        compiled = compile_schema({"type": "object", "properties": limits})
    except Exception:
        return None
    return PromptOffer(
        manifest.name_prefix + prompt.id, manifest.server, prompt, grant, declared, required, compiled
    )


def prompt_offers(
    agent: Agent, manifests: Mapping[str, Manifest], surfaces: Surfaces, known: Collection[str]
) -> dict[str, PromptOffer]:
    """Every prompt the agent may get, by advertised name."""
    if agent.name not in known:
        return {}
    out: dict[str, PromptOffer] = {}
    for server, defs in surfaces.items():
        manifest = manifests.get(server)
        if manifest is None:
            continue
        for d in defs:
            grants = manifest.prompts.get(d.id, ()) if d.kind == "prompt" else ()
            grant = next((g for g in grants if g.matches(agent.name, agent.roles)), None)
            offer = compile_prompt(manifest, d, grant) if grant is not None else None
            if offer is not None:
                out[offer.name] = offer
    return out


def _refuse(kind: Any, reason: Reason, detail: str, server: str | None, name: str, args: Any) -> Decision:
    return Decision(False, reason, detail, Target(kind, server, name), args)


def check_prompt_arguments(
    offer: PromptOffer, arguments: Mapping[str, Any], max_bytes: int
) -> Violation | None:
    """The first reason the arguments are refused, or None."""
    found = check_strict(arguments, offer.declared, max_bytes)
    if found:
        return Violation(found[0].reason, found[0].detail.replace("of this tool", "of this prompt"))
    if any(not isinstance(v, str) for v in arguments.values()):
        return Violation(Reason.INVALID_ARGUMENTS, "prompt arguments must be strings")
    for name in sorted(offer.required - arguments.keys()):
        return Violation(Reason.INVALID_ARGUMENTS, f"{name} is required")
    violations = check_schema(offer.limits, arguments, Reason.LIMIT_EXCEEDED)
    return violations[0] if violations else None


def decide_prompt(
    name: str, arguments: Mapping[str, Any], offers: Mapping[str, PromptOffer], max_bytes: int
) -> Decision:
    """The decision for one prompts/get, checks in the order of a tool call's."""
    offer = offers.get(name)
    if offer is None:
        shown = escape_name(name)
        return _refuse("prompt", Reason.UNKNOWN_PROMPT, f"Unknown prompt: {shown}", None, shown, arguments)
    violation = check_prompt_arguments(offer, arguments, max_bytes)
    if violation is not None:
        return _refuse("prompt", violation.reason, violation.detail, offer.server, offer.prompt.id, arguments)
    return Decision(True, None, "allowed", Target("prompt", offer.server, offer.prompt.id), dict(arguments))


def withheld_prompt(
    agent: Agent,
    name: str,
    arguments: Mapping[str, Any],
    manifests: Mapping[str, Manifest],
    withheld: Collection[tuple[str, str]],
    known: Collection[str],
    kind: str = "prompt",
) -> Decision | None:
    """A prompt withheld by its pin ((server, prompt) in `withheld`) that the agent is granted is
    refused `pin_mismatch`, for prompts/get and (`kind` "completion") for completion of its
    arguments; to anyone else it does not exist, so withholding reveals no hidden prompt. The
    guard and `explain` both decide with this."""
    if agent.name not in known:
        return None
    for server, prompt in sorted(withheld):
        manifest = manifests.get(server)
        if manifest is None or manifest.name_prefix + prompt != name:
            continue
        if any(g.matches(agent.name, agent.roles) for g in manifest.prompts.get(prompt, ())):
            detail = (
                "this prompt's definition is not the pinned one; it is withheld until an operator accepts it"
            )
            return _refuse(kind, Reason.PIN_MISMATCH, detail, server, prompt, arguments)
    return None


def template_variables(template: str) -> frozenset[str]:
    """The variable names of an RFC 6570 URI template."""
    names = set()
    for match in _EXPRESSION.finditer(template):
        for spec in match.group(1).lstrip("+#./;?&").split(","):
            names.add(spec.split(":")[0].rstrip("*"))
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class CompletionRef:
    """What a completion/complete asks about: a prompt (by advertised name) or a resource
    template (by its `uriTemplate`), the argument being completed and the context's arguments."""

    kind: str  # "ref/prompt" | "ref/resource"
    name: str
    argument: str
    value: str
    context: Mapping[str, Any] = field(default_factory=dict)


def decide_completion(
    ref: CompletionRef,
    offers: Mapping[str, PromptOffer],
    templates: Collection[tuple[str, SurfaceDef]],
    max_bytes: int,
) -> Decision:
    """Completion only for a prompt the agent may get (of one of its declared arguments, with a
    context of declared arguments) or a template it is shown (of one of its variables)."""
    arguments = {ref.argument: ref.value}
    recorded = {"ref": ref.kind, "argument": ref.argument, "value": ref.value}
    if ref.kind == "ref/prompt":
        offer = offers.get(ref.name)
        if offer is None:
            detail = f"Unknown prompt: {escape_name(ref.name)}"
            return _refuse("completion", Reason.UNKNOWN_PROMPT, detail, None, escape_name(ref.name), recorded)
        found = check_strict({**ref.context, **arguments}, offer.declared, max_bytes)
        if found or not all(isinstance(v, str) for v in ref.context.values()):
            detail = found[0].detail.replace("of this tool", "of this prompt") if found else "must be strings"
            return _refuse(
                "completion", Reason.INVALID_ARGUMENTS, detail, offer.server, offer.prompt.id, recorded
            )
        return Decision(True, None, "allowed", Target("completion", offer.server, offer.prompt.id), recorded)
    for server, template in templates:
        if ref.kind == "ref/resource" and template.id == ref.name:
            if ref.argument not in template_variables(template.id) or ref.context:
                detail = f"{escape_name(ref.argument)} is not a variable of this template"
                return _refuse("completion", Reason.INVALID_ARGUMENTS, detail, server, template.id, recorded)
            if len(ref.value.encode()) > max_bytes:
                detail = f"arguments must be at most {max_bytes} bytes"
                return _refuse("completion", Reason.INVALID_ARGUMENTS, detail, server, template.id, recorded)
            return Decision(True, None, "allowed", Target("completion", server, template.id), recorded)
    shown = escape_name(ref.name)
    return _refuse("completion", Reason.UNKNOWN_RESOURCE, "Resource not found", None, shown, recorded)


def completions_allowed(offer: PromptOffer | None, argument: str, values: list[str]) -> list[str]:
    """The completion values the grant's limit on `argument` would let through (all of them for an
    argument without a limit): the model is never offered a value it would be refused."""
    if offer is None or argument not in offer.grant.arguments:
        return values
    return [v for v in values if not check_schema(offer.limits, {argument: v}, Reason.LIMIT_EXCEEDED)]
