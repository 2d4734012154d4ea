"""What the upstreams expose besides tools, as the guard serves it: their resources, templates and
prompts as the policy's SurfaceDefs, pin-checked like tools (a definition that differs from its pin
is withheld), cached per policy and upstream lists. Only servers whose manifest grants resources
or prompts are read at all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from mcp_guard.guard import pins
from mcp_guard.guard.convert import surface_defs
from mcp_guard.ledger import LedgerStore
from mcp_guard.policy.engine import Catalog, Policy
from mcp_guard.policy.resources import Surfaces
from mcp_guard.upstream.surfaces import Listed


@dataclass
class SurfaceCatalog:
    """The pin-checked surfaces under the policy in force, rebuilt when the policy or an
    upstream's lists change; `withheld` holds the URIs of resources withheld by their pin."""

    ledger: LedgerStore
    log: Callable[[str], None]
    withheld: frozenset[str] = frozenset()
    _cache: tuple[Policy, dict[str, Listed], Surfaces] | None = field(default=None, init=False)

    async def current(self, policy: Policy, live: Mapping[str, Listed]) -> Surfaces:
        wanted = {
            s: listed
            for s, listed in live.items()
            if s in policy.manifests and policy.manifests[s].grants_more_than_tools
        }
        cached = self._cache
        if cached is not None and cached[0] is policy and _same(cached[1], wanted):
            return cached[2]
        defs = {server: surface_defs(listed) for server, listed in wanted.items()}
        if not defs:
            return {}
        pinned = await pins.resolve(self.ledger, policy.manifests, cast(Catalog, defs), self.log)
        for held in pinned.withheld:
            self.log(held.warning)
        surfaces = cast(Surfaces, pinned.catalog)
        self.withheld = frozenset(
            w.tool[len("resource:") :] for w in pinned.withheld if w.tool.startswith("resource:")
        )
        if pinned.settled:
            self._cache = (policy, dict(wanted), surfaces)
        return surfaces


def _same(old: Mapping[str, Listed], new: Mapping[str, Listed]) -> bool:
    return old.keys() == new.keys() and all(old[name] is new[name] for name in new)
