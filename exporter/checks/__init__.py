"""The four checks, one module each; the runner wraps any of them with timeouts and success metrics."""
