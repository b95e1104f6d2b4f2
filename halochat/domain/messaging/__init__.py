"""Chat messages (DESIGN.md "Messages"): send, receipts, typing, history paging, and the seq
counter; one module each. The reconnect protocol (hello, replay) is in halochat/ws/resync.py.
"""

from halochat.domain.messaging.common import Sender, SendResult, invalid_input
from halochat.domain.messaging.paging import (
    find_party_sessions,
    history,
    messages_between,
    open_sessions_of,
)
from halochat.domain.messaging.receipts import receipt
from halochat.domain.messaging.send import received_at, send_message
from halochat.domain.messaging.seq import recover_messaging
from halochat.domain.messaging.typing_notices import typing

__all__ = [
    "SendResult",
    "Sender",
    "find_party_sessions",
    "history",
    "invalid_input",
    "messages_between",
    "open_sessions_of",
    "receipt",
    "received_at",
    "recover_messaging",
    "send_message",
    "typing",
]
