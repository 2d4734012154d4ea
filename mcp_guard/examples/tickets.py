"""Example upstream: an in-memory help-desk (search, read, comment on and close tickets) over MCP stdio."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp.types as types
from mcp.server import Server

from mcp_guard.examples.toolkit import error, run_stdio, tool_server

SERVER_NAME = "tickets"
CREDENTIAL_ENV = "TICKETS_API_TOKEN"

STATUSES = ["open", "pending", "closed"]
TICKET_ID = {"type": "string", "pattern": "^T-[0-9]+$", "description": "Ticket id, e.g. T-101"}
TOOLS = [
    types.Tool(
        name="search_tickets",
        title="Search tickets",
        description="Find tickets whose subject or body contains the query (case-insensitive).",
        input_schema={
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": 200},
                "status": {"type": "string", "enum": STATUSES},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
    ),
    types.Tool(
        name="get_ticket",
        title="Read a ticket",
        description="Return one ticket with its comments.",
        input_schema={
            "type": "object",
            "properties": {"ticket_id": TICKET_ID},
            "required": ["ticket_id"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
    ),
    types.Tool(
        name="add_comment",
        title="Comment on a ticket",
        description="Add a comment to a ticket; the customer is notified by email.",
        input_schema={
            "type": "object",
            "properties": {"ticket_id": TICKET_ID, "body": {"type": "string", "maxLength": 2000}},
            "required": ["ticket_id", "body"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True),
    ),
    types.Tool(
        name="close_ticket",
        title="Close a ticket",
        description="Close a ticket with a resolution.",
        input_schema={
            "type": "object",
            "properties": {
                "ticket_id": TICKET_ID,
                "resolution": {"type": "string", "enum": ["fixed", "wontfix", "duplicate"]},
            },
            "required": ["ticket_id", "resolution"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
        ),
    ),
]


@dataclass
class Ticket:
    ticket_id: str
    subject: str
    body: str
    requester: str
    status: str = "open"
    resolution: str | None = None
    comments: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"ticket_id": self.ticket_id, "subject": self.subject, "status": self.status}

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "body": self.body,
            "requester": self.requester,
            "resolution": self.resolution,
            "comments": list(self.comments),
        }


def seed() -> dict[str, Ticket]:
    tickets = [
        Ticket("T-101", "Cannot log in", "Password reset email never arrives.", "alice@example.com"),
        Ticket("T-102", "Invoice shows wrong VAT", "Invoice 2024-17 charges 25% VAT.", "bob@example.com"),
        Ticket("T-103", "Export to CSV is slow", "Exporting 10k rows takes minutes.", "carol@example.com"),
        Ticket("T-104", "Refund not received", "Refund for ORD-1002 still missing.", "bob@example.com"),
        Ticket("T-105", "Dark mode request", "Please add a dark theme.", "erin@example.com"),
    ]
    tickets[1].status = "pending"
    tickets[4].status, tickets[4].resolution = "closed", "wontfix"
    return {ticket.ticket_id: ticket for ticket in tickets}


def _text(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)


def _search_tickets(tickets: dict[str, Ticket], args: dict[str, Any]) -> types.CallToolResult:
    query = args["query"].lower()
    status = args.get("status")
    found = [
        ticket.summary()
        for ticket in tickets.values()
        if (query in ticket.subject.lower() or query in ticket.body.lower())
        and (status is None or ticket.status == status)
    ]
    lines = [f"{t['ticket_id']} [{t['status']}] {t['subject']}" for t in found]
    return _text("\n".join(lines) or "No matching tickets.", {"tickets": found})


def _get_ticket(tickets: dict[str, Ticket], args: dict[str, Any]) -> types.CallToolResult:
    ticket = tickets.get(args["ticket_id"])
    if ticket is None:
        return error(f"Unknown ticket: {args['ticket_id']}")
    text = f"{ticket.ticket_id} [{ticket.status}] {ticket.subject}\n{ticket.body}"
    return _text(text, ticket.as_dict())


def _add_comment(tickets: dict[str, Ticket], args: dict[str, Any]) -> types.CallToolResult:
    ticket = tickets.get(args["ticket_id"])
    if ticket is None:
        return error(f"Unknown ticket: {args['ticket_id']}")
    if ticket.status == "closed":
        return error(f"{ticket.ticket_id} is closed; reopen it before commenting")
    ticket.comments.append(args["body"])
    data = {"ticket_id": ticket.ticket_id, "comment_count": len(ticket.comments)}
    return _text(f"Comment {len(ticket.comments)} added to {ticket.ticket_id}", data)


def _close_ticket(tickets: dict[str, Ticket], args: dict[str, Any]) -> types.CallToolResult:
    ticket = tickets.get(args["ticket_id"])
    if ticket is None:
        return error(f"Unknown ticket: {args['ticket_id']}")
    ticket.status, ticket.resolution = "closed", args["resolution"]
    return _text(f"{ticket.ticket_id} closed as {ticket.resolution}", ticket.summary())


HANDLERS = {
    "search_tickets": _search_tickets,
    "get_ticket": _get_ticket,
    "add_comment": _add_comment,
    "close_ticket": _close_ticket,
}


def build_server(_credential: str = "", journal: Path | None = None) -> Server[Any]:
    """A low-level MCP server over a freshly seeded help-desk, journaling to `journal`."""
    return tool_server(SERVER_NAME, TOOLS, HANDLERS, seed(), journal)


def main() -> None:
    run_stdio(SERVER_NAME, CREDENTIAL_ENV, build_server)


if __name__ == "__main__":
    main()
