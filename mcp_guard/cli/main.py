"""The `mcp-guard` command: thin commands over the modules. Exit codes: 0 ok, 1 the check
failed or a runtime error, 2 bad usage or bad config (one line on stderr, no traceback)."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError

from mcp_guard import __version__
from mcp_guard.cli import surfaces
from mcp_guard.cli.approvals import add_approvals_parser, run_approvals
from mcp_guard.cli.grants import add_grants_parsers, run_agent_key, run_agents, run_grants
from mcp_guard.cli.ledger import add_ledger_parser, run_ledger
from mcp_guard.config import GuardConfig, LedgerConfig, find_config, load_config, load_ledger_config
from mcp_guard.errors import ConfigError, GuardError, ListenError, UsageError
from mcp_guard.ledger.checkpoints import signing_key
from mcp_guard.logs import use_format
from mcp_guard.manifest import Manifest, Upstream, load_deployment
from mcp_guard.policy.engine import Agent, Policy
from mcp_guard.wire import StrictJSONError, parse_strict


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcp-guard", description="An MCP guard between AI agents and their tools."
    )
    p.add_argument("--version", action="version", version=f"mcp-guard {__version__}")
    p.add_argument("--config", help="guard.yaml (default: $MCP_GUARD_CONFIG, else ./guard.yaml)")
    p.add_argument(
        "--ledger",
        metavar="PATH|URL",
        help="for `ledger` and `approvals`: this ledger file or postgresql:// URL, no guard.yaml needed",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve over stdio (default) or Streamable HTTP")
    s.add_argument("--agent", help="the agent this stdio guard serves (default: $MCP_GUARD_AGENT)")
    s.add_argument("--http", metavar="[HOST:]PORT", nargs="?", const="", help="serve Streamable HTTP at /mcp")
    s.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="stderr: text or JSON lines"
    )

    c = sub.add_parser("check", help="validate config and manifests")
    c.add_argument("--live", action="store_true", help="also start each upstream and check against it")

    t = sub.add_parser("tools", help="the tools an agent would be shown, with their effective limits")
    t.add_argument("--agent", required=True, help="the agent, as named in guard.yaml")
    t.add_argument("--json", action="store_true", help="one JSON object per tool")

    surfaces.register(sub)
    e = sub.add_parser("explain", help="the decision for one call and why; forwards and writes nothing")
    e.add_argument("--agent", required=True, help="the agent, as named in guard.yaml")
    e.add_argument("tool", help="the advertised tool or prompt name (billing__refund), or a resource URI")
    e.add_argument("arguments", help="the arguments as a JSON object")

    mf = sub.add_parser("manifest", help="tool owners' manifest helpers")
    mf_sub = mf.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    mf_sub.add_parser("schema", help="print the manifest format as JSON Schema (for editors)")
    mi = mf_sub.add_parser(
        "init",
        help="print a starter manifest for a live upstream: every tool listed, granted to nobody",
        usage="mcp-guard manifest init (--url URL [--header K:V ...] | -- COMMAND ...)",
    )
    mi.add_argument("--url", help="a Streamable HTTP upstream")
    mi.add_argument("--header", action="append", default=[], metavar="K:V", help="an HTTP header for --url")
    mi.add_argument(
        "upstream_command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="a stdio upstream to start",
    )
    ml = mf_sub.add_parser("lock", help="write <server>.lock (pinned definitions) from the live upstreams")
    ml.add_argument("server", nargs="?", metavar="SERVER", help="only this server (default: every one)")
    md = mf_sub.add_parser("diff", help="what changed in the live upstreams since their tools were pinned")
    md.add_argument("server", nargs="?", metavar="SERVER", help="only this server (default: every one)")

    add_ledger_parser(sub)
    add_approvals_parser(sub)
    add_grants_parsers(sub)
    sub.add_parser("demo", help="a scripted agent session against the bundled example upstreams")

    a = sub.add_parser("agent", help="agent credentials for HTTP")
    a_sub = a.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    k = a_sub.add_parser("key", help="print a new random API key once, and the sha256: line for guard.yaml")
    k.add_argument("name", metavar="NAME", help="the agent the key is for")

    tk = sub.add_parser("token", help="short-lived signed tokens for HTTP")
    tk_sub = tk.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    ti = tk_sub.add_parser("issue", help="print a short-lived signed token for an agent")
    ti.add_argument("--agent", required=True, help="the agent the token names (its sub)")
    ti.add_argument("--ttl", help="lifetime: 30s, 15m, 1h (default 15m, at most tokens.max_ttl)")
    tr = tk_sub.add_parser("revoke", help="refuse a token id (jti) from now on, in every guard on the ledger")
    tr.add_argument("jti", metavar="JTI")
    _everywhere(p, "--config", help="guard.yaml (also accepted before the command)")
    _everywhere(
        p, "--ledger", metavar="PATH|URL", help="a ledger file or URL (also accepted before the command)"
    )
    return p


def _everywhere(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Accept a global option after any subcommand too; given there, it wins over the global one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if flag not in sub._option_string_actions:
                    sub.add_argument(flag, default=argparse.SUPPRESS, **kwargs)
                _everywhere(sub, flag, **kwargs)


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 manifest`, `2 manifests`."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def load(args: argparse.Namespace, *, serving: bool = False) -> tuple[GuardConfig, tuple[Manifest, ...]]:
    """guard.yaml and the manifests. A command that does not serve needs no variable that only a
    serving guard uses (a signing key): `check` names each one not set here; others say nothing."""
    missing: dict[str, str] | None = None if serving else {}
    found = load_deployment(find_config(args.config), missing)
    if args.command == "check":
        for where, name in (missing or {}).items():
            note = f"environment variable {name!r} is not set here; `serve` needs it"
            print(f"warning: {found[0].source}:{where}: {note}", file=sys.stderr)
    return found


def agent_of(config: GuardConfig, policy: Policy, name: str | None) -> Agent:
    name = name or os.environ.get("MCP_GUARD_AGENT")
    if not name:
        msg = "serve: give --agent NAME (or set MCP_GUARD_AGENT)"
        raise UsageError(msg)
    if name not in policy.agents:
        msg = f"agent {name!r} is not defined in {config.source}"
        raise UsageError(msg)
    return policy.agents[name]


def cmd_serve(args: argparse.Namespace) -> int:
    from mcp_guard.guard.app import open_guard
    from mcp_guard.guard.caller import Caller
    from mcp_guard.guard.reload import watch
    from mcp_guard.transports import stop_on_signal
    from mcp_guard.transports.stdio import serve_stdio

    use_format(args.log_format)
    config, manifests = load(args, serving=True)
    if args.http is not None:
        if args.agent:
            msg = "serve: --agent is for stdio; over HTTP each request's credential names its agent"
            raise UsageError(msg)
        return _serve_http(config, manifests, args.http or config.http.listen)
    agent = agent_of(config, Policy(config, manifests), args.agent)

    async def run() -> None:
        async with (
            open_guard(config, manifests, (agent.name,), owns_process=True) as guard,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(watch, guard)  # live reload, for as long as the guard serves
            tg.start_soon(stop_on_signal, tg.cancel_scope.cancel)
            await serve_stdio(Caller(guard, agent.name))
            tg.cancel_scope.cancel()

    anyio.run(run)
    return 0


def _serve_http(config: GuardConfig, manifests: tuple[Manifest, ...], listen: str) -> int:
    """Every agent over one HTTP listener; identity comes from each request's credential."""
    from mcp_guard.guard.app import open_guard
    from mcp_guard.guard.reload import watch
    from mcp_guard.transports.http import bind, parse_listen, serve_http

    try:
        host, port = parse_listen(listen)
    except ListenError as exc:
        msg = f"serve --http: {exc}"
        raise UsageError(msg) from None
    sock = bind(host, port)

    async def run() -> None:
        async with open_guard(config, manifests, owns_process=True) as guard, anyio.create_task_group() as tg:
            tg.start_soon(watch, guard)  # live reload, for as long as the guard serves
            await serve_http(guard, sock)
            tg.cancel_scope.cancel()

    anyio.run(run)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from mcp_guard.cli.tokens import run_issue, run_revoke

    config = load_config(find_config(args.config))
    return (run_revoke if args.token_command == "revoke" else run_issue)(args, config)  # noqa: S105


def cmd_check(args: argparse.Namespace) -> int:
    config, manifests = load(args)
    if config.ledger.checkpoints is not None:  # what would stop `serve` from starting
        signing_key(config.ledger.checkpoints)
    known = set(config.agents)
    roles = {r for a in config.agents.values() for r in a.roles}
    for m in manifests:
        for tool, grants in m.tools.items():
            for i, grant in enumerate(grants):
                for who in grant.allow:
                    undefined = who.removeprefix("role:") not in (roles if who.startswith("role:") else known)
                    if who != "*" and undefined:
                        print(
                            f"warning: {m.source}:tools.{tool}[{i}].allow: {who!r} is not defined",
                            file=sys.stderr,
                        )
    from mcp_guard.cli.tokens import oauth_warnings

    for warning in oauth_warnings(config):
        print(warning, file=sys.stderr)
    tools = sum(len(m.tools) for m in manifests)
    if args.live:
        from mcp_guard.cli.manifest import check_live

        problems = check_live(config, manifests)
        for problem in problems:
            print(problem)
        if problems:
            print(f"mcp-guard: check --live: {plural(len(problems), 'problem')}", file=sys.stderr)
            return 1
        fit = "matches its live upstream" if len(manifests) == 1 else "match their live upstreams"
        print(f"ok: {config.source}: {plural(len(manifests), 'manifest')} {fit} ({plural(tools, 'tool')})")
        return 0
    counts = [plural(len(config.agents), "agent"), plural(len(manifests), "manifest"), plural(tools, "tool")]
    print(f"ok: {config.source}: {', '.join(counts)}")
    return 0


def cmd_tools(args: argparse.Namespace) -> int:
    from mcp_guard.cli.preview import load_preview, print_tools

    config, manifests = load(args)
    agent = agent_of(config, Policy(config, manifests), args.agent)
    print_tools(load_preview(config, manifests, agent), config, args.json)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from mcp_guard.cli.preview import explain, load_preview

    config, manifests = load(args)
    try:
        arguments = parse_strict(args.arguments.encode(), config.limits.max_message_bytes)
    except StrictJSONError as exc:
        msg = f"explain: ARGS_JSON: {exc}"
        raise UsageError(msg) from None
    if not isinstance(arguments, dict):
        msg = "explain: ARGS_JSON must be a JSON object"
        raise UsageError(msg)
    agent = agent_of(config, Policy(config, manifests), args.agent)
    if surfaces.is_surface(manifests, args.tool):
        allowed, line = surfaces.explain_surface(config, manifests, agent, args.tool, arguments)
        print(line)
        return 0 if allowed else 1
    preview = load_preview(config, manifests, agent)
    allowed, line = explain(preview, config, args.tool, arguments)
    print(line)
    near = difflib.get_close_matches(args.tool, list(preview.offers), n=1, cutoff=0.75)
    if near and args.tool not in preview.offers:
        print(f"mcp-guard: did you mean {near[0]}? ({agent.name} is shown that tool)", file=sys.stderr)
    return 0 if allowed else 1


def _servers(args: argparse.Namespace) -> tuple[GuardConfig, tuple[Manifest, ...]]:
    config, manifests = load(args)
    if args.server is not None:
        manifests = tuple(m for m in manifests if m.server == args.server)
        if not manifests:
            msg = f"manifest {args.manifest_command}: no manifest defines server {args.server!r}"
            raise UsageError(msg)
    return config, manifests


def cmd_manifest(args: argparse.Namespace) -> int:
    from mcp_guard.cli import manifest as manifest_tools

    if args.manifest_command in ("lock", "diff"):
        from mcp_guard.cli.diff import run_diff, run_lock

        return (run_lock if args.manifest_command == "lock" else run_diff)(*_servers(args))
    if args.manifest_command == "schema":
        print(manifest_tools.render_schema(), end="")
        return 0
    command = list(args.upstream_command)
    if command and command[0] == "--":
        command = command[1:]
    if (args.url is None) == (not command):
        msg = "manifest init: give either --url URL or -- COMMAND ..., not both or neither"
        raise UsageError(msg)
    if args.header and args.url is None:
        msg = "manifest init: --header goes with --url"
        raise UsageError(msg)
    headers: dict[str, str] = {}
    for header in args.header:
        key, colon, value = header.partition(":")
        if not colon or not key.strip():
            msg = f"manifest init: --header {header!r} must be NAME:VALUE"
            raise UsageError(msg)
        headers[key.strip()] = value.strip()
    try:
        if args.url is not None:
            upstream = Upstream(url=args.url, headers=headers)
        else:
            upstream = Upstream(command=command[0], args=tuple(command[1:]))
    except ValidationError as exc:
        reason = str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
        msg = f"manifest init: {reason}"
        raise UsageError(msg) from None
    print(manifest_tools.init_manifest(upstream, dict(os.environ)), end="")
    server = manifest_tools.server_name(upstream.command, upstream.args, upstream.url)
    for header, (_, variable) in manifest_tools.header_variables(server, headers).items():
        note = f"set {variable} where the guard runs: the manifest reads header {header!r} from it"
        print(f"mcp-guard: {note}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mcp_guard.cli.demo import run_demo

    return run_demo()


COMMANDS = {
    "serve": cmd_serve,
    "check": cmd_check,
    "tools": cmd_tools,
    "explain": cmd_explain,
    "reads": lambda args: surfaces.cmd_reads(*load(args), args, agent_of),
    "demo": cmd_demo,
    "manifest": cmd_manifest,
    "agent": lambda args: run_agent_key(args, find_config(args.config)),
    "token": cmd_token,
}


def _ledger_at(given: str) -> LedgerConfig:
    """--ledger: a ledger file's path, or a PostgreSQL ledger's URL."""
    if given.startswith(("postgresql://", "postgres://")):
        return LedgerConfig(url=given)
    return LedgerConfig(path=Path(given))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "ledger" and args.ledger_command == "keygen":
            return run_ledger(args, LedgerConfig())  # needs no guard.yaml
        if args.command in ("ledger", "approvals"):
            ledger = _ledger_at(args.ledger) if args.ledger else load_ledger_config(find_config(args.config))
            run = run_ledger if args.command == "ledger" else run_approvals
            return int(run(args, ledger))
        if args.command == "grants":
            return run_grants(args, *load(args))
        if args.command == "agents":
            return run_agents(args, load_config(find_config(args.config), {}))
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError) as exc:
        print(f"mcp-guard: {exc}", file=sys.stderr)
        return 2
    except GuardError as exc:
        print(f"mcp-guard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
