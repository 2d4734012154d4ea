"""Calls from clients that speak the 2026-07-28 multi-round-trip form, which forbids requests from
servers: what the upstream asks while it serves such a call is returned to the client as the
call's result (`InputRequiredResult`, with a `requestState` the guard mints), and the client's
retry carrying the answers resumes the same call. The call is decided, recorded and forwarded once;
the forward runs on while the client answers. A `requestState` is a random key to a call in this
process, good only for the agent that made the call and the tool it called, and only until the
call has ended; the upstream's own state never leaves the guard."""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from pydantic import ValidationError

Answer = types.InputResponse | types.ErrorData
Next = types.CallToolResult | types.InputRequiredResult
KEEP = 60.0  # seconds a call's result waits for a client that asked for input and has not come back
GONE = "requestState names no call of yours in progress"
MAX_PARKED = 10_000  # calls waiting for their client at once; beyond it the oldest is forgotten


class Parked:
    """One call of a multi-round-trip client: what its upstream asks, queued for the client's
    next request, and the call's result once it ends."""

    def __init__(self, agent: str, name: str) -> None:
        self.agent, self.name = agent, name
        self.token = secrets.token_urlsafe(24)
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, Any, Any]](math.inf)
        self._waiting: dict[str, tuple[type[Any], anyio.Event, list[Answer]]] = {}
        self._asked = 0
        self._reading = anyio.Lock()
        self.forgotten = anyio.Event()  # the client has its result, or the call was given up on

    async def ask(self, request: types.InputRequest, wait: float) -> Answer:
        """Queue `request` for the client's next round and wait up to `wait` for its answer."""
        self._asked += 1
        key = f"input-{self._asked}"
        expected: type[Any] = types.ElicitResult
        if isinstance(request, types.CreateMessageRequest):
            tools = request.params.tools is not None
            expected = types.CreateMessageResultWithTools if tools else types.CreateMessageResult
        answered, slot = anyio.Event(), list[Answer]()
        self._waiting[key] = (expected, answered, slot)
        self._send.send_nowait(("ask", key, request))
        try:
            with anyio.fail_after(wait):
                await answered.wait()
        except TimeoutError:
            return types.ErrorData(code=types.INVALID_REQUEST, message="the client did not answer in time")
        finally:
            self._waiting.pop(key, None)
        return slot[0]

    def answer(self, responses: Mapping[str, Any]) -> None:
        """The client's answers (a retry's `inputResponses`), each to the request with its key; an
        answer of the wrong shape is an error for the upstream."""
        for key, (expected, answered, slot) in list(self._waiting.items()):
            if key not in responses or answered.is_set():
                continue
            raw = responses[key]
            try:
                dumped = raw.model_dump(mode="json", by_alias=True) if hasattr(raw, "model_dump") else raw
                slot.append(expected.model_validate(dumped))
            except ValidationError:
                slot.append(
                    types.ErrorData(code=types.INVALID_PARAMS, message="the client's answer is malformed")
                )
            answered.set()

    def finish(self, result: types.CallToolResult) -> None:
        self._send.send_nowait(("done", None, result))

    def close(self) -> None:
        self._send.close()
        self._receive.close()
        self.forgotten.set()

    async def next(self) -> Next:
        """The call's result, or what the upstream asks that the client has not been shown yet."""
        async with self._reading:
            try:
                events = [await self._receive.receive()]
            except (anyio.EndOfStream, anyio.ClosedResourceError):  # forgotten meanwhile
                raise MCPError(types.INVALID_PARAMS, GONE) from None
            while True:
                try:
                    events.append(self._receive.receive_nowait())
                except anyio.WouldBlock:
                    break
        for kind, _, result in events:
            if kind == "done":
                return result  # type: ignore[no-any-return]
        requests = {key: request for _, key, request in events}
        return types.InputRequiredResult(input_requests=requests, request_state=self.token)


class Rounds:
    """The multi-round-trip calls in flight, by `requestState`."""

    def __init__(self) -> None:
        self._parked: dict[str, Parked] = {}

    def park(self, agent: str, name: str) -> Parked:
        if len(self._parked) >= MAX_PARKED:
            self._parked.pop(next(iter(self._parked))).close()
        parked = Parked(agent, name)
        self._parked[parked.token] = parked
        return parked

    def forget(self, parked: Parked) -> None:
        self._parked.pop(parked.token, None)
        parked.close()

    async def resume(self, state: str, agent: str, name: str, responses: Mapping[str, Any] | None) -> Next:
        """A retry: the same agent and tool as the call `state` names, or refused as unknown."""
        parked = self._parked.get(state)
        if parked is None or parked.agent != agent or parked.name != name:
            raise MCPError(types.INVALID_PARAMS, GONE)
        parked.answer(responses or {})
        result = await parked.next()
        if not isinstance(result, types.InputRequiredResult):
            self.forget(parked)
        return result
