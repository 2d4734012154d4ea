"""The mcp-guard command: one module per command group. The library never imports it."""
