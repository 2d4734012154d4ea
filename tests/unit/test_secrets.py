"""Scrubbing: an injected secret never flows back, whatever its encoding."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from mcp_guard.policy.schemas import clean_text
from mcp_guard.secrets import REDACTED, Scrubber

SECRET = 'sk_live_0123456789/abc+"def'
SCRUB = Scrubber([SECRET, "short"])

FORMS = {
    "raw": SECRET,
    "base64": base64.b64encode(SECRET.encode()).decode(),
    "base64 unpadded": base64.b64encode(SECRET.encode()).decode().rstrip("="),
    "urlsafe base64": base64.urlsafe_b64encode(SECRET.encode()).decode(),
    "url-escaped": quote(SECRET, safe=""),
    "form-escaped": quote_plus(SECRET),
    "json-escaped": json.dumps(SECRET)[1:-1],
}


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_an_injected_secret_is_scrubbed_in_every_encoding(form: str) -> None:
    assert SCRUB.text(f"key={form}; done") == f"key={REDACTED}; done"


def test_secrets_are_scrubbed_from_json_values_and_keys() -> None:
    value = {"a": [SECRET, {SECRET: 1}], "n": 5, "t": True}
    assert SCRUB.json(value) == {"a": [REDACTED, {REDACTED: 1}], "n": 5, "t": True}


def test_values_shorter_than_eight_characters_are_not_treated_as_secrets() -> None:
    assert SCRUB.text("a short word") == "a short word"


@pytest.mark.parametrize(
    "credential",
    [
        "Bearer abcdefghijklmnopqrstuvwxyz",
        "AKIAABCDEFGHIJKLMNOP",
        "sk_test_abcdefghij1234567890",
        "ghp_" + "a" * 36,
        "xoxb-1234567890-abcdefghij",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlc2lnbg",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    ],
)
def test_credential_looking_values_are_redacted_from_records_only(credential: str) -> None:
    assert credential not in SCRUB.record(f"x {credential} y")
    assert SCRUB.text(credential) == credential


def test_tool_text_loses_terminal_escapes_and_invisible_characters() -> None:
    text = "Refunds\x1b[31m an order\u200b\u202e.\x07 <IMPORTANT>\tok\nnext"
    assert clean_text(text) == "Refunds an order. <IMPORTANT>\tok\nnext"
