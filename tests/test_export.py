"""`halochat export` against a fixture inserted directly into the test database (in-process;
the memory test runs it as a process of its own to read that process's peak RSS)."""

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from bson import ObjectId

from halochat.cli import export
from tests.support import stored
from tests.support.server import REPO_ROOT, ServerProcess

EXPORT_COMMAND = [sys.executable, "-m", "halochat", "export"]
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
TRICKY = 'Halo, "bestie"\nbaris kedua; 🙂 ümlaut\r\nend'


def session_doc(
    customer: ObjectId, mitra: ObjectId, created: datetime, state: str = "COMPLETED", **kw: Any
) -> dict[str, Any]:
    times = {
        "started_at": created + timedelta(seconds=10),
        "ends_at": created + timedelta(minutes=15, seconds=10),
        "ended_at": created + timedelta(minutes=15, seconds=10),
        "completed_at": created + timedelta(minutes=16),
        "closures": {
            "customer": {"text": TRICKY, "at": created + timedelta(minutes=15, seconds=30)},
            "mitra": {"text": "Terima kasih, sampai jumpa", "at": created + timedelta(minutes=16)},
        },
    }
    parties = {
        "customer_id": customer,
        "customer_name": 'Rina, "R"',
        "mitra_id": mitra,
        "mitra_name": "Bestie Sari 🌸",
    }
    return stored.session_doc(created, state=state, **{**parties, **times, **kw})


def message_docs(session: dict[str, Any], bodies: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, body in enumerate(bodies, start=1):
        customer_turn = i % 2 == 1
        out.append(
            {
                "_id": ObjectId(),
                "session_id": session["_id"],
                "seq": i,
                "sender_id": session["customer_id"] if customer_turn else session["mitra_id"],
                "sender_role": "customer" if customer_turn else "mitra",
                "client_msg_id": f"c{i}",
                "body": body,
                "created_at": session["started_at"] + timedelta(seconds=i),
            }
        )
    return out


@contextmanager
def export_env(server: ServerProcess) -> Iterator[None]:
    """The environment support staff would set: the database, and no other HALOCHAT_*."""
    env = {"MONGODB_URI": server.mongodb_uri or "", "HALOCHAT_DB_NAME": server.db_name}
    with mock.patch.dict(os.environ, env):
        for name in [n for n in os.environ if n.startswith("HALOCHAT_") and n not in env]:
            del os.environ[name]
        yield


def run_export(server: ServerProcess, *args: str, output: Path | None = None) -> str:
    """Runs `halochat export` in-process as support staff would; returns stdout, or the
    output file's text."""
    argv = [*args, *(["--output", str(output)] if output is not None else [])]
    # A real text stream (main reconfigures stdout's newlines for CSV), not a terminal.
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="", write_through=True)
    stderr = io.StringIO()
    with export_env(server), redirect_stdout(stdout), redirect_stderr(stderr):
        export.main(argv)
    assert stderr.getvalue() == ""  # no progress bar when stderr is not a TTY
    text = output.read_text(encoding="utf-8") if output else stdout.buffer.getvalue().decode()
    return text


def run_for_rss(server: ServerProcess, output: Path, *args: str) -> int:
    """Peak RSS (kB) of one export run writing to a file, read from its own rusage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALOCHAT_")}
    env.update({"MONGODB_URI": server.mongodb_uri or "", "HALOCHAT_DB_NAME": server.db_name})
    proc = subprocess.Popen(
        [*EXPORT_COMMAND, "--format", "csv", "--output", str(output), *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_maxrss


@pytest.fixture(scope="module")
def fixture_db(server: ServerProcess) -> dict[str, Any]:
    """Two customers, two Mitras, four sessions on different days, tricky text."""
    c1, c2, m1, m2 = (ObjectId() for _ in range(4))
    s1 = session_doc(c1, m1, T0)
    s2 = session_doc(c1, m2, T0 + timedelta(days=1))
    s3 = session_doc(c2, m1, T0 + timedelta(days=2))
    s4 = session_doc(
        c2,
        m2,
        T0 + timedelta(days=3),
        state="CANCELLED",
        mitra_id=None,
        mitra_name=None,
        started_at=None,
        closures={},
    )
    server.db["sessions"].insert_many([s1, s2, s3, s4])
    msgs = {
        s1["_id"]: message_docs(s1, [TRICKY, "a,b,c", '"quoted"', "🙂🙂"]),
        s2["_id"]: message_docs(s2, ["hi", "halo"]),
        s3["_id"]: message_docs(s3, ["satu"]),
    }
    server.db["messages"].insert_many([m for ms in msgs.values() for m in ms])
    return {"c1": c1, "c2": c2, "m1": m1, "m2": m2, "sessions": [s1, s2, s3, s4], "msgs": msgs}


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_jsonl_full_export(server: ServerProcess, fixture_db: dict[str, Any]) -> None:
    text = run_export(server, "--format", "jsonl")
    records = parse_jsonl(text)
    sessions = [r for r in records if r["record"] == "session"]
    assert [r["session_id"] for r in sessions] == [str(s["_id"]) for s in fixture_db["sessions"]]
    first = sessions[0]
    assert first["customer_name"] == 'Rina, "R"' and first["mitra_name"] == "Bestie Sari 🌸"
    assert first["customer_closure"] == TRICKY
    assert first["mitra_closure"] == "Terima kasih, sampai jumpa"
    assert first["tier_minutes"] == 15 and first["state"] == "COMPLETED"
    assert first["created_at"] == T0.isoformat()
    # Messages follow their session line, in seq order, bodies intact.
    s1_id = str(fixture_db["sessions"][0]["_id"])
    idx = records.index(first)
    following = records[idx + 1 : idx + 5]
    assert [m["record"] for m in following] == ["message"] * 4
    assert [m["session_id"] for m in following] == [s1_id] * 4
    expected = fixture_db["msgs"][first_id(fixture_db)]
    assert [m["body"] for m in following] == [m["body"] for m in expected]
    assert [m["message_seq"] for m in following] == [1, 2, 3, 4]
    assert sum(r["record"] == "message" for r in records) == 7


def first_id(fixture_db: dict[str, Any]) -> ObjectId:
    return fixture_db["sessions"][0]["_id"]


def test_csv_quoting_round_trip(
    server: ServerProcess, fixture_db: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "export.csv"
    text = run_export(server, "--format", "csv", output=out)
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # One row per message, plus one row for the session without messages.
    assert len(rows) == 7 + 1
    s1 = [r for r in rows if r["session_id"] == str(first_id(fixture_db))]
    assert [r["body"] for r in s1] == [TRICKY, "a,b,c", '"quoted"', "🙂🙂"]
    assert all(r["customer_name"] == 'Rina, "R"' for r in s1)
    assert all(r["customer_closure"] == TRICKY for r in s1)
    cancelled = [r for r in rows if r["state"] == "CANCELLED"]
    assert len(cancelled) == 1 and cancelled[0]["body"] == "" and cancelled[0]["mitra_id"] == ""
    # Also through stdout: same bytes parse to the same rows.
    stdout_text = run_export(server, "--format", "csv")
    assert list(csv.DictReader(io.StringIO(stdout_text, newline=""))) == rows
    assert text == out.read_text(encoding="utf-8")


def test_filters(server: ServerProcess, fixture_db: dict[str, Any]) -> None:
    s1, s2, s3, s4 = (str(s["_id"]) for s in fixture_db["sessions"])

    def session_ids(*args: str) -> list[str]:
        text = run_export(server, "--format", "jsonl", *args)
        return [r["session_id"] for r in parse_jsonl(text) if r["record"] == "session"]

    assert session_ids("--customer", str(fixture_db["c1"])) == [s1, s2]
    assert session_ids("--mitra", str(fixture_db["m1"])) == [s1, s3]
    assert session_ids("--session", s3) == [s3]
    since = (T0 + timedelta(days=1)).isoformat()
    until = (T0 + timedelta(days=3)).isoformat()
    assert session_ids("--since", since, "--until", until) == [s2, s3]
    assert session_ids("--since", "2026-03-03T00:00:00") == [s3, s4]  # naive = UTC
    assert session_ids("--state", "CANCELLED") == [s4]
    assert session_ids("--customer", str(fixture_db["c2"]), "--state", "COMPLETED") == [s3]
    text = run_export(server, "--no-messages", "--customer", str(fixture_db["c1"]))
    assert [r["record"] for r in parse_jsonl(text)] == ["session", "session"]


def test_bad_arguments_are_refused(server: ServerProcess, fixture_db: dict[str, Any]) -> None:
    for args in (["--since", "yesterday"], ["--customer", "nope"], ["--state", "DONE"]):
        stdout, stderr = io.StringIO(), io.StringIO()
        with (
            export_env(server),
            redirect_stdout(stdout),
            redirect_stderr(stderr),
            pytest.raises(SystemExit) as exited,
        ):
            export.main(args)
        assert exited.value.code == 2 and stdout.getvalue() == "", stderr.getvalue()


MEMORY_SESSIONS = 20
MEMORY_MESSAGES = 10_000
BODY = 'isi pesan yang cukup panjang, dengan koma dan "kutip" 🙂 ' * 16  # ~960 chars
INSERT_BATCH = 100


def insert_volume(db: Any, small_customer: ObjectId) -> None:
    """MEMORY_MESSAGES messages in MEMORY_SESSIONS sessions; the first two sessions (a tenth
    of the messages) belong to `small_customer`."""
    per = MEMORY_MESSAGES // MEMORY_SESSIONS
    for n in range(MEMORY_SESSIONS):
        customer = small_customer if n < 2 else ObjectId()
        s = session_doc(customer, ObjectId(), T0 + timedelta(minutes=n))
        db["sessions"].insert_one(s)
        batch = message_docs(s, [f"{i} {BODY}" for i in range(per)])
        # Small batches: on a starved machine one big insert kept the single-threaded
        # embedded store from answering pymongo's heartbeat, which then cancelled it.
        for start in range(0, per, INSERT_BATCH):
            db["messages"].insert_many(batch[start : start + INSERT_BATCH], ordered=False)


@pytest.mark.timeout(600)  # the embedded store inserts ~1 ms/message on a busy machine
def test_memory_stays_flat(server: ServerProcess, tmp_path: Path) -> None:
    """Exporting 10,000 messages (~10 MB of text) needs about as much memory as exporting 1,000."""
    volume = ServerProcess(tmp_path / "volume", mongodb_uri=server.mongodb_uri)
    small_customer = ObjectId()
    insert_volume(volume.db, small_customer)
    small_out, large_out = tmp_path / "small.csv", tmp_path / "large.csv"
    small_rss = run_for_rss(volume, small_out, "--customer", str(small_customer))
    large_rss = run_for_rss(volume, large_out)
    with small_out.open(newline="", encoding="utf-8") as f:
        assert sum(1 for _ in csv.reader(f)) == MEMORY_MESSAGES // 10 + 1
    with large_out.open(newline="", encoding="utf-8") as f:
        assert sum(1 for _ in csv.reader(f)) == MEMORY_MESSAGES + 1
    # ~10 MB of message text: holding it would add well over 20 MB of Python objects.
    assert large_out.stat().st_size > 9 * small_out.stat().st_size
    assert large_rss < small_rss * 1.15, (small_rss, large_rss)
    assert large_rss - small_rss < 8 * 1024, (small_rss, large_rss)
    volume.db.client.drop_database(volume.db_name)
    volume.close()
