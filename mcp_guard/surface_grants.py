"""The manifest's grants for what an upstream exposes besides tools: `resources:` (URI patterns
an agent may read, list and subscribe to) and `prompts:` (per prompt, who may get it and the
limits on its arguments). Both default deny. Loading refuses a pattern that could never match a
URI the guard reads, so a typo cannot grant more than was written."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from mcp_guard.limits import Limit
from mcp_guard.loading import Frozen
from mcp_guard.policy.uris import pattern_problem

PRINCIPAL = r"^(\*|role:[a-z0-9][a-z0-9_-]{0,63}|[a-z0-9][a-z0-9_-]{0,63})$"
PROMPT_NAME = r"^[A-Za-z0-9_.-]{1,128}$"
Principal = Annotated[str, Field(pattern=PRINCIPAL)]


class _Allowed(Frozen):
    allow: tuple[Principal, ...]

    def matches(self, agent: str, roles: frozenset[str]) -> bool:
        return any(p == "*" or p == agent or (p.startswith("role:") and p[5:] in roles) for p in self.allow)


class ResourceGrant(_Allowed):
    """Who may read, list and subscribe to the resources (and see the templates) whose URI matches
    one of `uris`: `*` within one path segment, `**` across segments, nothing else special."""

    uris: Annotated[tuple[Annotated[str, Field(min_length=1, max_length=2048)], ...], Field(min_length=1)]

    @field_validator("uris")
    @classmethod
    def _well_formed(cls, uris: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in uris:
            problem = pattern_problem(pattern)
            if problem is not None:
                msg = f"pattern {pattern!r} {problem}"
                raise ValueError(msg)
        return uris


class PromptGrant(_Allowed):
    """Who may get a prompt, with JSON Schema limits on its (string) arguments, as for a tool."""

    arguments: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], Limit] = {}
    title: Annotated[str, Field(max_length=200)] | None = None
    description: Annotated[str, Field(max_length=4000)] | None = None
