"""The ledger commands on a PostgreSQL ledger: `ledger copy --to URL` brings a SQLite ledger over with
its chain and head hash intact (and refuses a ledger that is not empty), after which every reading
command prints the same on both, and a snapshot back in SQLite (what `ledger browse` serves) keeps
the head too; the README's least-privileged role appends and reads but cannot change an entry; `ledger tail -f` prints what another process commits, pushed by
LISTEN/NOTIFY."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import anyio
import psycopg
import pytest

from mcp_guard.cli.main import main
from mcp_guard.config import LedgerConfig
from mcp_guard.ledger import ApprovalEvent, MarkEvent, PolicyEvent, open_ledger, sqlite_snapshot
from mcp_guard.ledger.entries import CallRecord
from tests.helpers import REPO_ROOT, guard_env

POLICY = "ef" * 32
TIMEOUT = 30.0
REQUEST = {
    "id": "r1",
    "action": "request",
    "arguments": {"amount": 75},
    "expires_at": "2999-01-01T00:00:00.000000Z",
}


def record(decision: str = "allow", **extra: object) -> CallRecord:
    return CallRecord(uuid.uuid4().hex, "support-bot", "s1", "billing", "refund", {"amount": 3, **extra},
                      decision, None if decision == "allow" else "limit_exceeded", None, POLICY)  # fmt: skip


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_a_sqlite_ledger_copied_to_postgresql_keeps_its_head_and_reads_the_same(
    tmp_path: Path, postgres_url: str
) -> None:
    path = tmp_path / "ledger.db"
    async with await open_ledger(LedgerConfig(path=path)) as store:
        await store.append(PolicyEvent(payload={"action": "loaded", "hash": POLICY}, policy_hash=POLICY))
        for n in range(4):
            rec = record("allow" if n % 2 == 0 else "deny", note=f"ünïcode {n}\n")
            await store.decide(rec)
            if rec.decision == "allow":
                await store.outcome(rec.call_id, "ok", 1.25 * n)
        await store.append(MarkEvent(payload={"marks": ["customer-data"]}, agent="support-bot", session="s1"))
        await store.append(
            ApprovalEvent(payload=REQUEST, agent="support-bot", server="billing", tool="refund")
        )
        await store.flush()
        sqlite_head = (await store.verify()).head

    code, out, err = await anyio.to_thread.run_sync(
        run, "--ledger", str(path), "ledger", "copy", "--to", postgres_url
    )
    assert (code, err) == (0, "")
    assert out.startswith("copied 9 entries to postgresql://")
    assert out.endswith(f"head {sqlite_head}\n")
    again = await anyio.to_thread.run_sync(run, "--ledger", str(path), "ledger", "copy", "--to", postgres_url)
    assert again[0] == 1
    assert "not an empty ledger" in again[2]

    for command in (
        ["ledger", "verify"],
        ["ledger", "tail", "-n", "10", "--json"],
        ["ledger", "tail", "-n", "10", "--agent", "support-bot", "--decision", "allow"],
        ["ledger", "events", "--json"],
        ["ledger", "stats", "--json"],
        ["ledger", "export"],
        ["ledger", "export", "--format", "ocsf", "--after-id", "3"],
        ["approvals", "list", "--json"],
    ):
        on_sqlite = await anyio.to_thread.run_sync(run, "--ledger", str(path), *command)
        on_postgres = await anyio.to_thread.run_sync(run, "--ledger", postgres_url, *command)
        assert on_postgres == on_sqlite, command
        assert on_postgres[0] == 0, command
        assert on_postgres[1], command
    code, out, _ = await anyio.to_thread.run_sync(run, "--ledger", postgres_url, "ledger", "verify")
    assert out == f"ok: 9 entries, head {sqlite_head}\n"
    # And back, as `ledger browse` serves it: a SQLite snapshot with the same chain.
    snapshot = sqlite_snapshot(LedgerConfig(url=postgres_url), tmp_path / "snapshot.db")
    async with await open_ledger(LedgerConfig(path=snapshot), readonly=True) as copied:
        assert (await copied.verify()).head == sqlite_head


def grants(readme: str, schema: str) -> list[str]:
    """The README's grants for the guard's role, as statements for a role of this test's own."""
    block = readme.split("```sql\n", 1)[1].split("```", 1)[0]
    role = f"guard_{uuid.uuid4().hex[:8]}"
    text = block.replace("ROLE guard", f"ROLE {role}").replace("TO guard", f"TO {role}")
    text = text.replace("SCHEMA public", f"SCHEMA {schema}").replace(
        "DATABASE mcp_guard", "DATABASE postgres"
    )
    return [line.split("--")[0].strip() for line in text.splitlines() if line.split("--")[0].strip()]


async def test_the_readmes_least_privileged_role_decides_and_reads_but_cannot_change_an_entry(
    postgres_url: str,
) -> None:
    async with await open_ledger(LedgerConfig(url=postgres_url)) as owner:  # creates the schema
        await owner.decide(record())
    schema = postgres_url.rsplit("%3D", 1)[1]
    statements = grants((REPO_ROOT / "README.md").read_text(encoding="utf-8"), schema)
    role = statements[0].split()[2]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        for statement in statements:
            admin.execute(statement.replace("PASSWORD '...'", "").rstrip(";").encode())
    as_guard = postgres_url.replace("postgresql://postgres:@", f"postgresql://{role}@")
    async with await open_ledger(LedgerConfig(url=as_guard)) as guard:
        refused = await guard.decide(record("deny"))
        assert [i.call_id for i in await guard.invocations()][-1] == refused.call_id
        assert (await guard.verify()).ok
    with psycopg.connect(as_guard, autocommit=True) as conn:
        for sql in ("UPDATE entries SET agent = 'x'", "DELETE FROM entries", "TRUNCATE entries",
                    "CREATE TABLE sneaky (x int)"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.encode())
    with (  # and the owner meets the triggers
        psycopg.connect(postgres_url, autocommit=True) as admin,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        admin.execute(b"UPDATE entries SET agent = 'x'")


async def test_tail_follow_prints_what_another_process_commits(postgres_url: str) -> None:
    command = [
        sys.executable,
        "-m",
        "mcp_guard",
        "--ledger",
        postgres_url,
        "ledger",
        "tail",
        "-f",
        "-n",
        "0",
        "--json",
    ]
    async with await open_ledger(LedgerConfig(url=postgres_url)) as store:
        await store.decide(record())  # there before, so not printed (-n 0)
        follower = subprocess.Popen(  # noqa: ASYNC220 (its output is read from a worker thread)
            command, env=guard_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert follower.stdout is not None
        lines: list[str] = []
        try:
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:

                    async def read() -> None:
                        lines.append(await anyio.to_thread.run_sync(follower.stdout.readline))  # type: ignore[union-attr]

                    tg.start_soon(read)
                    while not lines:  # the follower starts listening at a moment this cannot see
                        await store.decide(record("deny"))
                        await anyio.sleep(0.3)
        finally:
            follower.terminate()
            _, err = follower.communicate(timeout=TIMEOUT)
        assert follower.returncode == 0, err
    shown = json.loads(lines[0])
    assert (shown["agent"], shown["decision"], shown["reason"]) == ("support-bot", "deny", "limit_exceeded")
