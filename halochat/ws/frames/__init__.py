"""Frame handlers per feature; importing this package registers them (ws/registry.py)."""
