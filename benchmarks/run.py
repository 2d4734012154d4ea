"""What the guard costs per call, against a bare SDK proxy and fastmcp's proxy (issue 7).

    .venv/bin/python benchmarks/run.py [--calls N] [--runs R] [--json out.json] [--quick]

Every path is measured in the same run, with the same upstream (benchmarks/upstream.py) and the
same calls, interleaved in rounds so that machine noise falls on all paths alike. Prints a table;
ratios are to the bare proxy (path 2) and are what to compare, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import anyio
import measure
import paths
from mcp import ClientSession
from measure import (
    call_arguments,
    children,
    concurrent,
    cpu_s,
    me,
    median,
    percentile,
    rss_tree_kib,
    sequential,
)
from paths import REPO, Target

RESULTS = Path(__file__).resolve().parent / "results"
LIST_TOOLS = 1000
MEMORY_UPSTREAMS = 5
PROFILED = ("bare", "guard-normal", "guard-full", "guard-http")


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


@dataclass
class Opened:
    target: Target
    session: ClientSession
    pid: int | None  # the process the client talks to (the proxy, or the upstream for `direct`)


async def open_target(stack: AsyncExitStack, target: Target) -> Opened:
    assert target.connect is not None
    before = children(me())
    if target.launch is not None:
        await stack.enter_async_context(target.launch())
    read, write = await stack.enter_async_context(target.connect())
    session = await stack.enter_async_context(ClientSession(read, write, read_timeout_seconds=60))
    with anyio.fail_after(60):
        await session.initialize()
    spawned = sorted(children(me()) - before)
    return Opened(target, session, spawned[0] if spawned else None)


# -- tools/call: latency and throughput --------------------------------------------------------------


def call_targets(
    tmp: Path,
    logfile: TextIO,
    fastmcp: tuple[str | None, str | None],
    budget: bool,
    rules: list[int] = [],  # noqa: B006 - read only
) -> list[Target]:
    """Paths 1 to 6, in table order, then the guard with escalation rules on a ledger of each size
    in `rules` (a copy of one prefilled ledger per size, made once per benchmark)."""
    also = ", budget" if budget else ""
    with_rules = [
        paths.guard_target(
            f"guard-rules-{size}",
            f"guard, requires + unique{also}, {size:,}-entry ledger",
            tmp / f"guard-rules-{size}",
            "normal",
            logfile,
            budget=budget,
            rules=True,
            prefill=size,
        )
        for size in rules
    ]
    return [
        paths.direct_target(logfile),
        paths.bare_target(logfile),
        paths.guard_target(
            "guard-normal",
            f"guard, ledger normal{also}",
            tmp / "guard-normal",
            "normal",
            logfile,
            budget=budget,
        ),
        paths.guard_target(
            "guard-full", f"guard, ledger full{also}", tmp / "guard-full", "full", logfile, budget=budget
        ),
        paths.fastmcp_target(logfile, *fastmcp),
        paths.guard_http_target(
            "guard-http", f"guard, Streamable HTTP, ledger normal{also}", tmp / "guard-http", logfile, budget
        ),
        *with_rules,
    ]


async def measure_calls(
    targets: list[Target], opts: argparse.Namespace, profile_dir: Path | None
) -> dict[str, Any]:
    """One run: every path open at once, warmed up, then measured in interleaved rounds."""
    live = [t for t in targets if t.skip is None]
    block = max(1, opts.calls // opts.rounds)
    out: dict[str, Any] = {
        t.key: {"latencies": [], "seq_s": 0.0, "seq_n": 0, "conc_s": 0.0, "conc_n": 0, "cpu_s": 0.0}
        for t in live
    }
    async with AsyncExitStack() as stack:
        opened: list[Opened] = []
        for target in live:
            try:
                opened.append(await open_target(stack, target))
            except Exception as exc:
                target.skip = f"failed to start: {_first_line(exc)}"
                out.pop(target.key)
                log(f"{target.key}: {target.skip}")
        for o in opened:
            names = {t.name for t in (await o.session.list_tools()).tools}
            if measure.TOOL not in names:
                msg = f"{o.target.key}: no {measure.TOOL!r} tool among {sorted(names)[:5]}"
                raise RuntimeError(msg)
            for name, arguments in o.target.prepare:  # e.g. a prerequisite the benchmark tool requires
                await o.session.call_tool(name, arguments)
            await sequential(o.session, call_arguments(opts.warmup, start=900_000))
            await concurrent(o.session, call_arguments(opts.warmup, start=950_000), opts.width)
            out[o.target.key]["calls"] = 2 * opts.warmup
        for r in range(opts.rounds):
            shift = r % len(opened)
            for o in opened[shift:] + opened[:shift]:
                row = out[o.target.key]
                cpu0 = cpu_s(o.pid)
                lat, wall = await sequential(o.session, call_arguments(block, start=2 * r * block))
                row["latencies"] += lat
                row["seq_s"] += wall
                row["seq_n"] += block
                row["conc_s"] += await concurrent(
                    o.session, call_arguments(block, start=(2 * r + 1) * block), opts.width
                )
                row["cpu_s"] += cpu_s(o.pid) - cpu0
                row["conc_n"] += block
                row["calls"] += 2 * block
            log(f"round {r + 1}/{opts.rounds} done")
        for o in opened:
            if o.pid is not None:
                own, tree = rss_tree_kib(o.pid)
                out[o.target.key]["rss_kib"] = own
                out[o.target.key]["rss_tree_kib"] = tree
        if profile_dir is not None:
            for o in opened:
                if o.target.key in PROFILED and o.pid is not None:
                    out[o.target.key]["calls"] += await profile_block(o, opts, profile_dir)
    results: dict[str, Any] = {}
    for key, row in out.items():
        lat = row["latencies"]
        results[key] = {
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "seq_calls_s": row["seq_n"] / row["seq_s"],
            "conc_calls_s": row["conc_n"] / row["conc_s"],
            "cpu_ms_per_call": row["cpu_s"] * 1000 / (row["seq_n"] + row["conc_n"]),
            "calls_sent": row["calls"],
            "rss_kib": row.get("rss_kib"),
            "rss_tree_kib": row.get("rss_tree_kib"),
        }
    for target in live:  # the guard processes have exited: their ledgers are complete
        if target.ledger is not None and target.key in results:
            sent = results[target.key]["calls_sent"]
            results[target.key]["ledger"] = count_ledger(target.ledger, sent, target.ledger_after)
    return results


async def profile_block(o: Opened, opts: argparse.Namespace, profile_dir: Path) -> int:
    """A sequential block under py-spy (not part of the timings); returns the calls sent."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        log("--profile: py-spy is not installed in this venv (pip install py-spy)")
        return 0
    out = profile_dir / f"{o.target.key}.txt"
    cmd = [str(spy), "record", "--pid", str(o.pid), "--rate", "500", "--format", "raw", "--output", str(out)]
    async with await anyio.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        await anyio.sleep(1.0)  # let py-spy attach
        await sequential(o.session, call_arguments(opts.calls, start=500_000))
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        with anyio.fail_after(60):
            await proc.wait()
    log(f"profile of {o.target.key}: {out}")
    return int(opts.calls)


def count_ledger(path: Path, sent: int, after: int = 0) -> dict[str, Any]:
    """Allowed decisions of the benchmark tool after entry `after` that have an `ok` outcome,
    against the calls the benchmark sent."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            mine = f"d.kind = 'decision' AND d.decision = 'allow' AND d.tool = '{measure.TOOL}' AND d.id > ?"
            decisions = conn.execute(f"SELECT count(*) FROM entries AS d WHERE {mine}", (after,)).fetchone()[
                0
            ]
            complete = conn.execute(
                f"SELECT count(*) FROM entries AS d WHERE {mine} "
                "AND EXISTS (SELECT 1 FROM entries AS o WHERE o.call_id = d.call_id AND o.kind = 'outcome' "
                "AND o.outcome = 'ok')",
                (after,),
            ).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return {"ok": False, "problem": str(exc), "sent": sent}
    return {
        "ok": decisions == sent and complete == sent,
        "sent": sent,
        "decisions": decisions,
        "with_outcome": complete,
    }


# -- tools/list with a 1,000-tool upstream -----------------------------------------------------------


async def measure_list(
    tmp: Path, logfile: TextIO, fastmcp: tuple[str | None, str | None], repeats: int
) -> dict[str, Any]:
    targets = [
        paths.direct_target(logfile, tools=LIST_TOOLS),
        paths.bare_target(logfile, tools=LIST_TOOLS),
        paths.guard_target(
            "guard-normal", "guard, ledger normal", tmp / "list-guard", "normal", logfile, LIST_TOOLS
        ),
        paths.fastmcp_target(logfile, *fastmcp, tools=LIST_TOOLS),
    ]
    results: dict[str, Any] = {}
    samples: dict[str, list[float]] = {}
    async with AsyncExitStack() as stack:
        opened: list[Opened] = []
        for target in targets:
            if target.skip is not None:
                continue
            try:
                opened.append(await open_target(stack, target))
            except Exception as exc:
                results[target.key] = {"error": _first_line(exc)}
        for o in opened:  # the first listing: the guard builds its catalog and validators here
            t0 = time.perf_counter()
            listed = await o.session.list_tools()
            first = (time.perf_counter() - t0) * 1000
            results[o.target.key] = {"tools": len(listed.tools), "first_ms": first}
            samples[o.target.key] = []
        for _ in range(repeats):
            for o in opened:
                t0 = time.perf_counter()
                await o.session.list_tools()
                samples[o.target.key].append((time.perf_counter() - t0) * 1000)
    for key, values in samples.items():
        results[key]["p50_ms"] = median(values)
    return results


def list_medians(
    tmp: Path, logfile: TextIO, fastmcp: tuple[str | None, str | None], opts: argparse.Namespace
) -> dict[str, Any]:
    """measure_list on fresh processes (and a fresh ledger) once per run: a first listing is one
    sample, and one sample on a shared machine says little. Medians per path."""
    starts = [
        anyio.run(measure_list, tmp / f"list{i}", logfile, fastmcp, opts.list_repeats)
        for i in range(opts.runs)
    ]
    out: dict[str, Any] = {}
    for key, row in starts[0].items():
        rows = [s.get(key, {}) for s in starts]
        if any("error" in r or "first_ms" not in r for r in rows):
            out[key] = next((r for r in rows if "error" in r), {"error": "not measured in every start"})
            continue
        out[key] = {
            "tools": row["tools"],
            "first_ms": median(r["first_ms"] for r in rows),
            "p50_ms": median(r["p50_ms"] for r in rows),
            "starts": len(rows),
        }
    return out


# -- memory of the guard with five upstreams -----------------------------------------------------------


async def measure_memory(tmp: Path, logfile: TextIO) -> dict[str, Any]:
    config = paths.write_deployment(tmp / "memory", upstreams=MEMORY_UPSTREAMS)
    command = paths.guard_command(config, "serve", "--agent", paths.AGENT)
    target = paths.stdio_target("guard-5", "guard, 5 upstreams", command, logfile, cwd=config.parent)
    async with AsyncExitStack() as stack:
        o = await open_target(stack, target)
        names = sorted(t.name for t in (await o.session.list_tools()).tools)
        for name in names:
            for args in call_arguments(50):
                await o.session.call_tool(name, args)
        await anyio.sleep(0.5)
        assert o.pid is not None
        own, tree = rss_tree_kib(o.pid)
        upstreams = len(measure.descendants(o.pid))
    return {
        "tools": names,
        "guard_rss_kib": own,
        "with_upstreams_rss_kib": tree,
        "upstream_processes": upstreams,
    }


# -- ledger verify ---------------------------------------------------------------------------------------


def measure_verify(tmp: Path, entries: int, repeats: int) -> dict[str, Any]:
    """Build a ledger of `entries` entries (half decisions, half outcomes) and time its verify."""
    from mcp_guard.ledger.sqlite.store import CallRecord, Ledger

    folder = tmp / "verify"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ledger.db"
    log(f"building a ledger of {entries:,} entries (one transaction per entry, as the guard writes)")
    began = time.perf_counter()
    with Ledger.open(path, "normal") as ledger:
        for i in range(entries // 2):
            call_id = f"{i:032x}"
            args = call_arguments(1, start=i)[0]
            ledger.record_decision(
                CallRecord(
                    call_id, paths.AGENT, "session-1", "bench", "echo", args, "allow", None, None, "0" * 64
                )
            )
            ledger.record_outcome(call_id, "ok", 1.5)
    build_s = time.perf_counter() - began
    times = []
    result: Any = None
    for _ in range(repeats):
        with Ledger.open_readonly(path) as ledger:
            t0 = time.perf_counter()
            result = ledger.verify()
            times.append(time.perf_counter() - t0)
    verify_s = median(times)
    out: dict[str, Any] = {
        "entries": entries,
        "ok": bool(result.ok) and result.entries == 2 * (entries // 2),
        "append_entries_s": entries / build_s,
        "verify_s": verify_s,
        "verify_entries_s": result.entries / verify_s,
    }
    config = folder / "guard.yaml"
    config.write_text(
        json.dumps({"manifests": ".", "ledger": {"path": "ledger.db"}}) + "\n", encoding="utf-8"
    )
    config.chmod(0o644)
    t0 = time.perf_counter()
    done = subprocess.run(
        paths.guard_command(config, "ledger", "verify"), capture_output=True, text=True, check=False
    )
    out["cli_s"] = time.perf_counter() - t0
    out["cli_exit"] = done.returncode
    out["cli_output"] = (
        (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:][0][:200]
        if (done.stdout or done.stderr)
        else ""
    )
    return out


# -- the report ------------------------------------------------------------------------------------------


METRICS = ("p50_ms", "p99_ms", "seq_calls_s", "conc_calls_s", "cpu_ms_per_call")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of each metric and of each per-run ratio to the bare proxy."""
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    out: dict[str, Any] = {}
    for key in keys:
        row: dict[str, Any] = {m: median(r[key][m] for r in runs) for m in METRICS}
        if all("bare" in r for r in runs):
            for m in METRICS:
                row[f"{m}_x_bare"] = median(r[key][m] / r["bare"][m] for r in runs)
        for m in ("rss_kib", "rss_tree_kib"):
            values = [r[key].get(m) for r in runs if r[key].get(m)]
            row[m] = median(values) if values else None
        ledgers = [r[key]["ledger"] for r in runs if "ledger" in r[key]]
        if ledgers:
            row["ledger_ok"] = all(x["ok"] for x in ledgers)
            row["ledger"] = ledgers
        out[key] = row
    return out


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(targets: list[Target], summary: dict[str, Any]) -> list[str]:
    head = (
        "| path | p50 x bare | p99 x bare | seq calls/s x bare | 8-in-flight calls/s x bare "
        "| CPU/call x bare | p50 ms | p99 ms | seq calls/s | 8-in-flight calls/s | CPU ms/call | RSS MiB |"
    )
    lines = [head, "|" + "---|" * 12]
    for n, t in enumerate(targets, 1):
        name = f"{n}. {t.label}"
        row = summary.get(t.key)
        if row is None:
            lines.append(f"| {name} | {t.skip or 'not measured'} |" + " |" * 10)
            continue
        rss = row.get("rss_kib")
        ratios = [fmt(row.get(f"{m}_x_bare")) for m in METRICS]
        values = [fmt(row["p50_ms"]), fmt(row["p99_ms"]), fmt(row["seq_calls_s"], ".0f")]
        values += [fmt(row["conc_calls_s"], ".0f"), fmt(row["cpu_ms_per_call"])]
        values.append(fmt(rss / 1024 if rss else None, ".1f"))
        lines.append(f"| {name} | {' | '.join(ratios)} | {' | '.join(values)} |")
    return lines


def verdicts(
    summary: dict[str, Any], listing: dict[str, Any] | None, verify: dict[str, Any] | None
) -> list[str]:
    """The targets of issue 7, each met or not."""
    out: list[str] = []

    def line(ok: bool | None, text: str) -> None:
        out.append(f"- [{'met' if ok else 'NOT met' if ok is not None else 'n/a'}] {text}")

    g, b, f = summary.get("guard-normal"), summary.get("bare"), summary.get("fastmcp")
    if g and b:
        x = g["p50_ms_x_bare"]
        line(x <= 1.15, f"guard (ledger normal) p50 <= 1.15 x bare proxy: {x:.2f} x")
        x = g["conc_calls_s_x_bare"]
        ok = x >= 0.8 and bool(g.get("ledger_ok"))
        line(
            ok,
            f"8 in flight through the guard >= 0.8 x bare throughput: {x:.2f} x; "
            f"every call in the ledger: {g.get('ledger_ok')}",
        )
    if g and f:
        x = g["p50_ms"] / f["p50_ms"]
        line(x < 1, f"guard p50 faster than fastmcp's proxy: guard p50 = {x:.2f} x fastmcp p50")
    elif g:
        line(None, "guard faster than fastmcp's proxy: fastmcp not measured")
    if listing and "p50_ms" in listing.get("guard-normal", {}) and "p50_ms" in listing.get("bare", {}):
        # A stdio guard serves one agent session, so the first listing is the one every session pays.
        gl, bl = listing["guard-normal"], listing["bare"]
        first, warm = gl["first_ms"] - bl["first_ms"], gl["p50_ms"] - bl["p50_ms"]
        line(
            first < 50,
            f"tools/list of {LIST_TOOLS:,} tools < 50 ms over bare: first listing {first:+.0f} ms "
            f"(later listings {warm:+.0f} ms: the guard caches what the bare proxy fetches again)",
        )
    if verify and "verify_entries_s" in verify:
        rate = verify["verify_entries_s"]
        line(rate >= 100_000 and verify["ok"], f"ledger verify >= 100,000 entries/s: {rate:,.0f} entries/s")
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    with suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    from importlib.metadata import version

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "mcp_guard_dirty": bool(git("status", "--porcelain", "--", "mcp_guard")),
        "guard_src": str(paths.GUARD_SRC) if paths.GUARD_SRC else None,
        "cpu": cpu,
        "cores": _cores(),
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "platform": platform.platform(terse=True),
    }


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _first_line(exc.exceptions[0])
    return (str(exc) or type(exc).__name__).splitlines()[0][:200]


# -- main --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--calls", type=int, help="tools/call per path per run, sequential and again 8 in flight (2000)"
    )
    p.add_argument(
        "--runs", type=int, help="repeat the tools/call measurement with fresh processes; medians (3)"
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds per run (4)")
    p.add_argument("--warmup", type=int, help="warm-up calls per path before measuring (100)")
    p.add_argument("--width", type=int, default=8, help="calls in flight at once (8)")
    p.add_argument("--list-repeats", type=int, help="tools/list repetitions (20)")
    p.add_argument("--verify-entries", type=int, help="ledger size for `ledger verify` (100000)")
    p.add_argument("--quick", action="store_true", help="few calls: a smoke check of every part")
    p.add_argument("--json", metavar="PATH", help="write every result to PATH")
    p.add_argument("--no-fastmcp", action="store_true", help="skip path 5 (no venv, no install)")
    p.add_argument("--only-calls", action="store_true", help="skip tools/list, memory and ledger verify")
    p.add_argument(
        "--profile", metavar="DIR", help="after the timings, py-spy the proxies for one more block"
    )
    p.add_argument("--no-budget", action="store_true", help="no budget on the guard's tool even if supported")
    p.add_argument(
        "--guard-src", metavar="DIR", help="run the mcp_guard package in DIR (e.g. a `git archive`)"
    )
    p.add_argument("--tmpdir", help="where the throwaway ledgers go (default: the system temp dir)")
    p.add_argument(
        "--http-capacity",
        action="store_true",
        help="then HTTP capacity with wrk (http_capacity.py): bare, fastmcp and the guard at 1, 16 and 64 "
        "connections",
    )
    p.add_argument(
        "--rules",
        metavar="SIZES",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[],
        help="also the guard with `requires` and `unique`, on prefilled ledgers of SIZES: 10000,1000000",
    )
    opts = p.parse_args(argv)
    defaults = (
        {"calls": 200, "runs": 1, "rounds": 2, "warmup": 20, "list_repeats": 3, "verify_entries": 5000}
        if opts.quick
        else {
            "calls": 2000,
            "runs": 3,
            "rounds": 4,
            "warmup": 100,
            "list_repeats": 20,
            "verify_entries": 100_000,
        }
    )
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.guard_src:
        paths.GUARD_SRC = Path(opts.guard_src).resolve()
        if not (paths.GUARD_SRC / "mcp_guard" / "__init__.py").is_file():
            print(f"run.py: --guard-src {opts.guard_src}: no mcp_guard package there", file=sys.stderr)
            return 2
        sys.path.insert(0, str(paths.GUARD_SRC))
    report: dict[str, Any] = {
        "machine": machine(),
        "options": {k: v for k, v in vars(opts).items() if k not in ("json", "tmpdir")},
    }
    with tempfile.TemporaryDirectory(prefix="mcp-guard-bench-", dir=opts.tmpdir) as probe:
        refused = paths.budgets_supported(Path(probe))
    budget = refused is None and not opts.no_budget
    if opts.no_budget:
        refused = "--no-budget"
    notes = [
        "paths 3, 4 and 6: the guard enforces an argument limit (order_id pattern, amount bound)"
        + (
            f" and a budget {json.dumps(paths.BUDGET)} that no run exhausts"
            if budget
            else f"; no budget ({refused}): budgets are issue 5"
        ),
        "path 6 is compared with path 2 over stdio, as issue 7 asks (there is no bare HTTP proxy here)",
        "RSS and CPU: of the process the client talks to (the proxy; the upstream itself for path 1), "
        "without its children; CPU per call is user + system time over the measured calls, all threads",
    ]
    fastmcp: tuple[str | None, str | None] = (None, "skipped (--no-fastmcp)")
    if not opts.no_fastmcp:
        fastmcp = paths.ensure_fastmcp(log)
    with tempfile.TemporaryDirectory(prefix="mcp-guard-bench-", dir=opts.tmpdir) as tmpname:
        tmp = Path(tmpname)
        RESULTS.mkdir(exist_ok=True)
        with open(RESULTS / "servers.log", "w", encoding="utf-8") as logfile:  # the servers' stderr
            runs = []
            targets: list[Target] = []
            for run in range(opts.runs):
                log(f"run {run + 1}/{opts.runs}: {opts.calls} calls per path, 1 and {opts.width} at once")
                targets = call_targets(tmp / f"run{run}", logfile, fastmcp, budget, opts.rules)
                last = run == opts.runs - 1
                profile_dir = Path(opts.profile) if opts.profile and last else None
                if profile_dir is not None:
                    profile_dir.mkdir(parents=True, exist_ok=True)
                runs.append(anyio.run(measure_calls, targets, opts, profile_dir))
            summary = summarise(runs)
            report["paths"] = {"summary": summary, "runs": runs, "labels": {t.key: t.label for t in targets}}
            report["skipped"] = {t.key: t.skip for t in targets if t.skip}
            report["budget"] = paths.BUDGET if budget else None
            listing = memory = verify = None
            if not opts.only_calls:
                log(f"tools/list with {LIST_TOOLS:,} tools")
                listing = _guarded(lambda: list_medians(tmp, logfile, fastmcp, opts))
                log(f"memory of the guard with {MEMORY_UPSTREAMS} upstreams")
                memory = _guarded(lambda: anyio.run(measure_memory, tmp, logfile))
                verify = _guarded(lambda: measure_verify(tmp, opts.verify_entries, 3))
            report.update(tools_list=listing, memory=memory, ledger_verify=verify)
    report["notes"] = notes
    report["targets"] = verdicts(summary, listing, verify)
    print_report(report, targets, opts)
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        log(f"wrote {opts.json}")
    if opts.http_capacity:  # calls per second at capacity, over HTTP (issue 19)
        import http_capacity

        print()
        extra = ["--seconds", "2", "--runs", "1"] if opts.quick else []
        extra += ["--no-fastmcp"] if opts.no_fastmcp else []
        extra += ["--no-budget"] if opts.no_budget else []
        extra += ["--tmpdir", opts.tmpdir] if opts.tmpdir else []
        extra += ["--json", str(Path(opts.json).with_suffix(".http.json"))] if opts.json else []
        return http_capacity.main(extra)
    return 0


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as exc:
        log(f"failed: {_first_line(exc)}")
        return {"error": _first_line(exc)}


def print_report(report: dict[str, Any], targets: list[Target], opts: argparse.Namespace) -> None:
    m = report["machine"]
    summary = report["paths"]["summary"]
    dirty = " (mcp_guard modified)" if m["mcp_guard_dirty"] else ""
    if m["guard_src"]:
        dirty = f"; mcp_guard from {m['guard_src']}"
    print(f"mcp-guard benchmark  commit {m['commit']}{dirty}  {m['date']}")
    print(f"{m['cores']} cores, {m['cpu']}, Python {m['python']}, mcp {m['mcp']}")
    print(
        f"tools/call: {opts.calls} calls per path per run (sequential, and again {opts.width} in flight "
        "over one session), "
        f"{opts.runs} run(s) of {opts.rounds} interleaved rounds, medians over runs; ratios are to path 2"
    )
    print()
    print("\n".join(table(targets, summary)))
    for key in [t.key for t in targets if t.ledger is not None]:
        row = summary.get(key)
        if row and "ledger" in row:
            counts = ", ".join(f"{x.get('with_outcome', '?')}/{x['sent']}" for x in row["ledger"])
            print(
                f"ledger of {key}: calls recorded with their outcome / calls sent, per run: {counts} -> "
                f"{'every call recorded' if row['ledger_ok'] else 'CALLS MISSING'}"
            )
    listing = report.get("tools_list")
    if listing:
        print()
        if "error" in listing:
            print(f"tools/list with {LIST_TOOLS:,} tools: error: {listing['error']}")
        else:
            bare = listing.get("bare", {})
            print(
                f"tools/list with {LIST_TOOLS:,} tools (first listing, then median of {opts.list_repeats}; "
                f"medians over {opts.runs} fresh starts):"
            )
            for key, row in listing.items():
                if "error" in row:
                    print(f"  {key:<14} error: {row['error']}")
                    continue
                extra = ""
                if "p50_ms" in bare and key != "bare":
                    first, then = row["first_ms"] - bare["first_ms"], row["p50_ms"] - bare["p50_ms"]
                    extra = f"  ({first:+.1f} / {then:+.1f} ms over bare)"
                times = f"first {row['first_ms']:.1f} ms  then {row['p50_ms']:.1f} ms"
                print(f"  {key:<14} {row['tools']} tools  {times}{extra}")
    memory = report.get("memory")
    if memory:
        if "error" in memory:
            print(f"\nmemory: error: {memory['error']}")
        else:
            print(
                f"\nmemory of the guard with {MEMORY_UPSTREAMS} upstreams after 50 calls to each: "
                f"guard process {memory['guard_rss_kib'] / 1024:.1f} MiB VmRSS (children excluded); "
                f"with its {memory['upstream_processes']} upstream processes "
                f"{memory['with_upstreams_rss_kib'] / 1024:.1f} MiB"
            )
    verify = report.get("ledger_verify")
    if verify:
        if "error" in verify:
            print(f"\nledger verify: error: {verify['error']}")
        else:
            print(
                f"\nledger verify of {verify['entries']:,} entries: "
                f"{verify['verify_entries_s']:,.0f} entries/s "
                f"in-process ({'ok' if verify['ok'] else 'NOT ok'}); `mcp-guard ledger verify` "
                f"{verify['cli_s']:.2f} s wall, exit {verify['cli_exit']} ({verify['cli_output']}); "
                f"appending them: {verify['append_entries_s']:,.0f} entries/s"
            )
    print()
    print("targets of issue 7:")
    print("\n".join(report["targets"]))
    print()
    print("notes:")
    for note in report["notes"]:
        print(f"- {note}")
    for key, why in report.get("skipped", {}).items():
        print(f"- {key}: {why}")


if __name__ == "__main__":
    sys.exit(main())
