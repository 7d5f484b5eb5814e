"""(implemented by the cross-architecture models task)."""
