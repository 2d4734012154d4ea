"""The guard process: the policy in force, its catalog, and the call pipeline."""
