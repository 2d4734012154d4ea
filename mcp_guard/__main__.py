"""`python -m mcp_guard` runs the command line."""

from mcp_guard.cli import main

raise SystemExit(main())
