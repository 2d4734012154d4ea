"""The ledger shared by separate OS processes: concurrent appends, a killed guard, `tail -f` and Ctrl-C."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from mcp_guard.ledger.entries import CallRecord
from mcp_guard.ledger.sqlite.engine import Ledger

PROCESSES = 4
PER_PROCESS = 200
WAIT = 60.0  # seconds: an upper bound for a stuck child, never a sleep

APPENDER = textwrap.dedent(
    """
    import sys, uuid
    from pathlib import Path
    from mcp_guard.ledger.entries import CallRecord
    from mcp_guard.ledger.sqlite.engine import Ledger

    path, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ledger = Ledger.open(path, busy_timeout=30.0)
    print("ready", flush=True)
    sys.stdin.readline()  # the barrier: every process starts appending at once
    for i in range(count):
        call_id = uuid.uuid4().hex
        rec = CallRecord(call_id, name, None, "billing", "refund", {"i": i}, "allow", None, None, "ab" * 32)
        ledger.record_decision(rec)
        ledger.record_outcome(call_id, "ok", float(i))
    ledger.close()
    """
)

KILLED_MID_CALL = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from mcp_guard.ledger.entries import CallRecord
    from mcp_guard.ledger.sqlite.engine import Ledger

    ledger = Ledger.open(Path(sys.argv[1]))
    ledger.record_decision(CallRecord(sys.argv[2], "support-bot", None, "billing", "refund", {}, "allow",
                                      None, None, "ab" * 32))
    os.kill(os.getpid(), signal.SIGKILL)  # the guard dies before the upstream answers
    """
)

FOLLOWER = textwrap.dedent(
    """
    import argparse, sys
    from pathlib import Path
    from mcp_guard.cli.ledger import add_ledger_parser, run_ledger

    parser = argparse.ArgumentParser(prog="mcp-guard")
    add_ledger_parser(parser.add_subparsers(dest="command"))
    sys.exit(run_ledger(parser.parse_args(["ledger", "tail", "-f", "--json"]), Path(sys.argv[1])))
    """
)


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str]) -> str:
    """The child's next stdout line, or fail after WAIT seconds instead of hanging."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(WAIT), "the child printed nothing"
    return proc.stdout.readline()


def test_four_processes_appending_at_once_lose_nothing_and_keep_one_valid_chain(tmp_path: Path):
    path = tmp_path / "ledger.db"
    procs = [spawn(APPENDER, str(path), f"agent-{n}", str(PER_PROCESS)) for n in range(PROCESSES)]
    try:
        for proc in procs:
            assert read_line(proc) == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=WAIT)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()  # reaps it and closes its pipes, even after a timeout
    with Ledger.open_readonly(path) as ledger:
        result = ledger.verify()
        assert result.ok, result.problem
        assert result.entries == 2 * PROCESSES * PER_PROCESS
        invocations = ledger.invocations()
    assert len({inv.call_id for inv in invocations}) == PROCESSES * PER_PROCESS
    assert all(inv.outcome == "ok" for inv in invocations)
    for n in range(PROCESSES):
        mine = [inv.arguments for inv in invocations if inv.agent == f"agent-{n}"]
        assert mine == [{"i": i} for i in range(PER_PROCESS)]


def test_a_guard_killed_mid_call_leaves_its_decision_with_a_null_outcome(tmp_path: Path):
    path = tmp_path / "ledger.db"
    call_id = uuid.uuid4().hex
    proc = spawn(KILLED_MID_CALL, str(path), call_id)
    proc.communicate(timeout=WAIT)
    assert proc.returncode == -signal.SIGKILL
    with Ledger.open_readonly(path) as ledger:
        (inv,) = ledger.invocations()
        assert (inv.call_id, inv.decision, inv.outcome) == (call_id, "allow", None)
        assert ledger.verify().ok
    with Ledger.open(path) as ledger:  # a later guard carries on the same chain
        ledger.record_outcome(uuid.uuid4().hex, "ok", 1)
        assert ledger.verify().entries == 2


def test_tail_follow_prints_what_another_process_writes_and_ctrl_c_exits_0(tmp_path: Path):
    path = tmp_path / "ledger.db"
    first = CallRecord(uuid.uuid4().hex, "support-bot", None, "billing", "refund", {}, "deny",
                       "limit_exceeded", "amount must be <= 100", "ab" * 32)  # fmt: skip
    with Ledger.open(path) as ledger:
        ledger.record_decision(first)
        proc = spawn(FOLLOWER, str(path))
        try:
            assert json.loads(read_line(proc))["call_id"] == first.call_id
            later = CallRecord(uuid.uuid4().hex, "finance-bot", "s1", "billing", "payout", {"amount": 7},
                               "allow", None, None, "ab" * 32)  # fmt: skip
            ledger.record_decision(later)
            ledger.record_outcome(later.call_id, "ok", 8.5)
            line = json.loads(read_line(proc))
            assert (line["call_id"], line["outcome"], line["duration_ms"]) == (later.call_id, "ok", 8.5)
            os.kill(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=WAIT)
        finally:
            proc.kill()
            proc.communicate()  # reaps it and closes its pipes, even after a timeout
    assert proc.returncode == 0
    assert err == ""
