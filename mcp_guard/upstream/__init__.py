"""The upstream MCP servers: one session each, and the transports that reach them."""
