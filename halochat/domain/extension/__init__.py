"""Extension of an expired session (DESIGN.md): the customer asks with a tier, the Mitra
accepts (a pending-payment transaction, ACTIVE again) or rejects (CLOSING); the customer may
also decline (CLOSING). Every step is one conditional update (halochat/domain/state_machine.py).
"""

from halochat.domain.extension.answer import already_resolved, answer_extension
from halochat.domain.extension.request import decline_extension, request_extension

__all__ = ["already_resolved", "answer_extension", "decline_extension", "request_extension"]
