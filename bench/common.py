"""Shared by the benchmarks: child servers on loopback, /proc memory and CPU readings,
percentile summaries."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from halochat.launch import SERVE_COMMAND, child_env, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_JWT_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc readings


def proc_status_kb(pid: int, key: str) -> int:
    """A `VmRSS` / `VmHWM` (peak RSS) style line of /proc/<pid>/status, in kB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


@dataclass
class ProcWatch:
    """Samples RSS and CPU of a set of named processes (server, its DB child)."""

    pids: dict[str, int]
    peak_rss_kb: dict[str, int] = field(default_factory=dict)
    cpu0: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0

    def rss_kb(self) -> dict[str, int]:
        return {name: proc_status_kb(pid, "VmRSS") for name, pid in self.pids.items()}

    def hwm_kb(self) -> dict[str, int]:
        """Kernel-recorded peak RSS since each process started."""
        return {name: proc_status_kb(pid, "VmHWM") for name, pid in self.pids.items()}

    def start_cpu(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def cpu_percent(self) -> dict[str, float]:
        """CPU used since start_cpu(), as % of one core."""
        wall = max(time.monotonic() - self.t0, 1e-9)
        return {
            name: 100.0 * (cpu_seconds(pid) - self.cpu0.get(name, 0.0)) / wall
            for name, pid in self.pids.items()
        }

    def sample(self) -> None:
        for name, kb in self.rss_kb().items():
            self.peak_rss_kb[name] = max(self.peak_rss_kb.get(name, 0), kb)


# ---------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "n": len(s),
        "p50": percentile(s, 50),
        "p95": percentile(s, 95),
        "p99": percentile(s, 99),
        "max": s[-1] if s else float("nan"),
    }


# ---------------------------------------------------------------- child servers


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout}s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class HalochatServer:
    """`python -m halochat serve` with its own embedded database under `workdir`, or on
    `shared_uri` when set (a shared database, e.g. cluster members)."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.db_name = "bench"
        self.shared_uri: str | None = None
        self.extra_env = env or {}
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> "HalochatServer":
        env = child_env(
            port=self.port,
            db_name=self.db_name,
            data_dir=self.workdir / "var",
            jwt_secret=BENCH_JWT_SECRET,
            mongodb_uri=self.shared_uri,
            extra=self.extra_env,
        )
        self.proc = subprocess.Popen(
            list(SERVE_COMMAND),
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_ready(self.proc, f"{self.base_url}/readyz", self.log_path)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def mongodb_uri(self) -> str:
        if self.shared_uri:
            return self.shared_uri
        state = json.loads((self.workdir / "var" / "db" / "server.json").read_text())
        return state["uri"]

    def db_pid(self) -> int:
        state = json.loads((self.workdir / "var" / "db" / "server.json").read_text())
        return int(state["pid"])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class RelayServer:
    """bench/relay.py in a child process."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "RelayServer":
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "bench" / "relay.py"), "--port", str(self.port)],
            cwd=REPO_ROOT,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_ready(self.proc, f"http://127.0.0.1:{self.port}/readyz", self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
