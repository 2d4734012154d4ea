"""fastmcp's proxy as shipped (`fastmcp.server.create_proxy`) in front of a stdio upstream.

    benchmarks/.fastmcp-venv/bin/python benchmarks/fastmcp_proxy.py -- COMMAND [ARGS...]

Runs in the separate venv that run.py creates; imports nothing from this repo.
"""

from __future__ import annotations

import sys


def main() -> None:
    from fastmcp.client.transports import StdioTransport
    from fastmcp.server import create_proxy

    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: fastmcp_proxy.py -- COMMAND [ARGS...]", file=sys.stderr)
        sys.exit(2)
    command = sys.executable if argv[0] in ("python", "python3") else argv[0]
    proxy = create_proxy(StdioTransport(command=command, args=argv[1:]), name="fastmcp-proxy")
    proxy.run(transport="stdio", show_banner=False)


if __name__ == "__main__":
    main()
