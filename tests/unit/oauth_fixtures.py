"""An authorization server in a test's hands: keys generated here, its metadata and JWKS served by
an httpx2 MockTransport (counting fetches, able to go down), and tokens signed (or forged) with
them. The OAuth verifier is checked against these, never against itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import httpx2
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from mcp_guard.config import AgentConfig, GuardConfig, OAuthConfig, TokensConfig
from mcp_guard.identity.jwks import IssuerKeys
from mcp_guard.identity.oauth import OAuthTokens
from mcp_guard.policy.engine import Policy

NOW = 1_800_000_000.0
ISSUER = "https://login.example.test/realms/agents"
RESOURCE = "https://guard.example.test/mcp"
OAUTH = OAuthConfig(issuer=ISSUER, resource=RESOURCE, scopes=("mcp:tools",), agent_claim="client_id")
AGENTS = {
    "support-bot": AgentConfig(roles=("support",), subjects=("support-client",)),
    "finance-bot": AgentConfig(roles=("finance",), subjects=("finance-client", "twice")),
    "other-bot": AgentConfig(roles=("support",), subjects=("twice",)),
}
SIGNING_KEY = "unit-test-signing-key-0123456789abcdef"
POLICY = Policy(
    GuardConfig(agents=AGENTS, oauth=OAUTH, tokens=TokensConfig.model_validate({"signing_key": SIGNING_KEY})),
    [],
)
_RSA_KEYS: list[rsa.RSAPrivateKey] = []


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (a small pool, reused across tests: generating one takes ~50 ms)."""
    _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA_KEYS[-1]


def public_jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(key.public_key()))
    if kid is not None:
        jwk["kid"] = kid
    return jwk | extra


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    """Valid access token claims for support-bot at NOW; a change to None removes that claim."""
    base = {
        "iss": ISSUER,
        "aud": [RESOURCE, "https://other.example.test"],
        "sub": "support-client",
        "client_id": "support-client",
        "scope": "openid mcp:tools",
        "iat": int(NOW),
        "exp": int(NOW) + 600,
        "jti": "jti-1",
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


@dataclass
class Issuer:
    """The authorization server: its keys by kid, what it serves, and how often it was asked."""

    keys: dict[str, Any] = field(default_factory=dict)
    extra_jwks: list[Any] = field(default_factory=list)
    metadata: dict[str, Any] | None = None  # default: the right one
    oidc: bool = True  # serves OpenID discovery (else only RFC 8414)
    down: bool = False
    cache_control: str | None = "max-age=600"
    fetches: list[str] = field(default_factory=list)

    def rotate(self, kid: str, key: Any = None) -> Any:
        self.keys[kid] = key if key is not None else rsa_key()
        return self.keys[kid]

    def sign(
        self, kid: str | None, alg: str = "RS256", header: dict[str, Any] | None = None, **changes: Any
    ) -> str:
        key = self.keys[kid or next(iter(self.keys))]
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(claims(**changes), key, algorithm=alg, headers=headers | (header or {}))

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        url = str(request.url)
        self.fetches.append(url)
        if self.down:
            raise httpx2.ConnectError("connection refused")
        if url == "https://login.example.test/realms/agents/.well-known/openid-configuration" and self.oidc:
            return httpx2.Response(200, json=self.metadata or self.good_metadata())
        if url == "https://login.example.test/.well-known/oauth-authorization-server/realms/agents":
            return httpx2.Response(200, json=self.metadata or self.good_metadata())
        if url == "https://login.example.test/jwks":
            jwks = {"keys": [public_jwk(k, kid) for kid, k in self.keys.items()] + self.extra_jwks}
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            return httpx2.Response(200, json=jwks, headers=headers)
        return httpx2.Response(404)

    @staticmethod
    def good_metadata() -> dict[str, Any]:
        return {"issuer": ISSUER, "jwks_uri": "https://login.example.test/jwks", "token_endpoint": "x"}

    @property
    def jwks_fetches(self) -> int:
        return sum(1 for url in self.fetches if url.endswith("/jwks"))


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(
    issuer: Issuer,
    clock: Clock | None = None,
    revoked: set[str] | None = None,
    policy: Policy = POLICY,
    logged: list[str] | None = None,
) -> OAuthTokens:
    """An OAuthTokens reading `issuer` through a mock transport; monotonic time from `clock`."""
    clock = clock or Clock()
    log = logged.append if logged is not None else (lambda _: None)
    transport = httpx2.MockTransport(issuer.handle)

    async def is_revoked(jti: str) -> bool:
        return jti in (revoked or set())

    return OAuthTokens(
        lambda: policy,
        log,
        revoked=is_revoked,
        clock=lambda: NOW,
        keys=lambda oauth: IssuerKeys(oauth, log, transport=transport, clock=clock),
    )


def forge_hs256_with_public_key(issuer: Issuer, kid: str) -> str:
    """The classic confusion: HS256 'signed' with the bytes of the issuer's RSA public key."""
    pem = (
        issuer.keys[kid]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def unsigned(header: dict[str, Any], body: dict[str, Any], signature: str = "") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}.{signature}"


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
