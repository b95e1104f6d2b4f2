"""The first half of the session lifecycle (DESIGN.md, docs/pairing.md): offers, request,
accept, timeout and cancel, Mitra availability; one module each."""

from halochat.domain.pairing.accept import accept, request_taken
from halochat.domain.pairing.availability import get_session, open_requests_for, set_availability
from halochat.domain.pairing.offers import chat_options, chat_request_data, offer_to
from halochat.domain.pairing.request import request_chat
from halochat.domain.pairing.timeout import cancel, pairing_timeout
from halochat.domain.transactions import transaction_view

__all__ = [
    "accept",
    "cancel",
    "chat_options",
    "chat_request_data",
    "get_session",
    "offer_to",
    "open_requests_for",
    "pairing_timeout",
    "request_chat",
    "request_taken",
    "set_availability",
    "transaction_view",
]
