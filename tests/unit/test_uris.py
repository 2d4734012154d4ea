"""The URI rules of resources, as tables: which patterns match which URIs byte for byte, and a
smuggling table of URIs that must never be read whatever is granted."""

from __future__ import annotations

import pytest

from mcp_guard.policy.uris import compile_pattern, matches, pattern_problem, uri_problem

MATCHING = [
    ("tickets://queue/support/*", "tickets://queue/support/42", True),
    ("tickets://queue/support/*", "tickets://queue/support/", True),
    ("tickets://queue/support/*", "tickets://queue/support/42/history", False),
    ("tickets://queue/support/*", "tickets://queue/billing/42", False),
    ("file:///srv/kb/**", "file:///srv/kb/a/b/c.md", True),
    ("file:///srv/kb/**", "file:///srv/kb", False),
    ("file:///srv/kb/**", "file:///srv/kbx/secret", False),
    ("file:///srv/kb/*.md", "file:///srv/kb/a.md", True),
    ("file:///srv/kb/*.md", "file:///srv/kb/a.md.txt", False),
    ("test://static-text", "test://static-text", True),
    ("test://static-text", "test://static-text2", False),
    ("test://static-text", "TEST://static-text", False),  # nothing is case-folded
    ("test://static-text", "test://Static-text", False),
    ("test://a.b", "test://aXb", False),  # '.' is not special
    ("test://a?b", "test://ab", False),  # '?' is not special
    ("test://[ab]", "test://a", False),  # brackets are not special
    ("test://template/*/data", "test://template/123/data", True),
    ("test://template/*/data", "test://template/1/2/data", False),
    ("test://**", "test://template/{id}/data", True),
]


@pytest.mark.parametrize(("pattern", "uri", "expected"), MATCHING)
def test_a_pattern_matches_byte_for_byte_with_star_in_a_segment_and_double_star_across(
    pattern: str, uri: str, expected: bool
) -> None:
    assert uri_problem(uri) is None
    assert matches([pattern], uri) is expected


SMUGGLED = [
    "file:///srv/kb/../etc/passwd",
    "file:///srv/kb/./a.md",
    "file:///srv/kb/..",
    "file:///srv/kb/%2e%2e/etc/passwd",
    "file:///srv/kb/%2E%2E/etc/passwd",
    "file:///srv/kb/a%2fb",
    "file:///srv/kb/a%2Fb",
    "file:///srv/kb/a%5cb",
    "file:///srv/kb/a%00b",
    "file:///srv/kb/a\\..\\b",
    "file://user@host/srv/kb/a",
    "file://user:pw@host/srv/kb/a",
    "file:///srv/kb/a\nb",
    "file:///srv/kb/a\x00b",
    "file:///srv/kb/a\x7fb",
    "file:///srv/kb/a\u202eb",  # bidirectional override
    "file:///srv/kb/a\u200bb",  # zero-width space
    "file:///srv/kb/a\u2028b",
    "file:///srv/kb/a\x85b",
    "/srv/kb/a.md",  # no scheme
    "",
    "file:///srv/kb/" + "a" * 3000,
]


@pytest.mark.parametrize("uri", SMUGGLED)
def test_a_smuggled_uri_is_refused_whatever_is_granted(uri: str) -> None:
    assert uri_problem(uri) is not None


@pytest.mark.parametrize("value", [None, 42, b"file:///srv/kb/a", ["file:///srv/kb/a"]])
def test_a_uri_that_is_not_a_string_is_refused(value: object) -> None:
    assert uri_problem(value) is not None


def test_a_query_or_fragment_holding_dots_is_not_a_path_segment() -> None:
    assert uri_problem("file:///srv/kb/a.md?v=..") is None
    assert uri_problem("file:///srv/kb/a.md#..") is None


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("file:///srv/kb/**", True),
        ("tickets://queue/*/open", True),
        ("file:///srv/kb/../**", False),
        ("file:///srv/%2e%2e/**", False),
        ("file://me@host/**", False),
        ("/srv/kb/**", False),
        ("file:///srv/***", False),
    ],
)
def test_a_pattern_that_could_only_match_a_refused_uri_is_a_load_error(pattern: str, ok: bool) -> None:
    assert (pattern_problem(pattern) is None) is ok


def test_a_regular_expression_in_a_pattern_is_literal() -> None:
    assert compile_pattern("test://(a|b)+").fullmatch("test://a") is None
    assert compile_pattern("test://(a|b)+").fullmatch("test://(a|b)+") is not None
