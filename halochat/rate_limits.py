"""Per-user rate limits (docs/operations.md "Limits and overload"), with the `limits` library.

Moving windows, counters in the storage named by settings.rate_limit_storage_uri: in memory
per process now ("async+memory://"); a shared storage ("async+redis://host:6379", with the
library's redis extra installed) makes the limits cluster-wide without code changes.
A refused action raises 429 `rate_limited` with `details.retry_after` (seconds), which the
HTTP error handler also sends as a Retry-After header.
"""

import math
import time
from enum import StrEnum

from beanie import PydanticObjectId
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from halochat.config import Settings
from halochat.constants import ErrorCode
from halochat.errors import ApiError
from halochat.observability import metrics


class Action(StrEnum):
    """What is limited; the value is the counter's namespace in the storage."""

    CHAT_REQUEST = "chat_request"
    CHAT_CANCEL = "chat_cancel"
    HTTP_WRITE = "http_write"


def rate_limited(retry_after: float, what: str) -> ApiError:
    seconds = max(1, math.ceil(retry_after))
    return ApiError(
        429,
        ErrorCode.RATE_LIMITED,
        f"too many {what}; retry in {seconds} s",
        {"retry_after": seconds},
    )


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        storage = storage_from_string(settings.rate_limit_storage_uri)
        self._limiter = MovingWindowRateLimiter(storage)  # type: ignore[arg-type]
        self._items: dict[Action, RateLimitItem] = {
            Action.CHAT_REQUEST: parse(settings.chat_request_rate),
            Action.CHAT_CANCEL: parse(settings.chat_cancel_rate),
            Action.HTTP_WRITE: parse(settings.http_write_rate),
        }

    async def hit(self, action: Action, user_id: PydanticObjectId) -> None:
        """Counts one `action` of the user; 429 when the window is already full (the
        refused attempt is not counted)."""
        item = self._items[action]
        if await self._limiter.hit(item, action.value, str(user_id)):
            return
        metrics.RATE_LIMITED.labels(action.value).inc()
        stats = await self._limiter.get_window_stats(item, action.value, str(user_id))
        raise rate_limited(stats.reset_time - time.time(), action.value.replace("_", " ") + "s")
