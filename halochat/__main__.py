"""`python -m halochat serve` runs the server (see the README)."""

import argparse

from halochat.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="halochat")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP/WebSocket server (embedded DB if MONGODB_URI unset)")
    args = parser.parse_args()
    if args.command == "serve":
        serve()


if __name__ == "__main__":
    main()
