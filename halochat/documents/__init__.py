"""Beanie documents. ALL_DOCUMENTS is what init_beanie registers."""

from halochat.documents.app_config import AppConfig, ConfigValues, Tier
from halochat.documents.device import Device
from halochat.documents.message import Message
from halochat.documents.session import ChatSession, Closure, ExtensionRequest, TierSnapshot
from halochat.documents.transaction import Transaction
from halochat.documents.user import User

ALL_DOCUMENTS: list[type] = [User, Device, AppConfig, Transaction, ChatSession, Message]

__all__ = [
    "ALL_DOCUMENTS",
    "AppConfig",
    "ChatSession",
    "Closure",
    "ConfigValues",
    "Device",
    "ExtensionRequest",
    "Message",
    "Tier",
    "TierSnapshot",
    "Transaction",
    "User",
]
