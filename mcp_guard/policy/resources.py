"""Who may read which resource. One function, `decide_read`, decides whether an agent may read a
URI and from which server; `resources/list` is that function applied to every listed resource,
and `resources/templates/list` the same patterns applied to each template's `uriTemplate` string,
so listing equals reading. A read is routed to the one server that lists the URI or whose
manifest's patterns match it; a URI two servers claim is withheld. Pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Agent, Decision, escape_name
from mcp_guard.policy.reasons import Reason
from mcp_guard.policy.targets import Target
from mcp_guard.policy.uris import matches, uri_problem

SurfaceKind = Literal["resource", "template", "prompt"]
NOT_FOUND = "Resource not found"


@dataclass(frozen=True, slots=True)
class SurfaceDef:
    """A resource, resource template or prompt of an upstream, in our terms: `id` is its URI,
    `uriTemplate` or name; `definition` what the upstream sent (JSON); `digest` its content.
    `name` is its key in a lock file and in the ledger's pins: `resource:URI`, `prompt:NAME`."""

    kind: SurfaceKind
    id: str
    definition: Mapping[str, Any]
    digest: str

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.id}"


Surfaces = Mapping[str, Sequence[SurfaceDef]]
"""The live resources, templates and prompts, by server (pin-checked where the guard serves)."""


def patterns_for(manifest: Manifest, agent: Agent) -> tuple[str, ...]:
    """Every URI pattern of the manifest's `resources` grants that allow the agent."""
    return tuple(p for g in manifest.resources if g.matches(agent.name, agent.roles) for p in g.uris)


def claimants(uri: str, manifests: Mapping[str, Manifest], surfaces: Surfaces) -> list[str]:
    """The servers that claim a URI: those that list it, and those whose manifest has a pattern
    (granted to anyone) that matches it."""
    found = []
    for server, manifest in manifests.items():
        listed = any(d.kind == "resource" and d.id == uri for d in surfaces.get(server, ()))
        patterns = [p for g in manifest.resources for p in g.uris]
        if listed or matches(patterns, uri):
            found.append(server)
    return found


def _refuse(reason: Reason, detail: str, server: str | None, uri: str) -> Decision:
    return Decision(False, reason, detail, Target("resource", server, uri), {})


def decide_read(
    agent: Agent,
    uri: str,
    manifests: Mapping[str, Manifest],
    surfaces: Surfaces,
    known: Collection[str],
    withheld: Collection[str] = (),
) -> Decision:
    """Whether `agent` may read `uri`, and from which server. `known`: the agents guard.yaml
    defines; `withheld`: URIs whose definition does not match its pin. Every refusal reads, to
    the agent, as a resource that does not exist."""
    problem = uri_problem(uri)
    shown = escape_name(uri)
    if problem is not None:
        return _refuse(Reason.UNKNOWN_RESOURCE, f"{NOT_FOUND}: the URI {problem}", None, shown)
    if agent.name not in known:
        return _refuse(Reason.UNKNOWN_RESOURCE, NOT_FOUND, None, shown)
    servers = claimants(uri, manifests, surfaces)
    if len(servers) != 1:
        return _refuse(Reason.UNKNOWN_RESOURCE, NOT_FOUND, None, shown)
    server = servers[0]
    if not matches(patterns_for(manifests[server], agent), uri):
        return _refuse(Reason.UNKNOWN_RESOURCE, NOT_FOUND, None, shown)
    if uri in withheld:
        detail = (
            "this resource's definition is not the pinned one; it is withheld until an operator accepts it"
        )
        return _refuse(Reason.PIN_MISMATCH, detail, server, uri)
    return Decision(True, None, "allowed", Target("resource", server, uri), {})


def readable(
    agent: Agent, manifests: Mapping[str, Manifest], surfaces: Surfaces, known: Collection[str]
) -> list[tuple[str, SurfaceDef]]:
    """The resources `agent` is shown: each listed resource that `decide_read` allows, from the
    server that listed it."""
    out = []
    for server, defs in surfaces.items():
        for d in defs:
            if d.kind != "resource":
                continue
            decision = decide_read(agent, d.id, manifests, surfaces, known)
            if decision.allowed and decision.server == server:
                out.append((server, d))
    return out


def visible_templates(
    agent: Agent, manifests: Mapping[str, Manifest], surfaces: Surfaces, known: Collection[str]
) -> list[tuple[str, SurfaceDef]]:
    """The resource templates `agent` is shown: those whose `uriTemplate` string, read as a URI,
    matches one of the agent's patterns on that server."""
    if agent.name not in known:
        return []
    out = []
    for server, defs in surfaces.items():
        manifest = manifests.get(server)
        if manifest is None:
            continue
        patterns = patterns_for(manifest, agent)
        for d in defs:
            if d.kind == "template" and uri_problem(d.id) is None and matches(patterns, d.id):
                out.append((server, d))
    return out
