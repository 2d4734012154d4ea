"""Test-only upstream MCP servers that misbehave on purpose."""
