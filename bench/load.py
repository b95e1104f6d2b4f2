"""Load benchmark: halochat vs a bare Sanic WebSocket relay, same clients, same load.

    .venv/bin/python bench/load.py                      # 200 sessions, 1000 msg/s, 60 s
    .venv/bin/python bench/load.py --sessions 1000      # 2000 live WebSockets

For halochat it starts `python -m halochat serve` on its own embedded database (temp dir),
creates customers and Mitras through the admin API, pairs N sessions through the real
pairing API (one Mitra available at a time, so each request goes to a distinct Mitra), then
opens two authenticated WebSockets per session (customer + Mitra) spread over several client
processes and runs two phases:

1. fixed rate: `--rate` message.send/s in total (open loop, both sides of every session) for
   `--duration` s; send→receive latency (message.new on the other side), ack latency
   (the ack carries the stored message), errors, per-second delivered counts;
2. saturation: every socket sends its next message as soon as its previous one is acked
   (`--window` in flight per socket) for `--saturate` s: the throughput ceiling.

Then the same clients drive bench/relay.py identically, and the ratios are printed.
Afterwards it checks in the database that every acked message is stored exactly once and
every session's seqs are 1..n without gap.
"""

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import orjson
from bson import ObjectId
from pymongo import MongoClient

from bench.common import (
    BENCH_JWT_SECRET,
    HalochatServer,
    ProcWatch,
    RelayServer,
    cpu_seconds,
    summary,
)
from halochat.auth import issue_token
from halochat.config import Settings
from halochat.launch import free_port

# ---------------------------------------------------------------- client side (workers)


@dataclass(frozen=True)
class SocketSpec:
    url: str
    token: str | None  # bearer token (halochat) or None (relay: the url names the session)


@dataclass(frozen=True)
class SessionSpec:
    session_id: str
    sides: tuple[SocketSpec, SocketSpec]  # customer, Mitra


class Worker:
    """One client process: owns both sockets of its sessions, so send→receive latency is
    measured on one clock without any clock sync."""

    def __init__(self, index: int, sessions: list[SessionSpec], body_bytes: int) -> None:
        self.index = index
        self.sessions = sessions
        self.pad = "x" * max(0, body_bytes - 24)
        self.conns: list[list[Any]] = []  # [customer_conn, mitra_conn] per session
        self.readers: list[asyncio.Task[None]] = []
        self.seq = 0
        self.reset()

    def reset(self) -> None:
        self.sent_at: dict[str, float] = {}
        self.sender: dict[str, int] = {}  # cmid -> id(conn) of the sending socket
        # cmid -> future: None for an ack, retry_after seconds for an error
        self.ack_waiters: dict[str, asyncio.Future[float | None]] = {}
        self.acked: list[str] = []
        self.ack_lat: list[float] = []
        self.answer_lat: dict[str, float] = {}  # cmid -> first answer (ack or error), s
        self.e2e_lat: list[float] = []
        self.received = 0
        self.per_second: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.outstanding: set[str] = set()
        self.t0 = 0.0
        self.window_end = 0.0
        self.in_window = 0

    async def connect(self) -> int:
        from websockets.asyncio.client import connect

        gate = asyncio.Semaphore(32)
        failures = 0

        async def open_one(spec: SocketSpec) -> Any:
            nonlocal failures
            headers = {"Authorization": f"Bearer {spec.token}"} if spec.token else None
            async with gate:
                for attempt in range(5):
                    try:
                        conn = await connect(
                            spec.url,
                            additional_headers=headers,
                            compression=None,
                            max_size=None,
                            open_timeout=30,
                            ping_interval=None,
                        )
                        first = orjson.loads(await asyncio.wait_for(conn.recv(), 30))
                        if first.get("type") != "ready":
                            raise RuntimeError(f"unexpected first frame {first}")
                        return conn
                    except Exception:
                        failures += 1
                        await asyncio.sleep(0.2 * (attempt + 1))
                raise RuntimeError(f"cannot connect {spec.url}")

        for s in self.sessions:
            pair = await asyncio.gather(open_one(s.sides[0]), open_one(s.sides[1]))
            self.conns.append(list(pair))
        for pair in self.conns:
            for conn in pair:
                self.readers.append(asyncio.create_task(self.read(conn)))
        return failures

    async def read(self, conn: Any) -> None:
        try:
            async for text in conn:
                now = time.perf_counter()
                frame = orjson.loads(text)
                kind = frame.get("type")
                if kind == "ack":
                    cmid = frame.get("id")
                    t = self.sent_at.get(cmid)
                    if t is None:
                        continue
                    self.ack_lat.append(now - t)
                    self.acked.append(cmid)
                    self.answer_lat.setdefault(cmid, now - t)
                    waiter = self.ack_waiters.pop(cmid, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                elif kind == "message.new":
                    data = frame.get("data") or {}
                    msg = data.get("message", data)
                    cmid = msg.get("client_msg_id")
                    t = self.sent_at.get(cmid)
                    if t is None or self.sender.get(cmid) == id(conn):
                        continue  # not ours, or an echo to the sender's own socket
                    if cmid not in self.outstanding:
                        self.errors["duplicate_delivery"] += 1
                        continue
                    self.outstanding.discard(cmid)
                    self.e2e_lat.append(now - t)
                    self.received += 1
                    self.per_second[int(now - self.t0)] += 1
                    if now <= self.window_end:
                        self.in_window += 1
                elif kind == "error":
                    err = frame.get("error") or {}
                    self.errors[f"error:{err.get('code')}"] += 1
                    cmid = frame.get("id")
                    t = self.sent_at.get(cmid)
                    if t is not None:
                        self.answer_lat.setdefault(cmid, now - t)
                        self.outstanding.discard(cmid)  # refused: nothing to deliver
                    waiter = self.ack_waiters.pop(frame.get("id"), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result((err.get("details") or {}).get("retry_after", 0))
        except Exception as exc:
            self.errors[f"socket:{type(exc).__name__}"] += 1
        else:
            self.errors["socket_closed"] += 1

    async def send(self, session_index: int, side: int) -> str:
        session = self.sessions[session_index]
        conn = self.conns[session_index][side]
        self.seq += 1
        cmid = f"w{self.index}-{self.seq}"
        text = orjson.dumps(
            {
                "type": "message.send",
                "id": cmid,
                "data": {
                    "session_id": session.session_id,
                    "client_msg_id": cmid,
                    "body": f"{cmid} {self.pad}",
                },
            }
        ).decode()
        self.sent_at[cmid] = time.perf_counter()
        self.sender[cmid] = id(conn)
        self.outstanding.add(cmid)
        try:
            await conn.send(text)
        except Exception as exc:
            self.errors[f"send:{type(exc).__name__}"] += 1
            self.outstanding.discard(cmid)
        return cmid

    async def run_rate(self, rate: float, duration: float) -> None:
        """Open loop: message k leaves at t0 + k/rate, whatever the server does."""
        n_slots = len(self.sessions) * 2
        k = 0
        while (elapsed := time.perf_counter() - self.t0) < duration:
            due = int(elapsed * rate) + 1
            while k < due:
                slot = k % n_slots
                await self.send(slot % len(self.sessions), slot // len(self.sessions))
                k += 1
            await asyncio.sleep(max(0.0, (k / rate) - (time.perf_counter() - self.t0)))

    async def run_closed(self, window: int, duration: float) -> None:
        """Closed loop: each socket keeps `window` messages in flight until the end."""

        async def pump(si: int, side: int) -> None:
            while time.perf_counter() - self.t0 < duration:
                cmid = await self.send(si, side)
                fut = asyncio.get_running_loop().create_future()
                self.ack_waiters[cmid] = fut
                try:
                    retry_after = await asyncio.wait_for(fut, 30)
                except TimeoutError:
                    self.errors["ack_timeout"] += 1
                    continue
                if retry_after:  # refused (overloaded): back off as the app does
                    await asyncio.sleep(retry_after)

        await asyncio.gather(
            *(
                pump(si, side)
                for si in range(len(self.sessions))
                for side in (0, 1)
                for _ in range(window)
            )
        )

    async def phase(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.reset()
        await asyncio.sleep(max(0.0, cmd["start_at"] - time.time()))
        self.t0 = time.perf_counter()
        self.window_end = self.t0 + cmd["duration"]
        if cmd["mode"] == "rate":
            await self.run_rate(cmd["rate"], cmd["duration"])
        else:
            await self.run_closed(cmd["window"], cmd["duration"])
        drain_until = time.perf_counter() + cmd["drain"]
        # Wait for every delivery and every answer: a message can reach the other socket
        # before its ack reaches the sender's, and an ack still on its way is not a drop.
        while (  # noqa: ASYNC110
            self.outstanding or len(self.answer_lat) < len(self.sent_at)
        ) and time.perf_counter() < drain_until:
            await asyncio.sleep(0.05)
        acked = set(self.acked)
        if late := self.outstanding & acked:
            # Late or lost? A frame held behind a seq hole is written once the hole is read
            # or skipped (up to HOLE_GIVE_UP_SECONDS, halochat/cluster/delivery.py): only
            # what is still missing after that was never delivered.
            until = time.perf_counter() + cmd["late_wait"]
            while self.outstanding & late and time.perf_counter() < until:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            missing = self.outstanding & late
            if delivered_late := len(late) - len(missing):
                self.errors["delivered_after_drain"] += delivered_late
            if missing:
                self.errors["not_delivered"] += len(missing)
        unanswered = len(self.sent_at) - len(self.answer_lat)
        if unanswered:
            self.errors["unanswered"] += unanswered
        return {
            "sent": len(self.sent_at),
            "acked": len(acked),
            "received": self.received,
            "in_window": self.in_window,
            "ack_lat": self.ack_lat,
            "e2e_lat": self.e2e_lat,
            "answer_lat": list(self.answer_lat.values()),
            "unanswered": unanswered,
            "per_second": dict(self.per_second),
            "errors": dict(self.errors),
            "acked_ids": self.acked if cmd.get("return_ids") else [],
        }

    async def close(self) -> None:
        for pair in self.conns:
            for conn in pair:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        for task in self.readers:
            task.cancel()


def worker_main(
    index: int,
    sessions: list[SessionSpec],
    body_bytes: int,
    commands: "mp.Queue[dict[str, Any] | None]",
    results: "mp.Queue[tuple[int, str, Any]]",
) -> None:
    import uvloop

    async def main() -> None:
        worker = Worker(index, sessions, body_bytes)
        try:
            failures = await worker.connect()
        except Exception as exc:
            results.put((index, "failed", repr(exc)))
            return
        results.put((index, "ready", failures))
        loop = asyncio.get_running_loop()
        while (cmd := await loop.run_in_executor(None, commands.get)) is not None:
            results.put((index, "phase", await worker.phase(cmd)))
        await worker.close()
        results.put((index, "closed", None))

    uvloop.run(main())


class ClientPool:
    """The client processes for one target; phases run on all of them at once."""

    def __init__(self, sessions: list[SessionSpec], workers: int, body_bytes: int) -> None:
        ctx = mp.get_context("fork")
        self.results: mp.Queue[tuple[int, str, Any]] = ctx.Queue()
        self.commands: list[mp.Queue[dict[str, Any] | None]] = []
        self.procs: list[mp.process.BaseProcess] = []
        shards = [sessions[i::workers] for i in range(workers)]
        for i, shard in enumerate(shards):
            q: mp.Queue[dict[str, Any] | None] = ctx.Queue()
            p = ctx.Process(
                target=worker_main, args=(i, shard, body_bytes, q, self.results), daemon=True
            )
            p.start()
            self.commands.append(q)
            self.procs.append(p)

    def collect(self, kind: str, timeout: float) -> list[Any]:
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < len(self.procs):
            index, got, payload = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            if got == "failed":
                raise RuntimeError(f"client worker {index} failed: {payload}")
            if got == kind:
                out.append(payload)
        return out

    def run_phase(self, cmd: dict[str, Any], watch: ProcWatch) -> list[dict[str, Any]]:
        cmd = {**cmd, "start_at": time.time() + 0.5}
        for q in self.commands:
            q.put(cmd)
        time.sleep(0.5)
        watch.start_cpu()
        # The load generator shares the machine: its CPU grows with the offered rate, so on
        # a small machine the server has less CPU left at 2x than while its capacity was
        # measured. Reported next to the server's.
        clients0 = sum(cpu_seconds(p.pid) for p in self.procs if p.pid is not None)
        t0 = time.monotonic()
        end = time.monotonic() + cmd["duration"]
        while time.monotonic() < end:
            watch.sample()
            time.sleep(0.25)
        cpu = watch.cpu_percent()
        used = sum(cpu_seconds(p.pid) for p in self.procs if p.pid is not None) - clients0
        cpu["clients"] = 100.0 * used / max(time.monotonic() - t0, 1e-9)
        out = self.collect("phase", cmd["drain"] + cmd["late_wait"] + 120)
        watch.sample()
        for r in out:
            r["server_cpu"] = cpu
        return out

    def close(self) -> None:
        for q in self.commands:
            q.put(None)
        with contextlib.suppress(Exception):
            self.collect("closed", 30)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def merge(parts: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    per_second: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for p in parts:
        per_second.update(p["per_second"])
        errors.update(p["errors"])
    full_seconds = [per_second.get(s, 0) for s in range(int(duration))]
    e2e = summary([x * 1000 for p in parts for x in p["e2e_lat"]])
    ack = summary([x * 1000 for p in parts for x in p["ack_lat"]])
    answers = [x for p in parts for x in p["answer_lat"]]
    sent = sum(p["sent"] for p in parts)
    return {
        "sent": sent,
        "acked": sum(p["acked"] for p in parts),
        "received": sum(p["received"] for p in parts),
        "offered_rate": sent / duration,
        "achieved_rate": sum(p["in_window"] for p in parts) / duration,
        "min_second": min(full_seconds[1:] or full_seconds or [0]),
        "e2e_ms": e2e,
        "ack_ms": ack,
        "answer_ms": summary([x * 1000 for x in answers]),
        "answered_over_1s": sum(1 for x in answers if x > 1.0),
        "unanswered": sum(p["unanswered"] for p in parts),
        "refused": sum(v for k, v in errors.items() if k.startswith("error:")),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "server_cpu": parts[0]["server_cpu"] if parts else {},
        "acked_ids": [i for p in parts for i in p["acked_ids"]],
    }


# ---------------------------------------------------------------- halochat set-up


async def create_users(http: httpx.AsyncClient, role: str, count: int) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> dict[str, Any]:
        async with gate:
            r = await http.post(
                "/v1/admin/users",
                # auth_uid given: without it the second user hits the unique sparse index
                # on auth_uid (explicit nulls are indexed), see docs/performance.md.
                json={"role": role, "display_name": f"{role}-{i}", "auth_uid": f"{role}-{i}"},
            )
            r.raise_for_status()
            return r.json()

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def pair_sessions(server: HalochatServer, admin_token: str, n: int) -> list[dict[str, str]]:
    """N customers, N Mitras, N ACTIVE sessions through the real pairing API. Exactly one
    Mitra is available while each request is made, so each goes to a distinct Mitra."""
    auth = {"Authorization": f"Bearer {admin_token}"}
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=auth, timeout=60, limits=limits
    ) as http:
        customers = await create_users(http, "customer", n)
        mitras = await create_users(http, "mitra", n)

        async def call(method: str, path: str, token: str, body: Any = None) -> dict[str, Any]:
            r = await http.request(
                method, path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
            if r.status_code >= 400:
                raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
            return r.json()

        out: list[dict[str, str]] = []
        for c, m in zip(customers, mitras, strict=True):
            await call("PUT", "/v1/mitra/availability", m["token"], {"available": True})
            created = await call(
                "POST", "/v1/sessions", c["token"], {"choice": "tier", "tier_id": "15m"}
            )
            sid = created["session"]["id"]
            await call("POST", f"/v1/sessions/{sid}/accept", m["token"])
            await call("PUT", "/v1/mitra/availability", m["token"], {"available": False})
            out.append({"session_id": sid, "customer": c["token"], "mitra": m["token"]})
        return out


def verify_storage(uri: str, db_name: str, acked_ids: list[str]) -> dict[str, Any]:
    """Every acked message stored exactly once; each session's seqs are 1..n without gap.
    (The stored last_seq of an ACTIVE session trails by design: halochat/domain/
    live_sessions.py. The seqs themselves must still be gap-free.)"""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    try:
        db = client[db_name]
        # Sends the server still had in hand when the clients left finish first.
        previous = None
        for _ in range(60):
            current = db["messages"].estimated_document_count()
            if current == previous:
                break
            previous = current
            time.sleep(0.5)
        stored: Counter[str] = Counter()
        by_session: dict[Any, list[int]] = {}
        for doc in db["messages"].find({}, {"client_msg_id": 1, "session_id": 1, "seq": 1}):
            stored[doc["client_msg_id"]] += 1
            by_session.setdefault(doc["session_id"], []).append(doc["seq"])
    finally:
        client.close()
    missing = sum(1 for i in set(acked_ids) if stored[i] == 0)
    duplicated = sum(1 for c in stored.values() if c > 1)
    gaps = sum(
        1 for sid, seqs in by_session.items() if sorted(seqs) != list(range(1, len(seqs) + 1))
    )
    return {
        "stored": sum(stored.values()),
        "acked": len(set(acked_ids)),
        "acked_missing": missing,
        "duplicated": duplicated,
        "sessions_with_gaps": gaps,
    }


# ---------------------------------------------------------------- driver


def run_target(
    name: str,
    sessions: list[SessionSpec],
    args: argparse.Namespace,
    watch: ProcWatch,
) -> dict[str, Any]:
    watch.sample()
    before = watch.rss_kb()
    t = time.monotonic()
    pool = ClientPool(sessions, args.workers, args.body_bytes)
    try:
        failures = sum(pool.collect("ready", 600))
        connect_s = time.monotonic() - t
        time.sleep(1.0)
        connected = watch.rss_kb()
        print(
            f"[{name}] {len(sessions) * 2} sockets connected in {connect_s:.1f}s "
            f"({failures} retried)",
            flush=True,
        )
        # Saturation first: the open-loop phase may leave an overloaded server with dead
        # sockets (keepalive timeouts), which would spoil a phase after it.
        sat: dict[str, Any] | None = None
        if args.saturate > 0:
            sat_parts = pool.run_phase(
                {
                    "mode": "closed",
                    "window": args.window,
                    "duration": args.saturate,
                    "drain": args.drain,
                    "late_wait": args.late_wait,
                    "return_ids": True,
                },
                watch,
            )
            sat = merge(sat_parts, args.saturate)
            print(f"[{name}] saturation: {fmt_phase(sat)}", flush=True)
        offered = args.rate
        if args.overload:  # a multiple of the capacity just measured (halochat's, reused)
            if name == "halochat":
                assert sat is not None, "--overload needs the saturation phase"
                args.capacity = sat["achieved_rate"]
            offered = args.overload * args.capacity
            print(f"[{name}] offering {offered:.0f} msg/s for {args.duration:.0f}s", flush=True)
        rate_parts = pool.run_phase(
            {
                "mode": "rate",
                "rate": offered / args.workers,
                "duration": args.duration,
                "drain": args.drain,
                "late_wait": args.late_wait,
                "return_ids": True,
            },
            watch,
        )
        rate = merge(rate_parts, args.duration)
        print(f"[{name}] fixed rate: {fmt_phase(rate)}", flush=True)
    finally:
        pool.close()
    sockets = len(sessions) * 2
    return {
        "name": name,
        "sessions": len(sessions),
        "sockets": sockets,
        "rate": rate,
        "saturation": sat,
        "rss_before_kb": before,
        "rss_connected_kb": connected,
        "rss_per_socket_kb": {
            k: (connected[k] - before[k]) / sockets for k in before if k in connected
        },
        "peak_rss_kb": dict(watch.peak_rss_kb),
        "hwm_kb": watch.hwm_kb(),
    }


def fmt_phase(p: dict[str, Any]) -> str:
    e, a = p["e2e_ms"], p["ack_ms"]
    cpu = " ".join(f"{k} {v:.0f}%" for k, v in p["server_cpu"].items())
    return (
        f"offered {p['offered_rate']:.0f}/s achieved {p['achieved_rate']:.0f}/s "
        f"(slowest second {p['min_second']}) e2e p50 {e['p50']:.1f} p95 {e['p95']:.1f} "
        f"p99 {e['p99']:.1f} max {e['max']:.1f} ms, ack p99 {a['p99']:.1f} ms, "
        f"answer p99 {p['answer_ms']['p99']:.1f} max {p['answer_ms']['max']:.1f} ms, "
        f"unanswered {p['unanswered']}, "
        f"errors {p['error_count']} {p['errors'] or ''} cpu: {cpu}"
    )


def server_env(args: argparse.Namespace, **extra: str) -> dict[str, str]:
    """The environment of a benchmarked halochat process (`--env` last: it overrides)."""
    return {
        # Sessions must outlive set-up + both phases: one tier minute = 10 real minutes.
        "HALOCHAT_MINUTE_SECONDS": str(args.minute_seconds),
        "HALOCHAT_PAIRING_TIMEOUT_SECONDS": "600",
        # Set-up makes 2 writes per user as the admin: out of the per-user write limit.
        "HALOCHAT_HTTP_WRITE_RATE": "1000000/minute",
        **extra,
        **dict(kv.split("=", 1) for kv in args.env),
    }


def user_tokens(uri: str, db_name: str, role: str, names: list[str]) -> list[str]:
    """Inserts one user per name with pymongo and returns their bearer tokens."""
    settings = Settings(jwt_secret=BENCH_JWT_SECRET)
    tokens = []
    with MongoClient(uri) as client:
        for name in names:
            uid = ObjectId()
            client[db_name]["users"].insert_one(
                {
                    "_id": uid,
                    "role": role,
                    "display_name": name,
                    "available": False,
                    "disabled": False,
                }
            )
            tokens.append(issue_token(settings, uid))
    return tokens


def halochat_run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = HalochatServer(workdir, server_env(args)).start()
    try:
        uri = server.mongodb_uri
        [admin_token] = user_tokens(uri, server.db_name, "admin", ["bench-admin"])
        t = time.monotonic()
        paired = asyncio.run(pair_sessions(server, admin_token, args.sessions))
        print(
            f"[halochat] paired {len(paired)} sessions in {time.monotonic() - t:.1f}s",
            flush=True,
        )
        specs = [
            SessionSpec(
                p["session_id"],
                (SocketSpec(server.ws_url, p["customer"]), SocketSpec(server.ws_url, p["mitra"])),
            )
            for p in paired
        ]
        watch = ProcWatch({"server": server.pid, "db": server.db_pid()})
        result = run_target("halochat", specs, args, watch)
        ids = result["rate"].pop("acked_ids")
        if result["saturation"]:
            ids += result["saturation"].pop("acked_ids")
        result["storage"] = verify_storage(uri, server.db_name, ids)
        print(f"[halochat] storage check: {result['storage']}", flush=True)
        result["hwm_kb"] = watch.hwm_kb()
        return result
    finally:
        server.stop()


def relay_run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    relay = RelayServer(workdir).start()
    try:
        specs = [
            SessionSpec(
                f"s{i}",
                (SocketSpec(f"{relay.ws_url}?session=s{i}", None),) * 2,
            )
            for i in range(args.sessions)
        ]
        watch = ProcWatch({"relay": relay.pid})
        result = run_target("relay", specs, args, watch)
        result["rate"].pop("acked_ids")
        if result["saturation"]:
            result["saturation"].pop("acked_ids")
        return result
    finally:
        relay.stop()


def report(h: dict[str, Any], r: dict[str, Any] | None, args: argparse.Namespace) -> None:
    def row(label: str, hv: str, rv: str = "") -> None:
        print(f"  {label:<38}{hv:>22}{rv:>22}")

    hr, rr = h["rate"], (r or {}).get("rate")
    print("\n== results ==")
    row("", "halochat", "bare relay" if r else "")
    row(
        "sessions / sockets",
        f"{h['sessions']} / {h['sockets']}",
        f"{r['sessions']} / {r['sockets']}" if r else "",
    )
    for label, key in (("offered msg/s", "offered_rate"), ("achieved msg/s", "achieved_rate")):
        row(label, f"{hr[key]:.0f}", f"{rr[key]:.0f}" if rr else "")
    row("slowest second (msgs)", str(hr["min_second"]), str(rr["min_second"]) if rr else "")
    for p in ("p50", "p95", "p99", "max"):
        row(
            f"send→receive {p} ms", f"{hr['e2e_ms'][p]:.1f}", f"{rr['e2e_ms'][p]:.1f}" if rr else ""
        )
    row("ack p99 ms", f"{hr['ack_ms']['p99']:.1f}", f"{rr['ack_ms']['p99']:.1f}" if rr else "")
    row("errors", str(hr["error_count"]), str(rr["error_count"]) if rr else "")
    hs, rs = h.get("saturation"), (r or {}).get("saturation")
    if hs:
        row(
            "saturation msg/s",
            f"{hs['achieved_rate']:.0f}",
            f"{rs['achieved_rate']:.0f}" if rs else "",
        )
        row(
            "saturation p99 ms",
            f"{hs['e2e_ms']['p99']:.1f}",
            f"{rs['e2e_ms']['p99']:.1f}" if rs else "",
        )
    for name in h["hwm_kb"]:
        row(f"peak RSS {name} MiB (VmHWM)", f"{h['hwm_kb'][name] / 1024:.1f}")
        row(f"RSS per socket {name} KiB", f"{h['rss_per_socket_kb'].get(name, 0):.1f}")
    if r:
        for name in r["hwm_kb"]:
            row(f"peak RSS {name} MiB (VmHWM)", "", f"{r['hwm_kb'][name] / 1024:.1f}")
            row(f"RSS per socket {name} KiB", "", f"{r['rss_per_socket_kb'].get(name, 0):.1f}")
    cpu = hr["server_cpu"]
    row(
        "server CPU % of a core (fixed rate)",
        " ".join(f"{k}:{v:.0f}" for k, v in cpu.items()),
        " ".join(f"{k}:{v:.0f}" for k, v in rr["server_cpu"].items()) if rr else "",
    )
    st = h["storage"]
    print(f"  storage: {st}")
    print("\n== targets ==")
    if args.overload:
        report_overload(h, r, args)
        return
    ok_rate = hr["achieved_rate"] >= 1000 * 0.99 and args.rate >= 1000
    verdict = [
        (f"≥1000 msg/s for {args.duration:.0f}s", ok_rate, f"{hr['achieved_rate']:.0f} msg/s"),
        ("p99 send→receive ≤ 50 ms", hr["e2e_ms"]["p99"] <= 50, f"{hr['e2e_ms']['p99']:.1f} ms"),
        (
            "every acked message stored once, no gap",
            st["acked_missing"] == 0 and st["duplicated"] == 0 and st["sessions_with_gaps"] == 0,
            f"{st['acked']} acked, {st['stored']} stored",
        ),
        ("no errors", hr["error_count"] == 0, str(hr["errors"])),
    ]
    if r:
        base = (hs or hr)["achieved_rate"]
        rbase = (rs or rr)["achieved_rate"]
        ratio = base / rbase if rbase else float("nan")
        verdict.append(("≥ 0.5 of the relay's throughput", ratio >= 0.5, f"ratio {ratio:.2f}"))
        p99r = hr["e2e_ms"]["p99"] / rr["e2e_ms"]["p99"] if rr["e2e_ms"]["p99"] else float("nan")
        verdict.append(("p99 vs relay (fixed rate)", None, f"ratio {p99r:.2f}"))
    for label, ok, got in verdict:
        tag = "INFO" if ok is None else "PASS" if ok else "MISS"
        print(f"  [{tag}] {label}: {got}")


# ---------------------------------------------------------------- slow readers


async def flood_slow_reader(url: str, token: str, seconds: float, hello: str) -> dict[str, int]:
    """One client that never reads: sends big-answer frames; reconnects when dropped."""
    import socket

    from websockets.asyncio.client import connect

    sent = drops = 0
    end = time.monotonic() + seconds
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    while time.monotonic() < end:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # back the server up fast
        raw.connect((host, int(port)))
        try:
            conn = await connect(
                url,
                sock=raw,
                additional_headers={"Authorization": f"Bearer {token}"},
                max_queue=1,
                ping_interval=None,
                open_timeout=30,
            )
        except Exception:
            raw.close()
            await asyncio.sleep(0.5)
            continue
        try:
            while time.monotonic() < end:
                await asyncio.wait_for(conn.send(hello), 5)
                sent += 1
                await asyncio.sleep(0.005)
        except Exception:
            drops += 1  # the server dropped us: connect again and go on
        finally:
            conn.transport.abort()
    return {"sent": sent, "drops": drops}


def slow_readers_main(args: argparse.Namespace) -> None:
    """N sockets that never read, each flooded for --duration s (default 30) with hello
    frames listing 500 unknown ids (each answer ~90 KB): server RSS must grow < 50 MB."""
    env = {
        "HALOCHAT_HTTP_WRITE_RATE": "1000000/minute",
        **dict(kv.split("=", 1) for kv in args.env),
    }
    duration = args.duration if "--duration" in sys.argv else 30.0
    with tempfile.TemporaryDirectory(prefix="halochat-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        server = HalochatServer(workdir, env).start()
        try:
            names = [f"slow-{i}" for i in range(args.slow_readers)]
            tokens = user_tokens(server.mongodb_uri, server.db_name, "customer", names)
            watch = ProcWatch({"server": server.pid})
            time.sleep(1.0)
            before = watch.rss_kb()["server"]
            sessions = {f"{i:04d}" + "x" * 100: 0 for i in range(500)}
            hello = orjson.dumps({"type": "hello", "id": "h", "data": {"sessions": sessions}})
            peak = before

            async def run() -> list[dict[str, int]]:
                nonlocal peak
                task = asyncio.gather(
                    *(flood_slow_reader(server.ws_url, t, duration, hello.decode()) for t in tokens)
                )
                while not task.done():
                    peak = max(peak, watch.rss_kb()["server"])
                    await asyncio.sleep(0.25)
                return list(task.result())

            counts = asyncio.run(run())
            time.sleep(2.0)
            after = watch.rss_kb()["server"]
            load = httpx.get(f"{server.base_url}/loadz", timeout=10).json()
        finally:
            server.stop()
    sent = sum(c["sent"] for c in counts)
    drops = sum(c["drops"] for c in counts)
    growth = (peak - before) / 1024
    print("\n== slow readers ==")
    print(
        f"  {args.slow_readers} sockets never reading, {duration:.0f} s, {sent} frames sent "
        f"(answers ~90 KB each), {drops} disconnects by the server"
    )
    print(
        f"  server RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
        f"after {after / 1024:.1f} MiB; after the run /loadz: {load}"
    )
    tag = "PASS" if growth < 50 else "MISS"
    print(f"  [{tag}] server RSS growth < 50 MB: {growth:.1f} MiB")


def report_overload(h: dict[str, Any], r: dict[str, Any] | None, args: argparse.Namespace) -> None:
    hr, st = h["rate"], h["storage"]
    capacity = args.capacity
    goodput = hr["achieved_rate"] / capacity if capacity else float("nan")
    print(
        f"  capacity (saturation) {capacity:.0f} msg/s; offered {hr['offered_rate']:.0f} msg/s "
        f"(x{hr['offered_rate'] / max(capacity, 1e-9):.2f}); refused {hr['refused']} "
        f"({100 * hr['refused'] / max(hr['sent'], 1):.1f}% of sends)"
    )
    verdict = [
        ("goodput ≥ 90 % of capacity", goodput >= 0.9, f"{100 * goodput:.0f} %"),
        (
            "p99 send→receive of accepted ≤ 100 ms",
            hr["e2e_ms"]["p99"] <= 100,
            f"{hr['e2e_ms']['p99']:.1f} ms (ack p99 {hr['ack_ms']['p99']:.1f} ms)",
        ),
        (
            "every send answered within 1 s",
            hr["answered_over_1s"] == 0 and hr["unanswered"] == 0,
            f"{hr['answered_over_1s']} later than 1 s, answer max {hr['answer_ms']['max']:.0f} ms",
        ),
        ("zero silent drops", hr["unanswered"] == 0, f"{hr['unanswered']} unanswered"),
        (
            "acked == stored once, no gap",
            st["acked_missing"] == 0 and st["duplicated"] == 0 and st["sessions_with_gaps"] == 0,
            f"{st['acked']} acked, {st['stored']} stored",
        ),
    ]
    if r:
        rr = r["rate"]
        got = f"{rr['achieved_rate']:.0f} msg/s, p99 {rr['e2e_ms']['p99']:.1f} ms"
        verdict.append(("bare relay at the same offered rate", None, got))
    for label, ok, got in verdict:
        tag = "INFO" if ok is None else "PASS" if ok else "MISS"
        print(f"  [{tag}] {label}: {got}")


# ---------------------------------------------------------------- --processes N (cluster)


class ClusterMember(HalochatServer):
    """One halochat process in cluster mode on a shared database and bus."""

    def __init__(self, workdir: Path, env: dict[str, str], mongodb_uri: str, db_name: str):
        super().__init__(workdir, env)
        self.shared_uri = mongodb_uri
        self.db_name = db_name


def cluster_run(
    args: argparse.Namespace, workdir: Path, uri: str, nats_url: str | None, n: int, name: str
) -> dict[str, Any]:
    """n processes on the shared database (one fresh db name per run); sessions paired on
    the first; each session's customer on process i % n and its Mitra on (i + 1) % n, so
    with n > 1 every message crosses the bus between two processes."""
    env = server_env(args, **({"HALOCHAT_NATS_URL": nats_url} if nats_url else {}))
    db_name = f"bench_{name.replace(' ', '_')}"
    members: list[ClusterMember] = []
    try:
        for i in range(n):
            member_dir = workdir / f"{db_name}-{i}"
            member_dir.mkdir(parents=True, exist_ok=True)
            members.append(ClusterMember(member_dir, env, uri, db_name).start())
        [admin_token] = user_tokens(uri, db_name, "admin", ["bench-admin"])
        paired = asyncio.run(pair_sessions(members[0], admin_token, args.sessions))
        specs = [
            SessionSpec(
                p["session_id"],
                (
                    SocketSpec(members[i % n].ws_url, p["customer"]),
                    SocketSpec(members[(i + 1) % n].ws_url, p["mitra"]),
                ),
            )
            for i, p in enumerate(paired)
        ]
        watch = ProcWatch({f"p{i}": m.pid for i, m in enumerate(members)})
        result = run_target(name, specs, args, watch)
        ids = result["rate"].pop("acked_ids")
        if result["saturation"]:
            ids += result["saturation"].pop("acked_ids")
        result["storage"] = verify_storage(uri, db_name, ids)
        print(f"[{name}] storage check: {result['storage']}", flush=True)
        return result
    finally:
        for m in members:
            m.stop()


def processes_main(args: argparse.Namespace) -> None:
    """--processes N: single mode (no bus), then cluster mode with 1..N processes, one
    embedded database and one nats-server; msg/s and p99 of each, and the bus hop's cost."""
    from halochat.cluster.bus import nats_server_binary
    from halochat.db.embedded import EmbeddedMongo

    with tempfile.TemporaryDirectory(prefix="halochat-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        db = None if args.mongodb_uri else EmbeddedMongo(workdir / "db", exclusive=True)
        uri = args.mongodb_uri or db.start()
        nats_port = free_port()
        nats = subprocess.Popen(
            [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(nats_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nats_url = f"nats://127.0.0.1:{nats_port}"
        runs: list[tuple[str, dict[str, Any]]] = []
        try:
            runs.append(("single (no bus)", cluster_run(args, workdir, uri, None, 1, "single")))
            for n in range(1, args.processes + 1):
                label = f"cluster x{n}"
                runs.append((label, cluster_run(args, workdir, uri, nats_url, n, f"cluster{n}")))
        finally:
            nats.terminate()
            nats.wait(10)
            if db is not None:
                db.stop()
    print("\n== processes ==")
    print(
        f"  {'':<18}{'sat. msg/s':>12}{'rate msg/s':>12}{'e2e p50':>10}{'e2e p99':>10}"
        f"{'ack p99':>10}{'errors':>8}  storage"
    )
    for label, r in runs:
        sat, rate = r["saturation"] or {}, r["rate"]
        print(
            f"  {label:<18}{sat.get('achieved_rate', 0):>12.0f}{rate['achieved_rate']:>12.0f}"
            f"{rate['e2e_ms']['p50']:>10.1f}{rate['e2e_ms']['p99']:>10.1f}"
            f"{rate['ack_ms']['p99']:>10.1f}{rate['error_count']:>8}  {r['storage']}"
        )
    base, one = runs[0][1]["rate"]["e2e_ms"], runs[1][1]["rate"]["e2e_ms"]
    print(
        f"  bus hop (cluster x1 - single): e2e p50 {one['p50'] - base['p50']:+.1f} ms, "
        f"p99 {one['p99'] - base['p99']:+.1f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(dict(runs), indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1000.0, help="total message.send/s")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--saturate", type=float, default=20.0, help="0 = skip that phase")
    parser.add_argument("--window", type=int, default=1, help="in flight per socket (saturation)")
    parser.add_argument(
        "--drain", type=float, default=15.0, help="s to wait for deliveries after a phase"
    )
    parser.add_argument(
        "--late-wait",
        type=float,
        default=45.0,
        help="s more for acked messages still undelivered after --drain: delivered late "
        "(delivered_after_drain) or not at all (not_delivered)",
    )
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--body-bytes", type=int, default=64)
    parser.add_argument("--minute-seconds", type=float, default=600.0)
    parser.add_argument(
        "--overload",
        type=float,
        nargs="?",
        const=2.0,
        default=0.0,
        help="offer this multiple (default 2) of the measured capacity (30 s unless --duration)",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the halochat server"
    )
    parser.add_argument(
        "--slow-readers",
        type=int,
        default=0,
        help="instead: N sockets that never read, flooded with big-answer frames",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="instead: single mode, then cluster mode with 1..N processes (shared DB + NATS)",
    )
    parser.add_argument(
        "--mongodb-uri", help="with --processes: this database instead of an embedded one"
    )
    parser.add_argument("--no-relay", action="store_true")
    parser.add_argument("--relay-only", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep logs and data here (default: temp)")
    args = parser.parse_args()
    args.capacity = 0.0
    if args.overload and "--duration" not in sys.argv:
        args.duration = 30.0
    if args.slow_readers:
        slow_readers_main(args)
        return
    if args.processes:
        processes_main(args)
        return

    print(
        f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
        f"{args.sessions} sessions, {args.rate:.0f} msg/s offered for {args.duration:.0f}s, "
        f"{args.workers} client processes",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="halochat-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        h = None if args.relay_only else halochat_run(args, workdir)
        r = None if args.no_relay else relay_run(args, workdir)
    if h is not None:
        report(h, r, args)
    elif r is not None:
        print(json.dumps({k: v for k, v in r.items()}, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps({"halochat": h, "relay": r}, indent=1, default=str))


if __name__ == "__main__":
    main()
