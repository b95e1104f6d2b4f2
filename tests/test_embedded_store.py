"""The embedded MongoDB-wire database: start-up on empty and populated data, restarts, one
server per data directory, cleanup when its parent dies, and MongoDB semantics of the
flat-cost engine (halochat.db.mongoeco_flat). Speed figures live in bench/store.py."""

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import Int64, ObjectId
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure

from halochat.auth import issue_token
from halochat.db.embedded import DB_FILE, STATE_FILE, EmbeddedMongo
from halochat.documents import Message
from tests.conftest import ServerFactory
from tests.support.server import ServerProcess


def db_dir(server: ServerProcess) -> Path:
    return server.workdir / "var" / "db"


def embedded_pid(server: ServerProcess) -> int:
    return int(json.loads((db_dir(server) / STATE_FILE).read_text())["pid"])


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in {"Z", "X"}


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False


def me(server: ServerProcess, user_id: ObjectId) -> httpx.Response:
    token = issue_token(server.settings(), user_id)
    return httpx.get(
        f"{server.base_url}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def message(session_id: ObjectId, seq: Any, client_msg_id: str) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "seq": seq,
        "sender_id": ObjectId(),
        "sender_role": "customer",
        "client_msg_id": client_msg_id,
        "body": "halo",
    }


def stored_seqs(server: ServerProcess, session_id: ObjectId) -> list[int]:
    with MongoClient(EmbeddedMongo(db_dir(server)).start(), tz_aware=True) as client:
        found = client[server.db_name].messages.find({"session_id": session_id}).sort("seq", 1)
        return [m["seq"] for m in found]


def test_lifecycle_empty_start_shared_server_restart_and_parent_kill(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(own_db=True)  # started on an empty embedded database
    assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200

    # A second user of the data dir (seed/export script) reuses the live server.
    second = EmbeddedMongo(db_dir(server))
    uri = second.start()
    assert second._proc is None
    assert uri == json.loads((db_dir(server) / STATE_FILE).read_text())["uri"]
    assert embedded_pid(server) != os.getpid()
    second.stop()  # stops nothing it did not start
    assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200

    user_id, session_id = ObjectId(), ObjectId()
    with MongoClient(uri, tz_aware=True) as client:
        db = client[server.db_name]
        db.users.insert_one(
            {
                "_id": user_id,
                "role": "customer",
                "display_name": "Sinta",
                "available": False,
                "disabled": False,
            }
        )
        db.messages.insert_many([message(session_id, seq, f"c{seq}") for seq in range(1, 6)])
    assert me(server, user_id).status_code == 200

    # Clean restart: the app starts on the populated database, through a new embedded server.
    server.restart()
    assert me(server, user_id).json()["display_name"] == "Sinta"
    assert stored_seqs(server, session_id) == [1, 2, 3, 4, 5]
    with (
        MongoClient(EmbeddedMongo(db_dir(server)).start()) as client,
        pytest.raises(DuplicateKeyError),
    ):
        client[server.db_name].messages.insert_one(message(session_id, 3, "other"))  # index kept

    # SIGKILL of the app: no shutdown hook runs, yet its embedded server must go too.
    pid = embedded_pid(server)
    server.kill()
    assert wait_gone(pid), "embedded database outlived its parent"
    server.start()  # the stale state file does not stop the next start
    assert embedded_pid(server) != pid
    assert me(server, user_id).json()["display_name"] == "Sinta"
    assert stored_seqs(server, session_id) == [1, 2, 3, 4, 5]
    assert [p.name for p in db_dir(server).glob("*.sqlite3")] == [DB_FILE]


@pytest.fixture
def messages(mongodb_uri: str) -> Any:
    """A fresh messages collection with halochat's real indexes."""
    with MongoClient(mongodb_uri, tz_aware=True) as client:
        collection = client[f"t_{ObjectId()}"][Message.Settings.name]
        for index in Message.Settings.indexes:
            collection.create_indexes([index])
        yield collection
        client.drop_database(collection.database.name)


def test_compound_unique_indexes_keep_mongodb_semantics(messages: Any) -> None:
    session, other = ObjectId(), ObjectId()
    messages.insert_many([message(session, seq, f"c{seq}") for seq in range(1, 4)])
    messages.insert_one(message(other, 1, "c1"))  # same seq/client id, other session: fine

    for duplicate in (
        message(session, 2, "new"),  # (session_id, seq)
        message(session, 2.0, "new"),  # numbers compare by value across types
        message(session, Int64(2), "new"),
        message(session, 9, "c3"),  # (session_id, client_msg_id)
    ):
        with pytest.raises(DuplicateKeyError):
            messages.insert_one(duplicate)
    with pytest.raises(DuplicateKeyError):
        messages.update_one({"session_id": session, "seq": 3}, {"$set": {"seq": 1}})
    # An update that keeps its own key is no conflict with itself.
    messages.update_one({"session_id": session, "seq": 3}, {"$set": {"body": "edited"}})
    assert messages.count_documents({"session_id": session}) == 3


def test_cached_collection_features_follow_inserts_and_updates(messages: Any) -> None:
    """Queries stay right when a write introduces what cached features said was absent."""
    session = ObjectId()
    messages.insert_many([message(session, seq, f"c{seq}") for seq in range(1, 4)])
    page = list(messages.find({"session_id": session}).sort("seq", -1).limit(2))
    assert [m["seq"] for m in page] == [3, 2]

    # Now a document holds an array and another a string where numbers were.
    messages.insert_one({**message(session, [10, 0], "arr")})
    messages.update_one({"client_msg_id": "c1"}, {"$set": {"seq": "one"}})
    found = {m["client_msg_id"] for m in messages.find({"session_id": session, "seq": 10})}
    assert found == {"arr"}
    ordered = [m["client_msg_id"] for m in messages.find({"session_id": session}).sort("seq", 1)]
    # MongoDB order: arrays sort by their smallest element (0), numbers, then strings.
    assert ordered == ["arr", "c2", "c3", "c1"]


def test_conditional_updates_by_id_match_like_mongodb(messages: Any) -> None:
    """{_id: v, <any conditions>} is read by key and matched in Python (mongoeco_flat #8)."""
    sessions = messages.database["sessions"]
    due = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [ObjectId() for _ in range(3)]
    sessions.insert_many(
        [
            {"_id": ids[0], "state": "ACTIVE", "ends_at": due, "n": 1, "tags": ["a", "b"]},
            {"_id": ids[1], "state": "EXPIRED", "ends_at": due, "n": 2},
            {"_id": ids[2], "state": "ACTIVE", "ends_at": due + timedelta(hours=1), "n": 3},
        ]
    )
    cond = {"state": {"$in": ["ACTIVE", "CLOSING"]}, "ends_at": {"$lte": due}}
    hits = [
        sessions.find_one_and_update({"_id": i, **cond}, {"$inc": {"n": 10}}) is not None
        for i in ids
    ]
    assert hits == [True, False, False]
    assert [d["n"] for d in sessions.find({"_id": {"$in": ids}}).sort("_id", 1)] == [11, 2, 3]
    # Operators, arrays, $or and $ne behave as in MongoDB; a missing _id matches nothing.
    assert sessions.update_one({"_id": ids[0], "tags": "b", "n": {"$gt": 5}}, {"$set": {"x": 1}})
    assert sessions.find_one({"_id": ids[0]})["x"] == 1
    assert (
        sessions.update_one(
            {"_id": ids[1], "$or": [{"n": 99}, {"state": "EXPIRED"}], "x": {"$ne": 1}},
            {"$set": {"x": 2}},
        ).modified_count
        == 1
    )
    assert (
        sessions.update_one({"_id": ids[2], "n": {"$lt": 3}}, {"$set": {"x": 3}}).matched_count == 0
    )
    assert sessions.update_one({"_id": ObjectId(), "n": 1}, {"$set": {"x": 4}}).matched_count == 0


def test_change_streams_are_not_served(messages: Any) -> None:
    """Why the embedded child records no change events (mongoeco_flat #10): its wire server
    answers $changeStream with an error, so no client could ever read them."""
    with pytest.raises(OperationFailure, match="changeStream"), messages.watch():
        pass
    messages.insert_one(message(ObjectId(), 1, "after"))  # writes are unaffected
    assert messages.count_documents({"client_msg_id": "after"}) == 1


def test_cached_features_follow_updates_stored_with_sql(messages: Any) -> None:
    """An update stores its row with SQL; the feature merge reads that row back (#3)."""
    session = ObjectId()
    messages.insert_many([message(session, seq, f"c{seq}") for seq in range(1, 4)])
    assert [m["seq"] for m in messages.find({"session_id": session, "seq": 2})] == [2]
    # No array anywhere at `seq` so far; an update puts one there, then a string.
    messages.update_one({"client_msg_id": "c3"}, {"$set": {"seq": [20, 30]}})
    found = [m["client_msg_id"] for m in messages.find({"session_id": session, "seq": 30})]
    assert found == ["c3"]  # an array matches by any element, as in MongoDB
    messages.update_one({"client_msg_id": "c1"}, {"$set": {"seq": "z"}})
    ordered = [m["client_msg_id"] for m in messages.find({"session_id": session}).sort("seq", -1)]
    assert ordered == ["c1", "c3", "c2"]  # strings sort after numbers; the array by its max
