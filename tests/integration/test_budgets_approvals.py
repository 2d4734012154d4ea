"""Budgets and approvals through the guard's own Server, driven in-process by a real ClientSession,
with the real example upstreams in memory and a real SQLite ledger file. The upstream journals
prove what was forwarded; the ledger file, read with plain sqlite3, what was decided; the operator
decides with the real `mcp-guard approvals` command."""

from __future__ import annotations

import getpass
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio

from mcp_guard.policy.approvals import digest
from tests.helpers import (
    BILLING_TOOLS,
    TIMEOUT,
    Deployment,
    Run,
    assert_denied,
    cli,
    gather,
    inprocess_guard,
    inprocess_guards,
    text_of,
)

SUPPORT_LIMITS = {"amount": {"exclusiveMinimum": 0, "maximum": 100}, "currency": {"enum": ["USD", "EUR"]}}
FINANCE_LIMITS = {"amount": {"exclusiveMinimum": 0, "maximum": 5000}}
OVER_50 = {"amount": {"exclusiveMinimum": 50}}
REQUEST_ID = re.compile(r"request ([0-9a-f]{16})")
POLL = 0.05  # seconds between looks at the ledger file or the clock while waiting
T = TypeVar("T")


def billing(
    deployment: Deployment,
    *,
    support: dict[str, Any] | None = None,
    finance: dict[str, Any] | None = None,
    **tools: Any,
) -> Deployment:
    """The billing example, with extra keys (budgets, approval) on support's and finance's refund
    grants, and any other tool entries replaced."""
    refund = [
        {"allow": ["role:support"], "arguments": SUPPORT_LIMITS, **(support or {})},
        {"allow": ["finance-bot"], "arguments": FINANCE_LIMITS, **(finance or {})},
    ]
    return deployment.with_billing({**BILLING_TOOLS, "refund": refund, **tools})


async def call(session: Any, name: str, arguments: dict[str, Any], **kwargs: Any) -> Any:
    with anyio.fail_after(TIMEOUT):
        return await session.call_tool(name, arguments, **kwargs)


async def refund(session: Any, amount: Any, order: str = "ORD-1004", currency: str = "USD", **kw: Any) -> Any:
    return await call(
        session, "billing__refund", {"order_id": order, "amount": amount, "currency": currency}, **kw
    )


def reason_of(result: Any) -> str:
    """The reason code of a refusal: `denied (CODE): ...`."""
    assert result.is_error is True, text_of(result)
    found = re.match(r"denied \(([a-z_]+)\): ", text_of(result))
    assert found, text_of(result)
    return found.group(1)


def assert_ok(result: Any) -> None:
    assert result.is_error is not True, text_of(result)


def refunds(deployment: Deployment) -> list[Any]:
    """The amounts of every refund the billing upstream received, in order."""
    return [e["arguments"]["amount"] for e in deployment.journal("billing") if e["tool"] == "refund"]


def decisions(deployment: Deployment, tool: str = "refund") -> list[tuple[str, str | None]]:
    return [(c["decision"], c["reason"]) for c in deployment.ledger() if c["tool"] == tool]


def request_id(result: Any) -> str:
    assert_denied(result, "approval_pending")
    found = REQUEST_ID.search(text_of(result))
    assert found, text_of(result)
    return found.group(1)


def approval_events(path: Path) -> list[dict[str, Any]]:
    """Every approval entry of the ledger file, oldest first: its payload with the entry's columns."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT ts, agent, server, tool, call_id, payload FROM entries WHERE kind = 'approval' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [
        {**json.loads(payload), "ts": ts, "agent": agent, "server": server, "tool": tool, "call_id": call_id}
        for ts, agent, server, tool, call_id, payload in rows
    ]


def actions(deployment: Deployment, rid: str) -> list[str]:
    return [e["action"] for e in approval_events(deployment.ledger_path) if e["id"] == rid]


async def approvals(deployment: Deployment, *args: str) -> Run:
    """The `mcp-guard approvals ...` command, as the operator runs it."""
    return await cli("--config", str(deployment.config_path), "approvals", *args, cwd=deployment.root)


async def decide(deployment: Deployment, verb: str, rid: str) -> None:
    run = await approvals(deployment, verb, rid)
    assert run.returncode == 0, run
    assert rid in run.stdout


def assert_refused_in_one_line(run: Run) -> None:
    assert run.returncode == 1, run
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


async def poll(found: Callable[[], T]) -> T:
    """Look again every POLL seconds until `found()` is truthy (a wall-clock time passed, an entry
    landed in the ledger file); fail after TIMEOUT seconds instead of hanging."""
    with anyio.fail_after(TIMEOUT):
        while True:
            if value := found():
                return value
            await anyio.sleep(POLL)


async def wait_past(stamp: str, plus: timedelta = timedelta(0)) -> None:
    """Wait until the wall clock is past a ledger timestamp (plus some time)."""
    await poll(lambda: datetime.now(UTC) > parse_ts(stamp) + plus)


def requests(deployment: Deployment) -> list[dict[str, Any]]:
    return [e for e in approval_events(deployment.ledger_path) if e["action"] == "request"]


# -- budgets ---------------------------------------------------------------------------------------


async def test_a_sum_budget_stops_exactly_the_call_that_would_overspend(deployment: Deployment) -> None:
    billing(deployment, support={"budgets": [{"sum": "amount", "max": 100, "per": "1d"}]})
    async with inprocess_guard(deployment, "support-bot") as session:
        assert_ok(await refund(session, 40))
        assert_ok(await refund(session, 40))
        over = await refund(session, 30)
        assert_denied(over, "budget_exhausted")
        assert "20 of 100 left" in text_of(over)
        assert_ok(await refund(session, 20))  # exactly to max
        assert_denied(await refund(session, 0.01), "budget_exhausted")
    assert refunds(deployment) == [40, 40, 20]
    assert decisions(deployment) == [
        ("allow", None),
        ("allow", None),
        ("deny", "budget_exhausted"),
        ("allow", None),
        ("deny", "budget_exhausted"),
    ]
    calls = [c for c in deployment.ledger() if c["tool"] == "refund"]
    assert [c["outcome"] for c in calls] == ["ok", "ok", None, "ok", None]
    assert "20 of 100 left" in calls[2]["detail"]


async def test_a_tiny_amount_on_an_exhausted_budget_is_refused_and_not_forwarded(
    deployment: Deployment,
) -> None:
    billing(deployment, support={"budgets": [{"sum": "amount", "max": 100, "per": "1d"}]})
    async with inprocess_guard(deployment, "support-bot") as session:
        assert_ok(await refund(session, 100))
        result = await refund(session, 1e-26)
        assert_denied(result, "budget_exhausted")
    assert refunds(deployment) == [100]


async def test_three_refunds_of_a_tenth_fit_a_budget_of_three_tenths_and_nothing_sent_refills_it(
    deployment: Deployment,
) -> None:
    billing(deployment, support={"budgets": [{"sum": "amount", "max": 0.3, "per": "1d"}]})
    async with inprocess_guard(deployment, "support-bot") as session:
        for _ in range(3):
            assert_ok(await refund(session, 0.1))
        fourth = await refund(session, 0.1)
        assert_denied(fourth, "budget_exhausted")
        assert "0 of 0.3 left" in text_of(fourth)
        # Amounts that would "refill" the budget or slip past its sum are refused before it counts.
        attempts = (-0.1, -0.0, 0, "0.1", "-0.1", True, None, 1e308)
        reasons = [reason_of(await refund(session, amount)) for amount in attempts]
        assert reasons == ["invalid_arguments"] * 7 + ["limit_exceeded"]
        assert_denied(await refund(session, 0.1), "budget_exhausted")
    assert refunds(deployment) == [0.1, 0.1, 0.1]
    assert [d for d, _ in decisions(deployment)].count("allow") == 3


async def test_a_count_window_refuses_calls_past_max_until_the_window_rolls_on(
    deployment: Deployment,
) -> None:
    billing(
        deployment,
        lookup_order={"allow": ["role:support"], "budgets": [{"max": 3, "per": "1h"}]},
        diagnostics={"allow": ["role:support"], "budgets": [{"max": 1, "per": "1s"}]},
    )
    async with inprocess_guard(deployment, "support-bot") as session:
        for order in ("ORD-1001", "ORD-1002", "ORD-1001"):
            assert_ok(await call(session, "billing__lookup_order", {"order_id": order}))
        fourth = await call(session, "billing__lookup_order", {"order_id": "ORD-1003"})
        assert_denied(fourth, "budget_exhausted")
        assert "0 of 3 calls left" in text_of(fourth)
        assert_denied(
            await call(session, "billing__lookup_order", {"order_id": "ORD-1001"}), "budget_exhausted"
        )
        assert_ok(await refund(session, 5))  # another tool, another budget

        assert_ok(await call(session, "billing__diagnostics", {}))
        assert_denied(await call(session, "billing__diagnostics", {}), "budget_exhausted")
        (first, _) = [c for c in deployment.ledger() if c["tool"] == "diagnostics"]
        await wait_past(first["ts"], plus=timedelta(seconds=1))  # the first call leaves the window
        assert_ok(await call(session, "billing__diagnostics", {}))
    lookups = [e for e in deployment.journal("billing") if e["tool"] == "lookup_order"]
    assert len(lookups) == 3
    assert decisions(deployment, "lookup_order") == [("allow", None)] * 3 + [("deny", "budget_exhausted")] * 2
    assert decisions(deployment, "diagnostics") == [
        ("allow", None),
        ("deny", "budget_exhausted"),
        ("allow", None),
    ]


async def test_an_arg_scope_spans_agents_on_the_same_order(deployment: Deployment) -> None:
    per_order = {"budgets": [{"sum": "amount", "max": 150, "per": "1d", "by": ["arg:order_id"]}]}
    billing(deployment, support=per_order, finance=per_order)
    async with (
        inprocess_guard(deployment, "finance-bot") as finance,
        inprocess_guard(deployment, "support-bot") as support,
    ):
        assert_ok(await refund(finance, 100))
        over = await refund(support, 60)
        assert_denied(over, "budget_exhausted")
        assert "50 of 150 left" in text_of(over)
        assert_ok(await refund(support, 50))
        assert_denied(await refund(finance, 0.01), "budget_exhausted")
        assert_ok(await refund(support, 60, order="ORD-1002", currency="EUR"))  # another order
        assert_ok(await refund(finance, 90, order="ORD-1002", currency="EUR"))
        assert_denied(await refund(support, 1, order="ORD-1002", currency="EUR"), "budget_exhausted")
    assert refunds(deployment) == [100, 50, 60, 90]
    by_agent = [(c["agent"], c["decision"]) for c in deployment.ledger() if c["tool"] == "refund"]
    assert by_agent == [
        ("finance-bot", "allow"),
        ("support-bot", "deny"),
        ("support-bot", "allow"),
        ("finance-bot", "deny"),
        ("support-bot", "allow"),
        ("finance-bot", "allow"),
        ("support-bot", "deny"),
    ]


def echo_budget(deployment: Deployment) -> Deployment:
    once_per_text = {"allow": ["role:qa"], "budgets": [{"max": 1, "per": "1h", "by": ["arg:text"]}]}
    return deployment.with_hostile({"echo": once_per_text})


async def test_case_and_width_variants_of_a_value_do_not_dodge_an_arg_scope(deployment: Deployment) -> None:
    echo_budget(deployment)
    async with inprocess_guard(deployment, "qa-bot") as session:
        assert_ok(await call(session, "hostile__echo", {"text": "ORD-1001"}))
        for variant in ("ord-1001", "Ord-1001", "ＯＲＤ－１００１", "ｏｒｄ-１００１", " ORD-1001 "):
            assert_denied(await call(session, "hostile__echo", {"text": variant}), "budget_exhausted")
        assert_ok(await call(session, "hostile__echo", {"text": "ORD-1002"}))
    assert [e["arguments"]["text"] for e in deployment.journal("hostile")] == ["ORD-1001", "ORD-1002"]


async def test_a_credential_looking_value_does_not_dodge_an_arg_scope(deployment: Deployment) -> None:
    # The ledger records such a value redacted; the budget must still count the calls made with it.
    echo_budget(deployment)
    token = "sk_live_0123456789abcdefghij"
    async with inprocess_guard(deployment, "qa-bot") as session:
        assert_ok(await call(session, "hostile__echo", {"text": token}))
        assert_denied(await call(session, "hostile__echo", {"text": token}), "budget_exhausted")
    assert len(deployment.journal("hostile")) == 1


# -- approvals -------------------------------------------------------------------------------------


def with_approval(deployment: Deployment, **approval: Any) -> Deployment:
    return billing(deployment, support={"approval": {"when": OVER_50, "wait": "1s", **approval}})


def decided_by(deployment: Deployment, rid: str) -> list[Any]:
    events = approval_events(deployment.ledger_path)
    return [e.get("by") for e in events if e["id"] == rid and e["action"] in ("approve", "deny")]


async def test_an_approved_call_is_forwarded_once_and_only_with_identical_arguments(
    deployment: Deployment,
) -> None:
    with_approval(deployment)
    async with inprocess_guard(deployment, "support-bot") as session:
        assert_ok(await refund(session, 40))  # `when` does not match: no approval needed
        first = await gather(refund(session, 75), refund(session, 75))
        rid = request_id(first[0])
        assert request_id(first[1]) == rid  # identical calls share one pending request
        assert refunds(deployment) == [40]

        listed = await approvals(deployment, "list", "--json")
        assert listed.returncode == 0, listed
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert len(rows) == 1
        row = rows[0]
        assert set(row) == {"id", "agent", "server", "tool", "arguments", "requested_at", "expires_at"}
        assert (row["id"], row["agent"], row["server"], row["tool"]) == (
            rid,
            "support-bot",
            "billing",
            "refund",
        )
        assert row["arguments"] == {"order_id": "ORD-1004", "amount": 75, "currency": "USD"}
        assert parse_ts(row["expires_at"]) - parse_ts(row["requested_at"]) == timedelta(minutes=15)

        await decide(deployment, "approve", rid)
        other, one, two, twice = await gather(
            refund(session, 76),
            refund(session, 75),
            refund(session, 75),
            approvals(deployment, "approve", rid),
        )
        assert request_id(other) != rid  # other arguments: a request of their own
        forwarded, again = (one, two) if one.is_error is not True else (two, one)
        assert_ok(forwarded)  # of two identical calls at once, one uses the approval
        assert request_id(again) not in (rid, request_id(other))  # and the other files a new request
        assert_refused_in_one_line(twice)  # a decided request cannot be decided again
        assert rid in twice.stderr
    assert refunds(deployment) == [40, 75]
    assert actions(deployment, rid) == ["request", "approve", "use"]
    assert decided_by(deployment, rid) == [getpass.getuser()]
    used = [e for e in approval_events(deployment.ledger_path) if e["action"] == "use"]
    (allowed,) = [
        c for c in deployment.ledger() if c["decision"] == "allow" and c["arguments"]["amount"] == 75
    ]
    assert [e["call_id"] for e in used] == [allowed["call_id"]]
    assert allowed["outcome"] == "ok"


async def test_a_denial_is_final_for_identical_calls(deployment: Deployment) -> None:
    with_approval(deployment)
    async with inprocess_guard(deployment, "support-bot") as session:
        rid = request_id(await refund(session, 75))
        await decide(deployment, "deny", rid)
        one, two, approve = await gather(
            refund(session, 75), refund(session, 75), approvals(deployment, "approve", rid)
        )
        for denied in (one, two):
            assert_denied(denied, "approval_denied")
            assert rid in text_of(denied)
        assert_refused_in_one_line(approve)  # decided: it cannot be approved any more
        assert_denied(await refund(session, 75), "approval_denied")
    assert refunds(deployment) == []
    assert actions(deployment, rid) == ["request", "deny"]
    assert decided_by(deployment, rid) == [getpass.getuser()]
    (deny,) = [e for e in approval_events(deployment.ledger_path) if e["action"] == "deny"]
    assert (deny["agent"], deny["server"], deny["tool"]) == ("support-bot", "billing", "refund")


async def test_a_lapsed_request_says_expired_once_then_files_a_new_one(deployment: Deployment) -> None:
    with_approval(deployment, timeout="2s")
    async with inprocess_guard(deployment, "support-bot") as session:
        rid = request_id(await refund(session, 75))
        (req,) = requests(deployment)
        assert parse_ts(req["expires_at"]) - parse_ts(req["requested_at"]) == timedelta(seconds=2)
        _, unknown = await gather(
            wait_past(req["expires_at"]), approvals(deployment, "approve", "0123456789abcdef")
        )
        late, expired = await gather(approvals(deployment, "approve", rid), refund(session, 75))
        for run in (unknown, late):  # unknown, expired: exit 1 with one line
            assert_refused_in_one_line(run)
        assert_denied(expired, "approval_expired")
        assert rid in text_of(expired)
        assert request_id(await refund(session, 75)) != rid  # once; then a new request
    assert refunds(deployment) == []
    assert actions(deployment, rid) == ["request", "expired"]


async def test_a_call_over_its_budget_is_refused_before_any_approval_is_requested(
    deployment: Deployment,
) -> None:
    # SPEC: arguments are checked in order ... budgets, approval. No operator is asked to approve
    # a call its budget refuses anyway.
    billing(
        deployment,
        support={
            "budgets": [{"sum": "amount", "max": 100, "per": "1d"}],
            "approval": {"when": OVER_50, "wait": "1s"},
        },
    )
    async with inprocess_guard(deployment, "support-bot") as session:
        assert_ok(await refund(session, 40))
        over = await refund(session, 75)
        assert_denied(over, "budget_exhausted")
        assert "60 of 100 left" in text_of(over)
    assert requests(deployment) == []
    assert refunds(deployment) == [40]


async def test_an_approval_is_bound_to_the_agent_that_asked(deployment: Deployment) -> None:
    deployment.agents["support-2"] = ["support"]
    with_approval(deployment)
    async with (
        inprocess_guard(deployment, "support-bot") as asker,
        inprocess_guard(deployment, "support-2") as other,
    ):
        rid = request_id(await refund(asker, 75))
        await decide(deployment, "approve", rid)
        assert request_id(await refund(other, 75)) != rid  # the same call by another agent
        assert refunds(deployment) == []
        assert_ok(await refund(asker, 75))
    assert refunds(deployment) == [75]
    assert actions(deployment, rid) == ["request", "approve", "use"]


async def _append(into: list[Any], pending: Awaitable[Any]) -> None:
    into.append(await pending)


async def test_an_approval_given_while_the_agent_waits_completes_the_call(deployment: Deployment) -> None:
    with_approval(deployment, wait="10s")
    progress: list[tuple[float, float | None]] = []
    told = anyio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))
        told.set()

    results: list[Any] = []
    async with inprocess_guard(deployment, "support-bot") as session, anyio.create_task_group() as tg:
        tg.start_soon(_append, results, refund(session, 75, progress_callback=on_progress))
        (request,) = await poll(lambda: requests(deployment))
        with anyio.fail_after(TIMEOUT):
            await told.wait()  # the agent is told it is still waiting
        table = await approvals(deployment)  # what the operator sees: a readable table
        assert table.returncode == 0, table
        (header, row) = table.stdout.splitlines()
        assert header.split()[:3] == ["ID", "AGENT", "TOOL"]
        assert row.split()[:3] == [request["id"], "support-bot", "billing.refund"]
        assert '"amount": 75' in row
        assert results == []
        await decide(deployment, "approve", request["id"])
    (result,) = results
    assert_ok(result)
    assert "Refunded 75.00 USD" in text_of(result)
    assert refunds(deployment) == [75]
    assert actions(deployment, request["id"]) == ["request", "approve", "use"]
    values = [v for v, _ in progress]
    assert values == sorted(values)
    assert all(total == 10.0 for _, total in progress)
    (call_record,) = [c for c in deployment.ledger() if c["tool"] == "refund"]
    assert (call_record["decision"], call_record["outcome"]) == ("allow", "ok")


async def test_an_approved_call_is_still_held_to_its_budget_and_keeps_its_approval(
    deployment: Deployment,
) -> None:
    billing(
        deployment,
        support={
            "budgets": [{"sum": "amount", "max": 100, "per": "1d"}],
            "approval": {"when": OVER_50, "wait": "1s"},
        },
    )
    async with inprocess_guard(deployment, "support-bot") as session:
        rid = request_id(await refund(session, 75))
        assert_ok(await refund(session, 40))
        await decide(deployment, "approve", rid)
        over = await refund(session, 75)
        assert_denied(over, "budget_exhausted")
        assert "60 of 100 left" in text_of(over)
    assert refunds(deployment) == [40]
    assert actions(deployment, rid) == ["request", "approve"]  # used only when forwarded


LONG_NOTE = (
    "Refund approved by the customer's manager; " * 8 + "token sk_live_0123456789abcdefghij \u202e end"
)


async def test_approvals_list_marks_arguments_cut_short_and_show_prints_them_whole_with_their_digest(
    deployment: Deployment,
) -> None:
    billing(deployment, finance={"approval": {"wait": "1s"}})
    arguments = {"order_id": "ORD-1004", "amount": 75, "currency": "USD", "note": LONG_NOTE}
    async with inprocess_guard(deployment, "finance-bot") as session:
        rid = request_id(await call(session, "billing__refund", arguments))
    assert refunds(deployment) == []
    assert decisions(deployment) == [("deny", "approval_pending")]

    table = await approvals(deployment, "list")
    assert table.returncode == 0, table
    header, row, hint = table.stdout.splitlines()
    assert header.split()[-1] == "ARGUMENTS"
    assert row.startswith(rid)
    assert row.endswith("…")
    assert "sk_live_" not in row
    assert hint == "… arguments cut short: `mcp-guard approvals show ID` prints them whole"

    shown = await approvals(deployment, "show", rid)
    assert shown.returncode == 0, shown
    assert f"digest:       sha256:{digest(arguments)} " in shown.stdout
    assert "status:       pending" in shown.stdout
    redacted_note = LONG_NOTE.replace("sk_live_0123456789abcdefghij", "[REDACTED]").replace(
        "\u202e", "\\u202e"
    )
    assert f'"note": "{redacted_note}"' in shown.stdout
    assert "\u202e" not in shown.stdout
    assert "sk_live_" not in shown.stdout

    as_json = await approvals(deployment, "show", rid, "--json")
    assert as_json.returncode == 0, as_json
    obj = json.loads(as_json.stdout)
    assert obj["arguments"] == {
        **arguments,
        "note": LONG_NOTE.replace("sk_live_0123456789abcdefghij", "[REDACTED]"),
    }
    assert (obj["id"], obj["status"], obj["digest"], obj["decided_by"]) == (
        rid,
        "pending",
        digest(arguments),
        None,
    )

    await decide(deployment, "deny", rid)
    denied = json.loads((await approvals(deployment, "show", rid, "--json")).stdout)
    assert (denied["status"], denied["decided_by"]) == ("denied", getpass.getuser())


async def test_approvals_show_of_an_unknown_id_exits_1_with_one_line(deployment: Deployment) -> None:
    with_approval(deployment)
    async with inprocess_guard(deployment, "support-bot") as session:
        request_id(await refund(session, 75))
    for rid in ("0123456789abcdef", "not-an-id\x1b[2J"):
        run = await approvals(deployment, "show", rid)
        assert_refused_in_one_line(run)
        assert "no approval request" in run.stderr
        assert "\x1b" not in run.stderr


# -- explain says what the guard would ---------------------------------------------------------------


async def test_explain_words_a_spent_budget_and_a_held_call_as_the_guard_does_and_writes_nothing(
    deployment: Deployment,
) -> None:
    from mcp_guard.cli.preview import explain, load_preview

    billing(
        deployment,
        support={"budgets": [{"sum": "amount", "max": 100, "per": "1d"}], "approval": {"when": OVER_50}},
    )
    async with inprocess_guard(deployment, "support-bot") as session:
        assert_ok(await refund(session, 40))
        assert_ok(await refund(session, 40))
        over = await refund(session, 30)
        held = await refund(session, 60, order="ORD-1005")
    config, manifests = deployment.load()
    before = deployment.ledger()
    preview = await anyio.to_thread.run_sync(
        load_preview, config, manifests, config_agent(config, "support-bot")
    )
    arguments = {"order_id": "ORD-1004", "amount": 30, "currency": "USD"}
    said = await anyio.to_thread.run_sync(explain, preview, config, "billing__refund", arguments)
    assert said == (False, text_of(over))
    assert reason_of(held) == "budget_exhausted"  # 60 > the 20 left: refused before any operator
    small = {"order_id": "ORD-1005", "amount": 10, "currency": "USD"}
    assert (await anyio.to_thread.run_sync(explain, preview, config, "billing__refund", small))[0] is True
    assert deployment.ledger() == before  # explain forwards nothing and records nothing
    assert refunds(deployment) == [40, 40]


async def test_explain_says_a_call_needs_approval_in_the_guards_words_without_filing_a_request(
    deployment: Deployment,
) -> None:
    from mcp_guard.cli.preview import explain, load_preview

    with_approval(deployment)
    config, manifests = deployment.load()
    preview = await anyio.to_thread.run_sync(
        load_preview, config, manifests, config_agent(config, "support-bot")
    )
    arguments = {"order_id": "ORD-1001", "amount": 75, "currency": "USD"}
    allowed, line = await anyio.to_thread.run_sync(explain, preview, config, "billing__refund", arguments)
    assert (allowed, line) == (
        False,
        "denied (approval_pending): held for human approval; call again with the same arguments once it is approved",
    )
    async with inprocess_guard(deployment, "support-bot") as session:
        held = await refund(session, 75, order="ORD-1001")
    assert text_of(held).startswith("denied (approval_pending): held for human approval as request ")
    assert text_of(held).endswith("; call again with the same arguments once it is approved")
    assert len(requests(deployment)) == 1  # the guard's call filed one; explain filed none
    assert refunds(deployment) == []


def config_agent(config: Any, name: str) -> Any:
    from mcp_guard.policy.engine import Agent

    return Agent(name, frozenset(config.agents[name].roles))


# -- unique: a retry or a chained call cannot repeat what was already allowed ------------------------


async def test_an_identical_refund_is_refused_as_a_duplicate_naming_the_earlier_call(
    deployment: Deployment,
) -> None:
    billing(deployment, support={"unique": {"per": "1d"}})
    async with inprocess_guards(deployment, ["support-bot"]) as sessions:
        session = sessions["support-bot"]
        assert_ok(await refund(session, 40))
        again = await refund(session, 40)
        assert_ok(await refund(session, 41))  # other arguments: another call
        assert_ok(await refund(session, 40, order="ORD-1001"))
    assert_denied(again, "duplicate_call")
    first = deployment.ledger()[0]
    assert f"(call {first['call_id']})" in text_of(again)
    assert first["ts"] in text_of(again)
    assert refunds(deployment) == [40, 41, 40]  # the duplicate never reached the upstream
    assert decisions(deployment) == [
        ("allow", None),
        ("deny", "duplicate_call"),
        ("allow", None),
        ("allow", None),
    ]


async def test_unique_by_an_argument_spans_agents_and_other_arguments(deployment: Deployment) -> None:
    by_order = {"unique": {"by": ["arg:order_id"], "per": "1h"}}
    billing(deployment, support=by_order, finance=by_order)
    async with inprocess_guards(deployment, ["support-bot", "finance-bot"]) as sessions:
        assert_ok(await refund(sessions["support-bot"], 40, order="ORD-1004"))
        other_agent = await refund(sessions["finance-bot"], 900, order="ORD-1004")
        smaller = await refund(sessions["support-bot"], 12, order="ORD-1004")
        assert_ok(await refund(sessions["finance-bot"], 30, order="ORD-1001"))
    assert_denied(other_agent, "duplicate_call")
    assert_denied(smaller, "duplicate_call")
    assert refunds(deployment) == [40, 30]
    assert [r for _, r in decisions(deployment)] == [None, "duplicate_call", "duplicate_call", None]


async def test_a_repeat_of_an_approved_and_forwarded_call_is_a_duplicate_and_asks_no_operator(
    deployment: Deployment,
) -> None:
    billing(deployment, support={"approval": {"when": OVER_50, "wait": "1s"}, "unique": {"per": "1d"}})
    async with inprocess_guard(deployment, "support-bot") as session:
        rid = request_id(await refund(session, 75))
        await decide(deployment, "approve", rid)
        assert_ok(await refund(session, 75))  # approved: forwarded once
        again = await refund(session, 75)
    assert_denied(again, "duplicate_call")
    assert len(requests(deployment)) == 1  # the repeat filed no new request
    assert refunds(deployment) == [75]
    assert decisions(deployment) == [
        ("deny", "approval_pending"),
        ("allow", None),
        ("deny", "duplicate_call"),
    ]
