"""OpenAPI request bodies taken from the pydantic models the routes validate with.

sanic-ext's own model conversion drops `required` and `additionalProperties: false` (and lists
`model_config` as a field), so clients and schemathesis would see looser bodies than the server
accepts. Pydantic's JSON schema is exact but uses JSON Schema 2020-12 forms; this turns it into
the OpenAPI 3.0 dialect the document declares: `$defs` inlined, numeric exclusive bounds as
3.0 booleans, `anyOf [X, null]` as `nullable`, `const` as a one-value enum.
"""

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from sanic_ext import openapi

_REF_PREFIX = "#/$defs/"


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
        if len(rest) == 1:
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
