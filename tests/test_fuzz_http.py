"""Fuzzing the HTTP API, generically over the served OpenAPI document.

Properties, for every operation in /docs/openapi.json and every role (customer, Mitra, admin):
- the server never answers 5xx, and every 4xx carries {"error": {"code", "message"}};
- every answer is documented: its status, its content type and its body's schema (the response
  models of halochat/views.py and the error envelope of halochat/errors.py);
- raw junk bodies (bytes, non-JSON, JSON of wrong types, huge strings, nested junk) at every
  route that documents a body, with path ids of real sessions, are rejected with a 4xx in that
  shape, and a rejected request leaves every stored collection unchanged;
- every route that parses a body documents it (`@openapi.body`), so schemathesis can fuzz it;
- every operation documents a 2xx body schema and its error answers with their codes.

Example counts: HALOCHAT_FUZZ_EXAMPLES (see docs/testing.md); the default keeps the module fast.
Generation is derandomized, so a failure reproduces on every run with the same code.
"""

import asyncio
import inspect
import os
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import requests
import schemathesis
from bson import ObjectId
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from halochat.constants import ErrorCode
from halochat.errors import ERROR_STATUS, ErrorEnvelope
from halochat.routes import ROUTE_BLUEPRINTS
from halochat.routes.common import parse_body, parse_query
from tests.support.clients import Actor
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess

# Examples per (operation, role) for schemathesis and per route for raw bodies.
EXAMPLES = int(os.environ.get("HALOCHAT_FUZZ_EXAMPLES") or 0)
SCHEMA_EXAMPLES = EXAMPLES or 8
RAW_EXAMPLES = EXAMPLES or 25

MAX_BODY_BYTES = 16 * 1024
FUZZ_ENV = {
    # Nothing may change on its own during a run, however long: no pairing timeout, no
    # expiry (a tier minute is an hour), no grace period running out.
    "HALOCHAT_PAIRING_TIMEOUT_SECONDS": "3600",
    "HALOCHAT_MINUTE_SECONDS": "3600",
    "HALOCHAT_GRACE_SECONDS": "86400",
    "HALOCHAT_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "HALOCHAT_WS_MAX_FRAME_BYTES": "4096",
}

BODY_METHODS = ("post", "put", "patch")
# Longer runs get a longer per-test timeout than the suite's 120 s.
pytestmark = pytest.mark.timeout(max(120, EXAMPLES * 6))


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # reproducible in CI; raise the count to explore more
        database=None,
        # Shrinking against a live server is slow; the failing example is printed as is.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


# ----------------------------------------------------------------- stored state


# The session timeline is an audit log written in the background (a push of an earlier,
# accepted request may land during a later one), and the process lease and registration are
# heartbeats (docs/scaling.md): neither is data a refusal must keep.
NOT_SNAPSHOTTED = frozenset({"session_timeline", "leases", "processes"})


def db_snapshot(server: ServerProcess) -> dict[str, list[dict[str, Any]]]:
    """Every document of every collection, in _id order: 'nothing stored changed' is equality."""
    db = server.db
    return {
        name: list(db[name].find({}, sort=[("_id", 1)]))
        for name in sorted(db.list_collection_names())
        if name not in NOT_SNAPSHOTTED
    }


def snapshot_diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    lines = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, []), after.get(name, [])
        if old != new:
            old_by_id = {d["_id"]: d for d in old}
            changed = [d for d in new if old_by_id.get(d["_id"]) != d]
            gone = {d["_id"] for d in old} - {d["_id"] for d in new}
            lines.append(f"{name}: changed/added {changed!r}, removed {sorted(map(str, gone))}")
    return "\n".join(lines)


class StoredState:
    """Tracks the database across a run of requests: a rejected one must change nothing,
    an accepted one (valid by chance) may, and becomes the new reference."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.snapshot = db_snapshot(server)

    def check(self, response: httpx.Response | requests.Response, what: str) -> None:
        status, text = response.status_code, response.text
        assert status < 500, f"{what}: {status} {text[:500]}"
        after = db_snapshot(self.server)
        if status >= 400:
            assert_error_shape(status, text, what)
            # Only a body too large to read costs the keep-alive connection.
            if status != 413:
                assert response.headers.get("connection") != "close", f"{what}: closed"
            diff = snapshot_diff(self.snapshot, after)
            assert not diff, f"{what}: rejected with {status}, yet stored data changed:\n{diff}"
        self.snapshot = after


# ------------------------------------------------------------------- junk data

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson reads
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_junk = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def deep_nesting(depth: int) -> str:
    return "[" * depth + "]" * depth


def raw_bodies(field_names: list[str]) -> st.SearchStrategy[bytes]:
    """Bodies a client could send by mistake or malice; `field_names` are the documented ones,
    so many objects reach field validation instead of stopping at 'unknown field'."""
    keys = st.sampled_from(field_names) if field_names else st.text(max_size=12)
    objects = st.dictionaries(keys, json_junk, max_size=len(field_names) + 2) | st.dictionaries(
        st.text(max_size=12), json_junk, max_size=4
    )
    wrong_types = st.fixed_dictionaries(
        {name: json_junk.filter(lambda v: not isinstance(v, str)) for name in field_names}
    )
    documents = st.one_of(
        objects,
        wrong_types,
        json_junk.filter(lambda v: not isinstance(v, dict)),  # arrays, strings, numbers, null
        st.builds(lambda k, n: {k: "x" * n}, keys, st.integers(1000, MAX_BODY_BYTES - 100)),
        st.builds(lambda k, n: {k: [[[]]] * n}, keys, st.integers(1, 2000)),
    ).map(lambda v: orjson.dumps(v))
    return st.one_of(
        documents,
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.integers(1000, 3000).map(lambda d: deep_nesting(d).encode()),
        st.integers(1000, 3000).map(lambda d: ('{"a":' * d + "1" + "}" * d).encode()),
        st.just(b"x" * (MAX_BODY_BYTES + 1)),
        st.just(b""),
        st.just(b"{"),
        st.just(b'{"a": 1, "a": 2}'),
        st.just(b'{"a": 18446744073709551616}'),  # valid JSON beyond 64 bits
        st.just('{"\ud800": 1}'.encode("utf-8", "surrogatepass")),
    )


content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        None,
    ]
)


# ---------------------------------------------------------------------- world


class World:
    """A server with real users and sessions to aim path ids at."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.customer, self.mitra = make_pair(server, " fuzz")
        self.admin = server.create_user("admin", "Admin fuzz")
        self.actors: dict[str, Actor] = {
            "customer": self.customer,
            "mitra": self.mitra,
            "admin": self.admin,
        }
        self.session_ids: list[str] = []
        self.openapi: dict[str, Any] = httpx.get(f"{server.base_url}/docs/openapi.json").json()

    def add_sessions(self) -> None:
        """Sessions to aim path ids at, as far as pairing and lifecycle are served: an ACTIVE
        one of our customer and Mitra, a CLOSING one, and a PAIRING one of a stranger."""
        paths = self.openapi.get("paths", {})
        if "/v1/sessions" not in paths:
            return
        active = self.active_session(self.customer, self.mitra)
        self.session_ids.append(active)
        if "/v1/sessions/{session_id}/messages" in paths:  # receipts then have a seq to name
            sent = httpx.post(
                f"{self.server.base_url}/v1/sessions/{active}/messages",
                json={"client_msg_id": "fuzz-1", "body": "hello"},
                headers=self.customer.headers,
            )
            assert sent.status_code in (200, 201), sent.text
        if any(path.endswith("/end") for path in paths):
            customer, mitra = make_pair(self.server, " closing")
            closing = self.active_session(customer, mitra)
            ended = httpx.post(
                f"{self.server.base_url}/v1/sessions/{closing}/end", headers=customer.headers
            )
            assert ended.status_code == 200, ended.text
            self.session_ids.append(closing)
        stranger = self.server.create_user("customer", "Stranger fuzz")
        created = httpx.post(
            f"{self.server.base_url}/v1/sessions",
            json={"choice": "tier", "tier_id": "15m"},
            headers=stranger.headers,
        )
        assert created.status_code == 201, created.text
        self.session_ids.append(created.json()["session"]["id"])

    def active_session(self, customer: Actor, mitra: Actor) -> str:
        return asyncio.run(open_active_session(self.server, customer, mitra))["id"]

    def ids(self) -> st.SearchStrategy[str]:
        """Path ids: real sessions (their extension ids too), unknown ObjectIds, junk."""
        real = list(self.session_ids)
        for sid in self.session_ids:
            doc = self.server.db["sessions"].find_one({"_id": ObjectId(sid)}) or {}
            real += [e["id"] for e in doc.get("extensions", []) if "id" in e]
        junk = st.one_of(
            st.just(str(ObjectId())),
            st.text(min_size=1, max_size=30),
            st.just("0" * 24),
            st.just("f" * 25),
        )
        return st.sampled_from(real) | junk if real else junk


@pytest.fixture(scope="module")
def fuzz_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=FUZZ_ENV)


@pytest.fixture(scope="module")
def world(fuzz_server: ServerProcess) -> World:
    world = World(fuzz_server)
    world.add_sessions()
    return world


def schemathesis_ready(node: Any) -> Any:
    """The served document, with two generator quirks undone so schemathesis accepts it
    (both are reported findings): pydantic's numeric exclusiveMinimum/Maximum (OpenAPI 3.1)
    in a 3.0 document, and the model's `model_config` listed as a body property."""
    if isinstance(node, list):
        return [schemathesis_ready(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: schemathesis_ready(v) for k, v in node.items()}
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[bound], out[key] = value, True
    props = out.get("properties")
    if isinstance(props, dict) and out.get("type") == "object":
        props.pop("model_config", None)
    return out


def operations(openapi: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in openapi.get("paths", {}).items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method, path, op


def body_schema(op: dict[str, Any]) -> dict[str, Any] | None:
    content = op.get("requestBody", {}).get("content", {})
    media = content.get("application/json")
    return media.get("schema", {}) if media is not None else None


def fill_path(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: quote(values[m.group(1)], safe=""), path)


def assert_error_shape(status: int, text: str, what: str) -> dict[str, Any]:
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        pytest.fail(f"{what}: {status} with a non-JSON body {text[:300]!r}")
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{what}: {status} without the error shape: {text[:300]}"
    assert isinstance(error.get("code"), str) and error["code"], f"{what}: {text[:300]}"
    assert isinstance(error.get("message"), str), f"{what}: {text[:300]}"
    # The documented envelope exactly: a known code, answered with its documented status.
    envelope = ErrorEnvelope.model_validate(body)
    assert ERROR_STATUS[envelope.error.code] == status, f"{what}: {status} {text[:300]}"
    return error


# ----------------------------------------------------------------------- tests


def route_sources() -> Iterator[tuple[str, str, str]]:
    """(method, OpenAPI-style path, handler source) of every registered HTTP route."""
    for bp in ROUTE_BLUEPRINTS:
        for route in bp._future_routes:
            source = inspect.getsource(inspect.unwrap(route.handler))
            path = (bp.url_prefix or "") + route.uri
            path = re.sub(r"<(\w+)(:[^>]*)?>", r"{\1}", path).rstrip("/") or "/"
            for method in route.methods:
                yield method.lower(), path, source


def test_every_route_documents_the_body_and_query_it_parses(world: World) -> None:
    """schemathesis only fuzzes what the document describes: a route calling parse_body needs
    `@openapi.body(...)`, one calling parse_query needs `@openapi.parameter(...)`."""
    ops = {(method, path): op for method, path, op in operations(world.openapi)}
    missing = []
    for method, path, source in route_sources():
        op = ops.get((method, path), {})
        if f"{parse_body.__name__}(" in source and body_schema(op) is None:
            missing.append(f"{method.upper()} {path}: no request body")
        query = [p for p in op.get("parameters", []) if p.get("in") == "query"]
        if f"{parse_query.__name__}(" in source and not query:
            missing.append(f"{method.upper()} {path}: no query parameters")
    assert not missing, f"undocumented inputs: {missing}"


def resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        return openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def documented_codes(description: str) -> list[str]:
    """The `error.code` values an error answer's description names (`code`, ...)."""
    return re.findall(r"`([a-z_]+)`", description.partition("error.code:")[2])


def test_every_operation_documents_its_answers(world: World) -> None:
    """A client generated from the document gets a type for every answer: each operation has
    a 2xx body schema (no bare `default`), and its error answers: the envelope under each
    status it can answer, naming the codes. Authenticated operations document 401/403/503,
    writes 429, bodies 400/413/422, path ids 404 (or 422)."""
    problems = []
    for method, path, op in operations(world.openapi):
        what = f"{method.upper()} {path}"
        responses = op.get("responses", {})
        if "default" in responses:
            problems.append(f"{what}: a bare default response")
        ok = {s: r for s, r in responses.items() if s.startswith("2")}
        if not ok:
            problems.append(f"{what}: no 2xx answer")
        for status, answer in ok.items():
            content = answer.get("content", {})
            json_schema = resolve(
                world.openapi, content.get("application/json", {}).get("schema", {})
            )
            plain = content.get("text/plain", {}).get("schema", {})
            if not json_schema.get("properties") and not plain:
                problems.append(f"{what}: {status} has no body schema")
        expected = set()
        if op.get("security"):
            expected |= {"401", "403", "503"}
            if method != "get":
                expected.add("429")
        if body_schema(op) is not None:
            expected |= {"400", "413", "422"}
        if "{" in path:
            expected.add("404" if "404" in responses else "422")
        for status in sorted(expected - set(responses)):
            problems.append(f"{what}: error {status} not documented")
        for status, answer in responses.items():
            if status.startswith("2"):
                continue
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if schema != {"$ref": "#/components/schemas/ErrorEnvelope"}:
                problems.append(f"{what}: {status} is not the error envelope")
            codes = documented_codes(answer.get("description", ""))
            wrong = [
                c for c in codes if c not in ErrorCode or ERROR_STATUS[ErrorCode(c)] != int(status)
            ]
            if not codes or wrong:
                problems.append(f"{what}: {status} names codes {codes} (wrong status: {wrong})")
    assert not problems, "\n".join(problems)
    envelope = world.openapi["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"] and envelope["additionalProperties"] is False


def fuzz_raw_bodies(
    world: World,
    http: httpx.Client,
    stored: StoredState,
    method: str,
    path: str,
    fields: list[str],
) -> None:
    params = re.findall(r"\{(\w+)\}", path)

    @fuzz_settings(RAW_EXAMPLES)
    @given(
        actor=st.sampled_from(list(world.actors.values())),
        values=st.fixed_dictionaries({p: world.ids() for p in params}),
        body=raw_bodies(fields),
        content_type=content_types,
    )
    def check(actor: Actor, values: dict[str, str], body: bytes, content_type: str | None) -> None:
        url = fill_path(path, values)
        headers = dict(actor.headers)
        if content_type:
            headers["Content-Type"] = content_type
        response = http.request(method.upper(), url, content=body, headers=headers)
        what = f"{method.upper()} {url} as {actor.role} with {body[:200]!r}"
        stored.check(response, what)

    check()


def test_raw_bodies_are_rejected_cleanly_and_change_nothing(world: World) -> None:
    targets = [
        (method, path, op)
        for method, path, op in operations(world.openapi)
        if method in BODY_METHODS and body_schema(op) is not None
    ]
    assert targets, "the OpenAPI document describes no request body"
    stored = StoredState(world.server)
    with httpx.Client(base_url=world.server.base_url, timeout=15.0) as http:
        for method, path, op in targets:
            schema = body_schema(op) or {}
            fields = [f for f in schema.get("properties", {}) if f != "model_config"]
            fuzz_raw_bodies(world, http, stored, method, path, fields)


def test_raw_queries_are_answered_cleanly_and_change_nothing(world: World) -> None:
    """Junk query strings (documented names with junk values, repeated keys, unknown names)
    on every GET route: never 5xx, the error shape, and a rejected one changes nothing."""
    targets = [(path, op) for method, path, op in operations(world.openapi) if method == "get"]
    stored = StoredState(world.server)
    with httpx.Client(base_url=world.server.base_url, timeout=15.0) as http:
        for path, op in targets:
            names = [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"]
            fuzz_raw_queries(world, http, stored, path, names)


def fuzz_raw_queries(
    world: World, http: httpx.Client, stored: StoredState, path: str, names: list[str]
) -> None:
    params = re.findall(r"\{(\w+)\}", path)
    keys = st.sampled_from(names) | st.text(max_size=10) if names else st.text(max_size=10)
    values = st.one_of(
        st.text(max_size=30),
        st.integers().map(str),
        st.sampled_from(["-1", "0", "1e3", "9" * 30, "null", "true", "[]", "", " 1"]),
    )

    @fuzz_settings(max(RAW_EXAMPLES // 5, 3))
    @given(
        actor=st.sampled_from(list(world.actors.values())),
        values=st.fixed_dictionaries({p: world.ids() for p in params}),
        query=st.lists(st.tuples(keys, values), max_size=5),
    )
    def check(actor: Actor, values: dict[str, str], query: list[tuple[str, str]]) -> None:
        url = fill_path(path, values)
        response = http.get(url, params=query, headers=actor.headers)
        stored.check(response, f"GET {url}?{query!r} as {actor.role}")

    check()


def test_a_unique_index_collision_is_a_conflict_not_a_server_error(world: World) -> None:
    """Found by the schemathesis run: creating a user with a taken auth_uid was a 500."""
    body = {"role": "customer", "display_name": "Twin", "auth_uid": f"uid-{ObjectId()}"}
    with httpx.Client(base_url=world.server.base_url, headers=world.admin.headers) as http:
        assert http.post("/v1/admin/users", json=body).status_code == 201
        stored = StoredState(world.server)
        again = http.post("/v1/admin/users", json=body)
        stored.check(again, "POST /v1/admin/users (taken auth_uid)")
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == ErrorCode.DUPLICATE


# What schemathesis checks of every answer: no 5xx, and the status, content type and body are
# the documented ones (the body validated against the operation's response schema).
ANSWER_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("role", ["customer", "mitra", "admin"])
def test_schemathesis_no_server_errors(world: World, role: str) -> None:
    """Positive and negative cases from the document, as each role in turn; the same
    properties as for raw bodies (no 5xx, error shape, rejected = nothing stored changed),
    and every answer conforms to the document (status, content type, body schema)."""
    server = world.server
    actor = world.actors[role]
    schema = schemathesis.openapi.from_dict(schemathesis_ready(world.openapi))
    ops = [result.ok() for result in schema.get_all_operations()]
    assert ops, "the OpenAPI document has no operations"
    stored = StoredState(server)
    with requests.Session() as http:
        for op in ops:
            params = [p.name for p in op.path_parameters]
            cases = st.one_of(
                op.as_strategy(generation_mode=GenerationMode.POSITIVE),
                op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
            )

            @fuzz_settings(SCHEMA_EXAMPLES)
            @given(case=cases, real_ids=st.fixed_dictionaries({p: world.ids() for p in params}))
            def check(case: Any, real_ids: dict[str, str]) -> None:
                if real_ids and case.path_parameters is not None:
                    # Sent as given: quoted here, or a "#" or "?" in junk would cut the path.
                    quoted = {p: quote(v, safe="") for p, v in real_ids.items()}
                    case.path_parameters = {**case.path_parameters, **quoted}
                response = case.call(
                    base_url=server.base_url, session=http, headers=actor.headers, timeout=15
                )
                case.validate_response(response, checks=ANSWER_CHECKS)
                what = f"{case.method} {case.formatted_path} as {role}: {case.body!r:.300}"
                stored.check(response, what)

            check()
