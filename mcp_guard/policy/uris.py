"""Resource URIs as attacker input, and the manifest's URI patterns that grant them. A URI is read
only when it is well formed (no `.` or `..` segment, no percent-encoded `/`, `.` or `\\`, no
userinfo, no control or invisible characters, no backslash) and a granted pattern matches it byte
for byte: `*` matches within one path segment, `**` across segments, nothing else is special.
Nothing is decoded, case-folded or normalised. Pure."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

MAX_URI = 2048
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_ENCODED = re.compile(r"%(2[eEfF]|5[cC]|00)")  # `.`, `/`, `\` and NUL, percent-encoded


def uri_problem(uri: object) -> str | None:
    """Why a URI may not be read or listed, or None when it is well formed."""
    if not isinstance(uri, str) or not uri:
        return "is not a URI"
    if len(uri) > MAX_URI:
        return f"is longer than {MAX_URI} characters"
    if not _SCHEME.match(uri):
        return "has no scheme"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in uri):
        return "holds a control or invisible character"
    if "\\" in uri:
        return "holds a backslash"
    if _ENCODED.search(uri):
        return "holds a percent-encoded '.', '/' or '\\'"
    rest = uri[uri.index(":") + 1 :]
    if rest.startswith("//"):
        authority = rest[2:].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        if "@" in authority:
            return "holds a userinfo part"
    path = rest.split("?", 1)[0].split("#", 1)[0]
    if any(segment in (".", "..") for segment in path.split("/")):
        return "holds a '.' or '..' segment"
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why a manifest's URI pattern is refused when it loads, or None."""
    problem = uri_problem(pattern.replace("*", "x"))
    if problem is not None:
        return problem
    if "***" in pattern:
        return "'***' means nothing; use '*' (one segment) or '**' (any depth)"
    return None


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of one pattern: `**` any characters, `*` any but `/`."""
    parts = []
    for i, chunk in enumerate(pattern.split("**")):
        if i:
            parts.append(".*")
        parts.append("[^/]*".join(re.escape(piece) for piece in chunk.split("*")))
    return re.compile("".join(parts), re.DOTALL)


def matches(patterns: Iterable[str], uri: str) -> bool:
    """Whether a well-formed URI (check `uri_problem` first) matches one of the patterns."""
    return any(compile_pattern(p).fullmatch(uri) is not None for p in patterns)
