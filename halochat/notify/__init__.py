"""Delivery of domain events to users' devices (docs/architecture.md).

events.py: what the domain publishes; notifier.py: events -> frames and pushes; delivery.py:
the transport seam; local.py: this process's hub and FCM. Import from the modules (the domain
imports events.py only, which pulls in no transport code).
"""
