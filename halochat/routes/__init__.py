"""HTTP blueprints, registered by create_app in this order."""

from sanic import Blueprint

from halochat.routes import (
    admin_config,
    devices,
    health,
    history,
    lifecycle,
    messages,
    observability,
    pairing,
    users,
)

ROUTE_BLUEPRINTS: list[Blueprint] = [
    health.bp,
    users.bp,
    devices.bp,
    admin_config.bp,
    pairing.bp,
    lifecycle.bp,
    messages.bp,
    history.bp,
    observability.bp,
]
