"""`mcp-guard manifest lock|diff [SERVER]`: pin the live upstreams' tools, and show what changed
since, field by field, so a withheld tool can be reviewed before `manifest lock` accepts it. The
pinned definitions come from the file saved beside a lock (`<server>.pinned`), else from the
ledger's first-use pins. `diff` starts the upstreams and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import anyio

from mcp_guard import ledger as ledgers
from mcp_guard.config import GuardConfig
from mcp_guard.errors import GuardError
from mcp_guard.guard.convert import surface_defs, tool_def
from mcp_guard.guard.pins import (
    FIRST_USE,
    definitions_path,
    load_definitions,
    load_lock,
    lock_path,
    lock_upstreams,
)
from mcp_guard.ledger import PinEvent, Window
from mcp_guard.manifest import Manifest
from mcp_guard.secrets import Scrubber
from mcp_guard.upstream.pool import START_TIMEOUT, open_pool

SHOWN_CHARS = 160


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """`path: old -> new` for each leaf that differs; a key only one side has is added or removed."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{where}: added {_shown(new[key])}")
            elif key not in new:
                out.append(f"{where}: removed (was {_shown(old[key])})")
            else:
                out += changes(old[key], new[key], where)
        return out
    if old == new and type(old) is type(new):
        return []
    return [f"{path or 'definition'}: {_shown(old)} -> {_shown(new)}"]


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def report(server: str, pinned: Mapping[str, Any] | None, source: str, live: Sequence[Any]) -> list[str]:
    """The lines for one server: each tool new, gone or changed since it was pinned."""
    if pinned is None:
        return [f"{server}: no pinned definitions to compare with ({source})"]
    lines: list[str] = []
    now = {t.name: t.definition for t in live}
    for name in sorted(set(now) - set(pinned)):
        lines.append(f"+ {server}.{name}: not pinned yet")
    for name in sorted(set(pinned) - set(now)):
        lines.append(f"- {server}.{name}: pinned, no longer listed by the upstream")
    for name in sorted(set(now) & set(pinned)):
        found = changes(pinned[name], now[name])
        if found:
            lines.append(f"~ {server}.{name}:")
            lines += [f"    {line}" for line in found]
    return lines


def _first_use(events: Sequence[PinEvent]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        payload = event.payload
        definition = payload.get("definition")
        if payload.get("source") == FIRST_USE and isinstance(definition, dict):
            out.setdefault(str(payload.get("tool")), definition)  # the first writer wins, as for pins
    return out


async def diff_upstreams(
    config: GuardConfig, manifests: Sequence[Manifest], log: Callable[[str], None]
) -> list[str]:
    """Every difference of every server's live tools from its pinned definitions."""
    async with open_pool(tuple(manifests), log, wait=START_TIMEOUT) as pool:
        down = [up.name for up in pool.upstreams.values() if not up.alive]
        if down:
            msg = f"manifest diff: upstream {down[0]!r} could not be started"
            raise GuardError(msg)
        live: dict[str, list[Any]] = {
            name: [tool_def(t) for t in up.tools] for name, up in pool.upstreams.items()
        }
        for name, up in pool.upstreams.items():  # resources, templates and prompts, pinned as tools are
            live[name] += list(surface_defs(up.surfaces)) if up.manifest.grants_more_than_tools else []
    first_use: dict[str, dict[str, dict[str, Any]]] = {}
    if ledgers.exists(config.ledger):
        async with await ledgers.open_ledger(config.ledger, readonly=True) as ledger:
            for m in manifests:
                events = await ledger.read(partial(_pins, server=m.server))
                first_use[m.server] = _first_use(events)
    lines: list[str] = []
    for m in manifests:
        if load_lock(lock_path(m)) is not None:
            source = f"{definitions_path(m).name} is missing: run `mcp-guard manifest lock` to keep them"
            lines += report(m.server, load_definitions(m), source, live[m.server])
        else:
            lines += report(
                m.server, first_use.get(m.server) or None, "no lock, no first-use pin", live[m.server]
            )
    return lines


def _pins(window: Window, server: str) -> list[PinEvent]:
    return list(window.pins(server=server))


def run_lock(config: GuardConfig, manifests: tuple[Manifest, ...]) -> int:
    """`manifest lock`: write each server's lock (and the definitions it pins, for `diff`)."""
    log = Scrubber(frozenset().union(*(m.injected for m in manifests))).log
    for path, count in anyio.run(lock_upstreams, manifests, log):
        print(f"wrote {path}: {count} tool{'' if count == 1 else 's'} pinned")
    return 0


def run_diff(config: GuardConfig, manifests: tuple[Manifest, ...]) -> int:
    """`manifest diff`: exit 1 when anything changed since it was pinned, as `diff` does."""
    scrubber = Scrubber(frozenset(config.injected).union(*(m.injected for m in manifests)))
    lines = anyio.run(diff_upstreams, config, manifests, scrubber.log)
    for line in lines:
        print(scrubber.record(line))
    if not lines:
        print(f"no changes: {len(manifests)} server{'' if len(manifests) == 1 else 's'} as pinned")
    return 1 if lines else 0
