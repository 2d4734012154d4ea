"""`ledger verify` with signed checkpoints on a large ledger: builds a ledger of N decision entries
(rows with their real hashes, written in large transactions), signs a checkpoint, appends 1,000
entries, and times each command as a user runs it (the real `mcp-guard`, process start included).

    .venv/bin/python benchmarks/checkpoints.py --entries 1000000 [--dir /tmp/cp-bench]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mcp_guard.ledger.chain import COLUMNS, ZERO_HASH, entry_hash
from mcp_guard.ledger.sqlite.engine import Ledger

BATCH = 10_000


def build(path: Path, entries: int) -> None:
    Ledger.open(path).close()  # the schema, as a guard makes it
    conn = sqlite3.connect(path, isolation_level=None)
    names = [*COLUMNS, "entry_hash"]
    insert = f"INSERT INTO entries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    head, rows = ZERO_HASH, []
    conn.execute("BEGIN")
    for i in range(entries):
        row = dict.fromkeys(COLUMNS)
        row |= {"kind": "decision", "call_id": uuid.uuid4().hex, "agent": "support-bot", "server": "billing",
                "tool": "refund", "arguments": f'{{"amount":{i % 100},"order_id":"ORD-1001"}}',
                "decision": "allow", "policy_hash": "ab" * 32, "prev_hash": head, "method": "tools/call",
                "ts": f"2026-01-01T00:00:00.{i % 1_000_000:06d}Z"}  # fmt: skip
        values = [row[name] for name in COLUMNS]
        head = entry_hash(values)
        rows.append([*values, head])
        if len(rows) == BATCH:
            conn.executemany(insert, rows)
            rows = []
    conn.executemany(insert, rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def append(path: Path, entries: int) -> None:
    with Ledger.open(path) as ledger:
        for _ in range(entries):
            ledger.record_event("policy", {"action": "loaded", "hash": "ab" * 32})


def timed(label: str, *args: str, cwd: Path) -> None:
    command = [str(Path(sys.executable).with_name("mcp-guard")), "--config", str(cwd / "guard.yaml"), *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    print(f"{label:<42} {seconds:7.2f} s  exit {done.returncode}  {done.stdout.strip()[:60]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the ledger goes (default: a temp dir)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="mcp-guard-cp-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "checkpoints").mkdir(exist_ok=True)
    ledger_block = "{path: ledger.db, checkpoints: {key: keys/checkpoint.key, dir: checkpoints}}"
    (root / "guard.yaml").write_text(f"ledger: {ledger_block}\n")
    started = time.perf_counter()
    build(root / "ledger.db", args.entries)
    print(f"built {args.entries} entries in {time.perf_counter() - started:.1f} s ({root})")
    subprocess.run([str(Path(sys.executable).with_name("mcp-guard")), "ledger", "keygen", str(root / "keys")],
                   check=True, capture_output=True)  # fmt: skip
    public = str(root / "keys" / "checkpoint.pub")
    checkpoints = ("--checkpoints", str(root / "checkpoints"), "--public-key", public)
    timed("ledger checkpoint (first: counts all)", "ledger", "checkpoint", cwd=root)
    timed("ledger verify", "ledger", "verify", cwd=root)
    timed("ledger verify --checkpoints", "ledger", "verify", *checkpoints, cwd=root)
    append(root / "ledger.db", 1000)
    timed("ledger checkpoint (1,000 entries later)", "ledger", "checkpoint", cwd=root)
    append(root / "ledger.db", 1000)
    timed(
        "verify --since-checkpoint (1,000 after)",
        "ledger",
        "verify",
        *checkpoints,
        "--since-checkpoint",
        cwd=root,
    )


if __name__ == "__main__":
    main()
