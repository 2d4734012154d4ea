"""The SQLite ledger store: private behind the ledger's interface."""
