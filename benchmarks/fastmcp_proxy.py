"""fastmcp's proxy as shipped (`fastmcp.server.create_proxy`) in front of a stdio upstream.

    benchmarks/.fastmcp-venv/bin/python benchmarks/fastmcp_proxy.py [--http PORT] -- COMMAND [ARGS...]

`--http PORT`: served over Streamable HTTP on 127.0.0.1:PORT, stateless with JSON responses (the
settings the bare proxy's HTTP form uses), instead of stdio.

Runs in the separate venv that run.py creates; imports nothing from this repo.
"""

from __future__ import annotations

import sys


def main() -> None:
    from fastmcp.client.transports import StdioTransport
    from fastmcp.server import create_proxy

    argv = sys.argv[1:]
    port = None
    if argv[:1] == ["--http"] and len(argv) > 1 and argv[1].isdigit():
        port, argv = int(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: fastmcp_proxy.py [--http PORT] -- COMMAND [ARGS...]", file=sys.stderr)
        sys.exit(2)
    command = sys.executable if argv[0] in ("python", "python3") else argv[0]
    proxy = create_proxy(StdioTransport(command=command, args=argv[1:]), name="fastmcp-proxy")
    if port is None:
        proxy.run(transport="stdio", show_banner=False)
    else:
        proxy.run(
            transport="http",
            host="127.0.0.1",
            port=port,
            path="/mcp",
            stateless_http=True,
            json_response=True,
            show_banner=False,
            log_level="warning",
        )


if __name__ == "__main__":
    main()
