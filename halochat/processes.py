"""Whether a process of this machine runs (the embedded database's owner, a lease holder).

Light on imports: the embedded database's child uses it too."""

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True when `pid` runs on this machine (a zombie, killed but not yet reaped, is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        # /proc/<pid>/stat: "pid (comm) S ...", comm may contain spaces.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True
