"""A crash between a transaction's insert and its session write leaves an orphan
transaction; the restart voids it, so a free trial is not lost forever."""

from datetime import timedelta

from bson import ObjectId

from halochat.documents.common import utcnow
from tests.support.clients import api
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess


async def test_restart_voids_orphan_transactions(server: ServerProcess) -> None:
    customer, _ = make_pair(server, "-orphan")
    kept_customer, kept_mitra = make_pair(server, "-kept")
    session = await open_active_session(server, kept_customer, kept_mitra)
    long_ago = utcnow() - timedelta(minutes=5)
    # As left by a crash: a free trial whose session was never stored, and an extension
    # transaction the session update never pointed at.
    trial = (
        server.db["transactions"]
        .insert_one(
            {
                "customer_id": ObjectId(customer.id),
                "session_id": ObjectId(),
                "kind": "free_trial",
                "minutes": 5,
                "price": 0,
                "currency": "IDR",
                "status": "paid",
                "free_trial_customer_id": ObjectId(customer.id),
                "created_at": long_ago,
                "updated_at": long_ago,
            }
        )
        .inserted_id
    )
    extension = (
        server.db["transactions"]
        .insert_one(
            {
                "customer_id": ObjectId(kept_customer.id),
                "session_id": ObjectId(session["id"]),
                "kind": "extension",
                "tier_id": "15m",
                "minutes": 15,
                "price": 15000,
                "currency": "IDR",
                "status": "pending_payment",
                "created_at": long_ago,
                "updated_at": long_ago,
            }
        )
        .inserted_id
    )
    async with api(server.base_url, customer) as http:
        before = (await http.get("/v1/chat/options")).json()
    assert before["kind"] == "tiers"  # the orphan counts as a used free trial

    # The real session's own transaction, just as old, must survive the check.
    own = server.db["sessions"].find_one({"_id": ObjectId(session["id"])})["transaction_ids"]
    server.db["transactions"].update_many({"_id": {"$in": own}}, {"$set": {"created_at": long_ago}})

    server.kill()
    server.start()

    trial_doc = server.db["transactions"].find_one({"_id": trial})
    assert trial_doc["status"] == "void" and "free_trial_customer_id" not in trial_doc
    assert server.db["transactions"].find_one({"_id": extension})["status"] == "void"
    assert [t["status"] for t in server.db["transactions"].find({"_id": {"$in": own}})] == ["paid"]
    async with api(server.base_url, customer) as http:
        after = (await http.get("/v1/chat/options")).json()
    assert after["kind"] == "free_trial"
