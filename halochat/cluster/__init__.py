"""Running more than one server process (docs/scaling.md): membership and the database lease
(membership.py), the NATS bus of cluster mode (delivery.py, bus.py), HALOCHAT_WORKERS
(workers.py)."""
