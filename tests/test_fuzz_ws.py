"""Fuzzing the WebSocket protocol with hypothesis.

Each example is a batch of frames sent over ONE authenticated connection. Properties:
- every frame gets exactly one answer (ack, error or pong), in order; a frame that is bad by
  construction (not JSON, not an object, a malformed envelope, an unknown type, oversized) gets
  an error frame; no answer is ever internal_error;
- an error frame echoes the frame's `id` whenever the frame carried a readable one (an
  oversized frame is refused unread, so its id cannot be echoed);
- the connection stays open: after the batch a ping still gets its pong;
- a rejected frame leaves every stored collection unchanged.

Frame types come from ClientFrame, so new ones are fuzzed as they are added. Example counts:
HALOCHAT_FUZZ_EXAMPLES (docs/testing.md); generation is derandomized for reproducible CI runs.
"""

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from bson import ObjectId
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from halochat.constants import (
    AppState,
    ClientFrame,
    ErrorCode,
    ReceiptKind,
    ServerFrame,
    TypingState,
)
from halochat.ws.handler import CLOSE_AUTH_FAILED
from tests.support.clients import Actor
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess
from tests.test_fuzz_http import (
    EXAMPLES,
    FUZZ_ENV,
    db_snapshot,
    fuzz_settings,
    json_junk,
    snapshot_diff,
)

WS_EXAMPLES = EXAMPLES or 30
FRAMES_PER_EXAMPLE = 10
WS_MAX_FRAME_BYTES = int(FUZZ_ENV["HALOCHAT_WS_MAX_FRAME_BYTES"])
ANSWER_TIMEOUT = 10.0
ANSWERS = {ServerFrame.ACK.value, ServerFrame.ERROR.value, ServerFrame.PONG.value}
pytestmark = pytest.mark.timeout(max(120, EXAMPLES * 6))

# Field names the frame handlers read (docs/protocol.md), so junk reaches field validation.
DATA_FIELDS = ["session_id", "client_msg_id", "body", "kind", "seq", "state", "sessions", "token"]
ENUM_VALUES = [m.value for enum in (ReceiptKind, TypingState, AppState) for m in enum]

_ids = itertools.count(1)


@dataclass
class Frame:
    """What to send, and what the answer must be."""

    payload: str | bytes
    bad: bool  # rejected by construction: the answer must be an error frame
    echo_id: str | None  # the id the answer must carry (None: no readable id)
    oversized: bool = False


# -------------------------------------------------------------------- frames


def valid_id(value: Any) -> str | None:
    return value if isinstance(value, str) and 1 <= len(value) <= 64 else None


frame_ids = st.one_of(
    st.none(),
    st.builds(lambda: f"f{next(_ids)}"),
    st.text(min_size=1, max_size=64),
)
junk_ids = st.one_of(
    json_junk.filter(lambda v: not isinstance(v, str) and v is not None),
    st.just(""),
    st.just("i" * 65),
)


def envelope(frame_type: Any, frame_id: Any, data: Any, *, bad: bool) -> Frame:
    doc: dict[str, Any] = {"type": frame_type}
    if frame_id is not None:
        doc["id"] = frame_id
    if data is not None:
        doc["data"] = data
    return Frame(orjson.dumps(doc).decode(), bad=bad, echo_id=valid_id(frame_id))


def frame_strategy(session_ids: list[str]) -> st.SearchStrategy[Frame]:
    known_types = st.sampled_from([m.value for m in ClientFrame])
    unknown_types = st.text(min_size=1, max_size=64).filter(
        lambda t: t not in ClientFrame.__members__.values()
    )
    session_values = st.sampled_from(session_ids) if session_ids else st.nothing()
    field_values = st.one_of(json_junk, session_values, st.sampled_from(ENUM_VALUES))
    data_objects = st.one_of(
        st.dictionaries(st.sampled_from(DATA_FIELDS), field_values, max_size=4),
        st.dictionaries(st.text(max_size=12), json_junk, max_size=3),
    )

    not_json = st.one_of(
        st.text(max_size=80).filter(lambda t: not _is_json(t)).map(lambda t: Frame(t, True, None)),
        st.binary(max_size=80)
        .filter(lambda b: not _is_json(b))
        .map(lambda b: Frame(b, True, None)),
    )
    not_object = json_junk.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: Frame(orjson.dumps(v).decode(), True, None)
    )
    bad_envelopes = st.one_of(
        # type missing, empty, too long or not a string
        st.builds(
            lambda t, i, d: envelope(t, i, d, bad=True),
            json_junk.filter(lambda v: not isinstance(v, str)) | st.just("") | st.just("t" * 65),
            frame_ids,
            data_objects,
        ),
        # data not an object
        st.builds(
            lambda t, i, d: envelope(t, i, d, bad=True),
            known_types,
            frame_ids,
            json_junk.filter(lambda v: not isinstance(v, dict) and v is not None),
        ),
        # id of the wrong type or length
        st.builds(lambda t, i, d: envelope(t, i, d, bad=True), known_types, junk_ids, data_objects),
        # an extra envelope field
        st.builds(
            lambda t, i, k, v: Frame(
                orjson.dumps({"type": t, "id": i, k: v}).decode(), True, valid_id(i)
            ),
            known_types,
            st.builds(lambda: f"x{next(_ids)}"),
            st.text(max_size=8).filter(lambda k: k not in ("type", "id", "data")),
            json_junk,
        ),
    )
    unknown = st.builds(
        lambda t, i, d: envelope(t, i, d, bad=True), unknown_types, frame_ids, data_objects
    )
    # Known types with random data: may be valid by chance, so any clean answer is fine.
    known = st.builds(
        lambda t, i, d: envelope(t, i, d, bad=t == ClientFrame.AUTH),
        known_types,
        frame_ids,
        data_objects | st.none(),
    )
    oversized = st.builds(
        lambda t, i, n: Frame(
            orjson.dumps({"type": t, "id": i, "data": {"body": "x" * n}}).decode(),
            bad=True,
            echo_id=None,
            oversized=True,
        ),
        known_types,
        st.builds(lambda: f"o{next(_ids)}"),
        st.integers(WS_MAX_FRAME_BYTES, WS_MAX_FRAME_BYTES * 4),
    )
    near = near_valid(known_types, session_ids)
    return st.one_of(
        not_json, not_object, bad_envelopes, unknown, known, near, near, near, oversized
    )


def valid_data(frame_type: str, session_id: str) -> dict[str, Any]:
    """A well-formed `data` per documented frame type (docs/protocol.md); others get {}."""
    data: dict[str, dict[str, Any]] = {
        ClientFrame.SEND: {"session_id": session_id, "client_msg_id": "c1", "body": "hi"},
        ClientFrame.RECEIPT: {"session_id": session_id, "kind": ReceiptKind.READ, "seq": 1},
        ClientFrame.TYPING: {"session_id": session_id, "state": TypingState.START},
        ClientFrame.HELLO: {"sessions": {session_id: 0}},
        ClientFrame.APP_STATE: {"state": AppState.BACKGROUND},
        ClientFrame.AUTH: {"token": "not-a-token"},
    }
    return dict(data.get(frame_type, {}))


@st.composite
def near_valid(
    draw: st.DrawFn, known_types: st.SearchStrategy[str], session_ids: list[str]
) -> Frame:
    """Well-formed data with at most one field dropped, replaced by junk, added, or aimed at
    another session: reaches the domain code behind the frame's own validation."""
    frame_type = draw(known_types)
    session_id = draw(st.sampled_from(session_ids)) if session_ids else str(ObjectId())
    data = valid_data(frame_type, session_id)
    if "client_msg_id" in data:
        data["client_msg_id"] = f"c{next(_ids)}"
    mutation = draw(st.sampled_from(["none", "drop", "junk", "extra", "elsewhere"]))
    keys = sorted(data)
    if mutation == "drop" and keys:
        del data[draw(st.sampled_from(keys))]
    elif mutation == "junk" and keys:
        data[draw(st.sampled_from(keys))] = draw(json_junk)
    elif mutation == "extra":
        data[draw(st.text(max_size=8))] = draw(json_junk)
    elif mutation == "elsewhere":
        other = draw(st.sampled_from([str(ObjectId()), "0" * 24, "not-an-id", ""]))
        if "session_id" in data:
            data["session_id"] = other
        if "sessions" in data:
            data["sessions"] = {other: draw(st.integers(-5, 5))}
    return envelope(frame_type, draw(frame_ids), data, bad=frame_type == ClientFrame.AUTH)


def _is_json(text: str | bytes) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


# ---------------------------------------------------------------------- client


class Socket:
    """A sync WebSocket client: send one frame, read until its answer."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        ready = self.next_frame()
        assert ready["type"] == ServerFrame.READY, ready

    def next_frame(self) -> dict[str, Any]:
        try:
            text = self.conn.recv(timeout=ANSWER_TIMEOUT)
        except ConnectionClosed as exc:
            pytest.fail(f"connection dropped: {exc!r}")
        except TimeoutError:
            pytest.fail(f"no frame within {ANSWER_TIMEOUT} s")
        return json.loads(text)

    def answer(self, payload: str | bytes) -> dict[str, Any]:
        """Sends `payload`; returns the next ack/error/pong (events such as sync or message.new
        that a valid frame may trigger are skipped)."""
        try:
            self.conn.send(payload)
        except ConnectionClosed as exc:
            pytest.fail(f"connection dropped before send: {exc!r}")
        while (frame := self.next_frame())["type"] not in ANSWERS:
            pass
        return frame

    def barrier(self) -> None:
        """A ping's pong: frames are handled in order, so everything before it is done."""
        ping_id = f"p{next(_ids)}"
        pong = self.answer(orjson.dumps({"type": ClientFrame.PING, "id": ping_id}).decode())
        assert pong == {"type": ServerFrame.PONG, "id": ping_id, "data": {}}, pong


# ----------------------------------------------------------------------- world


@pytest.fixture(scope="module")
def fuzz_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=FUZZ_ENV)


@pytest.fixture(scope="module")
def parties(fuzz_server: ServerProcess) -> tuple[Actor, Actor, list[str]]:
    """A customer and a Mitra with an ACTIVE session between them: its id is aimed at by the
    session-bound frames, so they reach the domain code."""
    customer, mitra = make_pair(fuzz_server, " wsfuzz")
    session = asyncio.run(open_active_session(fuzz_server, customer, mitra))
    return customer, mitra, [session["id"]]


def check_answer(frame: Frame, answer: dict[str, Any]) -> None:
    what = f"frame {frame.payload[:300]!r} -> {answer}"
    if answer["type"] == ServerFrame.ERROR:
        error = answer.get("error")
        assert isinstance(error, dict), what
        assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), what
        assert error["code"] != ErrorCode.INTERNAL, what
        if frame.oversized:
            assert error["code"] == ErrorCode.PAYLOAD_TOO_LARGE, what
    else:
        assert not frame.bad, f"a bad frame was not rejected: {what}"
    if frame.echo_id is not None:
        assert answer.get("id") == frame.echo_id, f"id not echoed: {what}"


@pytest.mark.parametrize("role", ["customer", "mitra"])
def test_bad_frames_get_errors_keep_the_connection_and_change_nothing(
    fuzz_server: ServerProcess, parties: tuple[Actor, Actor, list[str]], role: str
) -> None:
    customer, mitra, session_ids = parties
    actor = customer if role == "customer" else mitra
    strategy = st.lists(frame_strategy(session_ids), min_size=1, max_size=FRAMES_PER_EXAMPLE)

    @fuzz_settings(WS_EXAMPLES)
    @given(frames=strategy)
    def check(frames: list[Frame]) -> None:
        with connect(
            fuzz_server.ws_url, additional_headers=actor.headers, max_size=None, open_timeout=10
        ) as conn:
            sock = Socket(conn)
            before = db_snapshot(fuzz_server)
            for frame in frames:
                answer = sock.answer(frame.payload)
                check_answer(frame, answer)
                if answer["type"] == ServerFrame.ACK:
                    sock.barrier()  # work an accepted frame does after its ack is done
                after = db_snapshot(fuzz_server)
                if answer["type"] == ServerFrame.ERROR:
                    diff = snapshot_diff(before, after)
                    assert not diff, f"rejected {frame.payload[:300]!r}, yet:\n{diff}"
                before = after  # an accepted frame may change state
            sock.barrier()  # the connection is still open and answering

    check()


@fuzz_settings(max(WS_EXAMPLES // 3, 5))
@given(first=st.one_of(frame_strategy([]), st.builds(lambda: Frame("", True, None))))
def test_a_bad_first_frame_is_refused_with_an_error_and_close(
    fuzz_server: ServerProcess, first: Frame
) -> None:
    """Without a token in the request, the first frame must be a valid auth frame: anything
    else gets an error frame, then the close code that tells the app to re-authenticate."""
    with connect(fuzz_server.ws_url, max_size=None, open_timeout=10) as conn:
        conn.send(first.payload)
        frame = json.loads(conn.recv(timeout=ANSWER_TIMEOUT))
        assert frame["type"] == ServerFrame.ERROR, frame
        assert frame["error"]["code"] != ErrorCode.INTERNAL, frame
        with pytest.raises(ConnectionClosed):
            conn.recv(timeout=ANSWER_TIMEOUT)
        assert conn.close_code == CLOSE_AUTH_FAILED, (conn.close_code, conn.close_reason)
