"""The command line's view of resources, templates and prompts: the part of `manifest init` that
lists them (granted to nobody), what `check --live` says of `resources:` and `prompts:` against the
live upstreams, and `reads --agent NAME`, the sibling of `tools --agent`: what an agent may read
and get, decided by the guard's own policy functions."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from mcp_guard import ledger as ledgers
from mcp_guard.config import GuardConfig
from mcp_guard.guard.reads import LOCKED_OUT, View
from mcp_guard.guard.surfaces import Held, peek
from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Agent, Decision, Policy
from mcp_guard.policy.prompts import prompt_offers
from mcp_guard.policy.reasons import Reason, denial
from mcp_guard.policy.resources import Surfaces, patterns_for, readable, visible_templates
from mcp_guard.policy.targets import Target
from mcp_guard.policy.uris import matches, uri_problem
from mcp_guard.secrets import Scrubber
from mcp_guard.upstream.pool import START_TIMEOUT, open_pool
from mcp_guard.upstream.surfaces import Listed
from mcp_guard.upstream.transports import Transport

MAX_LISTED = 200  # resources written out by `manifest init`; a server with more gets a pattern to write
_VARIABLE = re.compile(r"\{[^{}]*\}")


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _note(text: str | None, limit: int = 120) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def template_pattern(template: str) -> str:
    """The pattern that grants what a URI template names: `*` for each variable."""
    return _VARIABLE.sub("*", template)


def render_surfaces(listed: Listed) -> str:
    """The `resources:` and `prompts:` blocks of a starter manifest: every resource (up to a
    bound), each template as a pattern, and every prompt with its arguments, granted to nobody."""
    out: list[str] = []
    uris = [(str(r.uri), r.name, r.description) for r in listed.resources if uri_problem(str(r.uri)) is None]
    patterns = [(template_pattern(t.uri_template), t.uri_template, t.description) for t in listed.templates]
    if uris or patterns:
        out += [
            "# Resources the upstream lists (templates as patterns); `*` matches within a path",
            "resources:",
        ]
        out += ["  - allow: []", "    uris:"]
        for uri, name, description in uris[:MAX_LISTED]:
            out.append(f"      - {_q(uri)}  # {_note(name)}: {_note(description)}".rstrip(": "))
        if len(uris) > MAX_LISTED:
            out.append(f"      # ... and {len(uris) - MAX_LISTED} more: grant them with a pattern")
        for pattern, template, description in patterns:
            out.append(
                f"      - {_q(pattern)}  # template {_note(template)}: {_note(description)}".rstrip(": ")
            )
    if listed.prompts:
        out.append("prompts:")
        for prompt in listed.prompts:
            out.append(f"  {_q(prompt.name)}:")
            if prompt.description:
                out.append(f"    # {_note(prompt.description)}")
            args = [f"{a.name} ({'required' if a.required else 'optional'})" for a in prompt.arguments or []]
            out.append(f"    # arguments: {_note(', '.join(args)) if args else 'none'}")
            out.append("    allow: []")
    return "\n".join(out) + ("\n" if out else "")


def surface_problems(manifests: Sequence[Manifest], listed: Mapping[str, Listed]) -> list[str]:
    """Every `file:path: reason` where `resources:` or `prompts:` do not fit the live upstream: a
    prompt it does not have, a limit on an argument its prompt does not have, a `resources:` grant on
    an upstream that lists no resources or templates, or a pattern that matches none of them."""
    out: list[str] = []
    for m in manifests:
        live = listed.get(m.server)
        if live is None or not m.grants_more_than_tools:
            continue
        prompts = {p.name: p for p in live.prompts}
        for name, grants in m.prompts.items():
            if name not in prompts:
                out.append(f"{m.source}:prompts.{name}: upstream {m.server!r} has no such prompt")
                continue
            declared = {a.name for a in prompts[name].arguments or []}
            for i, grant in enumerate(grants):
                for arg in grant.arguments:
                    if arg not in declared:
                        msg = f"upstream prompt has no argument {arg!r}; this grant matches nothing"
                        out.append(f"{m.source}:prompts.{name}[{i}].arguments.{arg}: {msg}")
        known = [str(r.uri) for r in live.resources] + [t.uri_template for t in live.templates]
        for i, rgrant in enumerate(m.resources):
            if not known:
                out.append(
                    f"{m.source}:resources[{i}]: upstream {m.server!r} lists no resources or templates"
                )
                continue
            for pattern in rgrant.uris:
                if not any(matches([pattern], uri) for uri in known):
                    msg = f"matches none of the {len(known)} resources and templates the upstream lists"
                    out.append(f"{m.source}:resources[{i}].uris: {pattern!r} {msg}")
    return out


def reads_view(policy: Policy, agent: Agent, surfaces: Surfaces, held: Held | None = None) -> dict[str, Any]:
    """What `agent` may read and get: resources listed, templates shown, prompts with their limits,
    and what it is granted but the guard withholds by its pin (`held`), decided as the guard does."""
    manifests, known = policy.manifests, policy.agents
    prompts = prompt_offers(agent, manifests, surfaces, known)
    return {
        "agent": agent.name,
        "resources": [{"server": s, "uri": d.id} for s, d in readable(agent, manifests, surfaces, known)],
        "templates": [
            {"server": s, "uriTemplate": d.id}
            for s, d in visible_templates(agent, manifests, surfaces, known)
        ],
        "patterns": {
            m.server: [p for g in m.resources if g.matches(agent.name, agent.roles) for p in g.uris]
            for m in manifests.values()
            if m.resources
        },
        "prompts": [
            {"name": name, "server": o.server, "prompt": o.prompt.id, "arguments": dict(o.grant.arguments)}
            for name, o in sorted(prompts.items())
        ],
        "withheld": _withheld(View(agent, policy, surfaces, held or Held())),
    }


def _withheld(view: View) -> list[dict[str, str]]:
    """The resources, templates and prompts the agent is granted that their pin withholds, with
    the guard's refusal (a template is not listed, so it is refused as its reads would be)."""
    out = []
    for w in view.held.all:
        kind, ident = w.tool.split(":", 1)
        manifest = view.policy.manifests[w.server]
        if kind == "prompt":
            decision = view.get(manifest.name_prefix + ident, {})
        elif kind == "resource":
            decision = view.read(ident)
        elif matches(patterns_for(manifest, view.agent), ident):
            detail = (
                f"this {kind}'s definition is not the pinned one; it is withheld until an operator accepts it"
            )
            decision = Decision(False, Reason.PIN_MISMATCH, detail, Target("resource", w.server, ident), {})
        else:
            continue
        if decision.reason == Reason.PIN_MISMATCH:
            out.append({"kind": kind, "server": w.server, "id": ident, "text": decision.text})
    return out


def render_reads(view: Mapping[str, Any]) -> str:
    lines = [f"agent {view['agent']} may read:"]
    if view.get("locked_out_until"):
        lines.insert(0, f"(locked out until {view['locked_out_until']}; `mcp-guard agents unlock` ends it)")
    for server, patterns in sorted(view["patterns"].items()):
        if patterns:
            lines.append(f"  {server}: {', '.join(patterns)}")
    lines += [f"  resource {r['uri']} ({r['server']})" for r in view["resources"]]
    lines += [f"  template {t['uriTemplate']} ({t['server']})" for t in view["templates"]]
    if len(lines) == 1:
        lines.append("  (nothing)")
    lines.append(f"agent {view['agent']} may get:")
    for p in view["prompts"]:
        limits = ", ".join(f"{k} {json.dumps(v)}" for k, v in p["arguments"].items())
        lines.append(f"  {p['name']}" + (f" [{limits}]" if limits else ""))
    if not view["prompts"]:
        lines.append("  (no prompts)")
    for w in view["withheld"]:
        lines.append(f"  {w['kind']} {w['id']} ({w['server']}) is not shown: {w['text']}")
    return "\n".join(lines) + "\n"


# -- commands -------------------------------------------------------------------------------------


async def _live(
    config: GuardConfig, manifests: tuple[Manifest, ...], transports: Mapping[str, Transport] | None = None
) -> dict[str, Listed]:
    """The resources, templates and prompts of the upstreams whose manifest grants any."""
    wanted = tuple(m for m in manifests if m.grants_more_than_tools)
    if not wanted:
        return {}
    log = Scrubber(Policy(config, manifests).secrets).log
    limit = config.limits.max_result_bytes
    async with open_pool(
        wanted, log, wait=START_TIMEOUT, max_result_bytes=limit, transports=transports
    ) as pool:
        return {name: up.surfaces for name, up in pool.upstreams.items() if up.alive}


async def _pinned(
    config: GuardConfig, manifests: tuple[Manifest, ...], transports: Mapping[str, Transport] | None
) -> tuple[Surfaces, Held]:
    listed = await _live(config, manifests, transports)
    log = Scrubber(Policy(config, manifests).secrets).log
    return await peek(config.ledger, Policy(config, manifests), listed, log)


def live_surfaces(
    config: GuardConfig, manifests: tuple[Manifest, ...], transports: Mapping[str, Transport] | None = None
) -> tuple[Surfaces, Held]:
    """Start the upstreams that grant resources or prompts and read what they list (`transports`:
    instead of the manifests', as for the pool): what the guard would offer, and withhold by its
    pin, now (reading the ledger only)."""
    return anyio.run(_pinned, config, manifests, transports)


async def _lockout(config: GuardConfig, agent: str) -> str | None:
    """When the agent's lockout in force ends (None: not locked out, or no `lockout` configured)."""
    if config.lockout is None or not ledgers.exists(config.ledger):
        return None
    async with await ledgers.open_ledger(config.ledger, readonly=True) as ledger:
        found = await ledger.read(lambda window: window.lockouts(agent=agent))
    return found[0].until if found else None


def agent_view(
    config: GuardConfig,
    manifests: tuple[Manifest, ...],
    agent: Agent,
    transports: Mapping[str, Transport] | None = None,
) -> tuple[View, str | None]:
    """The guard's own View of the agent now (locked out: nothing), and when its lockout ends."""
    until = anyio.run(_lockout, config, agent.name)
    surfaces, held = live_surfaces(config, manifests, transports)
    return View(agent, Policy(config, manifests), {} if until else surfaces, held, until is not None), until


def register(sub: Any) -> None:
    r = sub.add_parser("reads", help="the resources and prompts an agent may read and get")
    r.add_argument("--agent", required=True, help="the agent, as named in guard.yaml")
    r.add_argument("--json", action="store_true", help="one JSON object")


def cmd_reads(config: GuardConfig, manifests: tuple[Manifest, ...], args: Any, agent_of: Any) -> int:
    """`reads --agent NAME [--json]`; `agent_of` is the command line's (an unknown agent: exit 2)."""
    policy = Policy(config, manifests)
    agent, as_json = agent_of(config, policy, args.agent), args.json
    seen, until = agent_view(config, manifests, agent)
    view = {**reads_view(policy, agent, seen.surfaces, seen.held), "locked_out_until": until}
    print(
        json.dumps(view, ensure_ascii=False) if as_json else render_reads(view), end="\n" if as_json else ""
    )
    return 0


def is_surface(manifests: Sequence[Manifest], name: str) -> bool:
    """Whether `explain` is asked about a resource URI (a tool name never holds ':') or a prompt."""
    return ":" in name or any(m.name_prefix + p == name for m in manifests for p in m.prompts)


def explain_surface(
    config: GuardConfig,
    manifests: tuple[Manifest, ...],
    agent: Agent,
    name: str,
    arguments: Mapping[str, Any],
    transports: Mapping[str, Transport] | None = None,
) -> tuple[bool, str]:
    """(allowed, the line to print) for a read of a URI or a get of a prompt, as the guard decides
    it (with its own View, pins included); forwards nothing, writes nothing."""
    view, until = agent_view(config, manifests, agent, transports)
    decision = view.read(name) if ":" in name else view.get(name, dict(arguments))
    if until is not None:  # the ledger refuses every request of a locked-out agent
        return False, denial(Reason.LOCKED_OUT, f"{LOCKED_OUT} until {until}")
    if not decision.allowed:
        return False, decision.text
    what = f"{decision.target.method} {decision.server}.{decision.target.name}"
    return True, f"allow: {what} for {agent.name!r} with {json.dumps(dict(arguments))}"
