"""Running more than one server process (docs/scaling.md): membership and the database lease
today; the NATS bus of cluster mode (issue 13) later."""
