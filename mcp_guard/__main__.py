"""`python -m mcp_guard` runs the command line."""

from mcp_guard.cli.main import main

raise SystemExit(main())
