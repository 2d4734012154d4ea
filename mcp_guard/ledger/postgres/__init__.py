"""The PostgreSQL ledger (fleet mode): many guard replicas on one database, one chain. Private
behind the LedgerStore protocol; only mcp_guard.ledger imports it, and only when `ledger.url` names
a database (psycopg is the optional extra `mcp-guard[postgres]`)."""
