"""Keeps upstream credentials away from agents and the ledger: every value a manifest injects is
scrubbed from what flows back, raw, URL- and JSON-escaped, or base64 (standard and URL-safe, at any
alignment, and inside binary content), and values that look like credentials are redacted from
what is recorded. Imports nothing from mcp_guard; knows no MCP types."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
MIN_SECRET = 8
"""A value shorter than this is not treated as a secret (SPEC): it would redact ordinary words."""
MAX_LEARNED = 16
"""Credentials learned while serving that stay scrubbed (the latest: a token lives minutes)."""
MAX_LOG_CHARS = 8192  # one stderr line at most; an upstream can send a message of megabytes

_CREDENTIAL_PATTERN = (
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)"
    r"|\b[Bb]earer\s+[A-Za-z0-9._~+/-]{8,}=*"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{10,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{30,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
_CREDENTIAL = re.compile(_CREDENTIAL_PATTERN, re.DOTALL)
_CREDENTIAL_HINT = re.compile(
    r"PRIVATE KEY|[Bb]earer|AKIA|_live_|_test_|sk-|gh[pousr]_|github_pat_|xox[abposr]-|AIza|eyJ"
)
"""A literal every credential pattern holds. Searched first: several times faster than the full
pattern, whose leading word boundaries keep the regex engine from skipping ahead."""
_WHITESPACE = re.compile(r"\s+")
_ENCODERS: tuple[Callable[[bytes], bytes], ...] = (base64.b64encode, base64.urlsafe_b64encode)


def _base64_core(encode: Callable[[bytes], bytes], raw: bytes, offset: int) -> str:
    """The characters of the base64 of any bytes that hold `raw` at `offset` (mod 3) that depend on
    `raw` alone: whatever comes before or after it, they appear verbatim in the encoding. Character
    j covers bits [6j, 6j + 6), so it is stable when those bits all lie inside `raw`."""
    encoded = encode(b"\0" * offset + raw).decode()
    start = -(-8 * offset // 6)  # the first character that starts inside raw
    end = 8 * (offset + len(raw)) // 6  # past the last character that ends inside raw
    return encoded[start:end]


def _variants(secret: str) -> set[str]:
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    for encode in _ENCODERS:
        whole = encode(raw).decode()
        forms.update((whole, whole.rstrip("=")))  # the secret alone: replaced whole, padding too
        forms.update(_base64_core(encode, raw, offset) for offset in range(3))
    return {f for f in forms if len(f) >= MIN_SECRET}


class Scrubber:
    """Replaces known secrets (and, for records, credential-looking values) in text, JSON and
    base64 binary content. Built once per policy: its patterns are compiled here, never per call."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = sorted(
            {v for s in secrets if len(s) >= MIN_SECRET for v in _variants(s)}, key=len, reverse=True
        )
        known = "|".join(re.escape(f) for f in forms)
        self._known = re.compile(known) if forms else None
        self._known_bytes = re.compile(b"|".join(re.escape(f.encode()) for f in forms)) if forms else None
        # Literals only, so one fast search clears a record with nothing to redact (the common case).
        hints = f"{known}|{_CREDENTIAL_HINT.pattern}" if forms else _CREDENTIAL_HINT.pattern
        self._recordable = re.compile(hints)
        self._learned_secrets: tuple[str, ...] = ()
        self._learned: tuple[str, ...] = ()  # their forms, longest first

    def learn(self, secret: str) -> None:
        """Scrub a credential obtained while serving (an upstream's access token) from now on, in
        its raw, URL-escaped and JSON-escaped forms. Found by plain substring search, with nothing
        compiled: tokens are long and renewed every few minutes, and a pattern of all their
        base64 forms would take seconds to compile. Only the latest MAX_LEARNED are kept (older
        tokens have expired); the ledger also redacts whatever looks like a token or a JWT."""
        if len(secret) < MIN_SECRET:
            return
        latest = (*(s for s in self._learned_secrets if s != secret), secret)[-MAX_LEARNED:]
        forms = {f for s in latest for f in (s, quote(s, safe=""), json.dumps(s)[1:-1])}
        self._learned_secrets, self._learned = latest, tuple(sorted(forms, key=len, reverse=True))

    def _learned_in(self, value: str) -> bool:
        return any(form in value for form in self._learned)

    def _replace_learned(self, value: str) -> str:
        for form in self._learned:
            if form in value:
                value = value.replace(form, REDACTED)
        return value

    def text(self, value: str) -> str:
        """Known secrets out of text that goes back to an agent."""
        if self._known is not None:
            value = self._known.sub(REDACTED, value)
        return self._replace_learned(value) if self._learned else value

    def texts(self, values: Sequence[str]) -> list[str] | None:
        """Known secrets out of consecutive pieces of text read as one (a result's text blocks):
        a secret split across pieces is replaced in each piece that holds part of it. None when
        there is nothing to scrub, after one search (the common case)."""
        if self._known is None and not self._learned:
            return None
        joined = "".join(values)
        spans = [m.span() for m in self._known.finditer(joined)] if self._known is not None else []
        for form in self._learned:
            at = joined.find(form)
            while at >= 0:
                spans.append((at, at + len(form)))
                at = joined.find(form, at + 1)
        if not spans:
            return None
        spans = _merged(spans)
        out: list[str] = []
        start = 0
        for value in values:
            end = start + len(value)
            pieces: list[str] = []
            cursor = start
            for first, last in spans:
                if last > start and first < end:
                    pieces.extend((self.text(joined[cursor : max(first, start)]), REDACTED))
                    cursor = min(last, end)
            pieces.append(self.text(joined[cursor:end]))  # a form that overlapped a match, whole here
            out.append("".join(pieces))
            start = end
        return out

    def binary(self, data: str) -> str:
        """Base64 binary content (an image's or audio's data, a resource's blob) without known
        secrets. It is decoded and the secret's every form is replaced in the bytes, then it is
        encoded again, so it stays valid base64 and a secret at any byte offset is found. Content
        that does not decode as base64, or whose encoding still shows a secret's encoding (bits
        shifted off the byte grid), is scrubbed as text instead: never valid then, never leaking."""
        if (self._known is None or self._known_bytes is None) and not self._learned:
            return data
        decoded = _decode_base64(data)
        if decoded is None:
            return self.text(data)
        raw, urlsafe = decoded
        clean = raw
        if self._known_bytes is not None and self._known_bytes.search(raw) is not None:
            clean = self._known_bytes.sub(REDACTED.encode(), clean)
        for form in self._learned:
            clean = clean.replace(form.encode(), REDACTED.encode())
        if clean != raw:
            data = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(clean).decode()
        return self.text(data)

    def log(self, text: str) -> None:
        """One message to the operator, with this scrubber's known secrets redacted; the
        logger's filter then redacts credentials and escapes what could forge a line."""
        LOGGER.warning(self.text(text))

    def finds(self, value: str) -> bool:
        """Whether text holds a known secret."""
        return (self._known is not None and self._known.search(value) is not None) or self._learned_in(value)

    def flags(self, value: str) -> bool:
        """Whether text that is recorded holds a known secret or a credential-looking value."""
        if self._recordable.search(value) is None:
            return self._learned_in(value)
        return self.finds(value) or _CREDENTIAL.search(value) is not None

    def record(self, value: str) -> str:
        """Known secrets and credential-looking values out of text that is recorded."""
        value = self.text(value)
        return _CREDENTIAL.sub(REDACTED, value) if _CREDENTIAL_HINT.search(value) else value

    def json(self, value: Any, *, record: bool = False) -> Any:
        """The same over every string (keys included) of a JSON value."""
        fn = self.record if record else self.text
        if self._known is None and not record and not self._learned:
            return value
        return _walk(value, fn)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans in order, overlapping ones joined."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def _decode_base64(data: str) -> tuple[bytes, bool] | None:
    """The bytes of standard or URL-safe base64 (whitespace and missing padding tolerated), and
    whether it was URL-safe; None if it is not base64."""
    compact = _WHITESPACE.sub("", data)
    compact += "=" * (-len(compact) % 4)
    urlsafe = "-" in compact or "_" in compact
    try:
        return base64.b64decode(compact, altchars=b"-_" if urlsafe else None, validate=True), urlsafe
    except (binascii.Error, ValueError):
        return None


# Characters escaped in what the guard writes to stderr: control characters (C0, DEL, C1: line
# breaks and terminal escapes), format characters (bidi overrides, zero-width), lone surrogates,
# and the Unicode line and paragraph separators.
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """Text as one printable line: each control or invisible character becomes a visible escape
    (`\\n`, `\\x1b`, `\\u202e`); other text, non-ASCII letters included, is unchanged."""
    if _PRINTABLE.fullmatch(text):  # the common case: nothing to escape
        return text
    return _NOT_PRINTABLE_ASCII.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _walk(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {fn(k) if isinstance(k, str) else k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    return value


# -- the guard's own messages ---------------------------------------------------------------------

LOGGER = logging.getLogger("mcp_guard")
"""The one logger of the library: its filter scrubs every record, whoever logs it."""


class ScrubbingFilter(logging.Filter):
    """Every record the guard logs becomes one safe line: credential-looking values redacted,
    then control and invisible characters escaped (so no text an upstream or agent chose can
    forge a line or drive the terminal), and cut at MAX_LOG_CHARS. Known secrets are redacted by
    the Scrubber of the policy in force before the record is made (`Scrubber.log`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        line = escape_controls(_CREDENTIAL.sub(REDACTED, record.getMessage()))
        if len(line) > MAX_LOG_CHARS:
            line = line[:MAX_LOG_CHARS] + " [cut]"
        record.msg, record.args = line, None
        return True


LOGGER.addFilter(ScrubbingFilter())


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record is emitted (a test may have replaced it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def _default_handler() -> None:
    """The guard's messages go to stderr as `mcp-guard: <message>`, one line each, unless the
    embedding program gives the `mcp_guard` logger handlers of its own."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("mcp-guard: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


_default_handler()
