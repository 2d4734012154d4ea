"""Ledger entries as OCSF events, for a SIEM: each decision and each outcome becomes one API Activity
event (class 6003), the entry's hashes and id kept so that what a SIEM holds can be matched to the
ledger and its checkpoints. Pure: a dict in, a dict out. Imports nothing from mcp_guard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

OCSF_VERSION = "1.3.0"
API_ACTIVITY = 6003
APPLICATION_ACTIVITY = 6
OTHER = 99  # API Activity's activity ids are Create, Read, Update, Delete and Other: a tool call is Other
_PRODUCT = {"name": "mcp-guard", "vendor_name": "mcp-guard"}


def ocsf_event(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The OCSF API Activity event of a decision or outcome entry (as `LedgerStore.entries` gives
    it); None for the other kinds (policy, pin, approval, ...), which `--format jsonl` carries."""
    kind = entry.get("kind")
    if kind not in ("decision", "outcome"):
        return None
    if kind == "outcome":  # who called what is on the decision: the store hands it along
        entry = {**entry, **{k: v for k, v in (entry.get("call") or {}).items() if v is not None}}
    method = entry.get("method") or "tools/call"
    event: dict[str, Any] = {
        "class_uid": API_ACTIVITY,
        "class_name": "API Activity",
        "category_uid": APPLICATION_ACTIVITY,
        "category_name": "Application Activity",
        "activity_id": OTHER,
        "activity_name": method,
        "type_uid": API_ACTIVITY * 100 + OTHER,
        "type_name": "API Activity: Other",
        "time": _epoch_ms(str(entry.get("ts"))),
        "severity_id": 1,
        "severity": "Informational",
        "actor": {"user": {"name": entry.get("agent"), "uid": entry.get("agent")}},
        "api": {
            "operation": method,
            "service": {"name": entry.get("server")},
            "request": {"uid": entry.get("call_id")},
        },
        "resources": [{"name": _target(entry), "type": "MCP tool"}],
        "src_endpoint": {},  # the ledger does not record the client's address
        "metadata": {
            "version": OCSF_VERSION,
            "product": _PRODUCT,
            "uid": entry.get("entry_hash"),
            "sequence": entry.get("id"),
            "correlation_uid": entry.get("call_id"),
            "log_name": "mcp-guard ledger",
            "original_time": entry.get("ts"),
        },
        "unmapped": {
            "kind": kind,
            "entry_id": entry.get("id"),
            "prev_hash": entry.get("prev_hash"),
            "entry_hash": entry.get("entry_hash"),
            "policy_hash": entry.get("policy_hash"),
        },
    }
    if entry.get("session") is not None:
        event["actor"]["session"] = {"uid": entry["session"]}
    if kind == "decision":
        allowed = entry.get("decision") == "allow"
        event |= {
            "action_id": 1 if allowed else 2,
            "action": "Allowed" if allowed else "Denied",
            "disposition_id": 1 if allowed else 2,
            "disposition": "Allowed" if allowed else "Blocked",
            "status_id": 1 if allowed else 2,
            "status": "Success" if allowed else "Failure",
        }
        if entry.get("reason") is not None:
            event["status_code"] = entry["reason"]
        if entry.get("detail") is not None:
            event["status_detail"] = event["message"] = entry["detail"]
        event["unmapped"]["arguments"] = entry.get("arguments")
    else:
        ok = entry.get("outcome") == "ok"
        event |= {"status_id": 1 if ok else 2, "status": "Success" if ok else "Failure"}
        event["status_code"] = entry.get("outcome")
        if entry.get("detail") is not None:
            event["status_detail"] = entry["detail"]
        if entry.get("duration_ms") is not None:
            event["duration"] = round(float(entry["duration_ms"]))
    return event


def _target(entry: dict[str, Any]) -> str:
    server, tool = entry.get("server"), entry.get("tool")
    return f"{server}.{tool}" if server is not None else str(tool)


def _epoch_ms(ts: str) -> int | None:
    try:
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None
