"""Path containment for local upstreams (a grant's `paths`): each path argument is resolved on
this host as the upstream would open it (relative to the upstream's folder, `~` expanded, every
symlink followed) and must fall inside one of the grant's folders (resolved the same way). What it
cannot close: the time between this check and the upstream's open, in which whoever can write
inside an allowed folder can swap a file for a symlink. An upstream started with the narrower
root is the stronger containment."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Decision
from mcp_guard.policy.reasons import Reason

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def contained(decision: Decision, manifest: Manifest) -> Decision:
    """The decision, or limit_exceeded when a path argument resolves outside the grant's folders."""
    if not decision.allowed or not decision.paths:
        return decision
    cwd = manifest.upstream_cwd()
    base = manifest.source.parent
    for arg, folders in decision.paths.items():
        if arg not in decision.arguments:
            continue
        value = decision.arguments[arg]
        roots = [_resolved(base, folder) for folder in folders]
        for path in value if isinstance(value, list) else [value]:
            if not _inside(cwd, path, roots):
                where = ", ".join(folders)
                detail = f"{arg} must name a path inside {where} (resolved on the host, symlinks followed)"
                return replace(decision, allowed=False, reason=Reason.LIMIT_EXCEEDED, detail=detail)
    return decision


def _resolved(base: Path, path: str) -> str | None:
    """The real path, or None for what cannot be one (a URI, a NUL byte)."""
    if _SCHEME.match(path) or "\x00" in path:
        return None
    try:
        return os.path.realpath(base / os.path.expanduser(path))
    except (OSError, ValueError):
        return None


def _inside(cwd: Path, path: object, roots: list[str | None]) -> bool:
    if not isinstance(path, str) or not path:
        return False
    real = _resolved(cwd, path)
    if real is None:
        return False
    return any(root is not None and os.path.commonpath([real, root]) == root for root in roots)
