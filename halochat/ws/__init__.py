"""WebSocket hub, protocol, and per-feature frame handlers (ws/frames/)."""
