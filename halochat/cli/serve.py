"""`halochat serve`: the server, configured by the environment (README, "Configuration")."""

import argparse
import logging
import sys

from halochat.config import Settings
from halochat.settings_check import UnsafeSettings, check_settings


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="halochat serve",
        description="Serve HTTP and WebSocket; every setting is a HALOCHAT_* variable.",
    ).parse_args(argv)
    settings = Settings()
    try:  # before loading the app: a refused configuration fails at once (serve warns)
        check_settings(settings)
    except UnsafeSettings as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("halochat").critical("refusing to start: %s", exc)
        sys.exit(2)
    from halochat.server import serve

    serve(settings)
