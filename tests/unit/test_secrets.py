"""Scrubbing: an injected secret never flows back, whatever its encoding."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from mcp_guard.policy.schemas import clean_text
from mcp_guard.secrets import MAX_LOG_CHARS, REDACTED, Scrubber, escape_controls

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


# Text an upstream or an agent chooses, as it would reach the operator's terminal.
ESCAPED = [
    ("newline", "stopped\nmcp-guard: policy reloaded", "stopped\\nmcp-guard: policy reloaded"),
    ("carriage return", "ok\rmcp-guard: all clear", "ok\\rmcp-guard: all clear"),
    ("CRLF", "a\r\nb", "a\\r\\nb"),
    ("tab", "a\tb", "a\\tb"),
    ("clear screen", "\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    ("colour", "\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    (
        "title and hyperlink (OSC)",
        "\x1b]0;owned\x07\x1b]8;;http://x\x1b\\",
        "\\x1b]0;owned\\x07\\x1b]8;;http://x\\x1b\\",
    ),
    ("NUL and DEL", "a\x00b\x7f", "a\\x00b\\x7f"),
    ("C1 CSI and NEL", "\x9b2J\x85next", "\\x9b2J\\x85next"),
    ("file, group and record separators", "a\x1cb\x1dc\x1ed", "a\\x1cb\\x1dc\\x1ed"),
    ("line and paragraph separators", "a\u2028b\u2029c", "a\\u2028b\\u2029c"),
    ("bidi override", "evil\u202etxt.exe\u2066", "evil\\u202etxt.exe\\u2066"),
    ("zero width and BOM", "a\u200bb\ufeff", "a\\u200bb\\ufeff"),
    ("tag characters", "a\U000e0041", "a\\U000e0041"),
    ("lone surrogate", "a\ud800b", "a\\ud800b"),
    ("letters and symbols stay", "café ünïcode 日本 €", "café ünïcode 日本 €"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ESCAPED], ids=[c[0] for c in ESCAPED])
def test_control_and_invisible_characters_are_escaped_into_one_printable_line(
    text: str, expected: str
) -> None:
    escaped = escape_controls(text)
    assert escaped == expected
    assert escaped.isprintable()
    assert len(escaped.splitlines()) == 1


@pytest.mark.parametrize("text", [c[1] for c in ESCAPED], ids=[c[0] for c in ESCAPED])
def test_each_log_record_is_exactly_one_line_on_stderr(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    SCRUB.log(f"upstream 'hostile' [warning]: {text}")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith("\n")
    assert err.startswith("mcp-guard: upstream 'hostile' [warning]: ")
    assert err[:-1].isprintable()


def test_a_forged_guard_line_stays_inside_the_record_that_carried_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    SCRUB.log("hostile: ok\nmcp-guard: upstream 'billing' stopped: \x1b[2Jall calls approved")
    assert capsys.readouterr().err == (
        "mcp-guard: hostile: ok\\nmcp-guard: upstream 'billing' stopped: \\x1b[2Jall calls approved\n"
    )


def test_log_records_are_scrubbed_before_they_are_escaped_and_cut(capsys: pytest.CaptureFixture[str]) -> None:
    SCRUB.log(f"debug key={SECRET}\n token=sk_live_abcdefghij0123456789 " + "z" * (2 * MAX_LOG_CHARS))
    err = capsys.readouterr().err
    assert SECRET not in err
    assert "sk_live_abcdefghij" not in err
    assert err.startswith(f"mcp-guard: debug key={REDACTED}\\n token={REDACTED} zzz")
    assert err.endswith("z [cut]\n")
    assert len(err) == len("mcp-guard: ") + MAX_LOG_CHARS + len(" [cut]\n")
