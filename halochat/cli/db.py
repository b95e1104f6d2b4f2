"""`halochat db`: the embedded MongoDB-wire database by itself, on the data directory the
server would use (HALOCHAT_DATA_DIR/db unless --data-dir is given). Prints its URI."""

from halochat.config import Settings
from halochat.db import embedded


def main(argv: list[str] | None = None) -> None:
    argv = list(argv or [])
    if not any(a == "--data-dir" or a.startswith("--data-dir=") for a in argv):
        argv = ["--data-dir", str(Settings().data_dir / "db"), *argv]
    embedded.main(argv, prog="halochat db")
