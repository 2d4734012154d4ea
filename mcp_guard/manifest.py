"""tool_manifests/*.yaml -> frozen pydantic models, one per upstream server. Loading checks
everything that can be checked without the upstream: names, grants, JSON Schemas, prefixes."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator

from mcp_guard.config import GuardConfig, check_https, load_config
from mcp_guard.errors import ConfigError
from mcp_guard.limits import Condition, Limit
from mcp_guard.loading import NAME_PATTERN, Duration, Frozen, build, expand_env, load_yaml
from mcp_guard.relay import Relay
from mcp_guard.secrets import LOGGER
from mcp_guard.surface_grants import PRINCIPAL, PROMPT_NAME
from mcp_guard.surface_grants import PromptGrant as PromptGrant
from mcp_guard.surface_grants import ResourceGrant as ResourceGrant

SERVER_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
_PRINCIPAL = re.compile(PRINCIPAL)
_SCOPE = re.compile(r"^(agent|session|arg:[A-Za-z0-9_.-]{1,64})$")


class Budget(Frozen):
    sum: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    max: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
    per: Duration
    by: tuple[Annotated[str, Field(pattern=_SCOPE.pattern)], ...] = ("agent",)


class Unique(Frozen):
    """At most one allowed call per `per` window with the same values of `by` (default: the whole
    canonical arguments), across all agents, whatever its outcome."""

    by: tuple[Annotated[str, Field(pattern=_SCOPE.pattern)], ...] | None = None
    per: Duration


Mark = Annotated[str, Field(pattern=NAME_PATTERN)]
"""A flow mark (`customer-data`): global across servers, carried by a session."""
_ARGUMENT = r"^[A-Za-z0-9_.-]{1,64}$"
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
"""What an MCP tool name can be (the specification's rule): a `tools` key outside it names nothing."""
MAX_ACTIVATION = 86400.0  # a just-in-time grant is for hours, not standing access


class Requirement(Frozen):
    """A call that must come first: an allowed call of `tool` (on this server, or `server.tool`)
    with outcome ok, by the same agent in the same session, within `within`, whose `match`ed
    arguments (the required call's argument -> this call's) have this call's values."""

    tool: Annotated[str, Field(min_length=1, max_length=200)]
    match: dict[Annotated[str, Field(pattern=_ARGUMENT)], Annotated[str, Field(pattern=_ARGUMENT)]] = {}
    within: Duration = 3600.0

    def target(self, server: str, servers: Collection[str]) -> tuple[str, str]:
        """(server, tool) of the required call: `server.tool` when the part before the first dot
        names a manifest's server, else `tool` on `server` (the requiring grant's own)."""
        head, dot, rest = self.tool.partition(".")
        return (head, rest) if dot and rest and head in servers else (server, self.tool)


class BlockedAfter(Frozen):
    """Refuse calls in a session that carries one of `marks` from within `within`."""

    marks: Annotated[tuple[Mark, ...], Field(min_length=1)]
    within: Duration = 3600.0


class Activation(Frozen):
    """The grant applies only while an operator's activation for the agent and tool is in force,
    for at most `max` each time."""

    max: Duration

    @field_validator("max")
    @classmethod
    def _at_most_a_day(cls, value: float) -> float:
        if not 0 < value <= MAX_ACTIVATION:
            msg = "must be more than 0s and at most 1d"
            raise ValueError(msg)
        return value


class Approval(Frozen):
    when: dict[str, Condition] | None = None
    wait: Duration = 30.0
    timeout: Duration = 900.0


ArgumentName = Annotated[str, Field(pattern=_ARGUMENT)]


class Grant(Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    allow: tuple[Annotated[str, Field(pattern=_PRINCIPAL.pattern)], ...]
    arguments: dict[str, Limit] = {}
    required: tuple[ArgumentName, ...] = ()  # arguments a call must send (absent: invalid_arguments)
    set_: dict[ArgumentName, Any] = Field(default={}, alias="set")  # sent by the guard, never by the agent
    title: Annotated[str, Field(max_length=200)] | None = None  # shown instead of the upstream's
    description: Annotated[str, Field(max_length=4000)] | None = None
    sensitive: tuple[ArgumentName, ...] = ()  # recorded only as a digest
    # Path arguments of a local upstream that must resolve, on this host, inside these folders.
    paths: dict[
        ArgumentName, Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    ] = {}
    budgets: tuple[Budget, ...] = ()
    approval: Approval | None = None
    unique: Unique | None = None
    requires: tuple[Requirement, ...] = ()
    marks: tuple[Mark, ...] = ()
    blocked_after: BlockedAfter | None = None
    activation: Activation | None = None

    @model_validator(mode="after")
    def _arguments_agree(self) -> Grant:
        fixed = set(self.set_)
        for name in self.required:
            if name in fixed:
                msg = f"required: {name!r} is also in set (the guard sends it; the agent may not)"
                raise ValueError(msg)
            if self.arguments.get(name) is False:
                msg = f"required: {name!r} is also a false argument (it may not be sent at all)"
                raise ValueError(msg)
        for name in sorted(fixed & self.arguments.keys()):
            msg = f"set: {name!r} also has a limit under arguments; a value the guard sends needs none"
            raise ValueError(msg)
        return self

    def matches(self, agent: str, roles: frozenset[str]) -> bool:
        return any(p == "*" or p == agent or (p.startswith("role:") and p[5:] in roles) for p in self.allow)


class Selector(Grant):
    """A grant for the tools the manifest's `tools:` does not name, chosen by the tool's name (a
    glob, case-sensitive) and, with `read_only`, its `readOnlyHint` annotation. Still default deny
    (an unmatched tool is never shown) and still pinned like every tool of the server."""

    tools: Annotated[str, Field(min_length=1, max_length=200)] = "*"
    read_only: bool | None = None

    def selects(self, tool: str, annotations: Mapping[str, Any] | None) -> bool:
        if not fnmatchcase(tool, self.tools):
            return False
        hints = annotations or {}
        said = hints.get("readOnlyHint", hints.get("read_only_hint"))  # the wire's name, or the SDK's
        return self.read_only is None or said is self.read_only


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, dict) else value


class ClientCredentials(Frozen):
    """OAuth client credentials (RFC 6749 section 4.4) the guard uses to fetch its own short-lived
    token for an HTTP upstream; `resource` is the RFC 8707 resource indicator."""

    token_url: str
    client_id: Annotated[str, Field(min_length=1, max_length=256)]
    client_secret: SecretStr
    scope: (
        Annotated[str, Field(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$")] | None
    ) = None
    resource: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"

    @field_validator("token_url")
    @classmethod
    def _https(cls, value: str) -> str:
        check_https(value)  # the secret goes there: never in plain HTTP beyond this machine
        return value

    @field_validator("resource")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^#\s]+$", value):
            msg = f"resource {value!r} must be an absolute URI without a fragment (RFC 8707)"
            raise ValueError(msg)
        return value


class UpstreamAuth(Frozen):
    client_credentials: ClientCredentials


class Upstream(Frozen):
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = {}
    timeout: Duration = 60.0
    auth: UpstreamAuth | None = None  # a token the guard fetches for an HTTP upstream
    relay: Relay = Relay()  # what of the upstream's own requests and logs reaches clients

    @model_validator(mode="after")
    def _one_transport(self) -> Upstream:
        if (self.command is None) == (self.url is None):
            msg = "needs exactly one of command (stdio) or url (Streamable HTTP)"
            raise ValueError(msg)
        if self.url is not None and (self.args or self.env or self.cwd):
            msg = "args, env and cwd go with command, not url"
            raise ValueError(msg)
        if self.command is not None and (self.headers or self.auth):
            msg = "headers and auth go with url, not command"
            raise ValueError(msg)
        if self.auth is not None and any(name.lower() == "authorization" for name in self.headers):
            msg = "auth and an Authorization header cannot both be given"
            raise ValueError(msg)
        if self.url is not None and not re.match(r"^https?://", self.url):
            msg = f"url {self.url!r} must start with http:// or https://"
            raise ValueError(msg)
        return self


class Manifest(Frozen):
    server: Annotated[str, Field(pattern=SERVER_PATTERN)]
    upstream: Upstream
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{0,64}$")] | None = None
    tools: dict[str, Annotated[tuple[Grant, ...], BeforeValidator(_one_or_many), Field(min_length=1)]] = {}
    select: tuple[Selector, ...] = ()  # grants by selector, for tools `tools` does not name
    resources: tuple[ResourceGrant, ...] = ()  # URI patterns, per agent: see surface_grants
    prompts: dict[
        Annotated[str, Field(pattern=PROMPT_NAME)],
        Annotated[tuple[PromptGrant, ...], BeforeValidator(_one_or_many), Field(min_length=1)],
    ] = {}
    source: Path = Path()
    injected: frozenset[str] = frozenset()

    @model_validator(mode="after")
    def _paths_are_local(self) -> Manifest:
        if self.upstream.url is not None:
            for where, i, grant in self.all_grants():
                if grant.paths:
                    msg = f"{where}[{i}].paths: only for a command upstream (the guard sees no other host)"
                    raise ValueError(msg)
        return self

    @property
    def grants_more_than_tools(self) -> bool:
        """Whether it grants resources or prompts (else the upstream's are never read or shown)."""
        return bool(self.resources or self.prompts)

    @property
    def name_prefix(self) -> str:
        return f"{self.server}__" if self.prefix is None else self.prefix

    def upstream_cwd(self) -> Path:
        """The folder the upstream process runs in: its `cwd` (relative to the manifest), else ours."""
        cwd = self.upstream.cwd
        if cwd is None:
            return Path.cwd()
        return cwd if cwd.is_absolute() else self.source.parent / cwd

    def grants_for(self, tool: str, annotations: Mapping[str, Any] | None = None) -> tuple[Grant, ...]:
        """The grants of a tool, in file order: those `tools` names it with, else the selectors
        that pick it (annotations unknown: no `read_only` selector picks it)."""
        named = self.tools.get(tool)
        if named is not None:
            return named
        return tuple(s for s in self.select if s.selects(tool, annotations))

    def all_grants(self) -> list[tuple[str, int, Grant]]:
        """(where, index, grant) of every grant, named or by selector: `tools.NAME` or `select`."""
        named = [(f"tools.{tool}", i, g) for tool, gs in self.tools.items() for i, g in enumerate(gs)]
        return named + [("select", i, g) for i, g in enumerate(self.select)]


def load_manifest(path: Path) -> Manifest:
    file = str(path)
    injected: set[str] = set()
    data = expand_env(load_yaml(path), file, injected)
    if isinstance(data, dict):
        for key in ("source", "injected"):
            if key in data:
                raise ConfigError(file, key, "unknown key")
    manifest = build(Manifest, data, file)
    if path.stem != manifest.server:
        LOGGER.warning(f"warning: {file}: server {manifest.server!r} differs from the file name")
    for tool in manifest.tools:
        if not TOOL_NAME.match(tool):
            msg = f"no upstream can have a tool named {tool!r} (letters, digits, _ . -); use select: to glob"
            LOGGER.warning(f"warning: {file}:tools.{tool}: {msg}")
    # Everything handed to the upstream (env, headers) and every ${VAR} value is a secret.
    handed = {*manifest.upstream.env.values(), *manifest.upstream.headers.values()}
    if manifest.upstream.auth is not None:
        handed.add(manifest.upstream.auth.client_credentials.client_secret.get_secret_value())
    secrets = frozenset(v for v in injected | handed if len(v) >= 8)
    return manifest.model_copy(update={"source": path.resolve(), "injected": secrets})


def load_deployment(
    config_path: Path, missing: dict[str, str] | None = None
) -> tuple[GuardConfig, tuple[Manifest, ...]]:
    """guard.yaml and the manifests it names, checked against each other: a grant that allows a
    tool guard.yaml forbids is a load error (the operator's hard line is never contradicted).
    `missing`: as for `load_config`, for a command that does not serve."""
    config = load_config(config_path, missing)
    manifests = load_manifests(config.manifests)
    for manifest in manifests:
        for tool, grants in manifest.tools.items():
            glob = config.forbids(manifest.server, tool)
            if glob is not None and any(grant.allow for grant in grants):
                msg = (
                    f"{manifest.server}.{tool} is forbidden in {config.source.name} ({glob!r}); "
                    "no grant may allow it (use allow: [])"
                )
                raise ConfigError(str(manifest.source), f"tools.{tool}", msg)
    _check_flows(manifests)
    return config, manifests


def _check_flows(manifests: tuple[Manifest, ...]) -> None:
    """What the escalation rules name must exist: a required tool is a load error when no
    manifest lists it or selects it by name; a mark that nothing sets, or that nothing blocks on,
    is a warning."""
    by_server = {m.server: m for m in manifests}
    sets: set[str] = set()
    blocks: dict[str, str] = {}
    for m in manifests:
        for where, i, grant in m.all_grants():
            for j, req in enumerate(grant.requires):
                server, name = req.target(m.server, by_server)
                target = by_server.get(server)
                if target is None or not (
                    name in target.tools or any(fnmatchcase(name, s.tools) for s in target.select)
                ):
                    msg = f"requires {req.tool!r}, which no manifest lists (server {server!r})"
                    raise ConfigError(str(m.source), f"{where}[{i}].requires[{j}].tool", msg)
            sets.update(grant.marks)
            for mark in grant.blocked_after.marks if grant.blocked_after else ():
                blocks.setdefault(mark, f"{m.source}:{where}[{i}].blocked_after")
    for mark in sorted(sets - blocks.keys()):
        LOGGER.warning(f"warning: mark {mark!r} is set but no grant is blocked_after it")
    for mark, where in sorted(blocks.items()):
        if mark not in sets:
            LOGGER.warning(f"warning: {where}: mark {mark!r} is set by no grant, so it never blocks")


def load_manifests(folder: Path) -> tuple[Manifest, ...]:
    """Every *.yaml, *.yml and *.json in the folder, in name order; names must not collide."""
    if not folder.is_dir():
        raise ConfigError(str(folder), "", "manifests folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
    manifests = tuple(load_manifest(p) for p in files)
    servers: dict[str, Path] = {}
    for m in manifests:
        if m.server in servers:
            raise ConfigError(str(m.source), "server", f"{m.server!r} is also defined in {servers[m.server]}")
        servers[m.server] = m.source
    names: dict[str, str] = {}
    for m in manifests:
        for tool in m.tools:
            name = m.name_prefix + tool
            if name in names:
                msg = f"advertised name {name!r} is also advertised by server {names[name]!r}"
                raise ConfigError(str(m.source), f"tools.{tool}", msg)
            names[name] = m.server
    prompts: dict[str, str] = {}
    for m in manifests:
        for prompt in m.prompts:
            name = m.name_prefix + prompt
            if name in prompts:
                msg = f"advertised prompt name {name!r} is also advertised by server {prompts[name]!r}"
                raise ConfigError(str(m.source), f"prompts.{prompt}", msg)
            prompts[name] = m.server
    return manifests
