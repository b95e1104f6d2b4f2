"""`halochat serve`: the server, configured by the environment (README, "Configuration")."""

import argparse

from halochat.server import serve


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="halochat serve",
        description="Serve HTTP and WebSocket; every setting is a HALOCHAT_* variable.",
    ).parse_args(argv)
    serve()
