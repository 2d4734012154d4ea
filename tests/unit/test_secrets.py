"""Scrubbing: an injected secret never flows back, whatever its encoding."""

from __future__ import annotations

import base64
import itertools
import json
from urllib.parse import quote, quote_plus

import pytest

from mcp_guard.policy.schemas import clean_text
from mcp_guard.secrets import MAX_LOG_CHARS, REDACTED, Scrubber, escape_controls
from tests.helpers import assert_no_secret

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
    assert SCRUB.flags(f"x {credential} y")
    assert SCRUB.text(credential) == credential


def test_tool_text_loses_terminal_escapes_and_invisible_characters() -> None:
    text = "Refunds\x1b[31m an order\u200b\u202e.\x07 <IMPORTANT>\tok\nnext"
    assert clean_text(text) == "Refunds an order. <IMPORTANT>\tok\nnext"


# -- base64 at any alignment, binary content, split blocks ---------------------------------------

# Its encodings hold "+" and "/" (or "-" and "_") at every alignment: the two alphabets differ.
ALIGNED_SECRET = "sk_live_??>>~~0123456789"
ALIGNED = Scrubber([ALIGNED_SECRET])
# A prefix of each length mod 3 puts the secret at each of the three base64 alignments.
PREFIXES = {"alignment 0": b"", "alignment 1": b"K", "alignment 2": b"KE", "after KEY=": b"KEY="}
ENCODERS = {"standard": base64.b64encode, "urlsafe": base64.urlsafe_b64encode}
PADDING = {"padded": False, "unpadded": True}
TAIL = b"\x89 tail"


def encoded(prefix: bytes, encoder: str, unpadded: bool, secret: str = ALIGNED_SECRET) -> str:
    text = ENCODERS[encoder](prefix + secret.encode() + TAIL).decode()
    return text.rstrip("=") if unpadded else text


def decoded(data: str, encoder: str) -> bytes:
    altchars = b"-_" if encoder == "urlsafe" else None
    return base64.b64decode(data + "=" * (-len(data) % 4), altchars=altchars, validate=True)


aligned = pytest.mark.parametrize("prefix", PREFIXES.values(), ids=PREFIXES.keys())
alphabets = pytest.mark.parametrize("encoder", ENCODERS)
paddings = pytest.mark.parametrize("unpadded", PADDING.values(), ids=PADDING.keys())


def test_the_secrets_encodings_differ_between_the_two_base64_alphabets_at_every_alignment() -> None:
    for prefix in PREFIXES.values():
        assert encoded(prefix, "standard", False) != encoded(prefix, "urlsafe", False)


@aligned
@alphabets
@paddings
def test_base64_of_a_secret_after_any_prefix_is_scrubbed_from_text(
    prefix: bytes, encoder: str, unpadded: bool
) -> None:
    text = f"config: {encoded(prefix, encoder, unpadded)} end"
    scrubbed = ALIGNED.text(text)
    assert REDACTED in scrubbed
    assert scrubbed.startswith("config: ")
    assert scrubbed.endswith(" end")
    assert_no_secret(scrubbed, ALIGNED_SECRET)


@aligned
@alphabets
@paddings
def test_base64_of_a_secret_after_any_prefix_is_scrubbed_from_structured_content(
    prefix: bytes, encoder: str, unpadded: bool
) -> None:
    value = {"files": [{"name": "env", "content": encoded(prefix, encoder, unpadded)}], "n": 1}
    scrubbed = ALIGNED.json(value)
    assert scrubbed["n"] == 1
    assert REDACTED in scrubbed["files"][0]["content"]
    assert_no_secret(json.dumps(scrubbed), ALIGNED_SECRET)


@aligned
@alphabets
@paddings
def test_binary_content_holding_a_secret_at_any_offset_is_scrubbed_and_stays_valid_base64(
    prefix: bytes, encoder: str, unpadded: bool
) -> None:
    scrubbed = ALIGNED.binary(encoded(prefix, encoder, unpadded))
    assert decoded(scrubbed, encoder) == prefix + REDACTED.encode() + TAIL
    assert_no_secret(scrubbed, ALIGNED_SECRET)


ENCODED_INSIDE = {
    "raw": ALIGNED_SECRET.encode(),
    "base64 inside": base64.b64encode(b"K" + ALIGNED_SECRET.encode()),
    "url-escaped inside": quote(ALIGNED_SECRET, safe="").encode(),
    "json-escaped inside": json.dumps(ALIGNED_SECRET).encode(),
}


@pytest.mark.parametrize("inside", ENCODED_INSIDE.values(), ids=ENCODED_INSIDE.keys())
def test_binary_content_is_scrubbed_of_every_form_of_the_secret_in_its_bytes(inside: bytes) -> None:
    data = base64.b64encode(b"\x00\x01header " + inside + b" trailer\xff").decode()
    raw = base64.b64decode(ALIGNED.binary(data), validate=True)
    assert raw.startswith(b"\x00\x01header ")
    assert raw.endswith(b" trailer\xff")
    assert REDACTED.encode() in raw
    assert_no_secret(raw.decode("latin-1"), ALIGNED_SECRET)


def test_binary_content_without_a_secret_is_relayed_exactly_as_sent() -> None:
    data = base64.b64encode(bytes(range(256)) * 4).decode()
    assert ALIGNED.binary(data) is data


@pytest.mark.parametrize(
    "data",
    [
        "not base64! " + base64.b64encode(b"KE" + ALIGNED_SECRET.encode()).decode(),
        "A" + base64.b64encode(b"K" + ALIGNED_SECRET.encode() + b"xy").decode() + "AAA",  # shifted 6 bits
        base64.b64encode(b"K" + ALIGNED_SECRET.encode() + b"xy").decode()[:-3],  # cut mid-character
    ],
    ids=["not base64", "encoding off the byte grid", "truncated"],
)
def test_binary_content_that_does_not_decode_cleanly_is_scrubbed_as_text(data: str) -> None:
    # Valid only as text then; it was not valid base64 (or not for these bytes) to begin with.
    scrubbed = ALIGNED.binary(data)
    assert REDACTED in scrubbed
    assert_no_secret(scrubbed, ALIGNED_SECRET)


def test_a_record_with_nothing_to_redact_is_not_flagged_and_one_with_a_secret_in_any_form_is() -> None:
    assert not ALIGNED.flags('{"order_id":"ORD-1001","amount":40}\x00' + "ab12" * 8)
    for prefix in PREFIXES.values():
        assert ALIGNED.flags(encoded(prefix, "urlsafe", True))


def test_the_common_case_of_text_blocks_with_nothing_to_scrub_is_left_alone() -> None:
    assert ALIGNED.texts(["a plain result", "and another block"]) is None
    assert ALIGNED.texts([]) is None


SPLIT_FORMS = {
    "raw": ALIGNED_SECRET,
    "base64 after KEY=": encoded(b"KEY=", "standard", False),
    "urlsafe base64 at alignment 2": encoded(b"KE", "urlsafe", True),
}
# Cuts inside the secret's raw text or inside its encoding, before and after the prefix's characters.
CUTS_2 = [1, 4, 8, 12]
CUTS_3 = [(1, 2), (3, 9), (8, 16), (10, 11)]


@pytest.mark.parametrize("form", SPLIT_FORMS.values(), ids=SPLIT_FORMS.keys())
@pytest.mark.parametrize("cut", CUTS_2)
def test_a_secret_split_across_two_text_blocks_is_scrubbed_from_both(form: str, cut: int) -> None:
    blocks = [f"before {form[:cut]}", f"{form[cut:]} after"]
    scrubbed = ALIGNED.texts(blocks)
    assert scrubbed is not None
    assert scrubbed[0].startswith("before ")
    assert scrubbed[1].endswith(" after")
    assert REDACTED in scrubbed[1]
    assert_no_secret("".join(scrubbed), ALIGNED_SECRET)


@pytest.mark.parametrize("form", SPLIT_FORMS.values(), ids=SPLIT_FORMS.keys())
@pytest.mark.parametrize(("first", "second"), CUTS_3)
def test_a_secret_split_across_three_text_blocks_is_scrubbed_from_each(
    form: str, first: int, second: int
) -> None:
    blocks = [f"before {form[:first]}", form[first:second], f"{form[second:]} after"]
    scrubbed = ALIGNED.texts(blocks)
    assert scrubbed is not None
    assert len(scrubbed) == 3
    assert REDACTED in scrubbed[2]
    assert_no_secret("".join(scrubbed), ALIGNED_SECRET)


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_every_block_holding_part_of_a_raw_secret_shows_redacted_in_its_place(parts: int) -> None:
    cuts = [len(ALIGNED_SECRET) * i // parts for i in range(parts + 1)]
    blocks = [ALIGNED_SECRET[a:b] for a, b in itertools.pairwise(cuts)]
    assert ALIGNED.texts(blocks) == [REDACTED] * parts


def test_secrets_whole_in_one_block_and_split_across_others_are_all_scrubbed() -> None:
    blocks = [f"one {ALIGNED_SECRET} two {ALIGNED_SECRET[:5]}", f"{ALIGNED_SECRET[5:]} three"]
    assert ALIGNED.texts(blocks) == [f"one {REDACTED} two {REDACTED}", f"{REDACTED} three"]


SHORT = "k3y-1234"[:7]


@pytest.mark.parametrize("prefix", PREFIXES.values(), ids=PREFIXES.keys())
def test_a_value_shorter_than_eight_characters_is_not_a_secret_in_any_encoding(prefix: bytes) -> None:
    scrubber = Scrubber([SHORT])
    text = f"{SHORT} {base64.b64encode(prefix + SHORT.encode()).decode()}"
    assert scrubber.text(text) == text
    assert scrubber.texts([text[:3], text[3:]]) is None
    data = base64.b64encode(prefix + SHORT.encode()).decode()
    assert scrubber.binary(data) == data


@pytest.mark.parametrize("prefix", PREFIXES.values(), ids=PREFIXES.keys())
def test_a_value_of_eight_characters_is_a_secret_at_every_alignment(prefix: bytes) -> None:
    secret = "k3y-1234"
    scrubber = Scrubber([secret])
    for encoder in ENCODERS:
        scrubbed = scrubber.text(encoded(prefix, encoder, False, secret))
        assert_no_secret(scrubbed, secret)


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
