"""Example upstream MCP servers bundled with mcp-guard, for demos and integration tests."""
