"""`HALOCHAT_WORKERS=N`: N server processes on one machine, as one cluster (docs/scaling.md).

The supervising process starts what the workers share, once: the embedded database (when
MONGODB_URI is unset) and a local nats-server from the venv (when HALOCHAT_NATS_URL is
unset), then N workers (`python -m halochat serve` in cluster mode) that all listen on
HALOCHAT_PORT through SO_REUSEPORT: the kernel spreads new connections over them. A worker
that dies is started again; SIGINT/SIGTERM stop the workers (each stores its pending messages
and leaves), then the bus and the database.
"""

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

from halochat.cluster.bus import nats_server_binary
from halochat.config import Settings
from halochat.launch import SERVE_COMMAND, free_port

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
REFUSALS = (2, 3)  # unsafe settings, refused start: starting again would not help


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other workers may bind too (Linux spreads accepts)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def local_nats(settings: Settings) -> Iterator[str]:
    """HALOCHAT_NATS_URL if set, else a nats-server of our own on a loopback port."""
    if settings.nats_url:
        yield settings.nats_url
        return
    port = free_port()
    proc = subprocess.Popen(
        [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the local nats-server did not start") from None
                time.sleep(0.05)
        url = f"nats://127.0.0.1:{port}"
        log.info("local NATS bus at %s (pid %d)", url, proc.pid)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()


def run_workers(settings: Settings, mongodb_uri: str, nats_url: str) -> int:
    """Runs settings.workers workers until SIGINT/SIGTERM; returns the exit status."""
    env = {k: v for k, v in os.environ.items()}
    env.update(
        {
            "MONGODB_URI": mongodb_uri,
            "HALOCHAT_NATS_URL": nats_url,
            "HALOCHAT_WORKERS": "1",
            "HALOCHAT_REUSE_PORT": "true",
            # One worker seeds the configuration at a time: ensure_config is an upsert.
        }
    )
    stopping = threading.Event()
    status = 0
    workers: list[subprocess.Popen[bytes] | None] = [None] * settings.workers

    def stop(signum: int, _frame: object) -> None:
        stopping.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping.is_set():
            for i, proc in enumerate(workers):
                if proc is not None and proc.poll() is None:
                    continue
                if proc is not None and proc.returncode in REFUSALS:
                    log.critical("worker %d refused to start (%d): stopping", i, proc.returncode)
                    status = proc.returncode
                    stopping.set()
                    break
                if proc is not None:
                    log.warning("worker %d exited (%s); starting it again", i, proc.returncode)
                    time.sleep(RESTART_DELAY_SECONDS)
                workers[i] = subprocess.Popen(list(SERVE_COMMAND), env=env)
                log.info("worker %d started (pid %d)", i, workers[i].pid)  # type: ignore[union-attr]
            stopping.wait(0.5)
    finally:
        for proc in workers:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            if proc is not None:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
