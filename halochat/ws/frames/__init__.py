"""Frame handlers per feature; importing this package registers them (ws/registry.py)."""

from halochat.ws.frames import chat  # noqa: F401
