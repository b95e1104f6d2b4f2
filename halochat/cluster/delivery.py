"""Cluster mode's delivery: every event for a user reaches all of that user's devices on any
process, over NATS (docs/scaling.md).

- Each user with a live socket on this process has this process subscribed to the user's
  subject `halochat.<db>.user.<user id>` (subscribed on the user's first socket here,
  unsubscribed on the last). `to_user` publishes the frame there; every process holding a
  socket of the user writes it to those sockets. There is no local shortcut: this process
  gets its own publications back like any other, so one path and one order serve all.
- The push decision is cluster-wide: a frame that carries a push is published with a reply
  subject; a process answers only when it wrote the frame to a device in the foreground. An
  answer within PRESENCE_WAIT_SECONDS means "seen": no push. NATS "no responders" (no process
  holds a socket of the user) or silence means "not in the foreground anywhere": the
  publishing process sends the push, once.
- Publications leave in call order through one bounded queue and one NATS connection, and
  NATS keeps a publisher's order per subscriber. Messages of one session may be published by
  two processes (the customer's and the Mitra's), so each socket puts `message.new` frames
  back in seq order itself (Sequencer): a frame ahead of the next expected seq is held, and
  a hole still open after GAP_WAIT_SECONDS is filled from the database (the message is
  stored before it is published), read again while its send may still be storing it, and
  skipped only after HOLE_GIVE_UP_SECONDS (its sender died between seq and insert).
- The bus reconnecting (NATS restarted, network cut) may have dropped frames: every socket on
  this process is then closed with 1012, and the apps reconnect and resync with `hello`.
  While the bus is down, sends are still stored and acked; pushes are decided locally.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats
import orjson
from beanie import PydanticObjectId
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pymongo import DESCENDING

from halochat.constants import AppState, ServerFrame
from halochat.documents import Message
from halochat.documents.common import utcnow
from halochat.domain.messaging.paging import messages_between
from halochat.notify.delivery import Delivery
from halochat.notify.events import Origin
from halochat.push import Push, PushService
from halochat.views import message_view
from halochat.ws.hub import Connection, Hub

log = logging.getLogger(__name__)

PRESENCE_WAIT_SECONDS = 0.5  # how long a push waits for a "seen in the foreground" answer
GAP_WAIT_SECONDS = 0.5  # how long a socket holds frames behind a missing seq before a read
# A seq whose message is still missing after this long is skipped (> TAKEN_SEQ_WAIT_SECONDS
# of halochat/domain/messaging/taken_seq.py: a taken seq is stored within it, or never).
HOLE_GIVE_UP_SECONDS = 40.0
MAX_HELD_FRAMES = 1000  # per socket: a socket further behind is dropped (it resyncs)
OUTBOX_MAX = 20_000  # publications waiting for the bus; past it they are dropped (logged)
CLOSE_RESYNC = 1012  # "service restart": the bus reconnected, frames may have been missed
SEEN = b"fg"


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


@dataclass
class _Order:
    """One socket's message order for one session."""

    next_seq: int
    held: dict[int, dict[str, Any] | None] = field(default_factory=dict)  # None: acked
    paused: bool = False  # a hello replay is running: hold everything
    probing: bool = False  # the first frame: looking for earlier ones still in flight
    filler: asyncio.Task[None] | None = None


# Where a socket's live order of a session starts, found when its first frame (seq `before`)
# arrives; `since`: when the socket subscribed. (The first seq, the message.new frames of the
# stored messages from it up to `before`, as (seq, frame) in seq order.)
Frames = list[tuple[int, dict[str, Any]]]
Fetch = Callable[[PydanticObjectId, int, datetime], Awaitable[tuple[int, Frames]]]


class Sequencer:
    """Puts a socket's `message.new` frames in seq order (see the module docstring).

    A socket's first frame of a session need not be the first one published after the socket
    subscribed (two processes publish one session's messages): before it is sent, the
    session's last message created before the socket subscribed is looked up; every seq
    after it is in flight to this socket (stored since, or taken and still being stored), so
    it is waited for (or read) and sent first."""

    def __init__(self, fetch: Fetch | None = None) -> None:
        self._orders: dict[tuple[int, PydanticObjectId], _Order] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetch = fetch or _messages_since
        self.attached_at: dict[int, datetime] = {}  # id(conn) -> when it was subscribed

    def attached(self, conn: Connection) -> None:
        """Compared with the messages' created_at (milliseconds, stamped by the sending
        process: the processes' clocks must agree, as NTP keeps them, to a few ms)."""
        now = utcnow()
        self.attached_at[id(conn)] = now.replace(microsecond=now.microsecond // 1000 * 1000)

    def _get(self, conn: Connection, session_id: PydanticObjectId) -> _Order | None:
        return self._orders.get((id(conn), session_id))

    def forget_conn(self, conn: Connection) -> None:
        self.attached_at.pop(id(conn), None)
        for key in [k for k in self._orders if k[0] == id(conn)]:
            order = self._orders.pop(key)
            if order.filler is not None:
                order.filler.cancel()

    def message(
        self, conn: Connection, session_id: PydanticObjectId, seq: int, frame: dict[str, Any]
    ) -> None:
        self._arrive(conn, session_id, seq, frame)

    def acked(self, conn: Connection, session_id: PydanticObjectId, seq: int) -> None:
        """The socket's own send, answered by its ack: counts as delivered in order."""
        self._arrive(conn, session_id, seq, None)

    def _arrive(
        self,
        conn: Connection,
        session_id: PydanticObjectId,
        seq: int,
        frame: dict[str, Any] | None,
    ) -> None:
        order = self._get(conn, session_id)
        if order is None:  # the first message this socket sees live in this session
            order = self._orders[(id(conn), session_id)] = _Order(next_seq=seq)
            since = self.attached_at.get(id(conn))
            if seq > 1 and since is not None:
                order.probing = True
                order.held[seq] = frame
                self._spawn(self._probe(conn, session_id, order, seq, since))
                return
        if (seq < order.next_seq and not order.probing) or seq in order.held:
            return  # already delivered (by a replay, or twice on the bus)
        order.held[seq] = frame
        if len(order.held) > MAX_HELD_FRAMES:
            conn.drop("behind")
            return
        if not order.paused and not order.probing:
            self._flush(conn, session_id, order)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _probe(
        self,
        conn: Connection,
        session_id: PydanticObjectId,
        order: _Order,
        first: int,
        since: datetime,
    ) -> None:
        try:
            start, found = await self._fetch(session_id, first, since)
        except Exception:
            log.exception("looking up the messages before seq %d of %s failed", first, session_id)
            # Start from the lowest frame in hand: what arrived live meanwhile is not dropped.
            start, found = min(order.held, default=first), []
        if not order.probing:  # a hello replay set this socket's order meanwhile
            return
        order.probing = False
        # From `start` on, a seq not stored yet is a send still storing it: a hole to wait
        # for (its frame comes live, or _fill reads it), not a seq before this socket.
        order.next_seq = start
        for seq, frame in found:
            order.held.setdefault(seq, frame)
        for seq in [s for s in order.held if s < order.next_seq]:
            del order.held[seq]
        if not order.paused and not conn.closed:
            self._flush(conn, session_id, order)

    def _flush(self, conn: Connection, session_id: PydanticObjectId, order: _Order) -> None:
        self._send_in_order(conn, session_id, order)
        if order.held and order.filler is None:
            order.filler = self._spawn(self._fill(conn, session_id, order))

    @staticmethod
    def _send_in_order(conn: Connection, session_id: PydanticObjectId, order: _Order) -> None:
        while order.next_seq in order.held:
            frame = order.held.pop(order.next_seq)
            # The device's live range starts at the first seq it got live (or acked): a
            # later hello replay stops below it.
            conn.live_from_seq.setdefault(session_id, order.next_seq)
            if frame is not None:
                conn.send(frame)
            order.next_seq += 1

    async def _fill(self, conn: Connection, session_id: PydanticObjectId, order: _Order) -> None:
        """A hole in the seqs stayed open: read the missing messages from the database, again
        and again while their sends may still be storing them (a seq once taken is stored
        within TAKEN_SEQ_WAIT_SECONDS or given back); a seq still missing after
        HOLE_GIVE_UP_SECONDS has no message and never will (its sender died between taking
        it and storing it): it is skipped."""
        # `hole`: the next seq when this hole's wait began. A hole filled by a live frame
        # meanwhile is no reason to read, and the next one gets its own full wait.
        delay, waited, hole = GAP_WAIT_SECONDS, 0.0, order.next_seq
        try:
            while order.held and not conn.closed and not order.paused:
                await asyncio.sleep(delay)
                if order.paused or conn.closed:
                    break
                if order.next_seq != hole:
                    delay, waited, hole = GAP_WAIT_SECONDS, 0.0, order.next_seq
                    continue
                waited += delay
                upto = min(order.held, default=order.next_seq)
                if upto > order.next_seq:
                    try:
                        docs = await _messages(session_id, order.next_seq, upto)
                    except Exception as exc:  # the database busy or away: read again later
                        log.warning("reading a seq gap of session %s failed: %r", session_id, exc)
                        docs = []
                    for doc in docs:
                        # (A frame delivered live during the read is not held again: below
                        # next_seq it would stay in `held` for good.)
                        if doc["seq"] >= order.next_seq:
                            order.held.setdefault(doc["seq"], _message_frame(session_id, doc))
                    if waited >= HOLE_GIVE_UP_SECONDS and order.next_seq == hole:
                        for seq in range(order.next_seq, upto):
                            order.held.setdefault(seq, None)
                self._send_in_order(conn, session_id, order)
                if order.next_seq != hole:  # moved on: a new hole starts its own wait
                    delay, waited, hole = GAP_WAIT_SECONDS, 0.0, order.next_seq
                else:
                    delay = min(delay * 2, 5.0)
        except Exception:
            log.exception("filling a seq gap of session %s failed", session_id)
        order.filler = None

    # -- hello replay -----------------------------------------------------------------------

    def pause(self, conn: Connection, session_id: PydanticObjectId) -> None:
        order = self._get(conn, session_id)
        if order is None:
            order = self._orders[(id(conn), session_id)] = _Order(next_seq=0)
        order.paused = True

    def replayed(self, conn: Connection, session_id: PydanticObjectId, upto: int) -> None:
        """The replay sent everything up to `upto`: resume after it."""
        order = self._get(conn, session_id)
        if order is None:
            return
        order.paused = False
        order.probing = False  # the replay sets the baseline
        order.next_seq = max(order.next_seq, upto + 1)
        for seq in [s for s in order.held if s < order.next_seq]:
            del order.held[seq]
        self._flush(conn, session_id, order)

    def delivered_live(self, conn: Connection, session_id: PydanticObjectId) -> bool:
        order = self._get(conn, session_id)
        return order is not None and order.next_seq > 0


def _message_frame(session_id: PydanticObjectId, doc: dict[str, Any]) -> dict[str, Any]:
    message = Message.model_validate(doc)
    data = {"session_id": str(session_id), "message": message_view(message)}
    return {"type": ServerFrame.MESSAGE.value, "data": data}


async def _messages(session_id: PydanticObjectId, first: int, upto: int) -> list[dict[str, Any]]:
    """The stored messages with first <= seq < upto (a hole), at most MAX_HELD_FRAMES."""
    return await messages_between(session_id, first - 1, upto - 1, limit=MAX_HELD_FRAMES)


async def _messages_since(
    session_id: PydanticObjectId, before: int, since: datetime
) -> tuple[int, Frames]:
    """The Fetch of a socket's first frame: its order starts after the last message created
    before the socket subscribed. (Not at the first message stored since: a lower seq may be
    taken and still storing; its frame would then arrive live below the start and be lost.)"""
    collection = Message.get_pymongo_collection()
    last_before = await collection.find_one(
        {"session_id": session_id, "seq": {"$lt": before}, "created_at": {"$lt": since}},
        {"seq": 1},
        sort=[("seq", DESCENDING)],
    )
    start = last_before["seq"] + 1 if last_before is not None else 1
    return start, [
        (doc["seq"], _message_frame(session_id, doc))
        for doc in await _messages(session_id, start, before)
    ]


@dataclass
class _Publication:
    subject: str
    payload: bytes
    user_id: PydanticObjectId
    push: Push | None


class ClusterDelivery(Delivery):
    """The Delivery of cluster mode: `to_user` reaches the user's devices on every process."""

    def __init__(
        self,
        *,
        url: str,
        db_name: str,
        process_id: str,
        hub: Hub,
        push: PushService,
        on_resync: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.url = url
        self.prefix = f"halochat.{db_name}"
        self.process_id = process_id
        self.hub = hub
        self.push = push
        self.sequencer = Sequencer()
        self.nc: NatsClient | None = None
        self._subs: dict[PydanticObjectId, Subscription] = {}
        self._outbox: asyncio.Queue[_Publication] = asyncio.Queue(OUTBOX_MAX)
        self._waiting: dict[str, asyncio.Future[bool]] = {}
        self._inbox_prefix = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._on_resync = on_resync
        self.dropped = 0
        self._stopping = False

    # -- connection --------------------------------------------------------------------

    async def start(self) -> None:
        self.nc = await nats.connect(
            servers=[u.strip() for u in self.url.split(",") if u.strip()],
            name=f"halochat-{self.process_id}",
            max_reconnect_attempts=-1,  # never give up: the bus comes back
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )
        self._inbox_prefix = f"_INBOX.{self.process_id}"
        await self.nc.subscribe(f"{self._inbox_prefix}.*", cb=self._on_reply)
        self._sender = asyncio.create_task(self._send_forever(), name="bus-sender")
        log.info("connected to the NATS bus at %s", self.url)

    async def stop(self) -> None:
        self._stopping = True
        if self._sender is not None:
            # What is queued leaves first (at most a moment).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 2.0)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _disconnected(self) -> None:
        if not self._stopping:
            log.warning("NATS bus disconnected; reconnecting")

    async def _reconnected(self) -> None:
        log.warning("NATS bus reconnected: closing the sockets here so their apps resync")
        if self._on_resync is not None:
            await self._on_resync()

    async def _error(self, exc: Exception) -> None:
        log.warning("NATS bus error: %r", exc)

    # -- subscriptions for the users with sockets here -------------------------------------

    def _subject(self, user_id: PydanticObjectId) -> str:
        return f"{self.prefix}.user.{user_id}"

    async def attach(self, conn: Connection) -> None:
        """A socket registered in the hub: be subscribed to its user before it is served."""
        user_id = conn.user_id
        self.sequencer.attached(conn)  # before subscribing: what is published later arrives
        if user_id in self._subs or self.nc is None:
            return
        sub = await self.nc.subscribe(self._subject(user_id), cb=self._on_frame)
        if user_id in self._subs or not self.hub.connections(user_id):
            await sub.unsubscribe()  # raced with another socket, or the socket is gone
            return
        self._subs[user_id] = sub
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)  # the server knows the subscription

    async def detach(self, conn: Connection) -> None:
        """A socket removed from the hub: unsubscribe once the user has none here."""
        self.sequencer.forget_conn(conn)
        if self.hub.connections(conn.user_id):
            return
        if (sub := self._subs.pop(conn.user_id, None)) is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- publishing --------------------------------------------------------------------

    def to_user(
        self, user_id: PydanticObjectId, frame: dict[str, Any], push: Push | None = None
    ) -> None:
        """The frame to every live device of the user on any process; `push` when none of
        them is in the foreground anywhere."""
        self._enqueue(user_id, {"f": frame, "x": None}, push)

    def to_user_except(
        self, user_id: PydanticObjectId, frame: dict[str, Any], except_conn: Origin | None
    ) -> None:
        """The frame to the user's devices on any process but `except_conn` (the socket whose
        own action this is: it got the ack, which counts as the message in its order)."""
        if isinstance(except_conn, Connection) and frame.get("type") == ServerFrame.MESSAGE.value:
            data = frame["data"]
            session_id = PydanticObjectId(data["session_id"])
            self.sequencer.acked(except_conn, session_id, data["message"]["seq"])
        exclude = [self.process_id, id(except_conn)] if except_conn is not None else None
        self._enqueue(user_id, {"f": frame, "x": exclude}, None)

    async def close_user(
        self,
        user_id: PydanticObjectId,
        code: int,
        frame: dict[str, Any],
        issued_until: datetime | None = None,
    ) -> int:
        """Closes the user's sockets here at once and on the other processes over the bus;
        returns how many closed here."""
        until = issued_until.isoformat() if issued_until is not None else None
        self._enqueue(user_id, {"c": {"code": code, "f": frame, "u": until}, "p": self.process_id})
        return await self._close_here(user_id, code, frame, issued_until)

    async def _close_here(
        self,
        user_id: PydanticObjectId,
        code: int,
        frame: dict[str, Any],
        issued_until: datetime | None,
    ) -> int:
        reason = str((frame.get("error") or {}).get("code", ""))
        return await self.hub.close_user(user_id, code, reason, frame, issued_until=issued_until)

    def _enqueue(
        self, user_id: PydanticObjectId, envelope: dict[str, Any], push: Push | None = None
    ) -> None:
        publication = _Publication(self._subject(user_id), _dumps(envelope), user_id, push)
        try:
            self._outbox.put_nowait(publication)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("bus outbox full: an event for user %s was dropped", user_id)
            if push is not None:
                self.push.send_later(user_id, push)

    async def _send_forever(self) -> None:
        assert self.nc is not None
        while True:
            pub = await self._outbox.get()
            try:
                await self._publish(pub)
            except Exception as exc:
                log.warning("bus publish failed (%r): event for user %s", exc, pub.user_id)
                if pub.push is not None and not self._local_foreground(pub.user_id):
                    self.push.send_later(pub.user_id, pub.push)
            finally:
                self._outbox.task_done()

    def _local_foreground(self, user_id: PydanticObjectId) -> bool:
        return any(c.app_state == AppState.FOREGROUND for c in self.hub.connections(user_id))

    async def _publish(self, pub: _Publication) -> None:
        assert self.nc is not None
        if pub.push is None:
            await self.nc.publish(pub.subject, pub.payload)
            return
        token = PydanticObjectId().__str__()
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[token] = waiter
        try:
            await self.nc.publish(pub.subject, pub.payload, reply=f"{self._inbox_prefix}.{token}")
        except Exception:
            self._waiting.pop(token, None)
            raise
        task = asyncio.create_task(self._decide_push(token, waiter, pub))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _decide_push(
        self, token: str, waiter: asyncio.Future[bool], pub: _Publication
    ) -> None:
        try:
            seen = await asyncio.wait_for(waiter, PRESENCE_WAIT_SECONDS)
        except TimeoutError:
            seen = False
        finally:
            self._waiting.pop(token, None)
        if not seen and pub.push is not None:
            self.push.send_later(pub.user_id, pub.push)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        waiter = self._waiting.get(token)
        if waiter is None or waiter.done():
            return
        # A status message (503 "no responders") means nobody holds a socket of the user.
        no_responders = bool(msg.headers and msg.headers.get("Status") == "503")
        if no_responders:
            waiter.set_result(False)
        elif msg.data == SEEN:
            waiter.set_result(True)

    # -- receiving ---------------------------------------------------------------------

    async def _on_frame(self, msg: Msg) -> None:
        user_id = PydanticObjectId(msg.subject.rsplit(".", 1)[-1])
        envelope = orjson.loads(msg.data)
        if (close := envelope.get("c")) is not None:  # the user's access ended
            if envelope.get("p") != self.process_id:  # (closed here already)
                until = datetime.fromisoformat(close["u"]) if close.get("u") else None
                await self._close_here(user_id, close["code"], close["f"], until)
            return
        frame: dict[str, Any] = envelope["f"]
        exclude = envelope.get("x")
        skip = None
        if exclude and exclude[0] == self.process_id:
            skip = exclude[1]
        foreground = 0
        is_message = frame.get("type") == ServerFrame.MESSAGE.value
        for conn in self.hub.connections(user_id):
            if id(conn) == skip:
                continue
            if is_message:
                data = frame["data"]
                session_id = PydanticObjectId(data["session_id"])
                self.sequencer.message(conn, session_id, data["message"]["seq"], frame)
                sent = not conn.closed
            else:
                sent = conn.send(frame)
            if sent and conn.app_state == AppState.FOREGROUND:
                foreground += 1
        if foreground and msg.reply and self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, SEEN)
