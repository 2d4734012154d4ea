"""The ledger: what every decision and outcome becomes, and the stores that keep it."""
