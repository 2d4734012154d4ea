"""A manifest's `upstream.relay` block: which of an upstream's own requests and messages the guard
passes on to clients (elicitation, sampling with a cap on `maxTokens`, log messages). Everything is
off unless the manifest says so; off means refused (requests) or kept to the operator (logs).
Frozen models only: where and to whom they are relayed is the guard's business (guard/exchanges.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mcp_guard.loading import Frozen

MAX_SAMPLING_TOKENS = 1_000_000  # a cap above this is a typo, not a budget


class SamplingRelay(Frozen):
    """Relay `sampling/createMessage`, its `maxTokens` cut to `max_tokens`."""

    max_tokens: Annotated[int, Field(ge=1, le=MAX_SAMPLING_TOKENS)]


class Relay(Frozen):
    elicitation: bool = False  # elicitation/create, to the client connection that made the call
    sampling: SamplingRelay | None = None  # sampling/createMessage, likewise; None: refused
    logging: bool = False  # notifications/message, to clients with a grant on the server

    @property
    def requests(self) -> bool:
        """Whether any upstream request is relayed at all."""
        return self.elicitation or self.sampling is not None
