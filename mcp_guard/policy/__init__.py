"""The pure policy core: decisions as values. Imports no mcp, anyio, sqlite, os or clock."""
