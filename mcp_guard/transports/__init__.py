"""How clients reach the guard: stdio and Streamable HTTP."""
