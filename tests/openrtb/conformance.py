"""OpenRTB 2.6 conformance: bid requests and bid responses checked against the vendored JSON Schema.

The schema (``schema/schema.json``) is a community-written JSON Schema of OpenRTB 2.6, not an
IAB Tech Lab artefact: IAB publishes none for 2.6 (``schema/NOTICE.md`` says where it comes from
and why). Its top level is ``oneOf`` request or response, which refuses a document valid as
both, so each check validates against one of its ``$defs``.

Validators are compiled once per process; ``format`` is an annotation (not asserted), as the
schema's draft leaves it by default.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

SCHEMA_PATH = Path(__file__).parent / "schema" / "schema.json"
SCHEMA_URI = "urn:openrtb:2.6:schema"  # where the vendored document sits in the validators' registry
MAX_ERRORS_SHOWN = 10
MAX_MESSAGE_CHARS = 240  # jsonschema's messages repeat the failing instance, however large


@cache
def openrtb_schema() -> dict[str, Any]:
    """The vendored schema document (not to be mutated: it is shared)."""
    return json.loads(SCHEMA_PATH.read_text())


@cache
def _validator(definition: str) -> Draft7Validator:
    registry = Registry().with_resource(SCHEMA_URI, DRAFT7.create_resource(openrtb_schema()))
    return Draft7Validator({"$ref": f"{SCHEMA_URI}#/$defs/{definition}"}, registry=registry)


def _validate(definition: str, body: Any) -> None:
    errors = sorted(_validator(definition).iter_errors(body), key=lambda error: error.json_path)
    if errors:
        lines = [f"{error.json_path}: {error.message[:MAX_MESSAGE_CHARS]}" for error in errors[:MAX_ERRORS_SHOWN]]
        more = f"\n(and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise AssertionError(f"not an OpenRTB 2.6 {definition}:\n" + "\n".join(lines) + more)


def validate_bid_request(body: dict[str, Any]) -> None:
    """Raises AssertionError naming each failing JSON path (``$.imp[0].banner.w: ...``) unless ``body`` is a
    BidRequest as the schema states it."""
    _validate("BidRequest", body)


def validate_bid_response(body: dict[str, Any]) -> None:
    """Raises AssertionError naming each failing JSON path (``$.seatbid[0].bid[0].price: ...``) unless ``body``
    is a BidResponse as the schema states it."""
    _validate("BidResponse", body)


COMPONENT_PREFIX = "OpenRTB26"  # the vendored $defs in an OpenAPI document's components: OpenRTB26BidRequest, ...


def _to_components(node: Any) -> Any:
    """``node`` with every ``#/$defs/X...`` reference pointing at ``#/components/schemas/OpenRTB26X...``."""
    if isinstance(node, dict):
        return {
            key: f"#/components/schemas/{COMPONENT_PREFIX}{value.removeprefix('#/$defs/')}"
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/")
            else _to_components(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_to_components(item) for item in node]
    return node


def with_openrtb_request_body(
    openapi: dict[str, Any], path: str = "/openrtb2/auction", *, narrowed_by: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A copy of an OpenAPI 3.1 document whose ``POST path`` takes the vendored schema's BidRequest as its JSON
    body (every ``$defs`` entry added to ``components.schemas``), so a generator draws OpenRTB 2.6 requests
    rather than the app's own, narrower, model of them. ``narrowed_by``: a schema the body must meet as well
    (``allOf``), to steer a generator towards some of those requests."""
    document = copy.deepcopy(openapi)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in openrtb_schema()["$defs"].items():
        schemas[f"{COMPONENT_PREFIX}{name}"] = _to_components(definition)
    schema: dict[str, Any] = {"$ref": f"#/components/schemas/{COMPONENT_PREFIX}BidRequest"}
    if narrowed_by is not None:
        schema = {"allOf": [schema, narrowed_by]}
    body = {"application/json": {"schema": schema}}
    document["paths"][path]["post"]["requestBody"] = {"required": True, "content": body}
    return document
