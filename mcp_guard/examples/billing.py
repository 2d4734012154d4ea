"""Example upstream: an in-memory billing system (orders, refunds, payouts) over MCP stdio.

Its `diagnostics` tool carelessly leaks the API key, so the guard's output scrubbing has a target.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp.types as types
from mcp.server import Server

from mcp_guard.examples.toolkit import error, run_stdio, tool_server

SERVER_NAME = "billing"
API_KEY_ENV = "BILLING_API_KEY"

ORDER_ID = {"type": "string", "pattern": "^ORD-[0-9]{4,8}$", "description": "Order id, e.g. ORD-1001"}
TOOLS = [
    types.Tool(
        name="lookup_order",
        title="Look up an order",
        description="Return an order's amount, currency, customer and refunded total.",
        input_schema={
            "type": "object",
            "properties": {"order_id": ORDER_ID},
            "required": ["order_id"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
    ),
    types.Tool(
        name="refund",
        title="Refund an order",
        description="Refund part or all of an order. Refunds are final and cannot exceed the order amount.",
        input_schema={
            "type": "object",
            "properties": {
                "order_id": ORDER_ID,
                "amount": {"type": "number", "exclusiveMinimum": 0, "description": "Amount to refund"},
                "currency": {"type": "string", "enum": ["USD", "EUR", "GBP"]},
                "note": {"type": "string", "maxLength": 500, "description": "Optional note for the customer"},
            },
            "required": ["order_id", "amount", "currency"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
        ),
    ),
    types.Tool(
        name="set_payout_destination",
        title="Set the payout account",
        description="Set the bank account (IBAN) that merchant payouts are sent to.",
        input_schema={
            "type": "object",
            "properties": {
                "account": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}$"},
            },
            "required": ["account"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
        ),
    ),
    types.Tool(
        name="diagnostics",
        title="Connection diagnostics",
        description="Show the billing connection configuration, for troubleshooting.",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
    ),
]


@dataclass
class Order:
    order_id: str
    amount_cents: int
    currency: str
    customer: str
    refunded_cents: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "amount": self.amount_cents / 100,
            "currency": self.currency,
            "customer": self.customer,
            "refunded": self.refunded_cents / 100,
        }


@dataclass
class Billing:
    """The whole in-memory state of the billing system."""

    api_key: str
    orders: dict[str, Order] = field(default_factory=dict)
    payout_account: str = "GB82WEST12345698765432"
    refund_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def seed(api_key: str) -> Billing:
    billing = Billing(api_key=api_key)
    for order in (
        Order("ORD-1001", 4999, "USD", "alice@example.com"),
        Order("ORD-1002", 12000, "EUR", "bob@example.com"),
        Order("ORD-1003", 250, "GBP", "carol@example.com"),
        Order("ORD-1004", 150000, "USD", "dave@example.com"),
        Order("ORD-1005", 8900, "EUR", "erin@example.com"),
    ):
        billing.orders[order.order_id] = order
    return billing


def _text(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)


def _lookup_order(billing: Billing, args: dict[str, Any]) -> types.CallToolResult:
    order = billing.orders.get(args["order_id"])
    if order is None:
        return error(f"Unknown order: {args['order_id']}")
    data = order.as_dict()
    text = (
        f"{order.order_id}: {data['amount']:.2f} {order.currency} for {order.customer}"
        f" (refunded {data['refunded']:.2f})"
    )
    return _text(text, data)


def _refund(billing: Billing, args: dict[str, Any]) -> types.CallToolResult:
    order = billing.orders.get(args["order_id"])
    if order is None:
        return error(f"Unknown order: {args['order_id']}")
    if args["currency"] != order.currency:
        return error(f"{order.order_id} was paid in {order.currency}, not {args['currency']}")
    amount = float(args["amount"])
    if not math.isfinite(amount):
        return error("Refund amount must be a finite number")
    cents = round(amount * 100)
    if cents <= 0:
        return error("Refund amount must be at least 0.01")
    remaining = order.amount_cents - order.refunded_cents
    if cents > remaining:
        return error(
            f"Refund of {cents / 100:.2f} exceeds the refundable {remaining / 100:.2f} {order.currency}"
        )
    order.refunded_cents += cents
    refund_id = f"RF-{next(billing.refund_ids):05d}"
    data = {
        "refund_id": refund_id,
        "order_id": order.order_id,
        "amount": cents / 100,
        "currency": order.currency,
        "refunded_total": order.refunded_cents / 100,
        "note": args.get("note", ""),
    }
    return _text(f"Refunded {cents / 100:.2f} {order.currency} on {order.order_id}: {refund_id}", data)


def _set_payout_destination(billing: Billing, args: dict[str, Any]) -> types.CallToolResult:
    previous, billing.payout_account = billing.payout_account, args["account"]
    return _text(
        f"Payouts will now go to {billing.payout_account}",
        {"account": billing.payout_account, "previous": previous},
    )


def _diagnostics(billing: Billing, args: dict[str, Any]) -> types.CallToolResult:
    # Deliberately careless: a realistic upstream that echoes its own credential back.
    config = {
        "endpoint": "https://billing.internal.example/v2",
        "api_key": billing.api_key,
        "api_key_b64": base64.b64encode(billing.api_key.encode()).decode(),
        "timeout_seconds": 30,
        "orders_loaded": len(billing.orders),
    }
    header = f"Connected to {config['endpoint']} with Authorization: Bearer {billing.api_key}"
    text = header + "\n" + json.dumps(config)
    return _text(text, config)


HANDLERS = {
    "lookup_order": _lookup_order,
    "refund": _refund,
    "set_payout_destination": _set_payout_destination,
    "diagnostics": _diagnostics,
}


def build_server(api_key: str, journal: Path | None = None) -> Server[Any]:
    """A low-level MCP server over a freshly seeded billing state, journaling to `journal`."""
    return tool_server(SERVER_NAME, TOOLS, HANDLERS, seed(api_key), journal)


def main() -> None:
    run_stdio(SERVER_NAME, API_KEY_ENV, build_server)


if __name__ == "__main__":
    main()
