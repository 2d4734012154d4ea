"""HTTP capacity: calls per second at 1, 16 and 64 connections, the guard against a bare SDK proxy (issue 19).

    .venv/bin/python benchmarks/http_capacity.py [--seconds S] [--runs R] [--connections 1,16,64]
                                                  [--json out.json] [--profile DIR]

Starts each server in its own process, in front of the same upstream (benchmarks/upstream.py):

- bare: `bare_proxy.py --http`, the SDK's low-level `Server` served with
  `streamable_http_app(stateless_http=True, json_response=True)`, no policy, no ledger;
- guard: `mcp-guard serve --http` with the usual argument limits and budget on the tool
  (paths.write_deployment), ledger `durability: normal`, a static key.

Then drives each with wrk (Debian's `wrk`, in a process of its own) and call.lua: 2026-07-28
`tools/call` POSTs with no session, every order id different. The paths take turns at each
connection count, so the machine's noise falls on both alike. Afterwards every call that wrk saw
answered is looked up in the guard's ledger. Without wrk on PATH it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paths
from measure import cpu_s, median

HERE = Path(__file__).resolve().parent
LUA = HERE / "call.lua"
BLOCK = 1_000_000 // 4  # order ids per path: ORD-NNNNNN has a million, the (up to 4) paths share them
STRIDE = 5_000  # order ids per wrk thread and run (call.lua numbers each thread's from its own)
PER_RUN = 2 * STRIDE
WARMUP_TRIES = 5  # wrk runs with at most two threads


def log(text: str) -> None:
    print(f"[http] {text}", file=sys.stderr, flush=True)


@dataclass
class Server:
    key: str
    label: str
    command: list[str]
    port: int
    token: str = "-"
    cwd: Path | None = None
    ledger: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    next_order: int = 0
    ok_ids: list[int] = field(default_factory=list)
    abandoned: int = 0  # requests in flight when a wrk run stopped (they may still be recorded)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, logfile: TextIO) -> None:
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"{self.key}: exited with {self.proc.returncode} before serving (see servers.log)"
                raise RuntimeError(msg)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        msg = f"{self.key}: not serving on port {self.port} after 30 s"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def servers(tmp: Path, budget: bool, compare: Path | None = None, fastmcp: str | None = None) -> list[Server]:
    bare = Server(
        "bare",
        "bare SDK proxy (stateless, JSON responses)",
        [sys.executable, str(paths.BARE_PROXY), "--http", "PORT", "--", *paths.upstream_command()],
        paths.free_port(),
    )
    bare.command[3] = str(bare.port)
    folder = tmp / "guard-http"
    key = "bench-" + secrets.token_urlsafe(32)
    config = paths.write_deployment(folder, budget=budget, http_key=key)
    port = paths.free_port()
    guard = Server(
        "guard",
        "guard, serve --http, limits" + (" + budget" if budget else "") + ", ledger normal",
        paths.guard_command(config, "serve", "--http", f"127.0.0.1:{port}"),
        port,
        token=key,
        cwd=folder,
        ledger=folder / "ledger.db",
    )
    started = [bare, guard]
    if fastmcp is not None:  # fastmcp's proxy as shipped, over HTTP, in its own venv
        port = paths.free_port()
        proxy = [str(paths.fastmcp_python()), str(paths.FASTMCP_PROXY), "--http", str(port)]
        label = f"fastmcp {fastmcp} create_proxy, HTTP stateless, JSON responses"
        started.append(Server("fastmcp", label, [*proxy, "--", *paths.upstream_command()], port))
    if compare is not None:  # the same deployment, served by the mcp_guard package in `compare`
        port = paths.free_port()
        base = Server(
            "base",
            f"guard from {compare.name}, same deployment",
            _guard_from(compare, config, "serve", "--http", f"127.0.0.1:{port}"),
            port,
            token=key,
            cwd=tmp / "guard-base",
            ledger=tmp / "guard-base" / "ledger.db",
        )
        shutil.copytree(folder, tmp / "guard-base")
        started.append(base)
    for n, server in enumerate(started):
        server.next_order = n * BLOCK
    return started


def _guard_from(src: Path, config: Path, *extra: str) -> list[str]:
    """paths.guard_command for the package in `src`, with guard.yaml found relative to the cwd."""
    boot = f"import sys; sys.path.insert(0, {str(src)!r}); "
    boot += "from mcp_guard.cli.main import main; sys.exit(main())"
    return [sys.executable, "-c", boot, "--config", config.name, *extra]


def wrk(server: Server, connections: int, seconds: int, keep: bool) -> dict[str, Any]:
    """One wrk run against `server`; `keep` adds its answered order ids to the server's list."""
    threads = min(2, connections)
    first = server.next_order
    server.next_order += PER_RUN
    if server.next_order % BLOCK < first % BLOCK:
        msg = f"{server.key}: out of order ids (ORD-NNNNNN); use fewer runs"
        raise RuntimeError(msg)
    with tempfile.NamedTemporaryFile("r", suffix=".ids") as ids:
        cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "30s"]
        cmd += ["-s", str(LUA), server.url, "--", str(first), server.token, str(STRIDE)]
        pid = server.proc.pid if server.proc is not None else None
        cpu_before = cpu_s(pid)
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=False, env={**os.environ, "CALL_IDS": ids.name}
        )
        cpu = cpu_s(pid) - cpu_before
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            said = (done.stderr or done.stdout)[-300:]
            msg = f"wrk against {server.key} failed ({done.returncode}): {said}"
            raise RuntimeError(msg)
        result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
        answered = [int(x) for x in ids.read().split()]
    if result["requests"] + connections >= STRIDE:  # a thread may have numbered past its block
        msg = f"{server.key}: {result['requests']} calls in one wrk run overflow its order ids (--seconds)"
        raise RuntimeError(msg)
    if keep:
        server.ok_ids += answered
    server.abandoned += connections
    result["calls_s"] = result["ok"] / (result["duration_us"] / 1e6)
    # The server process's own CPU (all its threads, not the upstream) per answered call: the
    # steadiest number on a shared machine, where calls/s moves with the neighbours' load.
    result["cpu_ms"] = 1000 * cpu / max(1, result["ok"])
    return result


def check_ledger(server: Server) -> dict[str, Any]:
    """Every call wrk saw answered is in the ledger as an allowed decision with an `ok` outcome;
    the ledger may hold a few more (requests in flight when a wrk run stopped)."""
    assert server.ledger is not None
    conn = sqlite3.connect(f"file:{server.ledger}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT d.arguments, d.decision, "
            "EXISTS (SELECT 1 FROM entries AS o WHERE o.call_id = d.call_id AND o.kind = 'outcome' "
            "AND o.outcome = 'ok') FROM entries AS d WHERE d.kind = 'decision' AND d.tool = 'echo'"
        ).fetchall()
    finally:
        conn.close()
    recorded: dict[int, tuple[str, bool]] = {}
    for arguments, decision, ok in rows:
        order = json.loads(arguments).get("order_id", "")
        if order.startswith("ORD-"):
            recorded[int(order[4:])] = (decision, bool(ok))
    answered = set(server.ok_ids)
    missing = [i for i in answered if recorded.get(i) != ("allow", True)]
    extra = len(set(recorded) - answered)
    return {
        "answered_2xx": len(answered),
        "decisions": len(recorded),
        "answered_and_recorded_ok": len(answered) - len(missing),
        "missing": sorted(missing)[:10],
        "recorded_not_answered": extra,
        "ok": not missing and len(answered) == len(server.ok_ids) and extra <= server.abandoned,
    }


def profile(server: Server, connections: int, seconds: int, out: Path) -> None:
    """py-spy the server while wrk loads it (not part of the timings)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        log("--profile: py-spy is not installed in this venv (pip install py-spy)")
        return
    assert server.proc is not None
    cmd = [str(spy), "record", "--pid", str(server.proc.pid), "--rate", "250", "--format", "raw"]
    cmd += ["--output", str(out), "--duration", str(int(seconds) + 1), "--nonblocking"]
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let py-spy attach
    wrk(server, connections, seconds, keep=True)
    spy_proc.wait(60)
    log(f"profile of {server.key} at {connections} connections: {out}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=5, help="length of each wrk run (5)")
    p.add_argument("--runs", type=int, default=2, help="wrk runs per path and connection count; medians (2)")
    p.add_argument(
        "--connections",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[1, 16, 64],
        help="connection counts (1,16,64)",
    )
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per path (3)")
    p.add_argument("--no-budget", action="store_true", help="no budget on the guard's tool")
    p.add_argument("--no-fastmcp", action="store_true", help="leave out fastmcp's proxy over HTTP")
    p.add_argument("--json", metavar="PATH", help="write every result to PATH")
    p.add_argument("--profile", metavar="DIR", help="then py-spy each server under load")
    p.add_argument("--profile-at", type=int, default=16, metavar="N", help="connections while profiling (16)")
    p.add_argument("--tmpdir", help="where the guard's throwaway ledger goes")
    p.add_argument(
        "--compare",
        metavar="DIR",
        help="also a guard from the mcp_guard package in DIR (git archive REV mcp_guard | tar -x -C DIR)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if shutil.which("wrk") is None:
        print("http capacity: skipped: wrk is not on PATH (Debian: apt-get install wrk)")
        return 0
    with tempfile.TemporaryDirectory(prefix="mcp-guard-http-", dir=opts.tmpdir) as tmpname:
        tmp = Path(tmpname)
        budget = not opts.no_budget and paths.budgets_supported(tmp / "probe") is None
        (HERE / "results").mkdir(exist_ok=True)
        with open(HERE / "results" / "http-servers.log", "w", encoding="utf-8") as logfile:
            compare = Path(opts.compare).resolve() if opts.compare else None
            if compare is not None and not (compare / "mcp_guard" / "__init__.py").is_file():
                print(f"http_capacity.py: --compare {opts.compare}: no mcp_guard there", file=sys.stderr)
                return 2
            fastmcp, why_not = (None, "--no-fastmcp") if opts.no_fastmcp else paths.ensure_fastmcp(log)
            if fastmcp is None:
                log(f"fastmcp: not measured: {why_not}")
            started = servers(tmp, budget, compare, fastmcp)
            try:
                for server in list(started):
                    server.start(logfile)
                    log(f"{server.key}: warming up")
                    # A first call may wait for a slow start (an upstream, a catalog) on a busy machine.
                    for _ in range(WARMUP_TRIES):
                        warm = wrk(server, 4, opts.warmup, keep=True)
                        if warm["ok"]:
                            break
                    if warm["ok"] == 0 and server.key == "fastmcp":  # a peer we only compare with
                        log(f"fastmcp: not measured: no call succeeded in the warm-up: {warm['sample']}")
                        server.stop()
                        started.remove(server)
                    elif warm["ok"] == 0:
                        msg = f"{server.key}: no call succeeded in the warm-up: {warm['sample']}"
                        raise RuntimeError(msg)
                samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
                for run in range(opts.runs):
                    for connections in opts.connections:
                        order = started if run % 2 == 0 else started[::-1]
                        for server in order:
                            result = wrk(server, connections, opts.seconds, keep=True)
                            samples.setdefault((server.key, connections), []).append(result)
                            log(
                                f"run {run + 1} {server.key:<6} {connections:>3} conn: "
                                f"{result['calls_s']:7.1f} calls/s  p50 {result['p50_us'] / 1000:.1f} ms  "
                                f"p99 {result['p99_us'] / 1000:.1f} ms  "
                                f"CPU {result['cpu_ms']:.2f} ms/call  bad {result['bad']}"
                            )
                if opts.profile:
                    Path(opts.profile).mkdir(parents=True, exist_ok=True)
                    for server in started:
                        out = Path(opts.profile) / f"http-{server.key}-{opts.profile_at}.txt"
                        profile(server, opts.profile_at, opts.seconds, out)
            finally:
                for server in started:
                    server.stop()
            ledger = {s.key: check_ledger(s) for s in started if s.ledger is not None}
    report = summarise(samples, started, opts, ledger, budget)
    print_report(report)
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0 if all(v["ok"] for v in ledger.values()) else 1


def summarise(
    samples: dict[tuple[str, int], list[dict[str, Any]]],
    started: list[Server],
    opts: argparse.Namespace,
    ledger: dict[str, Any],
    budget: bool,
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for (key, connections), results in samples.items():
        rows.setdefault(key, {})[str(connections)] = {
            "calls_s": median(r["calls_s"] for r in results),
            "p50_ms": median(r["p50_us"] / 1000 for r in results),
            "p99_ms": median(r["p99_us"] / 1000 for r in results),
            "cpu_ms": median(r["cpu_ms"] for r in results),
            "bad": sum(r["bad"] + r["non2xx"] for r in results),
            "runs": results,
        }
    import run as harness

    return {
        "machine": harness.machine(),
        "options": {k: v for k, v in vars(opts).items() if k not in ("json", "tmpdir", "profile", "compare")},
        "labels": {s.key: s.label for s in started},
        "budget": paths.BUDGET if budget else None,
        "paths": rows,
        "ledger": ledger,
    }


def print_report(report: dict[str, Any]) -> None:
    m, rows, opts = report["machine"], report["paths"], report["options"]
    print(f"mcp-guard HTTP capacity  commit {m['commit']}  {m['date']}")
    print(f"{m['cores']} cores, {m['cpu']}, Python {m['python']}, mcp {m['mcp']}")
    print(
        f"wrk, 2026-07-28 tools/call POSTs with no session; {opts['runs']} run(s) of {opts['seconds']:g} s "
        "per path and connection count, medians; ratios are to the bare proxy"
    )
    print()
    print(
        "| path | conns | calls/s | p50 ms | p99 ms | CPU ms/call | calls/s x bare | p50 x bare | p99 x bare "
        "| CPU/call x bare | failed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bare = rows.get("bare", {})
    for key, by_conns in rows.items():
        for connections, row in by_conns.items():
            base = bare.get(connections)
            ratios = (
                f"{row['calls_s'] / base['calls_s']:.2f} | {row['p50_ms'] / base['p50_ms']:.2f} | "
                f"{row['p99_ms'] / base['p99_ms']:.2f} | {row['cpu_ms'] / max(1e-9, base['cpu_ms']):.2f}"
                if base
                else "- | - | - | -"
            )
            print(
                f"| {key} | {connections} | {row['calls_s']:.0f} | {row['p50_ms']:.1f} | "
                f"{row['p99_ms']:.1f} | {row['cpu_ms']:.2f} | {ratios} | {row['bad']} |"
            )
    for key, check in report["ledger"].items():
        verdict = "every answered call recorded" if check["ok"] else "CALLS MISSING"
        print(
            f"\nledger of {key}: {check['answered_and_recorded_ok']}/{check['answered_2xx']} "
            "calls answered 2xx "
            f"are there as allowed decisions with an ok outcome ({verdict}); "
            f"{check['recorded_not_answered']} more recorded that wrk abandoned in flight when a run stopped"
        )
    for key, label in report["labels"].items():
        print(f"- {key}: {label}")


if __name__ == "__main__":
    sys.exit(main())
