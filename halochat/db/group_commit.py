"""Group commit: concurrent single-document inserts leave as one insert_many.

Each caller awaits its own document's outcome, so "acked only once stored" holds per
document. While one batch is being written the next one gathers, so batches grow with the
load and a lone insert waits for no timer. The write is unordered: one document's duplicate
key fails only that document (its caller gets the DuplicateKeyError).
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

log = logging.getLogger(__name__)

MAX_BATCH = 1_000

Pending = tuple[dict[str, Any], asyncio.Future[None]]


class InsertBatcher:
    def __init__(
        self, collection: Callable[[], AsyncCollection], max_batch: int = MAX_BATCH
    ) -> None:
        self._collection = collection  # resolved at write time (after init_beanie)
        self._max_batch = max_batch
        self._pending: list[Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, document: dict[str, Any]) -> None:
        """Returns once `document` is stored; raises what storing it raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((document, future))
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

    async def _write(self, batch: list[Pending]) -> None:
        failed: dict[int, BaseException] = {}
        try:
            await self._collection().insert_many([doc for doc, _ in batch], ordered=False)
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
        for index, (_, future) in enumerate(batch):
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
