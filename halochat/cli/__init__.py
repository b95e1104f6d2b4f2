"""The `halochat` command line: one subcommand per module of this package.

    halochat serve     the HTTP/WebSocket server (embedded database if MONGODB_URI is unset)
    halochat seed      default configuration, developer test tier, demo users and tokens
    halochat export    sessions and messages as JSON Lines or CSV, for support staff
    halochat db        the embedded MongoDB-wire database on its own

Each subcommand parses its own options (`halochat export --help`).
"""

import argparse
import importlib
from collections.abc import Callable

# name -> (module under halochat.cli, one-line help); each module has main(argv).
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the HTTP/WebSocket server"),
    "seed": ("seed", "default config, developer test tier, demo users"),
    "export": ("export", "sessions and messages as JSON Lines or CSV"),
    "db": ("db", "the embedded database by itself"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halochat", description="halochat chat engine", epilog="halochat COMMAND --help"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # The subcommand's own parser reads the rest (its --help included).
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    args, rest = build_parser().parse_known_args(argv)
    module = importlib.import_module(f"{__name__}.{COMMANDS[args.command][0]}")
    command: Callable[[list[str]], None] = module.main
    command(rest)
