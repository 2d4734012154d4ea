"""guard.yaml -> frozen pydantic models. `find_config` and `load_config` are the only I/O here;
manifests are loaded by manifest.py."""

from __future__ import annotations

import ipaddress
import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from mcp_guard.errors import ConfigError
from mcp_guard.loading import NAME_PATTERN, Duration, Frozen, build, expand_env, load_yaml

AgentName = Annotated[str, Field(pattern=NAME_PATTERN)]
KeyHash = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
# A glob over `server.tool` (fnmatch, case-sensitive): a server glob, a dot, a tool glob.
# RFC 6749 scope-token: printable ASCII but space, '"' and '\\'.
ScopeToken = Annotated[str, Field(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")]
Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
"""The algorithms an authorization server's keys may sign with: never HS* (a public key is no
secret) and never none."""
ForbidGlob = Annotated[str, Field(pattern=r"^[A-Za-z0-9_*?\[\]!-]+\.[^\s]+$")]


class CheckpointsConfig(Frozen):
    """Signed checkpoints a serving guard appends to `dir`/checkpoints.jsonl every `every`."""

    key: Path  # the Ed25519 private key `mcp-guard ledger keygen` wrote (mode 0600)
    dir: Path  # meant to be shipped off the host (write-once storage)
    every: Duration = 60.0

    @field_validator("every")
    @classmethod
    def _at_least_a_second(cls, value: float) -> float:
        if value < 1:
            msg = "must be at least 1s"
            raise ValueError(msg)
        return value


class LedgerConfig(Frozen):
    path: Path = Path("mcp-guard-ledger.db")
    # A PostgreSQL ledger (fleet mode) instead of the file at `path`: postgresql://user@host/db
    url: str | None = None
    durability: Literal["normal", "full"] = "normal"
    checkpoints: CheckpointsConfig | None = None

    @field_validator("url")
    @classmethod
    def _postgresql(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("postgresql", "postgres"):
            msg = "must be a postgresql:// URL"
            raise ValueError(msg)
        return value

    @property
    def where(self) -> str:
        """The ledger's location for messages: the file, or the URL without its password."""
        if self.url is None:
            return str(self.path)
        parts = urlsplit(self.url)
        if not parts.password:
            return self.url
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


class AgentConfig(Frozen):
    roles: tuple[Annotated[str, Field(pattern=NAME_PATTERN)], ...] = ()
    keys: tuple[KeyHash, ...] = ()
    # Values of oauth.agent_claim (e.g. the client id the identity provider gave it) that are this agent.
    subjects: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = ()


class TokensConfig(Frozen):
    signing_key: SecretStr
    max_ttl: Duration = 3600.0
    audience: str = "mcp-guard"

    @field_validator("signing_key", mode="before")
    @classmethod
    def _long_enough(cls, value: object) -> object:
        if isinstance(value, str) and len(value.encode()) < 32:
            msg = "must be at least 32 bytes"
            raise ValueError(msg)
        return SecretStr(value) if isinstance(value, str) else value


class OAuthConfig(Frozen):
    """The organisation's OAuth 2.1 authorization server, whose JWT access tokens the guard accepts
    over HTTP beside its own keys and tokens (identity/oauth.py checks them)."""

    issuer: str  # the exact `iss`; metadata is discovered from it
    resource: str  # this guard's canonical URI: every token's `aud` must contain it
    scopes: tuple[ScopeToken, ...] = ()  # every one required on every token
    agent_claim: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")] = "sub"
    jwks_uri: str | None = None  # default: from the issuer's metadata
    algorithms: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")

    @field_validator("issuer", "resource", "jwks_uri")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None:
            check_https(value)
        return value

    @field_validator("resource")
    @classmethod
    def _no_fragment(cls, value: str) -> str:
        if "#" in value or "?" in value:
            msg = "must not have a query or a fragment (RFC 8707)"
            raise ValueError(msg)
        if any(c.isspace() or c in '"\\<>' or not c.isprintable() for c in value):
            msg = "must not hold spaces, quotes, backslashes or control characters (it goes into a header)"
            raise ValueError(msg)
        return value

    @field_validator("algorithms")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            msg = "must name at least one algorithm"
            raise ValueError(msg)
        return value


def check_https(url: str) -> None:
    """An identity provider's URL: https, or http to a loopback host only (a provider on this very
    machine, as in tests); no userinfo, no fragment. ValueError otherwise."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not ((parts.scheme == "https" and host) or (parts.scheme == "http" and loopback)):
        msg = f"{url!r} must be an https:// URL (http:// only to a loopback host)"
        raise ValueError(msg)
    if parts.username is not None or parts.password is not None or parts.fragment:
        msg = f"{url!r} must not carry a user, a password or a fragment"
        raise ValueError(msg)


class HttpConfig(Frozen):
    listen: str = "127.0.0.1:8765"
    # Host and Origin header values accepted (DNS-rebinding protection); "name:*" allows any port.
    # Empty: loopback names only (plus the address the guard listens on). Set them for a guard
    # that is reached through a proxy or by a DNS name.
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    # Prometheus /metrics, for callers presenting a key whose hash is listed (never an agent's).
    metrics: bool = False
    metrics_keys: tuple[KeyHash, ...] = ()

    @model_validator(mode="after")
    def _metrics_need_a_key(self) -> HttpConfig:
        if self.metrics and not self.metrics_keys:
            msg = "metrics: true needs at least one key hash under metrics_keys (mcp-guard agent key NAME)"
            raise ValueError(msg)
        return self


class LimitsConfig(Frozen):
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_argument_bytes: int = Field(default=1024 * 1024, gt=0)
    # The largest message an upstream may send (its result, mostly); default: max_message_bytes.
    max_result_bytes: int = Field(default=4 * 1024 * 1024, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _result_cap_follows_the_message_cap(cls, data: object) -> object:
        if isinstance(data, dict) and "max_result_bytes" not in data and "max_message_bytes" in data:
            return {**data, "max_result_bytes": data["max_message_bytes"]}
        return data


class LockoutConfig(Frozen):
    """An agent refused `denials` times within `within` (refusals of its own doing) is locked out
    for `for`: every tools/call is refused locked_out until then, or until an operator unlocks it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    denials: int = Field(ge=1, le=1_000_000)
    within: Duration
    for_: Duration = Field(alias="for")


class NotifyConfig(Frozen):
    """A command run when an approval request is filed, with the request as JSON on stdin."""

    command: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    timeout: Duration = 10.0


class ApprovalsConfig(Frozen):
    notify: NotifyConfig | None = None


class GuardConfig(Frozen):
    manifests: Path = Path("tool_manifests")
    ledger: LedgerConfig = LedgerConfig()
    agents: dict[AgentName, AgentConfig] = {}
    tokens: TokensConfig | None = None
    http: HttpConfig = HttpConfig()
    limits: LimitsConfig = LimitsConfig()
    # The operator's hard line: tools no grant, activation or approval can make callable.
    forbid: tuple[ForbidGlob, ...] = ()
    lockout: LockoutConfig | None = None  # off unless set
    approvals: ApprovalsConfig = ApprovalsConfig()
    oauth: OAuthConfig | None = None  # tokens from the organisation's authorization server
    # Where it was loaded from and the values its ${VAR}s injected (never printed).
    source: Path = Path("guard.yaml")
    injected: frozenset[str] = frozenset()

    def forbids(self, server: str, tool: str) -> str | None:
        """The first `forbid` glob that matches `server.tool`, or None."""
        name = f"{server}.{tool}"
        return next((glob for glob in self.forbid if fnmatchcase(name, glob)), None)


def find_config(explicit: str | None) -> Path:
    """--config, else $MCP_GUARD_CONFIG, else ./guard.yaml."""
    return Path(explicit or os.environ.get("MCP_GUARD_CONFIG") or "guard.yaml")


def load_ledger_config(path: Path) -> LedgerConfig:
    """Only guard.yaml's `ledger` section, for the commands that only read or append to the ledger
    (`ledger`, `approvals`, `grants list`): a `${VAR}` another section names (a signing key the
    serving guard needs) need not be set to read it."""
    if not path.is_file():
        raise ConfigError(str(path), "", "no such config file (give --config or set MCP_GUARD_CONFIG)")
    file = str(path)
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(file, "", "must be a mapping at the top level")
    section = expand_env(data.get("ledger") or {}, file, set(), "ledger")
    if not isinstance(section, dict):
        raise ConfigError(file, "ledger", "must be a mapping")
    try:
        ledger = build(LedgerConfig, section, file)
    except ConfigError as exc:
        raise ConfigError(file, f"ledger.{exc.path}".rstrip("."), exc.reason) from None
    return _resolved(ledger, path.resolve().parent)


def _resolved(ledger: LedgerConfig, base: Path) -> LedgerConfig:
    """The ledger section with its paths (the file, the checkpoints' key and folder) from `base`."""
    ledger = ledger.model_copy(update={"path": base / ledger.path})
    if (points := ledger.checkpoints) is not None:
        points = points.model_copy(update={"key": base / points.key, "dir": base / points.dir})
        ledger = ledger.model_copy(update={"checkpoints": points})
    return ledger


UNUSED_BY_READERS = ("tokens.", "oauth.")
"""guard.yaml's values that only a serving guard uses: a command that does not serve reads the
file with their variables unset (and `check` says so)."""


def load_config(path: Path, missing: dict[str, str] | None = None) -> GuardConfig:
    """guard.yaml. With `missing`, a variable that is not set in a value only a serving guard uses
    (UNUSED_BY_READERS) is noted there instead of refused; any other is still an error."""
    if not path.is_file():
        raise ConfigError(str(path), "", "no such config file (give --config or set MCP_GUARD_CONFIG)")
    file = str(path)
    injected: set[str] = set()
    found: dict[str, str] = {}
    data = expand_env(load_yaml(path) or {}, file, injected, missing=None if missing is None else found)
    for where, name in found.items():
        if not where.startswith(UNUSED_BY_READERS):
            raise ConfigError(file, where, f"environment variable {name!r} is not set")
    if missing is not None:
        missing.update(found)
    if isinstance(data, dict):
        for key in ("source", "injected"):
            if key in data:
                raise ConfigError(file, key, "unknown key")
    config = build(GuardConfig, data, file)
    base = path.resolve().parent
    return config.model_copy(
        update={
            "manifests": base / config.manifests,
            "ledger": _resolved(config.ledger, base),
            "source": path.resolve(),
            "injected": frozenset(injected),
        }
    )
