"""The conformance checks pass what OpenRTB 2.6 allows and fail, naming the JSON path, what it does not."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.openrtb.conformance import validate_bid_request, validate_bid_response, with_openrtb_request_body

BID_REQUEST: dict[str, Any] = {
    "id": "req-1",
    "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.5, "bidfloorcur": "USD"}],
    "site": {"id": "news", "domain": "news.example"},
}
BID_RESPONSE: dict[str, Any] = {
    "id": "req-1",
    "bidid": "a1",
    "cur": "USD",
    "seatbid": [{"seat": "adv-1", "bid": [{"id": "b1", "impid": "1", "price": 1.25, "adm": "<a></a>", "mtype": 1}]}],
}


def changed(body: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``body`` with the value at ``path`` replaced (``...``: removed)."""
    copied = copy.deepcopy(body)
    node = copied
    for step in path[:-1]:
        node = node[step]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copied


def test_a_minimal_bid_request_and_bid_response_conform():
    validate_bid_request(BID_REQUEST)
    validate_bid_response(BID_RESPONSE)
    validate_bid_response({"id": "req-1"})  # a no-bid response is a BidResponse too


@pytest.mark.parametrize(
    ("path", "value", "failing_path"),
    [
        (("seatbid", 0, "bid", 0, "price"), "1.25", "$.seatbid[0].bid[0].price"),
        (("seatbid", 0, "bid", 0, "impid"), ..., "$.seatbid[0].bid[0]"),
        (("seatbid", 0, "bid"), [], "$.seatbid[0].bid"),
        (("id",), ..., "$"),
        (("cur",), ["USD"], "$.cur"),
    ],
)
def test_a_bid_response_that_breaks_the_schema_fails_naming_the_path(path, value, failing_path):
    with pytest.raises(AssertionError, match=r"not an OpenRTB 2.6 BidResponse") as failure:
        validate_bid_response(changed(BID_RESPONSE, path, value))
    assert f"{failing_path}: " in str(failure.value)


@pytest.mark.parametrize(
    ("path", "value", "failing_path"),
    [
        (("id",), ..., "$"),
        (("imp",), [], "$.imp"),
        (("imp", 0, "id"), 1, "$.imp[0].id"),
        (("imp", 0, "banner", "w"), "300", "$.imp[0].banner.w"),
        (("imp", 0, "pmp"), {"deals": [{"bidfloor": 1.0}]}, "$.imp[0].pmp.deals[0]"),
        (("imp", 0, "video"), {"minduration": 5}, "$.imp[0].video"),
    ],
)
def test_a_bid_request_that_breaks_the_schema_fails_naming_the_path(path, value, failing_path):
    with pytest.raises(AssertionError, match=r"not an OpenRTB 2.6 BidRequest") as failure:
        validate_bid_request(changed(BID_REQUEST, path, value))
    assert f"{failing_path}: " in str(failure.value)


def test_the_openapi_body_of_the_route_becomes_the_schemas_bid_request():
    openapi = {"openapi": "3.1.0", "paths": {"/openrtb2/auction": {"post": {"requestBody": {"$ref": "#/x"}}}}}
    document = with_openrtb_request_body(openapi)
    body = document["paths"]["/openrtb2/auction"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/OpenRTB26BidRequest"}
    schemas = document["components"]["schemas"]
    assert schemas["OpenRTB26BidRequest"]["properties"]["imp"]["items"] == {"$ref": "#/components/schemas/OpenRTB26Imp"}
    assert openapi["paths"]["/openrtb2/auction"]["post"]["requestBody"] == {"$ref": "#/x"}  # the input is untouched

    narrowed = with_openrtb_request_body(openapi, narrowed_by={"required": ["site"]})
    body = narrowed["paths"]["/openrtb2/auction"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"allOf": [{"$ref": "#/components/schemas/OpenRTB26BidRequest"}, {"required": ["site"]}]}
