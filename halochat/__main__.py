"""`python -m halochat serve` runs the server (see the README)."""

import argparse
import logging
import sys

from halochat.config import Settings
from halochat.settings_check import UnsafeSettings, check_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="halochat")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP/WebSocket server (embedded DB if MONGODB_URI unset)")
    args = parser.parse_args()
    if args.command == "serve":
        settings = Settings()
        try:  # before loading the app: a refused configuration fails at once (serve warns)
            check_settings(settings)
        except UnsafeSettings as exc:
            logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
            logging.getLogger("halochat").critical("refusing to start: %s", exc)
            sys.exit(2)
        from halochat.server import serve

        serve(settings)


if __name__ == "__main__":
    main()
