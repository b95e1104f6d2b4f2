"""Export chat sessions with their messages for support staff, as JSON Lines or CSV.

    halochat export [--format jsonl|csv] [--output FILE|-]
        [--since ISO] [--until ISO] [--customer ID] [--mitra ID] [--session ID]
        [--state STATE ...] [--no-messages] [--timeline] [--batch-size N]

Streams with constant memory: sessions and each session's messages are read through
cursors in batches and written as they arrive. --since/--until filter on the session's
created_at (when the customer asked for the chat); sessions come out in creation order (_id).
JSON Lines: one record per line, {"record": "session", ...} followed by that session's
{"record": "message", ...} lines. CSV: one row per message with the session columns repeated
(a session without messages gets one row with empty message columns).
--timeline (JSON Lines only) adds each session's timeline after its messages, as
{"record": "timeline", "session_id", "at", "kind", "actor", "data"} lines, oldest first.
Uses MONGODB_URI / HALOCHAT_DB_NAME, else the embedded database under HALOCHAT_DATA_DIR
(reusing the server `make run` started on it, if any). Details: docs/support.md.
"""

import argparse
import csv
import itertools
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, MongoClient
from tqdm import tqdm

from halochat.config import Settings
from halochat.constants import Role, SessionState
from halochat.server import database_uri

SESSION_COLUMNS = [
    "session_id",
    "state",
    "customer_id",
    "customer_name",
    "mitra_id",
    "mitra_name",
    "tier_kind",
    "tier_id",
    "tier_label",
    "tier_minutes",
    "tier_price",
    "currency",
    "created_at",
    "started_at",
    "ends_at",
    "ended_at",
    "completed_at",
    "end_reason",
    "customer_closure",
    "customer_closure_at",
    "mitra_closure",
    "mitra_closure_at",
]
MESSAGE_COLUMNS = [
    "message_seq",
    "message_id",
    "sender_id",
    "sender_role",
    "message_created_at",
    "body",
]


def parse_time(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # naive input is read as UTC


def parse_id(value: str) -> ObjectId:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"not an id: {value!r}") from exc


def build_query(args: argparse.Namespace) -> dict[str, Any]:
    query: dict[str, Any] = {}
    created: dict[str, datetime] = {}
    if args.since:
        created["$gte"] = args.since
    if args.until:
        created["$lt"] = args.until
    if created:
        query["created_at"] = created
    if args.customer:
        query["customer_id"] = args.customer
    if args.mitra:
        query["mitra_id"] = args.mitra
    if args.session:
        query["_id"] = args.session
    if args.state:
        query["state"] = {"$in": [s.value for s in args.state]}
    return query


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return "" if value is None else str(value)


def session_record(doc: dict[str, Any]) -> dict[str, Any]:
    tier = doc.get("tier") or {}
    closures = doc.get("closures") or {}
    row: dict[str, Any] = {
        "session_id": str(doc["_id"]),
        "state": doc.get("state"),
        "customer_id": str(doc.get("customer_id") or ""),
        "customer_name": doc.get("customer_name"),
        "mitra_id": str(doc["mitra_id"]) if doc.get("mitra_id") else None,
        "mitra_name": doc.get("mitra_name"),
        "tier_kind": tier.get("kind"),
        "tier_id": tier.get("tier_id"),
        "tier_label": tier.get("label"),
        "tier_minutes": tier.get("minutes"),
        "tier_price": tier.get("price"),
        "currency": tier.get("currency"),
        "end_reason": doc.get("end_reason"),
    }
    for field in ("created_at", "started_at", "ends_at", "ended_at", "completed_at"):
        row[field] = _iso(doc[field]) if doc.get(field) else None
    for role in (Role.CUSTOMER.value, Role.MITRA.value):
        closure = closures.get(role) or {}
        row[f"{role}_closure"] = closure.get("text")
        row[f"{role}_closure_at"] = _iso(closure["at"]) if closure.get("at") else None
    return row


def message_record(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "message_seq": doc["seq"],
        "message_id": str(doc["_id"]),
        "sender_id": str(doc["sender_id"]),
        "sender_role": doc["sender_role"],
        "message_created_at": _iso(doc.get("created_at")),
        "body": doc["body"],
    }


def iter_export(
    db: Any, query: dict[str, Any], with_messages: bool, batch_size: int
) -> Iterator[tuple[dict[str, Any], Iterator[dict[str, Any]]]]:
    """(session record, its message records) pairs; every read is a batched cursor."""
    sessions = db["sessions"].find(query, batch_size=batch_size).sort("_id", ASCENDING)
    for doc in sessions:
        messages: Iterator[dict[str, Any]] = iter(())
        if with_messages:
            cursor = (
                db["messages"]
                .find({"session_id": doc["_id"]}, batch_size=batch_size)
                .sort("seq", ASCENDING)
            )
            messages = (message_record(m) for m in cursor)
        yield session_record(doc), messages


def timeline_records(db: Any, session_id: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    """The session's timeline events (docs/support.md), oldest first, as export records."""
    cursor = (
        db["session_timeline"]
        .find({"session_id": session_id}, batch_size=batch_size)
        .sort([("at", ASCENDING), ("_id", ASCENDING)])
    )
    for event in cursor:
        yield {
            "record": "timeline",
            "at": _iso(event["at"]),
            "kind": event["kind"],
            "actor": event["actor"],
            "data": event.get("data") or {},
        }


def with_timeline(db: Any, records: Iterator[Any], batch_size: int) -> Iterator[Any]:
    """Appends each session's timeline records to its message records (JSON Lines)."""
    for session, messages in records:
        sid = ObjectId(session["session_id"])
        yield session, itertools.chain(messages, timeline_records(db, sid, batch_size))


def write_jsonl(out: IO[str], records: Iterator[Any], progress: Any) -> None:
    for session, messages in records:
        out.write(orjson.dumps({"record": "session", **session}).decode() + "\n")
        for message in messages:
            # A timeline record brings its own "record" key (--timeline).
            line = {"record": "message", "session_id": session["session_id"], **message}
            out.write(orjson.dumps(line).decode() + "\n")
            progress.update(1)
        progress.set_postfix_str(f"session {session['session_id']}", refresh=False)


def write_csv(out: IO[str], records: Iterator[Any], progress: Any) -> None:
    writer = csv.DictWriter(out, fieldnames=SESSION_COLUMNS + MESSAGE_COLUMNS)
    writer.writeheader()
    for session, messages in records:
        wrote = False
        for message in messages:
            writer.writerow({**session, **message})
            progress.update(1)
            wrote = True
        if not wrote:
            writer.writerow(session)


def make_progress() -> Any:
    """A tqdm bar on stderr, only when stderr is a terminal (never pollutes the output):
    tqdm's disable=None."""
    return tqdm(unit=" msg", file=sys.stderr, desc="exporting", disable=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="halochat export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument("--output", default="-", help="file to write, or - for stdout")
    parser.add_argument("--since", type=parse_time, help="created_at >= this (ISO 8601, UTC)")
    parser.add_argument("--until", type=parse_time, help="created_at < this (ISO 8601, UTC)")
    parser.add_argument("--customer", type=parse_id, help="customer user id")
    parser.add_argument("--mitra", type=parse_id, help="Mitra user id")
    parser.add_argument("--session", type=parse_id, help="one session id")
    parser.add_argument(
        "--state", type=SessionState, nargs="+", choices=list(SessionState), help="session states"
    )
    parser.add_argument("--no-messages", action="store_true", help="sessions only")
    parser.add_argument(
        "--timeline", action="store_true", help="add each session's timeline (jsonl only)"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="cursor batch size")
    return parser


def export(args: argparse.Namespace, uri: str, db_name: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    out: IO[str] = (
        sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    )
    progress = make_progress()
    try:
        records = iter_export(
            client[db_name], build_query(args), not args.no_messages, args.batch_size
        )
        if args.timeline:
            records = with_timeline(client[db_name], records, args.batch_size)
        (write_csv if args.format == "csv" else write_jsonl)(out, records, progress)
        out.flush()
    finally:
        progress.close()
        if out is not sys.stdout:
            out.close()
        client.close()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.timeline and args.format == "csv":
        parser.error("--timeline needs --format jsonl")
    if args.format == "csv" and args.output == "-":
        sys.stdout.reconfigure(newline="")  # the csv module writes its own \r\n
    with database_uri(Settings()) as settings:
        assert settings.mongodb_uri is not None
        export(args, settings.mongodb_uri, settings.db_name)


if __name__ == "__main__":
    main()
