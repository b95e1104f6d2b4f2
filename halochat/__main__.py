"""`python -m halochat ...` is the `halochat` command (halochat/cli)."""

from halochat.cli import main

if __name__ == "__main__":
    main()
