"""OpenAPI request bodies and responses taken from the pydantic models of halochat.views,
halochat.errors and the routes.

Responses: `@answers(status, Model, description)` documents a success body as a named schema
under `components/schemas` (client generators make one type per model); `@errors(*codes)`
documents the error envelope once per HTTP status those codes are answered with, naming the
codes. Request bodies (`@json_body`) stay inline.

sanic-ext's own model conversion drops `required` and `additionalProperties: false` (and lists
`model_config` as a field), so clients and schemathesis would see looser bodies than the server
accepts. Pydantic's JSON schema is exact but uses JSON Schema 2020-12 forms; this turns it into
the OpenAPI 3.0 dialect the document declares: `$defs` inlined, numeric exclusive bounds as
3.0 booleans, `anyOf [X, null]` as `nullable`, `const` as a one-value enum.
"""

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from sanic_ext import openapi
from sanic_ext.extensions.openapi.builders import SpecificationBuilder

from halochat.constants import ErrorCode
from halochat.errors import ERROR_STATUS, ErrorEnvelope

_REF_PREFIX = "#/$defs/"
_COMPONENT_PREFIX = "#/components/schemas/"


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if (ref := node.get("$ref")) and ref.startswith(_REF_PREFIX):
        return _convert(defs[ref.removeprefix(_REF_PREFIX)], defs)
    out = {k: _convert(v, defs) for k, v in node.items() if k != "$defs"}
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[plain] = out.pop(bound)
            out[bound] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        out.pop("anyOf")
        if len(rest) == 1 and "$ref" in rest[0]:
            out["allOf"] = rest  # 3.0 ignores the siblings of a $ref
        elif len(rest) == 1:
            out.update(rest[0])
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    return out


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema()
    return _convert(raw, raw.get("$defs", {}))


def json_body(model: type[BaseModel]) -> Callable[[Any], Any]:
    """@openapi.body for a route whose body is parsed with `parse_body(request, model)`."""
    return openapi.body({"application/json": schema_of(model)}, required=True)


def component(model: type[BaseModel]) -> dict[str, str]:
    """A reference to `model` under components/schemas, registered (with the models it uses)
    on first use. Names are the class names: the view models are unique by name."""
    spec = SpecificationBuilder()
    name = model.__name__
    if not spec.has_component("schemas", name):
        raw = model.model_json_schema(ref_template=_COMPONENT_PREFIX + "{model}")
        for key, sub in raw.pop("$defs", {}).items():
            spec.add_component("schemas", key, _convert(sub, {}))
        spec.add_component("schemas", name, _convert(raw, {}))
    return {"$ref": _COMPONENT_PREFIX + name}


def answers(status: int, model: type[BaseModel], description: str) -> Callable[[Any], Any]:
    """A success answer: `model` (a halochat.views model) as application/json."""
    return openapi.response(status, {"application/json": component(model)}, description)


# Error codes shared by many operations (each answered with its ERROR_STATUS).
AUTH = (
    ErrorCode.AUTH_REQUIRED,
    ErrorCode.INVALID_TOKEN,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.USER_NOT_FOUND,
    ErrorCode.TOKEN_REVOKED,
    ErrorCode.USER_DISABLED,
    ErrorCode.UNAVAILABLE,  # the database could not be reached (also while authenticating)
)
ROLE = (*AUTH, ErrorCode.WRONG_ROLE)  # @authenticated(<roles>)
WRITE = (ErrorCode.RATE_LIMITED,)  # every POST/PUT/PATCH/DELETE of a user (http_write_rate)
BODY = (*WRITE, ErrorCode.INVALID_JSON, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.VALIDATION_ERROR)


def errors(*codes: ErrorCode) -> Callable[[Any], Any]:
    """The error envelope under each status `codes` are answered with; the description names
    the codes (the `error.code` values a client can switch on)."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(ERROR_STATUS[code], []).append(code)
    envelope = {"application/json": component(ErrorEnvelope)}
    decorators = [
        openapi.response(status, envelope, _error_description(status, found))
        for status, found in sorted(by_status.items())
    ]

    def decorate(handler: Any) -> Any:
        for decorator in decorators:
            handler = decorator(handler)
        return handler

    return decorate


def _error_description(status: int, codes: Iterable[ErrorCode]) -> str:
    names = ", ".join(f"`{code.value}`" for code in codes)
    return f"{HTTPStatus(status).phrase}; error.code: {names}"
