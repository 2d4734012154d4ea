"""Who is calling: authenticators that turn a request's credential into an agent."""
