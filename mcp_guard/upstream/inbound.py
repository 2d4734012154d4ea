"""What an upstream sends the guard's client session besides results: its own requests
(sampling/createMessage, elicitation/create) and its log messages, handed to a `Relay`, and a
tools/call answered in the 2026-07-28 multi-round-trip form (an `InputRequiredResult`), whose input
requests go to the `ASK` of the call that is waiting for it. The session declares the sampling or
elicitation capability only where the manifest's `upstream.relay` opts in; without it the SDK
refuses them as before, and roots requests are always refused. Knows nothing of agents or policy:
which client, if any, hears a request is the Relay's decision."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Protocol

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.shared.dispatcher import ProgressFnT as ProgressFn

from mcp_guard.errors import UpstreamError
from mcp_guard.manifest import Manifest
from mcp_guard.upstream.framing import LOG_MESSAGES_PER_SECOND, Bounded

Answer = types.InputResponse | types.ErrorData
Ask = Callable[[types.InputRequest], Awaitable[Answer]]
ASK: ContextVar[Ask | None] = ContextVar("mcp_guard_upstream_ask", default=None)
"""Set by the guard around one forwarded call: where that call's own input requests go."""
MAX_ROUNDS = 10  # input-required rounds of one call before it is given up on (as the SDK's client)
REFUSED = types.ErrorData(code=types.INVALID_REQUEST, message="the client cannot answer this request")


class Relay(Protocol):
    """The guard's side: where an upstream's requests and log messages go."""

    async def request(self, server: str, request: types.InputRequest) -> Answer:
        """An upstream request in the 2025 form (the upstream sent it to the session): answered by
        the caller of a call in flight on that server, or refused with an error."""
        ...

    async def log(self, server: str, params: types.LoggingMessageNotificationParams) -> None:
        """An upstream log message (the operator has it already): to clients, if any may hear it."""
        ...


def session_callbacks(manifest: Manifest, relay: Relay | None, log: Callable[[str], None]) -> dict[str, Any]:
    """The ClientSession callbacks for one session with the manifest's upstream: log messages always
    reach the operator (`log`), at most LOG_MESSAGES_PER_SECOND a second (the rest are counted);
    sampling and elicitation are declared and relayed only as the manifest's `upstream.relay`
    says."""
    server, opted = manifest.server, manifest.upstream.relay
    rate = Bounded(LOG_MESSAGES_PER_SECOND)  # per session: a restarted upstream starts afresh

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        passed, dropped = rate.take()
        if dropped:
            log(f"upstream {server!r}: {dropped} more log messages in one second not shown or relayed")
        if not passed:
            return
        log(f"upstream {server!r} [{params.level}]: {params.data}")
        if relay is not None and opted.logging:
            await relay.log(server, params)

    callbacks: dict[str, Any] = {"logging_callback": on_log}
    if relay is None:
        return callbacks

    async def sampling(_: Any, params: types.CreateMessageRequestParams) -> Any:
        return await relay.request(server, types.CreateMessageRequest(params=params))

    async def elicitation(_: Any, params: types.ElicitRequestParams) -> Any:
        return await relay.request(server, types.ElicitRequest(params=params))

    if opted.sampling is not None:
        callbacks["sampling_callback"] = sampling
    if opted.elicitation:
        callbacks["elicitation_callback"] = elicitation
    return callbacks


async def call_tool(
    session: ClientSession,
    server: str,
    tool: str,
    arguments: dict[str, Any],
    read_timeout: float,
    progress: ProgressFn | None,
) -> types.CallToolResult:
    """tools/call, following an upstream that answers in the multi-round-trip form: each round's
    input requests go to the waiting call's `ASK` (so they can only reach that call's caller), and
    the call is retried with the answers and the upstream's `requestState`, unread. A request that
    is refused, or more than MAX_ROUNDS rounds, ends the call as an upstream error."""
    result = await session.call_tool(
        tool,
        arguments,
        read_timeout_seconds=read_timeout,
        progress_callback=progress,
        allow_input_required=True,
    )
    rounds = 0
    while isinstance(result, types.InputRequiredResult):
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise UpstreamError(
                f"upstream {server!r} asked for input more than {MAX_ROUNDS} times in one call"
            )
        if not result.input_requests:  # the upstream is still working: ask again, after a pause
            await anyio.sleep(min(0.05 * rounds, 0.25))
        ask = ASK.get()
        answers: dict[str, types.InputResponse] = {}
        for key, request in (result.input_requests or {}).items():
            answer = await ask(request) if ask is not None else REFUSED
            if isinstance(answer, types.ErrorData):
                raise UpstreamError(f"upstream {server!r} asked for input that was refused: {answer.message}")
            answers[key] = answer
        result = await session.call_tool(
            tool,
            arguments,
            read_timeout_seconds=read_timeout,
            progress_callback=progress,
            input_responses=answers or None,
            request_state=result.request_state,
            allow_input_required=True,
        )
    if not isinstance(result, types.CallToolResult):
        raise UpstreamError(f"upstream {server!r} answered tools/call with something else")
    return result
