"""What the upstreams expose besides tools, as the guard serves it: their resources, templates and
prompts as the policy's SurfaceDefs, pin-checked like tools (a definition that differs from its pin
is withheld), cached per policy and upstream lists. Only servers whose manifest grants resources
or prompts are read at all. `peek` is the same check, reading only, for the command line."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

from mcp_guard.config import LedgerConfig
from mcp_guard.guard import pins
from mcp_guard.guard.convert import surface_defs
from mcp_guard.ledger import LedgerStore
from mcp_guard.policy.engine import Catalog, Policy
from mcp_guard.policy.resources import Surfaces
from mcp_guard.upstream.surfaces import Listed


@dataclass(frozen=True, slots=True)
class Held:
    """The surfaces withheld by their pin: resources by URI, prompts by (server, prompt)."""

    resources: frozenset[str] = frozenset()
    prompts: frozenset[tuple[str, str]] = frozenset()
    all: tuple[pins.Withheld, ...] = ()


def held(withheld: Iterable[pins.Withheld]) -> Held:
    found = tuple(withheld)
    return Held(
        frozenset(w.tool.removeprefix("resource:") for w in found if w.tool.startswith("resource:")),
        frozenset((w.server, w.tool.removeprefix("prompt:")) for w in found if w.tool.startswith("prompt:")),
        found,
    )


def wanted(policy: Policy, live: Mapping[str, Listed]) -> dict[str, Listed]:
    """The lists of the servers whose manifest grants resources or prompts."""
    manifests = policy.manifests
    return {s: listed for s, listed in live.items() if s in manifests and manifests[s].grants_more_than_tools}


@dataclass
class SurfaceCatalog:
    """The pin-checked surfaces under the policy in force, rebuilt when the policy or an
    upstream's lists change; `held` says what is withheld by its pin."""

    ledger: LedgerStore
    log: Callable[[str], None]
    held: Held = field(default_factory=Held)
    _cache: tuple[Policy, dict[str, Listed], Surfaces] | None = field(default=None, init=False)

    async def current(self, policy: Policy, live: Mapping[str, Listed]) -> Surfaces:
        found = wanted(policy, live)
        cached = self._cache
        if cached is not None and cached[0] is policy and _same(cached[1], found):
            return cached[2]
        defs = {server: surface_defs(listed) for server, listed in found.items()}
        if not defs:
            return {}
        pinned = await pins.resolve(self.ledger, policy.manifests, cast(Catalog, defs), self.log)
        for w in pinned.withheld:
            self.log(w.warning)
        self.held = held(pinned.withheld)
        if pinned.settled:
            self._cache = (policy, dict(found), cast(Surfaces, pinned.catalog))
        return cast(Surfaces, pinned.catalog)


async def peek(
    config: LedgerConfig, policy: Policy, live: Mapping[str, Listed], log: Callable[[str], None]
) -> tuple[Surfaces, Held]:
    """What a serving guard would offer and withhold now, reading only (no first-use pin is
    written): for `check --live`, `reads` and `explain`."""
    defs = {server: surface_defs(listed) for server, listed in wanted(policy, live).items()}
    if not defs:
        return {}, Held()
    pinned, _ = await pins.peek(config, policy.manifests, cast(Catalog, defs), log)
    return cast(Surfaces, pinned.catalog), held(pinned.withheld)


def _same(old: Mapping[str, Listed], new: Mapping[str, Listed]) -> bool:
    return old.keys() == new.keys() and all(old[name] is new[name] for name in new)
