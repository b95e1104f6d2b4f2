"""Beanie documents. ALL_DOCUMENTS is what init_beanie registers."""

from halochat.documents.app_config import AppConfig, ConfigValues, Tier
from halochat.documents.device import Device
from halochat.documents.message import Message
from halochat.documents.process import DatabaseLease, ProcessMember
from halochat.documents.session import ChatSession, Closure, ExtensionRequest, TierSnapshot
from halochat.documents.timeline import EventActor, TimelineEvent
from halochat.documents.transaction import Transaction
from halochat.documents.user import User

ALL_DOCUMENTS: list[type] = [User, Device, AppConfig, Transaction, ChatSession, Message]
ALL_DOCUMENTS += [ProcessMember, DatabaseLease]  # docs/scaling.md
ALL_DOCUMENTS.append(TimelineEvent)  # support's session timeline (halochat/observability)

__all__ = [
    "ALL_DOCUMENTS",
    "AppConfig",
    "ChatSession",
    "Closure",
    "ConfigValues",
    "DatabaseLease",
    "Device",
    "EventActor",
    "ExtensionRequest",
    "Message",
    "ProcessMember",
    "Tier",
    "TierSnapshot",
    "TimelineEvent",
    "Transaction",
    "User",
]
