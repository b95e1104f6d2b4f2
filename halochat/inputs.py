"""Validated input types shared by every HTTP body, query and WebSocket frame.

Free text (`Line`, `Text`) is normalised — Unicode NFC, CRLF as LF, surrounding whitespace and
zero-width padding trimmed — and refused when it holds a control character or nothing visible
(empty, whitespace only, zero-width characters only). Integers are bounded (`INT64_MAX`): MongoDB
stores int64, and a larger number must be a 422, never a failed write.
"""

import unicodedata
from typing import Annotated

from beanie import PydanticObjectId
from bson.errors import InvalidId
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from halochat.constants import ErrorCode
from halochat.errors import ApiError

INT64_MAX = 2**63 - 1

# Characters that show nothing on their own: separators, controls, format characters (zero-width
# space/joiners, BOM, bidi marks), surrogates, private use, unassigned, lone combining marks.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"})
# Letters that render as blanks (Hangul fillers, Braille blank): a classic "empty" name.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Zero-width padding trimmed like whitespace (not U+200D/U+E007F: emoji sequences need them).
_ZERO_WIDTH_PAD = "\u200b\u2060\ufeff\u180e"
# Controls a multi-line text (message body, closing message) may hold.
_TEXT_CONTROLS = frozenset("\n\t")


def _trim(value: str) -> str:
    while True:
        trimmed = value.strip().strip(_ZERO_WIDTH_PAD)
        if trimmed == value:
            return value
        value = trimmed


def _visible(char: str) -> bool:
    return unicodedata.category(char) not in _INVISIBLE_CATEGORIES and char not in _BLANK_LETTERS


def clean_text(value: str, *, multiline: bool) -> str:
    """The normalised text, or a PydanticCustomError (422 naming the field)."""
    value = _trim(unicodedata.normalize("NFC", value.replace("\r\n", "\n")))
    allowed = _TEXT_CONTROLS if multiline else frozenset()
    for char in value:
        category = unicodedata.category(char)
        line_break = category in ("Zl", "Zp") and not multiline
        if (category in ("Cc", "Cs") and char not in allowed) or line_break:
            raise PydanticCustomError(
                "control_character",
                "control character U+{codepoint} is not allowed",
                {"codepoint": f"{ord(char):04X}"},
            )
    if not any(_visible(char) for char in value):
        raise PydanticCustomError("blank_text", "must contain visible characters")
    return value


def _clean_line(value: str) -> str:
    return clean_text(value, multiline=False)


def _clean_multiline(value: str) -> str:
    return clean_text(value, multiline=True)


# One line of free text (names, labels, ids chosen by clients): no control character at all.
# Bound it where used, `name: Line = Field(max_length=80)`: that bounds the text as sent.
Line = Annotated[str, Field(min_length=1), AfterValidator(_clean_line)]
# Multi-line free text (message bodies, closing messages): newlines and tabs allowed. Limits
# from settings (HALOCHAT_MESSAGE_MAX_CHARS, ...) are checked after trimming by the domain.
Text = Annotated[str, Field(min_length=1), AfterValidator(_clean_multiline)]


def object_id(
    value: str, code: ErrorCode = ErrorCode.NOT_FOUND, what: str = "object"
) -> PydanticObjectId:
    """An id in a path or frame: anything that is not an ObjectId cannot exist -> 404."""
    try:
        return PydanticObjectId(value)
    except (InvalidId, TypeError) as exc:
        raise ApiError(404, code, f"{what} not found") from exc
