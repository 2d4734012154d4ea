"""What an upstream exposes besides tools, as it listed them: resources, resource templates and
prompts, each list read whole (every page, up to a bound) when the upstream's capabilities say it
has them, and read again when it says they changed; and what a failed request to an upstream
becomes. Knows nothing of agents or policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession, MCPError

from mcp_guard.errors import UpstreamError, UpstreamTimeout
from mcp_guard.upstream.transports import describe_failure

MAX_PAGES = 100
LIST_TIMEOUT = 10.0  # seconds for each whole list
"""An upstream that keeps handing out cursors is read no further (it could page forever)."""
NOTICES = (
    types.ResourceListChangedNotification,
    types.PromptListChangedNotification,
    types.ResourceUpdatedNotification,
)


@dataclass(frozen=True, slots=True)
class Listed:
    """An upstream's resources, resource templates and prompts, as it listed them."""

    resources: tuple[types.Resource, ...] = ()
    templates: tuple[types.ResourceTemplate, ...] = ()
    prompts: tuple[types.Prompt, ...] = ()

    def dump(self) -> list[list[dict[str, Any]]]:
        return [dump(self.resources), dump(self.templates), dump(self.prompts)]


def dump(items: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in items]


async def _pages(fetch: Callable[[str | None], Awaitable[Any]], field: str) -> tuple[Any, ...]:
    """Every page of one list; an upstream that fails or stalls on it has none of that kind (its
    tools are served all the same)."""
    found: list[Any] = []
    cursor: str | None = None
    with anyio.move_on_after(LIST_TIMEOUT) as waited:
        try:
            for _ in range(MAX_PAGES):
                page = await fetch(cursor)
                found += getattr(page, field)
                cursor = page.next_cursor
                if not cursor:
                    break
        except (MCPError, anyio.ClosedResourceError, anyio.BrokenResourceError, ValueError):
            return ()
    return () if waited.cancelled_caught else tuple(found)


def _params(cursor: str | None) -> types.PaginatedRequestParams | None:
    return types.PaginatedRequestParams(cursor=cursor) if cursor else None


async def list_surfaces(session: ClientSession, capabilities: types.ServerCapabilities | None) -> Listed:
    """Every resource, template and prompt the upstream lists (none of a kind it does not have)."""
    resources: tuple[Any, ...] = ()
    templates: tuple[Any, ...] = ()
    prompts: tuple[Any, ...] = ()
    if capabilities is not None and capabilities.resources is not None:
        resources = await _pages(lambda c: session.list_resources(params=_params(c)), "resources")
        templates = await _pages(
            lambda c: session.list_resource_templates(params=_params(c)), "resource_templates"
        )
    if capabilities is not None and capabilities.prompts is not None:
        prompts = await _pages(lambda c: session.list_prompts(params=_params(c)), "prompts")
    return Listed(resources, templates, prompts)


def subscribe(uri: str) -> Callable[[ClientSession], Awaitable[Any]]:
    """resources/subscribe, sent as a plain request (the SDK's helper is deprecated for 2026-era
    servers, and the upstreams a guard wraps are 2025-era ones)."""
    request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
    return lambda session: session.send_request(request, types.EmptyResult)


def unsubscribe(uri: str) -> Callable[[ClientSession], Awaitable[Any]]:
    request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
    return lambda session: session.send_request(request, types.EmptyResult)


async def relist(up: Any, session: ClientSession, message: Any) -> bool:
    """Follow an upstream's notice: a changed resource goes to `up.on_updated`; a changed list is
    read again into `up.surfaces` (True: tell the guard, as for a changed tool list)."""
    if isinstance(message, types.ResourceUpdatedNotification):
        if up.on_updated is not None:
            await up.on_updated(up.name, str(message.params.uri))
        return False
    try:
        init = session.initialize_result
        up.surfaces = await list_surfaces(session, init.capabilities if init else None)
    except Exception as exc:
        up._log(f"upstream {up.name!r}: relisting resources and prompts failed: {describe_failure(exc)}")
        return False
    return True


def failure(
    exc: Exception, name: str, timeout: float, too_large: bool, gone: bool
) -> tuple[UpstreamError, bool]:
    """The UpstreamError that a failed request becomes, and whether its session is dead (`gone`:
    the session ended meanwhile; `too_large`: it ended on a message over the cap)."""
    if isinstance(exc, MCPError):
        if exc.error.code == types.REQUEST_TIMEOUT:
            return UpstreamTimeout(f"upstream {name!r} timed out after {timeout:g}s"), False
        if exc.error.code == types.CONNECTION_CLOSED and too_large:
            msg = f"upstream {name!r}: a message over limits.max_result_bytes was refused"
            return UpstreamError(msg), True
        dead = exc.error.code == types.CONNECTION_CLOSED
        return UpstreamError(f"upstream {name!r}: {describe_failure(exc)}"), dead
    if isinstance(exc, UpstreamError):  # already says what went wrong (an upstream asking too often)
        return exc, False
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"upstream {name!r} timed out after {timeout:g}s"), True
    dead = gone or isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError)
    return UpstreamError(f"upstream {name!r}: {describe_failure(exc)}"), dead
