"""Pinned tool definitions (SPEC `tool_manifests/<server>.lock`): the lock files `manifest lock`
writes, trust on first use through the ledger's `pin` entries when a server has no lock, and the
check that withholds a tool whose live definition is not the pinned one. Digests are the ones
`convert.tool_def` computes (the one definition); no mcp types here. Reads and writes pins only
through the LedgerStore protocol."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mcp_guard import ledger as ledgers
from mcp_guard.config import LedgerConfig
from mcp_guard.errors import ConfigError, GuardError, LedgerError
from mcp_guard.ledger import LedgerStore, PinEvent, Window
from mcp_guard.loading import check_file_permissions
from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Agent, Catalog, Decision, Policy
from mcp_guard.policy.offers import ToolDef
from mcp_guard.policy.reasons import Reason

LOCK_SUFFIX = ".lock"
DEFINITIONS_SUFFIX = ".pinned"
FIRST_USE = "first-use"
WITHHELD = "withheld"


def lock_path(manifest: Manifest) -> Path:
    """`tool_manifests/<server>.lock`, next to the manifest that defines the server."""
    return manifest.source.parent / f"{manifest.server}{LOCK_SUFFIX}"


def load_lock(path: Path) -> dict[str, str] | None:
    """The pins of a lock file: tool name -> digest; None when there is no lock."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot be read: {exc.strerror or exc}") from None
    check_file_permissions(path)  # a world-writable lock could pin anything: refused
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(str(path), "", f"is not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(str(path), "", "must map each tool name to the SHA-256 of its definition")
    return data


def definitions_path(manifest: Manifest) -> Path:
    """`tool_manifests/<server>.pinned`: the definitions a lock pins, kept for review (`manifest
    diff`); the lock's digests alone decide."""
    return manifest.source.parent / f"{manifest.server}{DEFINITIONS_SUFFIX}"


def load_definitions(manifest: Manifest) -> dict[str, Any] | None:
    """The definitions saved beside a lock, by tool name; None when there are none to read."""
    try:
        data = json.loads(definitions_path(manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_lock(path: Path, digests: Mapping[str, Any]) -> None:
    """Write a lock (or its definitions) atomically (a guard reading it sees the old or the new
    one), mode 0644."""
    text = json.dumps(dict(sorted(digests.items())), indent=2, ensure_ascii=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Withheld:
    """A live tool whose definition is not the pinned one (`pinned` None: not in the lock)."""

    server: str
    tool: str
    digest: str
    pinned: str | None

    @property
    def key(self) -> tuple[str, str, str, str | None]:
        return self.server, self.tool, self.digest, self.pinned

    @property
    def detail(self) -> str:
        """What the model is told: the tool exists but is held back until someone reviews it."""
        why = "is not in the reviewed lock" if self.pinned is None else "changed since it was reviewed"
        return f"this tool's definition {why}; it is withheld until an operator accepts it"

    @property
    def warning(self) -> str:
        why = (
            "is not listed in its lock"
            if self.pinned is None
            else f"differs from its pin ({self.pinned[:12]}...)"
        )
        # a resource, template or prompt is pinned as `kind:id`; a tool name never holds ':'
        kind, ident = self.tool.split(":", 1) if ":" in self.tool else ("tool", self.tool)
        return (
            f"warning: upstream {self.server!r} {kind} {ident!r} is withheld: its definition "
            f"({self.digest[:12]}...) {why}; review it, then run `mcp-guard manifest lock {self.server}`"
        )


def by_name(manifests: Mapping[str, Manifest], withheld: Iterable[Withheld]) -> dict[str, Withheld]:
    """The withheld tools by the name they would be advertised under."""
    return {manifests[w.server].name_prefix + w.tool: w for w in withheld if w.server in manifests}


def withheld_denial(
    policy: Policy, agent: Agent, withheld: Mapping[str, Withheld], name: str, arguments: Mapping[str, Any]
) -> Decision | None:
    """A withheld tool the agent is granted is refused `pin_mismatch`; to anyone else it does not
    exist (unknown_tool), so withholding reveals no hidden tool. The guard and `explain` both
    decide with this."""
    held = withheld.get(name)
    if held is None or policy.grant_for(agent, held.server, held.tool) is None:
        return None
    return Decision.refuse(Reason.PIN_MISMATCH, held.detail, held.server, held.tool, arguments)


@dataclass(frozen=True, slots=True)
class Pinned:
    """The catalog that may be offered, the tools withheld from it, and whether it is final
    (False when the ledger could not be read or written: unpinned tools are withheld meanwhile)."""

    catalog: dict[str, tuple[ToolDef, ...]]
    withheld: tuple[Withheld, ...]
    settled: bool = True


@dataclass(frozen=True, slots=True)
class Seen:
    """What the ledger's pin entries say: the first-use pins and the withholdings recorded."""

    first_use: dict[tuple[str, str], str]
    withheld: frozenset[tuple[str, str, str, str | None]]


def read_pins(events: Iterable[PinEvent]) -> Seen:
    """The pins recorded in the ledger: first-use pins (the first writer wins) and withholdings."""
    first_use: dict[tuple[str, str], str] = {}
    withheld: set[tuple[str, str, str, str | None]] = set()
    for event in events:
        payload = event.payload
        server, tool, digest = event.server or "", str(payload.get("tool")), payload.get("digest")
        if not isinstance(digest, str):
            continue
        if payload.get("source") == FIRST_USE:
            first_use.setdefault((server, tool), digest)  # the first writer wins
        elif payload.get("action") == WITHHELD:
            pinned = payload.get("pinned")
            withheld.add((server, tool, digest, pinned if isinstance(pinned, str) else None))
    return Seen(first_use, frozenset(withheld))


def check_pins(
    catalog: Catalog, locks: Mapping[str, Mapping[str, str] | None], seen: Seen
) -> tuple[Pinned, list[tuple[str, ToolDef]]]:
    """Split the live catalog into what may be offered and what is withheld. A server with a
    lock is checked against it; one without against the ledger's first-use pins. Also returns
    the tools seen for the first time (to pin; they are offered)."""
    kept: dict[str, tuple[ToolDef, ...]] = {}
    withheld: list[Withheld] = []
    first: list[tuple[str, ToolDef]] = []
    for server, tools in catalog.items():
        lock = locks.get(server)
        ok: list[ToolDef] = []
        for tool in tools:
            pinned = lock.get(tool.name) if lock is not None else seen.first_use.get((server, tool.name))
            if lock is None and pinned is None:
                first.append((server, tool))
                ok.append(tool)
            elif pinned == tool.digest:
                ok.append(tool)
            else:
                withheld.append(Withheld(server, tool.name, tool.digest, pinned))
        kept[server] = tuple(ok)
    return Pinned(kept, tuple(withheld)), first


def load_locks(
    manifests: Mapping[str, Manifest], log: Callable[[str], None]
) -> dict[str, dict[str, str] | None]:
    """Each server's lock (None: no lock). A lock that cannot be read pins nothing: fail closed."""
    locks: dict[str, dict[str, str] | None] = {}
    for server, manifest in manifests.items():
        try:
            locks[server] = load_lock(lock_path(manifest))
        except ConfigError as exc:
            log(f"{exc}; every tool of {server!r} is withheld until it is fixed")
            locks[server] = {}
    return locks


async def resolve(
    ledger: LedgerStore, manifests: Mapping[str, Manifest], catalog: Catalog, log: Callable[[str], None]
) -> Pinned:
    """Check the live catalog against the locks and the ledger's pins, recording first-use pins
    and each new withholding as `pin` entries. Reads the few pin entries of the catalog's servers
    first; only when something must be written does it take the write lock and decide again, so
    concurrent guards agree on one first-use pin."""
    locks = load_locks(manifests, log)
    try:
        seen = read_pins(await ledger.read(partial(_pins_of, servers=tuple(catalog))))
        pinned, first = check_pins(catalog, locks, seen)
        if first or any(w.key not in seen.withheld for w in pinned.withheld):
            pinned = await ledger.hold(partial(_record, catalog=catalog, locks=locks))
    except LedgerError as exc:
        log(f"pins cannot be read from the ledger ({exc}); tools without a lock are withheld")
        pinned, _ = check_pins(catalog, locks, Seen({}, frozenset()))
        unlocked = {s: t if locks.get(s) is not None else () for s, t in pinned.catalog.items()}
        return Pinned(unlocked, pinned.withheld, settled=False)
    return pinned


def _pins_of(window: Window, servers: tuple[str, ...]) -> list[PinEvent]:
    return [e for server in servers for e in window.pins(server=server)]


def _record(window: Window, catalog: Catalog, locks: Mapping[str, Mapping[str, str] | None]) -> Pinned:
    seen = read_pins(window.pins())
    pinned, first = check_pins(catalog, locks, seen)
    for server, tool in first:
        first_use = {
            "tool": tool.name,
            "digest": tool.digest,
            "source": FIRST_USE,
            "definition": tool.definition,
        }
        window.append(PinEvent(payload=first_use, server=server, tool=tool.name))
    for w in pinned.withheld:
        if w.key not in seen.withheld:
            held = {"tool": w.tool, "digest": w.digest, "pinned": w.pinned, "action": WITHHELD}
            window.append(PinEvent(payload=held, server=w.server, tool=w.tool))
    return pinned


async def lock_upstreams(
    manifests: tuple[Manifest, ...], log: Callable[[str], None]
) -> list[tuple[Path, int]]:
    """Start the upstreams, then write each one's lock from its live tools: (path, tools) each.
    An upstream that does not start is an error; no lock is written for any then."""
    from mcp_guard.guard.convert import surface_defs, tool_def  # the one digest
    from mcp_guard.upstream.pool import START_TIMEOUT, open_pool

    async with open_pool(manifests, log, wait=START_TIMEOUT) as pool:
        ups = list(pool.upstreams.values())
        down = [up.name for up in ups if not up.alive]
        if down:
            msg = f"manifest lock: upstream {down[0]!r} could not be started; no lock was written"
            raise GuardError(msg)
        defs: dict[str, list[Any]] = {up.name: [tool_def(t) for t in up.tools] for up in ups}
        for up in ups:  # resources, templates and prompts too, where the manifest grants them
            defs[up.name] += list(surface_defs(up.surfaces)) if up.manifest.grants_more_than_tools else []
    written = []
    for manifest in manifests:
        path = lock_path(manifest)
        tools = defs[manifest.server]
        write_lock(definitions_path(manifest), {t.name: t.definition for t in tools})
        write_lock(path, {t.name: t.digest for t in tools})
        written.append((path, len(tools)))
    return written


async def peek(
    config: LedgerConfig, manifests: Mapping[str, Manifest], catalog: Catalog, log: Callable[[str], None]
) -> tuple[Pinned, dict[str, dict[str, str] | None]]:
    """What a serving guard would withhold now, reading only (no first-use pin is written): for
    `check --live`, `tools` and `explain`. Also returns the locks it read."""
    locks = load_locks(manifests, log)
    events: list[PinEvent] = []
    if ledgers.exists(config):
        async with await ledgers.open_ledger(config, readonly=True) as ledger:
            events = await ledger.read(partial(_pins_of, servers=tuple(catalog)))
    pinned, _ = check_pins(catalog, locks, read_pins(events))
    return pinned, locks
