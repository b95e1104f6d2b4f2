"""Operators' and support's view of the running server: metrics (Prometheus), structured logs
with request / connection ids, and the per-session timeline (docs/operations.md,
docs/support.md)."""
