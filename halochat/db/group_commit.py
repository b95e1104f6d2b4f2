"""Group commit: concurrent single-document inserts leave as one insert_many.

Each caller awaits its own document's outcome, so "acked only once stored" holds per
document. While one batch is being written the next one gathers, so batches grow with the
load and a lone insert waits for no timer. The write is unordered: one document's duplicate
key fails only that document (its caller gets the DuplicateKeyError).

Bounded (docs/operations.md "Limits and overload"): at most max_inflight documents and
max_inflight_bytes are handed in and not yet stored. A caller with a deadline that cannot get
in before it gets StoreOverloaded and its document is NOT stored. A document that got in is
written (the bound keeps that to at most two writes' time): withdrawing admitted documents at
a deadline made an overloaded store do work for nothing (goodput collapsed to 22 % at twice
the capacity, measured), and "answered overloaded" must always mean "not stored".
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

log = logging.getLogger(__name__)

MAX_BATCH = 1_000
MAX_INFLIGHT = 512
MAX_INFLIGHT_BYTES = 8 * 1024 * 1024
MIN_INFLIGHT = 16
RATE_WEIGHT = 0.3  # of the newest write in the moving average of the store's speed

Pending = tuple[dict[str, Any], asyncio.Future[None], int]


class StoreOverloaded(Exception):
    """The document could not be handed to the store before the caller's deadline; it was
    not stored (the caller may retry it)."""


class InsertBatcher:
    def __init__(
        self, collection: Callable[[], AsyncCollection], max_batch: int = MAX_BATCH
    ) -> None:
        self._collection = collection  # resolved at write time (after init_beanie)
        self._max_batch = max_batch
        self._pending: list[Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.max_inflight = MAX_INFLIGHT
        self.max_inflight_bytes = MAX_INFLIGHT_BYTES
        # Admitted documents are written: at most the store's recent speed x this many
        # seconds of them get in, so an admitted one is answered within about two of these
        # even when the store slows down (None: no limit beyond max_inflight).
        self.target_seconds: float | None = None
        self.rate: float | None = None  # documents per second of recent writes
        self.inflight = 0  # documents handed in, not yet stored (or failed)
        self.inflight_bytes = 0
        self._room = asyncio.Event()  # set whenever documents leave

    def limit(self) -> int:
        """How many documents may be in flight now."""
        if self.target_seconds is None or self.rate is None:
            return self.max_inflight
        return min(self.max_inflight, max(MIN_INFLIGHT, int(self.rate * self.target_seconds)))

    def _full(self, size: int) -> bool:
        return self.inflight >= self.limit() or (
            self.inflight > 0 and self.inflight_bytes + size > self.max_inflight_bytes
        )

    def _release(self, size: int) -> None:
        self.inflight -= 1
        self.inflight_bytes -= size
        self._room.set()

    async def insert(
        self, document: dict[str, Any], *, size: int = 0, deadline: float | None = None
    ) -> None:
        """Returns once `document` is stored; raises what storing it raised. `size`: its
        approximate size in bytes; `deadline` (event-loop time): the latest time to get in
        under the bounds, else StoreOverloaded."""
        loop = asyncio.get_running_loop()
        while self._full(size):
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise StoreOverloaded
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), remaining)
            except TimeoutError as exc:
                raise StoreOverloaded from exc
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((document, future, size))
        self.inflight += 1
        self.inflight_bytes += size
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        await future

    async def aclose(self) -> None:
        """Waits until every document handed in so far has been written (or failed)."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write_all(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._write(batch)
        finally:
            self._writer = None

    def _measure(self, count: int, seconds: float) -> None:
        sample = count / max(seconds, 1e-3)
        self.rate = (
            sample if self.rate is None else (RATE_WEIGHT * sample + (1 - RATE_WEIGHT) * self.rate)
        )

    async def _write(self, batch: list[Pending]) -> None:
        failed: dict[int, BaseException] = {}
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._collection().insert_many([doc for doc, _, _ in batch], ordered=False)
            self._measure(len(batch), loop.time() - started)
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                failed[error["index"]] = _write_error(error)
            if len(failed) != len(batch) - exc.details.get("nInserted", 0):
                # Should not happen (e.g. a write concern error): nobody is told "stored"
                # unless the server said so for that document.
                log.error("insert batch: unexpected result %s", exc.details)
                failed = dict.fromkeys(range(len(batch)), exc)
        except Exception as exc:  # handed to every waiting caller
            failed = dict.fromkeys(range(len(batch)), exc)
        for index, (_, future, size) in enumerate(batch):
            self._release(size)
            if future.done():
                continue
            if (error := failed.get(index)) is not None:
                future.set_exception(error)
            else:
                future.set_result(None)


def _write_error(error: dict[str, Any]) -> Exception:
    if error.get("code") in (11000, 11001):
        return DuplicateKeyError(error.get("errmsg", "duplicate key"), error.get("code"), error)
    return RuntimeError(f"insert failed: {error.get('errmsg')} (code {error.get('code')})")
